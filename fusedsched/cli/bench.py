"""``fusedsched bench``: fusedsched against torch.optim, side by side, with the memory roof.

For each workload (an optimizer of ``optim_db.BENCH``, a dtype and a list of parameter
shapes) the providers

* ``roof``: a Numba kernel with the step's exact reads and writes and no math
  (:mod:`fusedsched.cli.roof`), same thread count as fusedsched;
* ``loop`` / ``foreach`` / ``fused``: ``torch.optim.<Name>(foreach=False)`` /
  ``(foreach=True)`` / ``(fused=True)`` (fused only where torch has a CPU kernel: Adam, AdamW,
  SGD), each timed as ``opt.step(); sched.step()`` with ``LambdaLR(opt, schedule)``;
* ``fusedsched``: ``fusedsched.<Name>(schedule=schedule, backend="numba")``, timed as
  ``opt.step()``; the schedule (warmup + cosine) is evaluated inside the kernel,
* ``flat``: the same with ``flat=True`` (one buffer per dtype), on the workloads marked
  ``flat`` (many tensors, the ResNet-50 list, host cost, a big single tensor),

are timed **interleaved** in one process: round-robin over the providers for several
rounds, each measurement a ``torch.utils.benchmark.Timer.blocked_autorange`` median, the
result the median over rounds. Ratios (to the roof, to each torch path) are of same-run
times only (these machines drift between runs; same-run ratios hold). Each provider steps its
own copy of the same parameters and gradients (same seed, so a provider's NaN is its own)
and keeps its own state; the roof has its own tensors. Workloads too big for all providers' state at once in the free
memory run one provider at a time, each interleaved with the roof.

Also measured, in fresh subprocesses: ``import torch`` and then ``import fusedsched`` times;
the first ``step()`` with a warm Numba cache (and, unless ``--quick``, a cold one:
``NUMBA_CACHE_DIR`` pointed at a fresh folder); peak RSS of a process stepping fusedsched
vs torch fused Adam on a big tensor.

Output: a rich progress bar and table, ``bench.json`` (machine, config, every
measurement, and the project's performance targets, met or not), ``bench.csv`` (one row per
workload and provider), ``bench.png`` (GB/s against size per provider with the roof
line) and ``bench_sweep.png`` (time per element against size, the fp32 size sweep) under
``--out``. The table shows times and same-run ratios: "vs roof" is fusedsched's time over
the roof's, "vs loop" / "vs foreach" / "vs torch fused" that torch path's time over
fusedsched's.

Validity: the roof is a lower bound on the time of any provider. When it measures slower
than a provider (by more than ``ROOF_TOLERANCE``), the machine was disturbed while
measuring; the workload is re-measured up to ``--remeasure`` times, and if the roof is
still slower the run is reported as not valid and the exit status is 1.

Exit status: 0; 1 when fusedsched's parameters went non-finite or the run is not valid;
2 on a bad argument (e.g. an ``--only`` that matches no workload).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .optim_db import BENCH

DEFAULT_OUT = "bench_out"

TORCH_PROVIDERS = ("loop", "foreach", "fused")
PROVIDERS = ("roof",) + TORCH_PROVIDERS + ("fusedsched", "flat")

# The schedule on both sides: warmup + cosine over a horizon no run reaches the end of.
WARMUP_STEPS = 100
TOTAL_STEPS = 10**7

# A provider measured faster than the no-math roof by more than this fraction makes the
# workload's measurement not valid. Why not 0: a provider that sits at the memory bound
# itself (torch fused Adam on the GPT-2 list) has measured up to 1% under the roof's median
# from noise alone; 5% is beyond that noise and far below what a disturbed run shows (a roof
# measured 2x or more slower than the optimizers).
ROOF_TOLERANCE = 0.05
REMEASURE = 2


# --------------------------------------------------------------------------------------------
# parameter shape lists


def resnet50_shapes() -> list[tuple[int, ...]]:
    """The parameter shapes of torchvision's ``resnet50()`` in ``parameters()`` order
    (161 tensors, 25,557,032 elements), from the architecture: a 7x7 stem, bottleneck
    stages of [3, 4, 6, 3] blocks of widths 64..512 (expansion 4, a 1x1 downsample in each
    stage's first block), batch norms (weight, bias), and a 1000-way fc."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for b in range(blocks):
            out = width * 4
            shapes += [(width, inplanes, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (out, width, 1, 1), (out,), (out,)]
            if b == 0:
                shapes += [(out, inplanes, 1, 1), (out,), (out,)]
            inplanes = out
    shapes += [(1000, 2048), (1000,)]
    return shapes


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """The parameter shapes of GPT-2 small (HF ``GPT2LMHeadModel``, lm_head tied to wte):
    148 tensors, 124,439,808 elements."""
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,),                 # ln_1
                   (d, 3 * d), (3 * d,),       # attn.c_attn
                   (d, d), (d,),               # attn.c_proj
                   (d,), (d,),                 # ln_2
                   (d, 4 * d), (4 * d,),       # mlp.c_fc
                   (4 * d, d), (d,)]           # mlp.c_proj
    shapes += [(d,), (d,)]                     # ln_f
    return shapes


def numel_of(shapes) -> int:
    return sum(math.prod(s) for s in shapes)


# --------------------------------------------------------------------------------------------
# workloads and targets


@dataclass
class Workload:
    name: str
    optimizer: str
    dtype: str                     # "float32", "bfloat16", "float16"
    shapes: list = field(repr=False)
    kind: str = "single"           # "single" (one tensor), "list", "host"
    flat: bool = False             # also measured with flat=True (provider "flat")

    @property
    def numel(self) -> int:
        return numel_of(self.shapes)

    @property
    def itemsize(self) -> int:
        return 4 if self.dtype == "float32" else 8 if self.dtype == "float64" else 2

    @property
    def columns(self) -> int:
        return BENCH[self.optimizer].columns

    @property
    def bytes_per_step(self) -> int:
        return self.numel * self.itemsize * (2 * self.columns - 1)


def _size_label(n: int) -> str:
    for div, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= div:
            v = n / div
            return f"{v:.3g}{suffix}"
    return str(n)


# One fp32 tensor of each of these sizes per optimizer (the full run): the size sweep, from
# cache-resident steps, where the per-call cost and the arithmetic decide, to memory-bound
# ones. ``--only sweep`` selects these rows (``selects``).
SWEEP_SIZES = (10**3, 10**4, 10**5, 10**6, 10**7, 32 * 10**6)
SWEEP = "sweep"


