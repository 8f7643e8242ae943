"""Adam step CPU time per element, one thread, side by side in one process: torch fused
(float32 state) and the Numba kernel (serial walk) with native, bfloat16 and 8-bit state.

CPU time of the calling thread (``time.thread_time``), the minimum over rounds: on a
machine shared with other work, wall time of a parallel step measures the scheduler (a
step waits for its slowest thread), CPU time what the step costs.

    python bench/results/state_dtype/cpu_time.py [ROUNDS]
"""

import sys
import time

import torch

from fusedsched import schedules as S
from fusedsched.kernels import state_format as F
from fusedsched.kernels.numba import adam as nadam

torch.set_num_threads(1)
nadam.SERIAL_MAX = 1 << 40          # the serial walk, in this thread
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
             decoupled_weight_decay=False, amsgrad=False, maximize=False)


def numba_step(n, fmt):
    gen = torch.Generator().manual_seed(0)
    p, g = torch.randn(n, generator=gen), torch.randn(n, generator=gen) * 1e-3
    dtype = {"native": torch.float32, "bfloat16": torch.bfloat16, "8bit": torch.uint8}[fmt]
    m, v = torch.zeros(n, dtype=dtype), torch.zeros(n, dtype=dtype)
    scales = ([[torch.zeros(F.n_blocks(n))], [torch.zeros(F.n_blocks(n))], None]
              if fmt == "8bit" else None)
    steps, pos = [torch.zeros((), dtype=torch.float64)], torch.zeros((), dtype=torch.float64)
    prog = S.program(S.constant(), "cpu")
    return lambda: nadam.adam_step([p], [g], [m], [v], None, steps, schedule=prog,
                                   position=pos, state_format=fmt, scales=scales, **HYPER)


def torch_step(n):
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(n, generator=gen))
    p.grad = torch.randn(n, generator=gen) * 1e-3
    return torch.optim.Adam([p], lr=1e-3, fused=True).step


for n in (10**6, 10**7, 32 * 10**6):
    runs = {"torch fused": torch_step(n), **{f: numba_step(n, f) for f in ("native", "bfloat16", "8bit")}}
    for r in runs.values():
        r()
        r()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(ROUNDS):
        for name, r in runs.items():
            t0 = time.thread_time()
            r()
            best[name] = min(best[name], time.thread_time() - t0)
    print(f"{n:.3g}: " + ", ".join(f"{k} {v / n * 1e9:.2f} ns/el ({best['torch fused'] / v:.2f}x)"
                                    for k, v in best.items()), flush=True)
    runs.clear()
