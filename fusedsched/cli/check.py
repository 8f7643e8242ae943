"""``fusedsched check``: verify an install against torch.optim on this machine.

Runs the parity matrix (optimizers x flags x schedules x dtypes, every backend that can run
on the chosen device) side by side with ``torch.optim`` driven by torch's own schedulers
(StepLR, MultiStepLR, ExponentialLR, LinearLR, PolynomialLR, CosineAnnealingLR,
CosineAnnealingWarmRestarts, OneCycleLR, CyclicLR; ``LambdaLR(f)`` for the schedules torch
does not have), then prints a table of the largest error per (device, backend, dtype,
optimizer) against its tolerance. Exit status 0 when every run is within tolerance, 1
otherwise, 2 when the device is unavailable.

The oracle of each dtype:

* float64 and float32: torch's for-loop optimizer in the same dtype, on the same
  parameters and gradients. Tolerances (largest |ours - torch| over a tensor divided by
  max(largest |torch|, 1e-6), over parameters and every torch state key): float64 1e-10
  (both compute the same closed forms; only torch's chainable schedulers differ by ulps),
  float32 1e-5 (on the CPU the reference backend rounds as torch's for-loop does, bit for
  bit, and so does Numba with ``FUSEDSCHED_SQRT=torch``; Numba's default IEEE square roots
  and a GPU's order of operations may differ by an ulp per step).
* float16 and bfloat16: fusedsched does the math in float32 (as torch's fused kernels do,
  unlike its for-loop, whose eps underflows in float16: optax#1754), so the oracle is torch's
  for-loop in float32 on the same values; the tolerance is ``(4 + steps / 2) * eps(dtype)``
  for the rounding of parameters and state to the storage dtype after every step
  (measured: at most 4 eps after 30 updates, on every optimizer and backend).

``--quick`` runs float32 and float64, fewer flag combinations and 8 updates per run (a
cold Numba cache compiles each kernel once, ~5 s each; later runs load it). ``--out DIR``
also writes ``DIR/check.json``; nothing else is written.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import time
from pathlib import Path

from .optim_db import DTYPE_NAMES

QUICK_DTYPES = ("float64", "float32")
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
HALF_TOLERANCE_ULPS = 4.0       # bfloat16 / float16: (4 + steps / 2) * eps(dtype)
STEPS, QUICK_STEPS = 30, 8
LR = 0.05

# The optimizers (with their first config) that every schedule runs on.
SCHEDULE_OPTIMIZERS = ("momentum", "rmsprop", "adam")
QUICK_SCHEDULE_OPTIMIZERS = SCHEDULE_OPTIMIZERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="device to check: cpu, cuda, or auto (cpu, and cuda when "
                        "available; default)")
    parser.add_argument("--quick", action="store_true",
                        help="float32 and float64 only, fewer flag combinations, 8 updates "
                        "per run (well under a minute)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="also write DIR/check.json (nothing is written without it)")


# --------------------------------------------------------------------------------------------
# the matrix


def _cases(quick, steps):
    """Every (optimizer, config, schedule name, schedule, torch scheduler factory), from
    the optimizer database (``optim_db``)."""
    from .optim_db import OPTIMIZERS, QUICK_CONFIGS, schedules as all_schedules

    schedules = all_schedules(steps, LR)
    default = schedules[10]   # warmup_cosine: crosses a switch and a ramp from 0
    cases = []
    for name, info in OPTIMIZERS.items():
        for config in info.configs[:QUICK_CONFIGS] if quick else info.configs:
            cases.append((name, config) + default)
    for name in QUICK_SCHEDULE_OPTIMIZERS if quick else SCHEDULE_OPTIMIZERS:
        configs = OPTIMIZERS[name].configs
        config = configs[1] if name == "rmsprop" else configs[0]
        for schedule in schedules:
            if schedule is not default:
                cases.append((name, config) + schedule)
    return cases


def _label(name, config, schedule_name):
    flags = ",".join(f"{k}={v}" for k, v in config.items()) or "defaults"
    return f"{name}({flags}) {schedule_name}"


# --------------------------------------------------------------------------------------------
# one run


def _inputs(torch, dtype, device, steps):
    """Parameters (one empty, one non-contiguous) and per-step gradients, float64 values
    rounded to ``dtype``."""
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (0,), (7,), (4, 3)]
    params = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
             for _ in range(steps)]
    return ([p.to(device) for p in params],
            [[x.to(device) for x in step] for step in grads])


def _leaf(torch, value, transpose):
    """A leaf tensor with ``value``'s values; ``transpose``: a non-contiguous one."""
    if transpose:
        return value.t().contiguous().t().detach().requires_grad_()
    return value.clone().detach().requires_grad_()