def selects(text: str, wl: Workload) -> bool:
    """Whether ``--only TEXT`` selects workload ``wl``: TEXT is part of its name, or TEXT is
    "sweep" and ``wl`` one fp32 tensor of a ``SWEEP_SIZES`` size."""
    if text == SWEEP:
        return wl.kind == "single" and wl.dtype == "float32" and wl.numel in SWEEP_SIZES
    return text in wl.name


def make_workloads(quick: bool) -> list[Workload]:
    w: list[Workload] = []

    def single(opt, n, dtype="float32", flat=False):
        w.append(Workload(f"{opt} {dtype} 1x{_size_label(n)}", opt, dtype, [(n,)],
                          flat=flat))

    if quick:
        for opt in ("adam", "sgd_momentum", "rmsprop", "rmsprop_centered"):
            for n in (10**5, 10**6):
                single(opt, n, flat=opt == "adam" and n == 10**6)
        single("adam", 10**6, "bfloat16")
    else:
        for opt in BENCH:
            for n in SWEEP_SIZES:
                single(opt, n, flat=opt == "adam" and n == 10**7)
        for opt in ("adam", "sgd_momentum"):
            for dtype in ("bfloat16", "float16"):
                single(opt, 10**7, dtype)
    if not quick:
        w.append(Workload("adam float32 resnet50", "adam", "float32", resnet50_shapes(),
                          "list", flat=True))
        w.append(Workload("adam float32 gpt2-small", "adam", "float32", gpt2_small_shapes(),
                          "list"))
    w.append(Workload("adam float32 1000x1k", "adam", "float32", [(1024,)] * 1000, "list",
                      flat=True))
    w.append(Workload("adam float32 host 1x1k", "adam", "float32", [(1024,)], "host"))
    # host cost of flat=True: 1000 tiny tensors against one tensor of the same total size
    w.append(Workload(HOST_MANY, "adam", "float32", [(16,)] * 1000, "host", flat=True))
    w.append(Workload(HOST_ONE, "adam", "float32", [(16000,)], "host", flat=True))
    return w


HOST_MANY, HOST_ONE = "adam float32 flat-cost 1000x16", "adam float32 flat-cost 1x16k"
# ``--only`` names of the sections that are no workload: the torch.compile rows
# (``bench_compile``) and the state format rows (``bench_state``)
SECTIONS = ("compile", "state_dtype")


def targets_for(wl: Workload) -> list[tuple[str, str, float, str]]:
    """(label, metric, threshold, op): the project's performance targets that apply to a
    workload (recorded in bench.json, not printed in the table). Metrics:
    ``ratio_roof`` (fusedsched time / roof time), ``vs_fused`` / ``vs_best_torch``
    (torch time / fusedsched time)."""
    g = []
    big = wl.kind == "single" and wl.dtype == "float32" and wl.numel in (10**7, 32 * 10**6)
    if big and wl.optimizer in ("adam", "adamw", "sgd_momentum"):
        g += [("<= 1.03x roof", "ratio_roof", 1.03, "<="),
              (">= 0.97x torch fused", "vs_fused", 0.97, ">=")]
    if (wl.kind == "single" and wl.dtype == "float32" and wl.numel == 10**7
            and wl.optimizer in ("rmsprop", "rmsprop_centered")):
        g += [("<= 1.1x roof", "ratio_roof", 1.1, "<="),
              (">= 3x torch best", "vs_best_torch", 3.0, ">=")]
    if wl.kind == "single" and wl.dtype == "float32" and wl.numel in (10**4, 10**5, 10**6):
        # the cache-resident and mid-size targets; DeepSpeed's CPUAdam, the other half of
        # them, is measured by the outside yardstick (bench/results/cpu_sweep/README.md)
        if BENCH[wl.optimizer].info.torch_fused_cpu:
            g.append((">= 2x torch fused", "vs_fused", 2.0, ">="))
        else:
            g.append((">= 2x torch best", "vs_best_torch", 2.0, ">="))
    if wl.name.endswith("resnet50"):
        g.append((">= 1.25x torch fused", "vs_fused", 1.25, ">="))
    if wl.name.endswith("gpt2-small"):
        g.append((">= 0.97x torch fused", "vs_fused", 0.97, ">="))
    if wl.name.endswith("1000x1k"):
        g.append((">= 20x torch fused", "vs_fused", 20.0, ">="))
    if wl.flat:     # flat=True: the speed targets of flat storage
        if wl.name.endswith("1000x1k"):
            g.append(("flat >= 20x torch fused", "flat_vs_fused", 20.0, ">="))
        if wl.name.endswith("resnet50"):
            g += [("flat >= 1.15x torch fused", "flat_vs_fused", 1.15, ">="),
                  ("flat <= 1.05x roof", "flat_ratio_roof", 1.05, "<=")]
        if wl.kind == "single":
            g.append(("flat no slower than flat=False", "flat_vs_fusedsched", 0.97, ">="))
    if wl.kind == "host":
        g.append(("<= 0.5x torch fused time", "vs_fused", 2.0, ">="))
    return g


# --------------------------------------------------------------------------------------------
# providers


def _torch_dtype(name):
    import torch
    return getattr(torch, name)


def make_schedule():
    from fusedsched import schedules as S
    return S.warmup(S.cosine(total_steps=TOTAL_STEPS), warmup_steps=WARMUP_STEPS)


class _Provider:
    """A zero-argument ``step`` and what it holds (dropped by ``close``)."""

    def __init__(self, step, holder=None):
        self.step = step
        self.holder = holder

    def close(self):
        self.step = None
        self.holder = None


def make_provider(name: str, wl: Workload, params):
    """A provider's ``_Provider`` over ``params`` (its own, grads set), or None when
    torch has no such path (fused RMSprop) or it fails on this dtype."""
    import torch

    row = BENCH[wl.optimizer]
    schedule = make_schedule()
    if name in ("fusedsched", "flat"):
        opt = row.make(params, schedule=schedule, backend="numba", flat=name == "flat")
        return _Provider(opt.step, opt)
    if name == "fused" and not row.info.torch_fused_cpu:
        return None
    flags = {"loop": dict(foreach=False), "foreach": dict(foreach=True),
             "fused": dict(fused=True)}[name]
    opt = row.make_torch(params, **flags)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    def step():
        opt.step()
        sched.step()

    return _Provider(step, (opt, sched))


def make_params(wl: Workload, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    dtype = _torch_dtype(wl.dtype)
    params = []
    for shape in wl.shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).to(dtype))
        p.grad = torch.randn(shape, generator=gen).to(dtype)
        params.append(p)
    return params


