"""Recipe: fusedsched with torch.amp (autocast + GradScaler).

fusedsched optimizers set ``_step_supports_amp_scaling``: GradScaler hands them
``grad_scale`` and ``found_inf`` and the kernel unscales the gradients in place and skips
the update on an overflow (nothing is written; the schedule position still advances, as a
torch scheduler would). Do not call ``scaler.unscale_(opt)`` unless you need unscaled
gradients before step() (e.g. for clipping); then GradScaler unscales on the host as usual.
On a GPU use ``torch.amp.GradScaler("cuda")`` and ``torch.autocast("cuda", torch.float16)``.
"""

import torch

import fusedsched as fs
from fusedsched import schedules as S


def main(steps=40, seed=0, device="cpu"):
    torch.manual_seed(seed)
    x = torch.randn(256, 8, device=device)
    y = (x.sum(1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 2)).to(device)
    opt = fs.Adam(model.parameters(), lr=1e-2, schedule=S.one_cycle(total_steps=steps))
    scaler = torch.amp.GradScaler(device)
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)        # unscale + skip-on-inf happen inside the kernel
        scaler.update()
        losses.append(loss.item())
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}, scale {scaler.get_scale():g}")
    return losses


if __name__ == "__main__":
    main()