def _error(torch, ours, theirs):
    """max |ours - theirs| / max(max |theirs|, 1e-6) in float64; inf where ours is NaN and
    torch's is not (or the reverse)."""
    a = ours.detach().to(torch.float64)
    b = theirs.detach().to(torch.float64)
    if b.numel() == 0:
        return 0.0 if a.numel() == 0 else math.inf
    if a.shape != b.shape:
        return math.inf
    nan = b.isnan()
    if not torch.equal(a.isnan(), nan):
        return math.inf
    a, b = a[~nan], b[~nan]
    if b.numel() == 0:
        return 0.0
    diff = float((a - b).abs().max())
    if math.isnan(diff):
        return math.inf
    return diff / max(float(b.abs().max()), 1e-6)


def _run_one(torch, fs, case, backend, dtype, device, steps):
    """The largest error of one run over parameters and every torch state key."""
    from .optim_db import OPTIMIZERS

    name, config, _, schedule, torch_sched = case
    info = OPTIMIZERS[name]
    half = dtype in (torch.float16, torch.bfloat16)
    oracle_dtype = torch.float32 if half else dtype
    params, grads = _inputs(torch, dtype, device, steps)
    ours = [_leaf(torch, p, i == 3) for i, p in enumerate(params)]
    theirs = [_leaf(torch, p.to(oracle_dtype), i == 3) for i, p in enumerate(params)]
    t_opt = info.torch_cls(theirs, lr=LR, foreach=False, **info.torch_kwargs(config))
    scheduler = (torch_sched(t_opt) if torch_sched is not None else
                 torch.optim.lr_scheduler.LambdaLR(t_opt, lambda t: schedule(t)))
    o_opt = info.cls(ours, lr=LR, schedule=schedule, backend=backend, **config)
    for k in range(steps):
        for p, q, g in zip(theirs, ours, grads[k]):
            p.grad = g.to(oracle_dtype)
            q.grad = g.clone()
        t_opt.step()
        scheduler.step()
        o_opt.step()
    worst = 0.0
    for p, q in zip(theirs, ours):
        worst = max(worst, _error(torch, q, p))
        o_state = o_opt.state[q]
        for key, value in t_opt.state[p].items():
            if key not in o_state:
                return math.inf, f"state key {key!r} missing"
            if key == "step":
                if float(value) != float(o_state[key]):
                    return math.inf, f"step {float(o_state[key])} != torch's {float(value)}"
            elif isinstance(value, torch.Tensor):
                worst = max(worst, _error(torch, o_state[key], value))
    return worst, ""


# --------------------------------------------------------------------------------------------
# backends and devices


def _backends(device):
    """The backends that can serve tensors on ``device`` here."""
    out = ["reference"]
    if device == "cpu":
        try:
            importlib.import_module("numba")
            out.append("numba")
        except ImportError:
            pass
        if os.environ.get("TRITON_INTERPRET") == "1":
            try:
                importlib.import_module("triton")
                out.append("triton")
            except ImportError:
                pass
    else:
        try:
            importlib.import_module("triton")
            out.append("triton")
        except ImportError:
            pass
    return out


