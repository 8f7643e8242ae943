"""Host cost of ``optimizer.step()`` on CUDA: the Python/launch time the host spends per
step (goal: <= 30 us whatever the number of tensors). Timed without synchronizing, over
blocks of steps small enough not to fill the launch queue; the median block is used.
The measured numbers are written to $FUSEDSCHED_GPU_OUT/host_cost.json when set."""

import json
import os
import statistics
import time

import pytest
import torch

import fusedsched as fs
from fusedsched import schedules as S

GOAL_US = 30.0


def _host_us(opt, blocks=20, per_block=20):
    for _ in range(5):
        opt.step()
    torch.cuda.synchronize()
    samples = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(per_block):
            opt.step()
        samples.append((time.perf_counter() - t0) / per_block * 1e6)
        torch.cuda.synchronize()
    return statistics.median(samples)


@pytest.mark.parametrize("n_tensors", [1, 161, 1000])
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_step_host_cost(name, n_tensors):
    params = [torch.nn.Parameter(torch.randn(1024, device="cuda")) for _ in range(n_tensors)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = getattr(fs, name)(params, lr=1e-3, schedule=S.warmup(S.cosine(10**6), 100),
                            backend="triton")
    us = _host_us(opt)
    out = os.environ.get("FUSEDSCHED_GPU_OUT")
    if out:
        path = os.path.join(out, "host_cost.json")
        data = json.load(open(path)) if os.path.exists(path) else {}
        data[f"{name}/{n_tensors}"] = round(us, 2)
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
    print(f"{name} {n_tensors} tensors: {us:.1f} us host per step()")
    assert us <= GOAL_US, f"{name}, {n_tensors} tensors: {us:.1f} us host per step()"