def _state_bytes_per_provider(wl: Workload) -> int:
    return wl.numel * wl.itemsize * (wl.columns - 2)


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


# --------------------------------------------------------------------------------------------
# timing


def _time_once(step, min_run_time: float, timer: str = "timeit", blocks: int = 5) -> float:
    """Median seconds per call of ``step`` over blocks of calls filling ``min_run_time``.

    ``timer="timeit"`` (default): the standard library's ``timeit.Timer`` (garbage collector
    off while timing), ``blocks`` blocks of a calibrated number of calls each.
    ``timer="torch"``: ``torch.utils.benchmark.Timer.blocked_autorange``. Not the default:
    it calls ``torch.set_num_threads`` around every measurement, and on a loaded 2-core
    machine that call alone (even to the current value) made torch's own per-op latency
    10-100x worse for the rest of the process (torch for-loop Adam on 1000 x 1k tensors:
    80 ms/step before, 1.3-12 s after), which would flatter fusedsched.
    """
    if timer == "torch":
        import torch
        from torch.utils.benchmark import Timer

        t = Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
        return t.blocked_autorange(min_run_time=min_run_time).median
    import timeit

    t = timeit.Timer(step)
    once = t.timeit(1)                                   # also a warm-up call
    number = max(1, int(min_run_time / blocks / max(once, 1e-7)))
    return statistics.median(t.repeat(repeat=blocks, number=number)) / number


def interleaved(steps: dict, rounds: int, time_one) -> dict:
    """{name: [``time_one(step)`` of each round]} for ``steps`` ({name: callable}): every
    step timed once per round, round after round, the order rotated by one each round (no
    step always first, as the machine drifts)."""
    times = {name: [] for name in steps}
    order = list(steps)
    for r in range(rounds):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            times[name].append(time_one(steps[name]))
    return times


