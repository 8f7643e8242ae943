"""``fusedsched demo``: the same training run with fusedsched.AdamW and with torch.optim.AdamW.

A 64-128-10 MLP (GELU) is trained full-batch on scikit-learn's ``load_digits`` (real data shipped
with scikit-learn: no download), twice from the same initialisation:

(a) ``fusedsched.AdamW(..., schedule=S.warmup(S.cosine(total_steps=N - W), warmup_steps=W))``:
    the schedule is evaluated inside the optimizer kernel from the step counter;
(b) ``torch.optim.AdamW`` driven by torch's own schedulers, an exact equivalent of (a):
    ``SequentialLR([ConstantLR(factor=0, total_iters=1),
    LinearLR(start_factor=1/W, end_factor=1, total_iters=W-1), CosineAnnealingLR(T_max=N-W)],
    milestones=[1, W])``.

Why not simply ``LinearLR(start_factor=tiny)``: ``S.warmup`` ramps linearly from 0 at t=0 to
1 at t=W (as optax's join of a linear ramp and a schedule does), and torch's ``LinearLR``
refuses ``start_factor=0``; a tiny start factor is off by ``tiny * lr`` during the warmup,
far above the 1e-12 the lr curves are checked to. ``ConstantLR(factor=0)`` gives the exact 0
at t=0, and ``LinearLR`` from 1/W over the W-1 next steps gives exactly t/W.

It prints a table (final train loss, test accuracy, optimizer time per step), the largest
per-step lr difference and the largest parameter difference between the runs, writes
``OUT/demo.png`` (loss and lr curves of both runs) and ``OUT/demo.json`` (the numbers), and
exits with status 1 when the runs disagree beyond the tolerances below, 2 on a bad argument
or when scikit-learn, matplotlib or rich (the ``dev`` extra) is missing: checked before any
training, with a message saying so.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from pathlib import Path

# Tolerances of the agreement check (the exit status is 1 beyond them).
#
# LR_TOL: both lr sequences are float64 evaluations of the same closed forms (torch's
# chainable LinearLR/CosineAnnealingLR recursions drift by a few ulp of lr, ~1e-18 here), so
# anything above 1e-12 absolute is a schedule bug, not rounding.
LR_TOL = 1e-12
# PARAM_TOL: the parameters are float32 and both optimizers do the same fp32 operations, but
# not bit-identically (fusedsched computes the per-step scalars in fp64 inside the kernel and
# may order or contract the fused operations differently from torch's for-loop AdamW). Each
# step can differ by an ulp (~1e-9 on these weights); the smooth (GELU), full-batch training
# carries that to a few 1e-7 after 300 steps, which is also how far torch's own fused=True
# AdamW ends from its for-loop on the same run (the fp32 "yardstick", docs/design.md). 1e-5 is 25x
# that and far below any real bug (a wrong bias correction, eps or lr moves weights by
# >= 1e-3). The check allows max(PARAM_TOL, 10 x yardstick): when the run itself amplifies
# rounding more (other --seed/--steps), torch's two paths drift apart by as much.
# (With ReLU a sample's pre-activation can cross the kink in one run and not the other, a
# discrete jump in the gradient: both comparisons then drift to ~5e-5. Hence GELU.)
PARAM_TOL = 1e-5
YARDSTICK_FACTOR = 10.0
# LOSS_TOL: the train loss at every step (values 2.3 .. 1e-3, fp32 ulp <= 2.4e-7); same
# reasoning as PARAM_TOL.
LOSS_TOL = 1e-5

DEFAULT_OUT = "demo_out"
DEFAULT_STEPS = 300
LR = 1e-2
WEIGHT_DECAY = 1e-2
HIDDEN = 128
SPLIT_SEED = 0  # the train/test split is fixed; --seed only changes the initialisation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for demo.png and demo.json (default: {DEFAULT_OUT})")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, metavar="N",
                        help=f"optimizer steps per run, >= 2 (default: {DEFAULT_STEPS})")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the MLP initialisation (default: 0)")
    parser.add_argument("--warmup", type=int, default=None, metavar="W",
                        help="warmup steps, 0 <= W < N (default: N // 10)")


# --------------------------------------------------------------------------------------------
# data, model, schedules


def load_data():
    """Standardised digits as float32 tensors: (X_train, y_train, X_test, y_test)."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.25, random_state=SPLIT_SEED, stratify=y)
    scaler = StandardScaler().fit(X_tr)  # constant pixels get scale 1: they stay 0
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    i64 = lambda a: torch.tensor(a, dtype=torch.int64)  # noqa: E731
    return f32(scaler.transform(X_tr)), i64(y_tr), f32(scaler.transform(X_te)), i64(y_te)


