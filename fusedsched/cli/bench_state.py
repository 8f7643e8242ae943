"""``fusedsched bench`` rows for the state formats (``kernels/state_format.py``), CPU: Adam on
one float32 tensor per size and on the parameter list of ResNet-50 (161 tensors, 25.6M
elements), timed side by side in one process, interleaved over rounds:

* ``torch fused``: ``torch.optim.Adam(fused=True)`` + ``LambdaLR`` of the schedule, float32
  state (``opt.step(); sched.step()``, as the main rows time it);
* ``roof``: the float32 Adam step's memory roof (``roof.Roof``: its 28 B per element read
  and written, no math), the time a memory-bound step would take;
* ``native``, ``bfloat16``, ``8bit``: the Numba kernel call that ``fusedsched.Adam`` makes
  (``ops.call("adam", "numba", ...)``, the schedule evaluated inside the kernel) with the
  state in that format: float32, bfloat16, or uint8 codes with one float32 scale per 256
  elements.

Per workload: each provider's time (ms), its ratio to torch fused (torch's time over the
provider's: above 1 is faster), and the state's bytes per parameter element (``exp_avg``
and ``exp_avg_sq`` with their scales) with their ratio to float32 state.
"""

import math
import statistics

from .bench import _time_once, interleaved

SIZES = (10**6, 10**7, 32 * 10**6)     # one tensor each; then the ResNet-50 list
FORMATS = ("native", "bfloat16", "8bit")
HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
             decoupled_weight_decay=False, amsgrad=False, maximize=False)


def _kernel_step(shapes, fmt, schedule):
    """(step, state bytes) of the Numba Adam kernel on float32 tensors of ``shapes`` with
    state format ``fmt``: one kernel call for the list, as ``fusedsched.Adam`` makes."""
    import torch

    from fusedsched import schedules as S
    from fusedsched.kernels import ops
    from fusedsched.kernels import state_format as F

    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    dtype = {"native": torch.float32, "bfloat16": torch.bfloat16, "8bit": torch.uint8}[fmt]
    states = [[torch.zeros(s, dtype=dtype) for s in shapes] for _ in range(2)] + [None]
    scales = ([[torch.zeros(F.n_blocks(p.numel())) for p in params] for _ in range(2)]
              + [None] if fmt == "8bit" else None)
    steps = [torch.zeros((), dtype=torch.float64) for _ in shapes]
    position = torch.zeros((), dtype=torch.float64)
    program = S.program(schedule, "cpu")

    def step():
        ops.call("adam", "numba", params, grads, states, steps, HYPER, schedule=program,
                 position=position, state_format=fmt, scales=scales)

    held = [t for lst in states + (scales or []) if lst for t in lst]
    return step, sum(t.numel() * t.element_size() for t in held)


def _torch_step(shapes, schedule):
    import torch

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    opt = torch.optim.Adam(params, lr=HYPER["lr"], fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    def step():
        opt.step()
        sched.step()

    step()                                   # torch allocates its state on the first step
    return step, sum(opt.state[p][k].numel() * opt.state[p][k].element_size()
                     for p in params for k in ("exp_avg", "exp_avg_sq"))


def measure(quick: bool, rounds: int, min_run_time: float) -> list:
    """One row per workload: times (ms), ratios to torch fused, state bytes per element."""
    import gc

    import torch

    from .bench import make_schedule, resnet50_shapes
    from .optim_db import BENCH
    from .roof import Roof

    rows = []
    workloads = [(f"{n:.3g}", [(n,)]) for n in SIZES]
    workloads = workloads[:1] if quick else workloads + [("resnet50", resnet50_shapes())]
    for label, shapes in workloads:
        n = sum(math.prod(s) for s in shapes)
        schedule = make_schedule()
        roof = Roof(shapes, torch.float32, BENCH["adam"].columns)
        providers = {"torch fused": _torch_step(shapes, schedule), "roof": (roof.step, 0)}
        for fmt in FORMATS:
            providers[fmt] = _kernel_step(shapes, fmt, schedule)
        for step, _ in providers.values():
            for _ in range(2):
                step()
        times = interleaved({name: step for name, (step, _) in providers.items()}, rounds,
                            lambda step: _time_once(step, min_run_time))
        ms = {name: statistics.median(v) * 1e3 for name, v in times.items()}
        state = {name: b / n for name, (_, b) in providers.items() if name != "roof"}
        rows.append({
            "workload": label, "tensors": len(shapes), "numel": n, "ms": ms,
            "vs_torch_fused": {name: ms["torch fused"] / t for name, t in ms.items()},
            "state_bytes_per_element": state,
            "state_vs_fp32": {name: b / state["torch fused"] for name, b in state.items()},
        })
        providers.clear()
        gc.collect()
    return rows


def print_rows(console, rows: list) -> None:
    from rich.table import Table

    t = Table(title="Adam state formats, float32 params (ms per step, same run)",
              caption="x torch: torch fused's time over the provider's (above 1: faster); "
                      "B/el: state bytes per parameter element (x fp32: over torch's "
                      "float32 state)")
    t.add_column("workload", justify="right")
    names = list(rows[0]["ms"]) if rows else []
    for name in names:
        t.add_column(f"{name} ms", justify="right")
        if name != "torch fused":
            t.add_column("x torch", justify="right")
        if name != "roof":
            t.add_column("B/el (x fp32)", justify="right")
    for r in rows:
        cells = [r["workload"]]
        for name in names:
            cells.append(f"{r['ms'][name]:.3g}")
            if name != "torch fused":
                cells.append(f"{r['vs_torch_fused'][name]:.2f}x")
            if name in r["state_bytes_per_element"]:
                cells.append(f"{r['state_bytes_per_element'][name]:.3g} "
                             f"({r['state_vs_fp32'][name]:.3f}x)")
        t.add_row(*cells)
    console.print(t)