def measure_workload(wl: Workload, rounds: int, min_run_time: float, warmup_steps: int,
                     providers=PROVIDERS, timer: str = "timeit", blocks: int = 5) -> dict:
    """Time every provider of ``wl`` interleaved; returns the workload's record."""
    import gc

    import torch

    from .roof import Roof

    dtype = _torch_dtype(wl.dtype)
    roof = Roof(wl.shapes, dtype, wl.columns)
    names = [p for p in providers if p != "roof" and (p != "flat" or wl.flat)]
    # Each provider steps its own copy of the same parameters and grads (same seed), so
    # that a provider's NaN (torch's centered RMSprop, FastNN#12; its fp16 for-loop, optax#1754)
    # is its own. One group if every provider's tensors fit in half the free memory, else
    # one by one.
    need = ((_state_bytes_per_provider(wl) + 2 * wl.numel * wl.itemsize) * len(names)
            + roof.bytes_per_step)
    groups = [names] if need < _mem_available() // 2 else [[n] for n in names]
    times: dict[str, list[float]] = {"roof": []} if "roof" in providers else {}
    errors: dict[str, str] = {}
    finite: dict[str, bool] = {}
    for group in groups:
        live = {}
        owned = {}
        for name in group:
            try:
                params = owned[name] = make_params(wl)
                prov = make_provider(name, wl, params)
                if prov is None:
                    errors[name] = "no such torch path"
                    continue
                for _ in range(warmup_steps):
                    prov.step()
                live[name] = prov
                times[name] = []
            except Exception as exc:  # e.g. a torch path without this dtype
                errors[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        if "roof" in times:
            for _ in range(warmup_steps):
                roof.step()
        steps = ({"roof": roof.step} if "roof" in times else {}) | {
            name: prov.step for name, prov in live.items()}
        for name, measured in interleaved(steps, rounds, lambda step: _time_once(
                step, min_run_time, timer, blocks)).items():
            times[name] += measured     # (the roof: over every group)
        for name, prov in live.items():
            finite[name] = all(bool(torch.isfinite(p).all()) for p in owned[name])
            prov.close()
        live.clear()
        owned.clear()
        gc.collect()
    del roof
    gc.collect()
    return summarize(wl, times, errors, finite, len(groups) > 1)


def summarize(wl: Workload, times: dict, errors: dict, finite: dict, split: bool) -> dict:
    """The workload's record. ``finite``: per provider, whether its parameters stayed
    finite; ``params_finite`` is fusedsched's (what the exit status reports)."""
    rec = {
        "workload": wl.name, "optimizer": wl.optimizer, "dtype": wl.dtype, "kind": wl.kind,
        "n_tensors": len(wl.shapes), "numel": wl.numel, "bytes_per_step": wl.bytes_per_step,
        "interleaving": "one provider at a time, each with the roof" if split else "all",
        "params_finite": finite.get("fusedsched", True), "finite": finite, "providers": {},
        "errors": errors,
    }
    med = {name: statistics.median(ts) for name, ts in times.items() if ts}
    for name, t in med.items():
        rec["providers"][name] = {
            "ms": t * 1e3,
            "gbps": wl.bytes_per_step / t / 1e9,
            "ratio_roof": t / med["roof"] if "roof" in med else None,
            "rounds_ms": [x * 1e3 for x in times[name]],
            "spread": max(times[name]) / min(times[name]),   # > ~1.1: a noisy machine
        }
    fs_t = med.get("fusedsched")
    speed = {}
    if fs_t:
        for name in TORCH_PROVIDERS:
            if name in med:
                speed[f"vs_{name}"] = med[name] / fs_t
        torch_ts = [med[n] for n in TORCH_PROVIDERS if n in med]
        if torch_ts:
            speed["vs_best_torch"] = min(torch_ts) / fs_t
        if "roof" in med:
            speed["ratio_roof"] = fs_t / med["roof"]
    flat_t = med.get("flat")
    if flat_t:
        for name in TORCH_PROVIDERS + ("fusedsched",):
            if name in med:
                speed[f"flat_vs_{name}"] = med[name] / flat_t
        if "roof" in med:
            speed["flat_ratio_roof"] = flat_t / med["roof"]
    rec["fusedsched"] = speed
    targets = []
    for label, metric, threshold, op in targets_for(wl):
        value = speed.get(metric)
        ok = None if value is None else (value <= threshold if op == "<=" else value >= threshold)
        targets.append({"target": label, "metric": metric, "threshold": threshold, "op": op,
                        "value": value, "met": ok})
    rec["targets"] = targets
    return rec


def roof_violations(rec: dict, tolerance: float = ROOF_TOLERANCE) -> list[str]:
    """The providers of a workload's record that measured faster than the no-math roof by
    more than ``tolerance`` (a fraction): the roof is a lower bound, so a non-empty list means
    the measurement is not valid."""
    providers = rec.get("providers", {})
    if "roof" not in providers:
        return []
    roof_ms = providers["roof"]["ms"]
    return [name for name, p in providers.items()
            if name != "roof" and p["ms"] * (1.0 + tolerance) < roof_ms]


def describe_invalid(rec: dict) -> str:
    """One plain sentence on why a workload's measurement is not valid."""
    p = rec["providers"]
    faster = ", ".join(f"{n} ({p[n]['ms']:.3g} ms)" for n in rec["roof_slower_than"])
    return (f"{rec['workload']}: the no-math roof measured {p['roof']['ms']:.3g} ms per step, "
            f"slower than {faster}, after {rec['measurements']} measurement(s)")


# --------------------------------------------------------------------------------------------
# subprocess measurements: import time, first step, peak RSS

_CHILD = r"""
import json, sys, time
mode, big = sys.argv[1], int(sys.argv[2])
def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
def rss_now():
    return _status("VmRSS")
def peak():   # VmHWM: this process image's peak (ru_maxrss would keep the forking parent's)
    return _status("VmHWM")
out = {}
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
out["import_torch_s"] = t1 - t0
if mode == "fusedsched":
    import fusedsched as fs
    from fusedsched import schedules as S
    fs.Adam  # the package is lazy: the optimizers load on first access
    out["import_fusedsched_s"] = time.perf_counter() - t1
    def make(ps):
        sched = S.warmup(S.cosine(total_steps=10**7), warmup_steps=100)
        opt = fs.Adam(ps, lr=1e-3, schedule=sched, backend="numba")
        return opt.step
else:
    def make(ps):
        opt = torch.optim.Adam(ps, lr=1e-3, fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
        def step():
            opt.step(); sched.step()
        return step
p = torch.nn.Parameter(torch.randn(1024)); p.grad = torch.randn(1024)
step = make([p])
t = time.perf_counter(); step(); out["first_step_s"] = time.perf_counter() - t
t = time.perf_counter(); step(); out["second_step_s"] = time.perf_counter() - t
if big:
    p = torch.nn.Parameter(torch.randn(big)); p.grad = torch.randn(big)
    step = make([p])
    out["rss_before_bytes"] = rss_now()
    for _ in range(3):
        step()
    out["rss_peak_bytes"] = peak()
    out["rss_after_bytes"] = rss_now()
    out["state_bytes"] = 2 * 4 * big
    out["extra_bytes"] = out["rss_peak_bytes"] - out["rss_before_bytes"] - out["state_bytes"]
print("RESULT " + json.dumps(out))
"""


def _run_child(mode: str, big: int, env_extra: dict | None = None, timeout=600) -> dict:
    env = dict(os.environ)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode, str(big)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child {mode} failed (rc {proc.returncode}): {proc.stderr[-2000:]}")


def measure_startup(quick: bool, advance=lambda: None) -> dict:
    """Import and first-step times (warm cache: the in-process run has filled the default
    Numba cache; cold: a fresh ``NUMBA_CACHE_DIR``) and peak RSS, fusedsched vs torch fused."""
    big = 10**7 if quick else 32 * 10**6
    res: dict = {"rss_tensor_numel": big}
    try:
        warm = [_run_child("fusedsched", big if i == 0 else 0) for i in range(1 if quick else 3)]
        res["fusedsched_warm"] = warm[0]
        res["import_torch_s"] = statistics.median(r["import_torch_s"] for r in warm)
        res["import_fusedsched_s"] = statistics.median(r["import_fusedsched_s"] for r in warm)
        res["first_step_warm_s"] = statistics.median(r["first_step_s"] for r in warm)
        advance()
        tf = _run_child("torch_fused", big)
        res["torch_fused"] = tf
        advance()
        if not quick:
            with tempfile.TemporaryDirectory(prefix="fusedsched-cold-") as d:
                cold = _run_child("fusedsched", 0, {"NUMBA_CACHE_DIR": d})
            res["first_step_cold_s"] = cold["first_step_s"]
        advance()
        fs_mem, tf_mem = res["fusedsched_warm"], tf
        res["memory"] = {
            "fusedsched_peak_rss_mb": fs_mem["rss_peak_bytes"] / 2**20,
            "torch_fused_peak_rss_mb": tf_mem["rss_peak_bytes"] / 2**20,
            "fusedsched_step_extra_mb": fs_mem["extra_bytes"] / 2**20,
            "torch_fused_step_extra_mb": tf_mem["extra_bytes"] / 2**20,
            "state_mb": fs_mem["state_bytes"] / 2**20,
        }
        res["targets"] = [
            {"target": "import fusedsched (after torch) <= 0.5 s", "value":
             res["import_fusedsched_s"], "met": res["import_fusedsched_s"] <= 0.5},
            {"target": "first step, warm cache <= 1 s", "value": res["first_step_warm_s"],
             "met": res["first_step_warm_s"] <= 1.0},
            {"target": "no second copy of params/state (step extra < 5% of state)",
             "value": res["memory"]["fusedsched_step_extra_mb"],
             "met": res["memory"]["fusedsched_step_extra_mb"]
             < 0.05 * res["memory"]["state_mb"]},
        ]
    except Exception as exc:  # reported, not fatal: the timing table still stands
        res["error"] = f"{type(exc).__name__}: {exc}"
    return res


# --------------------------------------------------------------------------------------------
# machine info and output


def _openmp_runtimes() -> list[str]:
    """OpenMP runtimes mapped into this process (two of them = two spinning thread pools)."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "/lib" in line}
    except OSError:
        return []
    return sorted(x for x in libs if any(k in os.path.basename(x)
                                         for k in ("libgomp", "libiomp", "libomp")))


def machine_info() -> dict:
    """CPU, threads, versions and the load average (other work skews every timing)."""
    import numba
    import numpy
    import torch

    import fusedsched

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": layer,
        "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "numba": numba.__version__, "numpy": numpy.__version__,
        "fusedsched": fusedsched.__version__,
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def write_csv(path: Path, records: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["workload", "optimizer", "dtype", "kind", "n_tensors", "numel",
                    "bytes_per_step", "provider", "ms_per_step", "gb_per_s", "ratio_roof",
                    "fusedsched_speedup_vs_this"])
        for rec in records:
            fs_ms = rec["providers"].get("fusedsched", {}).get("ms")
            for name, p in rec["providers"].items():
                speed = p["ms"] / fs_ms if fs_ms and name in TORCH_PROVIDERS else None
                w.writerow([rec["workload"], rec["optimizer"], rec["dtype"], rec["kind"],
                            rec["n_tensors"], rec["numel"], rec["bytes_per_step"], name,
                            f"{p['ms']:.6g}", f"{p['gbps']:.4g}",
                            "" if p["ratio_roof"] is None else f"{p['ratio_roof']:.4g}",
                            "" if speed is None else f"{speed:.4g}"])


# How each provider is drawn in the plots.
_STYLE = {"roof": dict(color="black", ls="--", lw=2, label="roof (no-math kernel)"),
          "loop": dict(color="tab:gray", marker="o", label="torch for-loop"),
          "foreach": dict(color="tab:blue", marker="s", label="torch foreach"),
          "fused": dict(color="tab:orange", marker="^", label="torch fused"),
          "fusedsched": dict(color="tab:green", marker="D", lw=2, label="fusedsched"),
          "flat": dict(color="tab:red", marker="x", label="fusedsched flat=True")}


def _plot_single_tensor_rows(path, records, machine, *, min_sizes, value, ylabel, log_y,
                             title, legend, what):
    """One panel per optimizer over its fp32 single-tensor rows (x: elements, log), one line
    per provider (``value(record, provider)``); False when matplotlib is missing or no
    optimizer has ``min_sizes`` sizes."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    singles = [r for r in records if r["kind"] == "single" and r["dtype"] == "float32"]
    opts = [o for o in BENCH
            if len({r["numel"] for r in singles if r["optimizer"] == o}) >= min_sizes]
    if not opts:
        return False
    cols = min(3, len(opts))
    rows = math.ceil(len(opts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax, opt in zip(axes.flat, opts):
        rs = sorted((r for r in singles if r["optimizer"] == opt), key=lambda r: r["numel"])
        for name in PROVIDERS:
            pts = [(r["numel"], value(r, name)) for r in rs if name in r["providers"]]
            if pts:
                ax.plot(*zip(*pts), **_STYLE[name])
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("elements (one fp32 tensor)")
        ax.set_ylabel(ylabel)
        ax.set_title(title(opt, rs))
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(opts):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, loc=legend)
    fig.suptitle(f"{what}, {machine['cpu']}, {machine['torch_threads']} threads, "
                 f"torch {machine['torch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_png(path: Path, records: list[dict], machine: dict) -> bool:
    """GB/s (bytes moved per step / time) against size, per optimizer and provider."""
    return _plot_single_tensor_rows(
        path, records, machine, min_sizes=1, value=lambda r, name: r["providers"][name]["gbps"],
        ylabel="GB/s (bytes moved per step / time)", log_y=False,
        title=lambda opt, rs: f"{opt} fp32 ({rs[0]['bytes_per_step'] // rs[0]['numel']} B/elem)",
        legend="upper left", what="optimizer step bandwidth")


def write_sweep_png(path: Path, records: list[dict], machine: dict) -> bool:
    """Time per element against size (one fp32 tensor), per optimizer and provider, log-log:
    where the per-call cost (small sizes) gives way to the arithmetic and then to memory
    (the roof), and where the providers cross. False when matplotlib is missing or no
    optimizer has two sizes."""
    return _plot_single_tensor_rows(
        path, records, machine, min_sizes=2,
        value=lambda r, name: r["providers"][name]["ms"] * 1e6 / r["numel"],
        ylabel="ns per element per step", log_y=True, title=lambda opt, rs: f"{opt} fp32",
        legend="upper right", what="time per element vs size")


def print_table(console, records: list[dict], startup: dict) -> None:
    from rich.table import Table

    t = Table(title="ms per step (median over interleaved rounds); every ratio is same-run",
              caption='vs roof: fusedsched\'s time / the no-math roof\'s (1.00x = the memory '
                      'bound); vs loop, foreach, torch fused: that torch path\'s time / '
                      'fusedsched\'s (above 1x: fusedsched is faster)',
              show_lines=False)
    for col, just in (("workload", "left"), ("elems", "right"), ("roof", "right"),
                      ("loop", "right"), ("foreach", "right"), ("fused", "right"),
                      ("fusedsched", "right"), ("fs GB/s", "right"), ("vs roof", "right"),
                      ("vs loop", "right"), ("vs foreach", "right"),
                      ("vs torch fused", "right"), ("flat", "right"),
                      ("flat vs roof", "right"), ("flat vs fused", "right")):
        t.add_column(col, justify=just)
    x = lambda v: (_fmt(v, ".2f") + "x") if v is not None else "-"  # noqa: E731
    for rec in records:
        p = rec["providers"]
        ms = lambda n: _fmt(p[n]["ms"], ".3g") if n in p else "-"  # noqa: E731
        s = rec["fusedsched"]
        name = rec["workload"] + ("" if rec.get("valid", True) else " [red](not valid)[/]")
        t.add_row(name, _size_label(rec["numel"]), ms("roof"), ms("loop"),
                  ms("foreach"), ms("fused"), ms("fusedsched"),
                  _fmt(p.get("fusedsched", {}).get("gbps"), ".1f"),
                  x(s.get("ratio_roof")), x(s.get("vs_loop")), x(s.get("vs_foreach")),
                  x(s.get("vs_fused")), ms("flat"), x(s.get("flat_ratio_roof")),
                  x(s.get("flat_vs_fused")))
    console.print(t)
    if startup:
        if "error" in startup:
            console.print(f"[red]startup/memory measurement failed:[/] {startup['error']}")
            return
        mem = startup["memory"]
        lines = [
            f"import torch {startup['import_torch_s']:.2f} s, then import fusedsched "
            f"{startup['import_fusedsched_s']:.3f} s",
            f"first step() (Adam, 1k fp32): warm cache {startup['first_step_warm_s']:.3f} s"
            + (f", cold cache {startup['first_step_cold_s']:.1f} s"
               if "first_step_cold_s" in startup else ", cold cache not measured (--quick)")
            + f"; torch fused first step {startup['torch_fused']['first_step_s']:.3f} s",
            f"peak RSS, Adam on {_size_label(startup['rss_tensor_numel'])} fp32: fusedsched "
            f"{mem['fusedsched_peak_rss_mb']:.0f} MB, torch fused "
            f"{mem['torch_fused_peak_rss_mb']:.0f} MB; beyond params+grads+state during steps: "
            f"fusedsched {mem['fusedsched_step_extra_mb']:.1f} MB, torch fused "
            f"{mem['torch_fused_step_extra_mb']:.1f} MB (state {mem['state_mb']:.0f} MB)",
        ]
        for line in lines:
            console.print(line)


# --------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small workloads, 2 rounds, short timings (under a minute)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for bench.json, bench.csv, bench.png (default: {DEFAULT_OUT})")
    parser.add_argument("--json", metavar="FILE", help="JSON results (default: OUT/bench.json)")
    parser.add_argument("--csv", metavar="FILE", help="CSV results (default: OUT/bench.csv)")
    parser.add_argument("--png", metavar="FILE", help="GB/s plot (default: OUT/bench.png)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="device to benchmark (cuda: Triton kernels vs torch "
                        "for-loop/foreach/fused, roof = device copy bandwidth)")
    parser.add_argument("--rounds", type=int, default=None, metavar="R",
                        help="interleaved rounds per workload (default: 5; --quick 2)")
    parser.add_argument("--min-run-time", type=float, default=None, metavar="S",
                        help="seconds per blocked_autorange measurement (default 0.2; --quick 0.05)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch.set_num_threads(N) first (numba follows torch); default: "
                        "leave torch's threads alone (see --timer)")
    parser.add_argument("--timer", default="timeit", choices=["timeit", "torch"],
                        help="timeit: stdlib timeit.Timer blocks (default); torch: "
                        "torch.utils.benchmark.Timer.blocked_autorange, which calls "
                        "torch.set_num_threads around each measurement")
    parser.add_argument("--only", action="append", default=None, metavar="TEXT",
                        help="run only workloads whose name contains TEXT (repeatable); "
                        "'compile': the torch.compile rows; 'state_dtype': the Adam state "
                        "format rows (native, bfloat16, 8bit against torch fused)")
    parser.add_argument("--no-startup", action="store_true",
                        help="skip the subprocess measurements (import, first step, RSS)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile rows (compiled vs eager step(), compiled "
                        "train step vs torch fused + LambdaLR)")
    parser.add_argument("--remeasure", type=int, default=REMEASURE, metavar="N",
                        help="when the no-math roof measures slower than a provider, measure "
                        f"the workload again up to N times before the run fails as not valid "
                        f"(default: {REMEASURE})")


def check_only(only: list[str] | None, workloads: list[Workload], quick: bool) -> str | None:
    """None when every ``--only`` TEXT matches a workload's name, else the error message
    (it lists the valid names)."""
    unknown = [text for text in only or [] if text not in SECTIONS
               and not any(selects(text, w) for w in workloads)]
    if not unknown:
        return None
    mode = " (with --quick)" if quick else ""
    return (f"fusedsched bench: --only {', '.join(map(repr, unknown))} matches no "
            f"workload{mode}; --only TEXT selects the workloads whose name contains TEXT. "
            f"Valid names ('{SWEEP}': the fp32 size sweep):\n  "
            + "\n  ".join(w.name for w in workloads))


def run(args: argparse.Namespace) -> int:
    # argument errors first, before torch is imported
    workloads = (cuda_workloads if args.device == "cuda" else make_workloads)(args.quick)
    error = check_only(args.only, workloads, args.quick)
    if error is None and args.remeasure < 0:
        error = f"fusedsched bench: --remeasure must be >= 0, got {args.remeasure}"
    if error:
        print(error, file=sys.stderr)
        return 2
    if args.device == "cuda":
        return run_cuda(args)
    import torch

    try:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn)
    except ImportError:  # rich is a dev extra: degrade to plain prints
        Console = Progress = None

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from fusedsched.kernels.numba._common import setup_threads
        setup_threads()      # numba threads = torch threads, fusedsched's threading layer
    except ImportError:
        import numba
        numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))

    quick = args.quick
    rounds = args.rounds or (2 if quick else 5)
    min_run_time = args.min_run_time or (0.05 if quick else 0.2)
    warmup_steps = 2 if quick else 3
    blocks = 3 if quick else 5
    if args.only:
        workloads = [w for w in workloads
                     if any(selects(s, w) for s in args.only if s not in SECTIONS)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else out / "bench.json"
    csv_path = Path(args.csv) if args.csv else out / "bench.csv"
    png_path = Path(args.png) if args.png else out / "bench.png"

    console = (Console(width=None if sys.stdout.isatty() else 220) if Console else None)
    n_startup = 0 if args.no_startup else 3
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    if console and load_start > 0.5 * (os.cpu_count() or 1):
        console.print(f"[yellow]warning:[/] load average {load_start:.1f} on {os.cpu_count()} "
                      "CPUs: other work is running, timings will be noisy and slow")
    records = []
    startup = {}
    if Progress:
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                            transient=False)
    else:
        progress = None

    def say(msg):                    # a log line where no live progress bar shows
        if progress is None or not console.is_terminal:
            print(msg, file=sys.stderr, flush=True)

    ctx = progress if progress is not None else _Null()
    with ctx:
        task = progress.add_task("bench", total=len(workloads) + n_startup) if progress else None
        for wl in workloads:
            if progress:
                progress.update(task, description=f"{wl.name:<34}")
            say(f"[bench] {wl.name}")
            for attempt in range(1 + args.remeasure):
                rec = measure_workload(wl, rounds, min_run_time, warmup_steps,
                                       timer=args.timer, blocks=blocks)
                slower = roof_violations(rec)
                if not slower or attempt == args.remeasure:
                    break
                note = (f"{wl.name}: the no-math roof measured slower than "
                        f"{', '.join(slower)}: measuring again ({attempt + 1}/{args.remeasure})")
                if console:
                    console.print(f"[yellow]{note}[/]")
                else:
                    print(note, file=sys.stderr, flush=True)
            rec["measurements"] = attempt + 1
            rec["roof_slower_than"] = slower
            rec["valid"] = not slower
            records.append(rec)
            if progress:
                progress.advance(task)
        compiled = {}
        if not args.no_compile and (not args.only or "compile" in args.only):
            if progress:
                progress.update(task, description=f"{'torch.compile rows':<34}")
            say("[bench] torch.compile rows")
            from . import bench_compile
            compiled = bench_compile.measure(quick, rounds, min_run_time)
        state_rows = []
        if not args.only or "state_dtype" in args.only:
            if progress:
                progress.update(task, description=f"{'state format rows':<34}")
            say("[bench] state format rows")
            from . import bench_state
            state_rows = bench_state.measure(quick, rounds, min_run_time)
        if not args.no_startup:
            if progress:
                progress.update(task, description=f"{'startup and memory (subprocesses)':<34}")
            say("[bench] startup and memory (subprocesses)")
            startup = measure_startup(quick, advance=(lambda: progress.advance(task))
                                      if progress else (lambda: None))
    machine = machine_info()
    machine["loadavg_1_at_start"] = round(load_start, 2)
    flat_host = flat_host_cost(records)
    result = {
        "machine": machine,
        "config": {"quick": quick, "rounds": rounds, "min_run_time_s": min_run_time,
                   "warmup_steps": warmup_steps, "timeit_blocks": blocks,
                   "device": args.device,
                   "timer": (f"stdlib timeit.Timer, median of {blocks} blocks"
                             if args.timer == "timeit" else
                             "torch.utils.benchmark.Timer.blocked_autorange (median)")
                            + ", median over interleaved rounds",
                   "env": {k: os.environ.get(k) for k in (
                       "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                       "NUMBA_THREADING_LAYER", "NUMBA_NUM_THREADS", "NUMBA_CACHE_DIR")},
                   "openmp_runtimes": _openmp_runtimes(),
                   "schedule": f"warmup({WARMUP_STEPS}) + cosine({TOTAL_STEPS}); torch: "
                               "LambdaLR of the same schedule, stepped after opt.step()",
                   "wall_s": None},
        "results": records,
        "valid": all(r["valid"] for r in records),
        "startup": startup,
        "compile": compiled,
        "state_dtype": state_rows,
        "flat_host": flat_host,
    }
    result["config"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    write_csv(csv_path, records)
    sweep_path = png_path.with_name(png_path.stem + "_sweep.png")
    pngs = [str(path) for path, ok in ((png_path, write_png(png_path, records, machine)),
                                       (sweep_path, write_sweep_png(sweep_path, records,
                                                                    machine))) if ok]
    if console:
        if records or startup:
            print_table(console, records, startup)
        if compiled:
            from . import bench_compile
            bench_compile.print_rows(console, compiled)
        if state_rows:
            from . import bench_state
            bench_state.print_rows(console, state_rows)
        if flat_host:
            console.print(f"flat=True host cost: step() on 1000 x 16 "
                          f"{flat_host['many_ms']:.3g} ms, on 1 x 16k "
                          f"{flat_host['one_ms']:.3g} ms: "
                          f"{flat_host['ratio']:.2f}x (target <= 4x; same run)")
        console.print(f"{machine['cpu']}, {machine['torch_threads']} torch / "
                      f"{machine['numba_threads']} numba threads "
                      f"({machine['numba_threading_layer']}), torch {machine['torch']}, "
                      f"numba {machine['numba']}; {result['config']['wall_s']} s")
        console.print(f"wrote {json_path}, {csv_path}" + "".join(f", {p}" for p in pngs))
    else:
        print(json.dumps(records, indent=1))
    torch_nan = [f"{r['workload']} ({name})" for r in records
                 for name, ok in r.get("finite", {}).items() if not ok and name != "fusedsched"]
    if torch_nan and console:
        console.print(f"torch providers whose parameters went non-finite (their own, not "
                      f"fusedsched's; see bench/results/README.md): {', '.join(torch_nan)}")
    status = 0
    invalid = [r for r in records if not r["valid"]]
    if invalid:
        for r in invalid:
            print(f"NOT VALID: {describe_invalid(r)}", file=sys.stderr)
        print("fusedsched bench: these timings are not valid. The roof does the step's reads "
              "and writes with no math, so nothing can be faster than it: the machine was "
              "busy or throttling while measuring. Re-run on a quiet machine (the results "
              "files mark these workloads \"valid\": false).", file=sys.stderr)
        status = 1
    bad = [r["workload"] for r in records if not r["params_finite"]]
    if bad:
        print(f"fusedsched's parameters went non-finite: {bad}", file=sys.stderr)
        status = 1
    return status


def flat_host_cost(records: list[dict]) -> dict:
    """flat=True's step() on 1000 tensors of 16 elements over its step() on one tensor of
    16,000 (same run; the target is <= 4x), {} when either row was not measured."""
    ms = {r["workload"]: r["providers"].get("flat", {}).get("ms") for r in records}
    many, one = ms.get(HOST_MANY), ms.get(HOST_ONE)
    if not many or not one:
        return {}
    ratio = many / one
    return {"many_ms": many, "one_ms": one, "ratio": ratio, "target": "<= 4x",
            "met": ratio <= 4.0}


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------------------------
# --device cuda: Triton kernels against torch's CUDA paths; roof = device copy bandwidth


def cuda_workloads(quick: bool) -> list[Workload]:
    w = [Workload("adam float32 1x100M", "adam", "float32", [(10**8,)]),
         Workload("adam float32 resnet50", "adam", "float32", resnet50_shapes(), "list"),
         Workload("adam float32 1000x1k", "adam", "float32", [(1024,)] * 1000, "list")]
    if not quick:
        w += [Workload("adam float32 gpt2-small", "adam", "float32", gpt2_small_shapes(),
                       "list"),
              Workload("adam bfloat16 1x100M", "adam", "bfloat16", [(10**8,)]),
              Workload("sgd_momentum float32 1x100M", "sgd_momentum", "float32", [(10**8,)]),
              Workload("rmsprop float32 1x100M", "rmsprop", "float32", [(10**8,)]),
              Workload("adam float32 1x1M", "adam", "float32", [(10**6,)])]
    return w


def cuda_targets_for(wl: Workload) -> list[tuple[str, str, float, str]]:
    """The project's GPU targets (bench_cuda.json only): Adam 1e8+ params >= 90% of copy
    bandwidth and >= 1.0x torch fused; ResNet-50 list >= 1.3x torch fused."""
    if wl.optimizer == "adam" and wl.dtype == "float32" and wl.numel >= 10**8:
        return [(">= 90% copy bandwidth", "frac_roof", 0.9, ">="),
                (">= 1.0x torch fused", "vs_fused", 1.0, ">=")]
    if wl.name.endswith("resnet50"):
        return [(">= 1.3x torch fused", "vs_fused", 1.3, ">=")]
    return []


def _cuda_time_ms(fn, rep_ms: int) -> float:
    """Median ms per call: triton.testing.do_bench (CUDA events, L2 flushed between calls)."""
    from triton.testing import do_bench
    return do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median")


def measure_cuda_workload(wl: Workload, rounds: int, rep_ms: int) -> dict:
    import gc

    import torch

    dtype = _torch_dtype(wl.dtype)
    gen = torch.Generator(device="cuda").manual_seed(0)
    params = []
    for shape in wl.shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen, device="cuda").to(dtype))
        p.grad = torch.randn(shape, generator=gen, device="cuda").to(dtype)
        params.append(p)
    # roof: a device-to-device copy moving the step's bytes (half read, half written)
    half = max(1, wl.bytes_per_step // 2 // 4)
    src = torch.empty(half, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    row = BENCH[wl.optimizer]
    schedule = make_schedule()
    steps, errors = {"roof": lambda: dst.copy_(src)}, {}
    for name, flags in (("loop", dict(foreach=False)), ("foreach", dict(foreach=True)),
                        ("fused", dict(fused=True))):
        try:
            opt = row.make_torch(params, **flags)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

            def step(opt=opt, sched=sched):
                opt.step()
                sched.step()
            step()
            steps[name] = step
        except Exception as exc:   # e.g. no fused RMSprop
            errors[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    opt = row.make(params, schedule=schedule, backend="triton")
    opt.step()
    steps["fusedsched"] = opt.step
    # the same step captured in a CUDA graph (what the graph-capturable design buys)
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            opt.step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opt.step()
        steps["fusedsched_graph"] = graph.replay
    except Exception as exc:
        errors["fusedsched_graph"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    times = interleaved(steps, rounds, lambda step: _cuda_time_ms(step, rep_ms) * 1e-3)
    finite = all(bool(torch.isfinite(p).all()) for p in params)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    rec = {"workload": wl.name, "optimizer": wl.optimizer, "dtype": wl.dtype,
           "kind": wl.kind, "numel": wl.numel, "n_tensors": len(wl.shapes),
           "bytes_per_step": wl.bytes_per_step, "time_s": med, "times_s": times,
           "errors": errors, "params_finite": finite}
    roof, fsd = med.get("roof"), med.get("fusedsched")
    rec["copy_GBps"] = 2 * half * 4 / roof / 1e9 if roof else None
    rec["GBps"] = {k: wl.bytes_per_step / t / 1e9 for k, t in med.items() if k != "roof"}
    rec["frac_roof"] = roof / fsd if roof and fsd else None     # roof time / fusedsched time
    rec["vs_fused"] = med["fused"] / fsd if "fused" in med and fsd else None
    best = min((med[k] for k in TORCH_PROVIDERS if k in med), default=None)
    rec["vs_best_torch"] = best / fsd if best and fsd else None
    rec["targets"] = []
    for label, metric, thr, op in cuda_targets_for(wl):
        v = rec.get(metric)
        ok = v is not None and (v >= thr if op == ">=" else v <= thr)
        rec["targets"].append({"target": label, "metric": metric, "value": v, "met": ok})
    # the copy is a lower bound too: a provider faster than it means a disturbed measurement
    rec["roof_slower_than"] = [k for k, t in med.items() if k != "roof" and roof
                               and t * (1.0 + ROOF_TOLERANCE) < roof]
    rec["valid"] = not rec["roof_slower_than"]
    del params, src, dst, opt, steps
    gc.collect()
    torch.cuda.empty_cache()
    return rec


def run_cuda(args: argparse.Namespace) -> int:
    """``fusedsched bench --device cuda``: per workload, torch for-loop / foreach / fused
    (each as ``opt.step(); sched.step()`` with LambdaLR), fusedsched's Triton step, and the
    same step replayed from a CUDA graph, interleaved over rounds, each timed with
    ``triton.testing.do_bench``; the roof is a device-to-device copy of the step's bytes.
    Writes bench_cuda.json and bench_cuda.csv under --out."""
    import torch
    if not torch.cuda.is_available():
        print("fusedsched bench --device cuda: no CUDA device", file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET"):
        print("fusedsched bench --device cuda: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    quick = args.quick
    rounds = args.rounds or (2 if quick else 3)
    rep_ms = int((args.min_run_time or (0.05 if quick else 0.1)) * 1000)
    workloads = cuda_workloads(quick)
    if args.only:
        workloads = [w for w in workloads
                     if any(selects(s, w) for s in args.only if s not in SECTIONS)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records = []
    for wl in workloads:
        print(f"[bench cuda] {wl.name}", file=sys.stderr, flush=True)
        records.append(measure_cuda_workload(wl, rounds, rep_ms))
    result = {"machine": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                          "capability": list(torch.cuda.get_device_capability())},
              "config": {"rounds": rounds, "do_bench_rep_ms": rep_ms, "quick": quick,
                         "roof": "device-to-device copy of bytes_per_step",
                         "wall_s": round(time.perf_counter() - t0, 1)},
              "results": records}
    json_path = Path(args.json) if args.json else out / "bench_cuda.json"
    json_path.write_text(json.dumps(result, indent=1))
    csv_path = Path(args.csv) if args.csv else out / "bench_cuda.csv"
    with open(csv_path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["workload", "provider", "time_us", "GBps", "copy_GBps", "frac_roof",
                     "vs_fused"])
        for r in records:
            for k, t in r["time_s"].items():
                wr.writerow([r["workload"], k, f"{t * 1e6:.2f}",
                             _fmt(r["GBps"].get(k)), _fmt(r["copy_GBps"]),
                             _fmt(r["frac_roof"], ".3f"), _fmt(r["vs_fused"], ".3f")])
    try:
        from rich.console import Console
        from rich.table import Table
        table = Table(title=f"fusedsched bench --device cuda ({result['machine']['gpu']})")
        for col in ("workload", "roof us", "loop us", "foreach us", "fused us",
                    "fusedsched us", "graph us", "% copy bw", "vs roof", "vs torch fused"):
            table.add_column(col, justify="left" if col == "workload" else "right")
        for r in records:
            t = r["time_s"]
            us = [_fmt(t[k] * 1e6, ".1f") if k in t else "-"
                  for k in ("roof", "loop", "foreach", "fused", "fusedsched",
                            "fusedsched_graph")]
            name = r["workload"] + ("" if r["valid"] else " (not valid)")
            table.add_row(name, *us,
                          _fmt(r["frac_roof"] * 100 if r["frac_roof"] else None, ".0f"),
                          _fmt(1 / r["frac_roof"], ".2f") + "x" if r["frac_roof"] else "-",
                          _fmt(r["vs_fused"], ".2f") + "x" if r["vs_fused"] else "-")
        Console().print(table)
    except ImportError:
        print(json.dumps(records, indent=1))
    print(f"wrote {json_path}, {csv_path}", file=sys.stderr)
    invalid = [r for r in records if not r["valid"]]
    for r in invalid:
        print(f"NOT VALID: {r['workload']}: the device copy (the roof) measured slower than "
              f"{', '.join(r['roof_slower_than'])}", file=sys.stderr)
    if invalid:
        print("fusedsched bench: these timings are not valid (the GPU was busy or "
              "throttling while measuring); re-run on an idle GPU", file=sys.stderr)
    return 0 if all(r["params_finite"] for r in records) and not invalid else 1