def make_model(seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, 10))


def torch_warmup_cosine(opt, warmup: int, total: int):
    """torch schedulers equal to ``S.warmup(S.cosine(total - warmup), warmup)`` at every step.

    Factor at t: t/W for t < W (0 at t=0), then (1 + cos(pi (t-W)/(N-W))) / 2.
    """
    from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, SequentialLR

    cosine = CosineAnnealingLR(opt, T_max=total - warmup, eta_min=0.0)
    if warmup == 0:
        return cosine
    scheds = [ConstantLR(opt, factor=0.0, total_iters=1)]  # t = 0: factor 0 exactly
    milestones = [1]
    if warmup >= 2:  # t = 1 .. W-1: 1/W + (1 - 1/W) (t-1)/(W-1) = t/W
        scheds.append(LinearLR(opt, start_factor=1.0 / warmup, end_factor=1.0,
                               total_iters=warmup - 1))
        milestones.append(warmup)
    scheds.append(cosine)
    return SequentialLR(opt, scheds, milestones=milestones)


# --------------------------------------------------------------------------------------------
# training


def train(model, opt, sched, data, steps: int, lr_of) -> dict:
    """Full-batch training; returns curves, step times and final metrics.

    ``lr_of(opt)``, called before each ``opt.step()``, returns the lr of that update
    (``get_last_lr()`` is the next update's, as torch's). Timing: ``time.perf_counter``
    around each ``opt.step()`` (and, separately, around ``sched.step()``) of the real run,
    median over steps 2..N. Not ``torch.utils.benchmark.Timer``: it re-runs a statement on
    the same objects, but a step mutates the parameters, the optimizer state and the schedule
    position, so repeats would time a different run and advance the schedule; it also sets
    torch to 1 thread by default. Step 1 is left out of the median: it allocates the state
    and, for fusedsched, pays the Numba JIT compile (reported separately).
    """
    import torch
    import torch.nn.functional as F

    X_tr, y_tr, X_te, y_te = data
    losses, lrs, t_step, t_sched = [], [], [], []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(X_tr), y_tr)
        loss.backward()
        lrs.append(lr_of(opt))
        t0 = time.perf_counter()
        opt.step()
        t1 = time.perf_counter()
        if sched is not None:
            t2 = time.perf_counter()
            sched.step()
            t_sched.append(time.perf_counter() - t2)
        t_step.append(t1 - t0)
        losses.append(loss.item())
    with torch.no_grad():
        final_loss = F.cross_entropy(model(X_tr), y_tr).item()
        test_acc = (model(X_te).argmax(1) == y_te).float().mean().item()
    rest = slice(1, None) if steps > 1 else slice(None)
    step_med = statistics.median(t_step[rest])
    sched_med = statistics.median(t_sched[rest]) if t_sched else 0.0
    return dict(losses=losses, lrs=lrs, final_loss=final_loss, test_acc=test_acc,
                first_step_s=t_step[0], step_s=step_med, step_sched_s=step_med + sched_med)


def max_param_diff(a, b) -> float:
    import torch

    with torch.no_grad():
        return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


def run_fusedsched(init, data, steps, warmup):
    import fusedsched as fs
    from fusedsched import schedules as S

    model = init()
    schedule = S.warmup(S.cosine(total_steps=steps - warmup), warmup_steps=warmup)
    opt = fs.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, schedule=schedule)
    res = train(model, opt, None, data, steps, lambda o: o.get_last_lr()[0])
    res["backend"] = _backend_name(opt)
    return model, res, schedule


