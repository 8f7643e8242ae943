"""A tensor lr updated in place (what a torch scheduler does to a tensor lr) is read by
the kernel on the GPU without a host sync (pytorch/pytorch#145461). Run by bench/gpu.sh."""

import torch

import fusedsched as fs
from fusedsched import schedules as S


def test_tensor_lr_on_gpu_needs_no_host_sync():
    device = torch.device("cuda")
    lr = torch.tensor(0.1, device=device)
    p = torch.ones(1000, device=device, requires_grad=True)
    opt = fs.Adam([p], lr=lr, schedule=S.cosine(10))
    p.grad = torch.ones_like(p)
    opt.step()                      # first step: state and schedule program set up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            lr.mul_(0.5)            # what a scheduler's in-place update does
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(p).all()