def _tolerance(torch, dtype_name, steps):
    if dtype_name in TOLERANCE:
        return TOLERANCE[dtype_name]
    return (HALF_TOLERANCE_ULPS + steps / 2) * torch.finfo(getattr(torch, dtype_name)).eps


def check(device="auto", quick=False, out=None, echo=print):
    """Run the matrix; return (exit status, rows). ``echo`` prints progress and the table."""
    import warnings

    import torch

    import fusedsched as fs

    if device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    elif device == "cuda" and not torch.cuda.is_available():
        echo("fusedsched check: --device cuda, but torch sees no CUDA device")
        return 2, []
    else:
        devices = [device]
    steps = QUICK_STEPS if quick else STEPS
    dtypes = QUICK_DTYPES if quick else DTYPE_NAMES
    cases = _cases(quick, steps)
    start = time.perf_counter()
    rows = []
    echo(f"fusedsched check: {len(cases)} optimizer/flag/schedule runs of {steps} updates "
         f"per backend and dtype, against torch {torch.__version__}"
         + (" (--quick)" if quick else ""))
    for dev in devices:
        for backend in _backends(dev):
            for dtype_name in dtypes:
                began = time.perf_counter()
                dtype = getattr(torch, dtype_name)
                tol = _tolerance(torch, dtype_name, steps)
                groups = {}
                for case in cases:
                    label = _label(case[0], case[1], case[2])
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            err, why = _run_one(torch, fs, case, backend, dtype, dev, steps)
                    except Exception as exc:  # a crash is a failure, reported by name
                        err, why = math.inf, f"{type(exc).__name__}: {exc}"
                    if math.isnan(err):
                        err, why = math.inf, "NaN"
                    row = groups.setdefault(case[0], {
                        "device": dev, "backend": backend, "dtype": dtype_name,
                        "optimizer": case[0], "runs": 0, "max_error": 0.0, "worst": "",
                        "tolerance": tol, "failures": []})
                    row["runs"] += 1
                    if err >= row["max_error"]:
                        row["max_error"], row["worst"] = err, label
                    if not err <= tol:
                        row["failures"].append(f"{label}: error {err:.3g}"
                                               + (f" ({why})" if why else ""))
                rows.extend(groups.values())
                echo(f"  {dev:<5} {backend:<10} {dtype_name:<9} "
                     f"{time.perf_counter() - began:6.1f} s", flush=True)
    failed = [r for r in rows if r["failures"]]
    echo("")
    echo(_table(rows))
    for row in failed:
        for line in row["failures"][:5]:
            echo(f"FAIL {row['device']} {row['backend']} {row['dtype']}: {line}")
        if len(row["failures"]) > 5:
            echo(f"     ... and {len(row['failures']) - 5} more")
    elapsed = time.perf_counter() - start
    runs = sum(r["runs"] for r in rows)
    echo(f"\n{runs} runs, {len(failed)} failing rows, {elapsed:.1f} s: "
         + ("FAIL" if failed else "all within tolerance"))
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        result = {"quick": quick, "steps": steps, "seconds": elapsed,
                  "torch": torch.__version__, "ok": not failed, "rows": rows}
        (folder / "check.json").write_text(json.dumps(result, indent=1, default=str))
    return (1 if failed else 0), rows


def _table(rows):
    header = ("device", "backend", "dtype", "optimizer", "runs", "max error", "tolerance",
              "ratio", "status", "worst case")
    lines = []
    for r in rows:
        ratio = r["max_error"] / r["tolerance"]
        lines.append((r["device"], r["backend"], r["dtype"], r["optimizer"], str(r["runs"]),
                      f"{r['max_error']:.2e}", f"{r['tolerance']:.1e}", f"{ratio:.3f}",
                      "FAIL" if r["failures"] else "ok", r["worst"]))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines])


def run(args: argparse.Namespace) -> int:
    status, _ = check(device=args.device, quick=args.quick, out=args.out,
                      echo=lambda *a, **k: print(*a, **k))
    return status