def _backend_name(opt) -> str:
    """'auto -> numba'-style description of the backend that served the CPU parameters."""
    import os

    import torch

    requested = os.environ.get("FUSEDSCHED_BACKEND") or opt.backend
    try:  # best effort: the resolver is internal
        from fusedsched.optim import _backend

        return f"{opt.backend} -> {_backend.resolve(opt.backend, torch.device('cpu'))}"
    except Exception:  # noqa: BLE001
        return requested


def run_torch(init, data, steps, warmup, fused=None):
    import torch

    model = init()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY,
                            foreach=False, fused=fused)
    sched = torch_warmup_cosine(opt, warmup, steps)
    # The lr of the coming update: torch's scheduler changes it only in sched.step().
    res = train(model, opt, sched, data, steps, lambda o: o.param_groups[0]["lr"])
    return model, res


# --------------------------------------------------------------------------------------------
# output


def plot(path: Path, a: dict, b: dict, steps: int, warmup: int) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas

    fig = Figure(figsize=(11, 4.2), dpi=120, layout="constrained")
    ax_loss, ax_lr = fig.subplots(1, 2)
    x = range(1, steps + 1)
    for ax, key, ylabel in ((ax_loss, "losses", "train loss (cross-entropy)"),
                            (ax_lr, "lrs", "learning rate")):
        ax.plot(x, a[key], color="tab:blue", lw=2.2, label="fusedsched.AdamW (schedule in kernel)")
        ax.plot(x, b[key], color="tab:orange", lw=1.2, ls="--",
                label="torch.optim.AdamW + SequentialLR")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    # one legend (both panels plot the same two runs): on the lr panel it covered the curve
    ax_loss.legend(loc="upper right")
    ax_loss.set_yscale("log")
    ax_loss.set_title("train loss")
    ax_lr.set_title(f"lr: linear warmup ({warmup} steps) then cosine")
    fig.suptitle(f"fusedsched demo: 64-{HIDDEN}-10 GELU MLP on sklearn digits, AdamW, "
                 f"{steps} full-batch steps")
    fig.savefig(path)


def report(console, a, b, yard, d_lr, d_param, param_tol, d_loss, steps, ok) -> None:
    from rich.table import Table

    us = lambda s: f"{s * 1e6:,.1f}"  # noqa: E731
    t = Table(title=f"AdamW + warmup/cosine, {steps} steps, digits 64-{HIDDEN}-10 GELU MLP, fp32",
              caption="train loss: after the last step; step: median over steps 2..N of "
                      "time.perf_counter around opt.step(); +sched: plus sched.step()")
    t.add_column("run")
    t.add_column("train loss", justify="right")
    t.add_column("test acc", justify="right")
    t.add_column("step µs", justify="right")
    t.add_column("+sched µs", justify="right")
    t.add_row("fusedsched.AdamW", f"{a['final_loss']:.6f}", f"{a['test_acc']:.2%}",
              us(a["step_s"]), "in kernel")
    t.add_row("torch.optim.AdamW", f"{b['final_loss']:.6f}", f"{b['test_acc']:.2%}",
              us(b["step_s"]), us(b["step_sched_s"]))
    console.print(t)
    console.print(f"fusedsched backend: {a['backend']}; step 1 (state allocation, and the "
                  f"kernel's JIT compile unless cached): fusedsched {a['first_step_s']:.3f} s, "
                  f"torch {b['first_step_s']:.3f} s")

    g = Table(title="agreement of the two runs")
    g.add_column("quantity")
    g.add_column("max |difference|", justify="right")
    g.add_column("tolerance", justify="right")
    g.add_column("ok")
    mark = lambda v, tol: "[green]yes[/]" if v <= tol else "[red]NO[/]"  # noqa: E731
    g.add_row("lr, every step", f"{d_lr:.3e}", f"{LR_TOL:.1e}", mark(d_lr, LR_TOL))
    g.add_row("parameters, final", f"{d_param:.3e}", f"{param_tol:.1e}", mark(d_param, param_tol))
    g.add_row("train loss, every step", f"{d_loss:.3e}", f"{LOSS_TOL:.1e}",
              mark(d_loss, LOSS_TOL))
    console.print(g)
    if yard is not None:
        console.print(f"yardstick: torch's own AdamW fused=True vs for-loop: "
                      f"max |Δparam| = {yard:.3e}")
    console.print(f"per-step lrs agree to {d_lr:.1e} (<= {LR_TOL:.0e}): "
                  f"{'yes' if d_lr <= LR_TOL else 'NO'}")
    console.print("[bold green]PASS[/]: the two runs agree" if ok else
                  "[bold red]FAIL[/]: the two runs disagree beyond tolerance")


# What the demo imports beyond fusedsched's own dependencies: (module, distribution). All of
# them come with the ``dev`` extra.
REQUIREMENTS = (("sklearn.datasets", "scikit-learn"), ("sklearn.model_selection", "scikit-learn"),
                ("sklearn.preprocessing", "scikit-learn"), ("matplotlib.figure", "matplotlib"),
                ("rich.console", "rich"), ("rich.table", "rich"))


def missing_requirements() -> list[str]:
    """The distributions of :data:`REQUIREMENTS` that cannot be imported (in order, once)."""
    missing = []
    for module, dist in REQUIREMENTS:
        try:
            __import__(module)
        except ImportError:
            if dist not in missing:
                missing.append(dist)
    return missing


def run(args: argparse.Namespace) -> int:
    import sys

    steps = args.steps
    warmup = steps // 10 if args.warmup is None else args.warmup
    if steps < 2:
        print(f"fusedsched demo: --steps must be >= 2, got {steps}", file=sys.stderr)
        return 2
    if not 0 <= warmup < steps:
        print(f"fusedsched demo: --warmup must be in [0, {steps}), got {warmup}",
              file=sys.stderr)
        return 2
    # Before any training: everything the demo needs must import.
    missing = missing_requirements()
    if missing:
        print(f"fusedsched demo needs {', '.join(missing)}, which cannot be imported here. "
              'Install the dev extra: pip install "fusedsched[dev]"', file=sys.stderr)
        return 2

    import torch
    from rich.console import Console

    console = Console()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    data = load_data()
    init_state = make_model(args.seed).state_dict()

    def init():
        m = make_model(args.seed)
        m.load_state_dict(init_state)
        return m

    model_a, a, schedule = run_fusedsched(init, data, steps, warmup)
    model_b, b = run_torch(init, data, steps, warmup)
    try:  # the fp32 yardstick: how far torch's own fused kernel is from its for-loop
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_c, _ = run_torch(init, data, steps, warmup, fused=True)
        yard = max_param_diff(model_b, model_c)
    except (RuntimeError, TypeError, ValueError):  # no fused AdamW for this device/build
        yard = None

    ref_lrs = [LR * schedule(t) for t in range(steps)]  # the schedule's own float64 f(t)
    d_lr = max(abs(x - y) for x, y in zip(a["lrs"], b["lrs"]))
    d_lr_ref = max(max(abs(x - r), abs(y - r)) for x, y, r in zip(a["lrs"], b["lrs"], ref_lrs))
    d_lr = max(d_lr, d_lr_ref)
    d_param = max_param_diff(model_a, model_b)
    d_loss = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
    param_tol = max(PARAM_TOL, YARDSTICK_FACTOR * (yard or 0.0))
    ok = (d_lr <= LR_TOL and d_param <= param_tol and d_loss <= LOSS_TOL
          and all(math.isfinite(v) for v in a["losses"]))

    plot(out / "demo.png", a, b, steps, warmup)
    report(console, a, b, yard, d_lr, d_param, param_tol, d_loss, steps, ok)
    summary = {
        "steps": steps, "warmup": warmup, "seed": args.seed, "lr": LR,
        "weight_decay": WEIGHT_DECAY, "torch": torch.__version__,
        "fusedsched_backend": a["backend"],
        "runs": {name: {k: r[k] for k in ("final_loss", "test_acc", "step_s", "step_sched_s",
                                           "first_step_s")}
                 for name, r in (("fusedsched", a), ("torch", b))},
        "max_abs_lr_diff": d_lr, "max_abs_param_diff": d_param, "max_abs_loss_diff": d_loss,
        "yardstick_torch_fused_vs_forloop_param_diff": yard,
        "tolerances": {"lr": LR_TOL, "param": param_tol, "loss": LOSS_TOL},
        "agree": ok,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"wrote {out / 'demo.png'} and {out / 'demo.json'} "
                  f"({time.perf_counter() - t_start:.1f} s)")
    return 0 if ok else 1
