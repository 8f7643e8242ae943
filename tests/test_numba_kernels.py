"""Numba CPU kernels against the pure-torch reference backend (docs/design.md, oracle step 3).

Every step of a run starts the two backends from identical tensors (the reference copies
the Numba result after each comparison), and each step must agree bit for bit in every
dtype: the kernels use the reference's fused multiply-adds, and 16-bit storage is computed in
float32 and rounded once on both sides. Square roots: in the kernels' "torch" sqrt mode
they are torch's own (MKL), as the reference's; in the default "ieee" mode the reference's
``sqrt`` is swapped for numpy's correctly rounded one, and the two must still agree bit for
bit (``sqrt_mode`` fixture).

The float64 scalars of a step (the schedule's factor and momentum, Adam's bias
corrections) go through pow, cos, log and sqrt, which the kernels take from Numba (LLVM,
the C library, IEEE sqrt) and the reference from torch (libm's pow, MKL's cos / log / sqrt):
two implementations, which may differ in the last bit. For the bit-for-bit comparisons the
reference takes those scalars from the kernels' own functions (``same_scalars`` fixture:
``_torch_oracle.reference_takes_numba_scalars``), and the two implementations of the
scalars are compared with each other in ulps, with the reason (``test_*_in_ulps``).

Compile time dominates this file: the kernels take the flags at run time, so there is one
compilation per (algorithm, dtype), reused from Numba's on-disk cache in later runs.
"""

import math

import numpy as np
import pytest
import torch

from fusedsched import schedules as S
from fusedsched.kernels.numba import adam as nadam
from fusedsched.kernels.numba import rmsprop as nrms
from fusedsched.kernels.numba import sgd as nsgd
from fusedsched.kernels.numba._common import (ALIGN, CHUNK, SQRT_MODES, chunk_size,
                                              set_sqrt_mode)
from fusedsched.kernels.numba.schedule import evaluate
from fusedsched.kernels.reference.schedule import evaluate as reference_evaluate
from fusedsched.kernels.reference import adam as radam
from fusedsched.kernels.reference import rmsprop as rrms
from fusedsched.kernels.reference import sgd as rsgd

from _torch_oracle import numba_sqrt, reference_takes_numba_scalars
from _ulps import assert_close_ulps

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]

SHAPES = {
    "empty_first": [0, 7, CHUNK + 3],
    "empty_middle": [5, 0, 2 * CHUNK + 1],
    "empty_last": [CHUNK - 1, 1, 0],
    "many_small": [1 + (37 * i) % 300 for i in range(60)],
}

SCHEDULES = {
    "constant": S.constant(),
    "nested": S.warmup(S.sequential([S.cosine(3, end_factor=0.1), S.exponential(0.9)],
                                    milestones=[3]), warmup_steps=2, start_factor=0.1),
    "one_cycle": S.one_cycle(total_steps=6, pct_start=0.4),
    "cyclic2": S.cyclic(0.2, step_size_up=1, step_size_down=2, mode="triangular2"),
}


# ------------------------------------------------------------------------------- helpers

@pytest.fixture(params=SQRT_MODES)
def sqrt_mode(request):
    """Runs the test in each Numba sqrt mode, with the reference rounding alike."""
    with numba_sqrt(request.param):
        yield request.param


@pytest.fixture
def same_scalars():
    """The reference takes the step's float64 scalars from the Numba kernels' functions
    (``_torch_oracle.reference_takes_numba_scalars``: the kernels' pow / cos / log / sqrt
    are not torch's), so that the rest of a step can be compared bit for bit."""
    with reference_takes_numba_scalars():
        yield


def assert_close(actual, expected, what):
    """Bit for bit (NaN positions equal): both backends use the same fused multiply-adds,
    the same square roots (``sqrt_mode``), the same float64 step scalars
    (``same_scalars``) and one rounding to the storage type."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    if actual.numel() == 0:
        return
    nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
    assert torch.equal(nan_a, nan_e), f"{what}: NaN positions differ"
    a, e = actual[~nan_a], expected[~nan_e]
    bits = {8: torch.int64, 4: torch.int32, 2: torch.int16}[actual.element_size()]
    bad = a.view(bits) != e.view(bits)
    assert not bad.any(), (f"{what}: {bad.sum().item()} elements differ, max "
                           f"{(a.double() - e.double()).abs().max().item():.3g}")


def _randn(sizes, dtype, seed, scale=1.0, positive=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn(n, generator=g, dtype=torch.float64) * scale
        out.append((x.abs() if positive else x).to(dtype))
    return out


def _clone(xs):
    return None if xs is None else [x.clone() for x in xs]


def _copy_into(dst, src):
    if dst is not None:
        for d, s in zip(dst, src):
            d.copy_(s)


class Case:
    """Tensors of one algorithm run; ``lists`` are the positional tensor lists."""

    def __init__(self, algo, dtype, sizes, opts, seed=0):
        self.algo, self.opts = algo, dict(opts)
        p = _randn(sizes, dtype, seed)
        g = _randn(sizes, dtype, seed + 1)
        steps = [torch.tensor(float(i % 3), dtype=torch.float64) for i in range(len(sizes))]
        if algo == "sgd":
            buf = _randn(sizes, dtype, seed + 2) if opts["momentum_path"] else None
            self.lists = [p, g, buf, steps]
        elif algo == "rmsprop":
            sq = _randn(sizes, dtype, seed + 2, 0.5, positive=True)
            ga = _randn(sizes, dtype, seed + 3, 0.1) if opts["centered"] else None
            buf = _randn(sizes, dtype, seed + 4, 0.1) if opts["momentum_path"] else None
            self.lists = [p, g, sq, ga, buf, steps]
        else:
            m = _randn(sizes, dtype, seed + 2, 0.1)
            v = _randn(sizes, dtype, seed + 3, 0.5, positive=True)
            vmax = _randn(sizes, dtype, seed + 4, 0.6, positive=True) if opts["amsgrad"] else None
            self.lists = [p, g, m, v, vmax, steps]
        self.opts.pop("momentum_path", None)

    def clone(self):
        c = Case.__new__(Case)
        c.algo, c.opts = self.algo, self.opts
        c.lists = [_clone(x) for x in self.lists]
        return c

    def step(self, backend, schedule, position, **kw):
        fn = {"sgd": (nsgd.sgd_step, rsgd.sgd_step),
              "rmsprop": (nrms.rmsprop_step, rrms.rmsprop_step),
              "adam": (nadam.adam_step, radam.adam_step)}[self.algo][backend == "reference"]
        fn(*self.lists, schedule=schedule, position=position, **self.opts, **kw)

    def compare_and_sync(self, ref, what):
        for k, (mine, theirs) in enumerate(zip(self.lists, ref.lists)):
            if mine is None:
                continue
            for i, (a, e) in enumerate(zip(mine, theirs)):
                assert_close(a, e, f"{what} list {k} tensor {i}")
            _copy_into(theirs, mine)


def _grad_scale(dtype):
    return torch.tensor(4.0, dtype=torch.float32)


ALGOS = {
    "sgd": [
        dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
             maximize=False, momentum_path=False),
        dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01, nesterov=False,
             maximize=True, momentum_path=True),
        dict(lr=torch.tensor(0.05), momentum=0.8, dampening=0.0, weight_decay=0.0,
             nesterov=True, maximize=False, momentum_path=True),
    ],
    "rmsprop": [
        dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
             maximize=False, momentum_path=False),
        dict(lr=0.01, alpha=0.99, eps=1e-6, weight_decay=0.1, momentum=0.9, centered=True,
             maximize=True, momentum_path=True),
        dict(lr=torch.tensor(0.02), alpha=0.3, eps=1e-8, weight_decay=0.0, momentum=0.0,
             centered=True, maximize=False, momentum_path=False),
    ],
    "adam": [
        dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
             decoupled_weight_decay=False, amsgrad=False, maximize=False),
        dict(lr=0.01, beta1=0.3, beta2=0.99, eps=1e-6, weight_decay=0.1,
             decoupled_weight_decay=False, amsgrad=True, maximize=True),
        dict(lr=torch.tensor(0.02), beta1=torch.tensor(0.8), beta2=0.95, eps=1e-8,
             weight_decay=0.05, decoupled_weight_decay=True, amsgrad=False, maximize=False),
    ],
}


def _configs():
    """(algo, opts, shape, sched, dtype): each algorithm configuration in every dtype, and
    every shape x schedule of the plain Adam configuration, in float32 only apart from the
    constant schedule (which runs in every dtype)."""
    runs = []
    for algo, optss in ALGOS.items():
        for k, opts in enumerate(optss):
            shape = list(SHAPES)[k % len(SHAPES)]
            sched = list(SCHEDULES)[(k + len(runs)) % len(SCHEDULES)]
            runs.append((algo, opts, shape, sched, f"{algo}{k}-{shape}-{sched}"))
    for shape in SHAPES:
        for sched in SCHEDULES:
            runs.append(("adam", ALGOS["adam"][0], shape, sched, f"adam0-{shape}-{sched}"))
    out = []
    for algo, opts, shape, sched, name in runs:
        sweep_only = algo == "adam" and opts is ALGOS["adam"][0] and sched != "constant"
        for dtype in [torch.float32] if sweep_only else DTYPES:
            out.append(pytest.param(algo, opts, shape, sched, dtype, id=f"{name}-{dtype}"))
    return out


# --------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("algo,opts,shape,sched,dtype", _configs())
def test_matches_reference(algo, opts, shape, sched, dtype, monkeypatch, sqrt_mode,
                           same_scalars):
    mine = Case(algo, dtype, SHAPES[shape], opts)
    ref = mine.clone()
    schedule = S.program(SCHEDULES[sched], "cpu")
    pos_mine = torch.tensor(0.0, dtype=torch.float64)
    pos_ref = pos_mine.clone()
    for k in range(4):
        gs = _grad_scale(dtype) if k % 2 else None
        # steps 0 and 1 take the serial path (small steps), 2 and 3 the parallel one
        for module in (nadam, nrms, nsgd):
            monkeypatch.setattr(module, "SERIAL_MAX", 1 << 30 if k < 2 else 0)
        mine.step("numba", schedule, pos_mine, grad_scale=gs)
        ref.step("reference", schedule, pos_ref, grad_scale=gs)
        mine.compare_and_sync(ref, f"step {k}")
        assert pos_mine.item() == pos_ref.item() == k + 1


@pytest.mark.parametrize("total, threads", [
    (1, 2), (63, 2), (64, 1), (CHUNK, 2), (CHUNK + 1, 2), (100_000, 2), (100_000, 3),
    (10**6, 2), (10**6, 16), (32 * 10**6, 2), (124_439_808, 7)])
def test_chunk_size_gives_equal_shares(total, threads):
    chunk = chunk_size(total, threads)
    chunks = -(-total // chunk)
    assert chunk % ALIGN == 0 and chunk <= CHUNK + ALIGN
    assert 0 <= chunks * chunk - total < ALIGN * chunks
    # a few chunks: every thread gets as many (the last one at most ALIGN - 1 elements per
    # chunk shorter), unless the step has fewer than ALIGN elements per thread; many: the
    # rounding to ALIGN may drop a chunk, a thread's share (static schedule) stays within
    # 1% of an equal one
    assert chunks % threads == 0 or total < ALIGN * threads or chunks > 8 * threads
    assert -(-chunks // threads) * chunk <= total / threads * 1.01 + ALIGN


@pytest.mark.parametrize("algo", list(ALGOS))
def test_any_chunking_and_the_serial_walk_give_the_same_bits(algo, monkeypatch):
    """The serial walk (steps <= SERIAL_MAX) and the parallel one in chunks of any size
    (equal shares of the thread count, ``chunk_size``) compute every element alike."""
    sizes = [CHUNK + 3, 0, 100_003, 5, 2 * ALIGN + 1]
    opts = ALGOS[algo][1]
    start = Case(algo, torch.float32, sizes, opts)
    schedule = S.program(SCHEDULES["nested"], "cpu")
    results = []
    for chunk in (0, ALIGN, 3 * ALIGN, chunk_size(sum(sizes), 2), CHUNK):
        case = start.clone()
        module = {"adam": nadam, "rmsprop": nrms, "sgd": nsgd}[algo]
        monkeypatch.setattr(module, "use_pool", lambda offsets, serial_max, c=chunk: c)
        position = torch.tensor(2.0, dtype=torch.float64)
        for k in range(2):
            case.step("numba", schedule, position,
                      grad_scale=_grad_scale(torch.float32) if k else None)
        results.append(case)
    for chunk, case in zip((ALIGN, 3 * ALIGN, "chunk_size", CHUNK), results[1:]):
        for k, (mine, serial) in enumerate(zip(case.lists, results[0].lists)):
            for i, (a, e) in enumerate(zip(mine or [], serial or [])):
                assert_close(a, e, f"chunk {chunk}: list {k} tensor {i}")


@pytest.mark.parametrize("algo", list(ALGOS))
def test_found_inf_writes_nothing_but_position(algo):
    opts = ALGOS[algo][1]
    case = Case(algo, torch.float32, SHAPES["empty_middle"], opts)
    before = case.clone()
    position = torch.tensor(3.0, dtype=torch.float64)
    case.step("numba", S.program(S.constant(), "cpu"), position,
              grad_scale=torch.tensor(8.0), found_inf=torch.tensor(1.0))
    assert position.item() == 4.0
    for mine, orig in zip(case.lists, before.lists):
        for a, b in zip(mine or [], orig or []):
            assert torch.equal(a, b)
    case.step("numba", S.program(S.constant(), "cpu"), position, found_inf=torch.tensor(0.0),
              advance_position=False)
    assert position.item() == 4.0
    assert [s.item() for s in case.lists[-1]] == [s.item() + 1 for s in before.lists[-1]]


def test_adam_public_cases():
    prog = S.program(S.constant(), "cpu")
    # C8: an empty parameter anywhere in the group
    for order in ([0, 1], [1, 0], [0, 1, 0]):
        params = [torch.ones(4) if k == 0 else torch.empty(0) for k in order]
        zeros = lambda: [torch.zeros_like(p) for p in params]  # noqa: E731
        steps = [torch.tensor(0.0, dtype=torch.float64) for _ in params]
        nadam.adam_step(params, [torch.ones_like(p) for p in params], zeros(), zeros(), None,
                        steps, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                        decoupled_weight_decay=False, amsgrad=False, maximize=False,
                        schedule=prog, position=torch.tensor(0.0, dtype=torch.float64))
        for p in params:
            assert p.numel() == 0 or torch.all(p == 0.9000000357627869)
    # C13: grad_scale 1024 with grad 1024 equals the unscaled update
    p, g = torch.ones(4), torch.full((4,), 1024.0)
    m, v = torch.zeros(4), torch.zeros(4)
    nadam.adam_step([p], [g], [m], [v], None, [torch.tensor(0.0, dtype=torch.float64)],
                    lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    decoupled_weight_decay=False, amsgrad=False, maximize=False, schedule=prog,
                    position=torch.tensor(0.0, dtype=torch.float64),
                    grad_scale=torch.tensor(1024.0))
    assert torch.all(p == 0.90000004) and torch.all(g == 1.0) and torch.allclose(m, torch.full((4,), 0.1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("algo", ["adam", "rmsprop"])
def test_zero_grad_16bit_stays_finite(algo, dtype):
    """C14: eps is added in float32, so a zero gradient leaves 16-bit parameters unchanged."""
    p = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    g, s1, s2 = torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p)
    steps = [torch.tensor(0.0, dtype=torch.float64)]
    kw = dict(schedule=S.program(S.constant(), "cpu"), position=torch.tensor(0.0, dtype=torch.float64))
    if algo == "adam":
        nadam.adam_step([p], [g], [s1], [s2], None, steps, lr=1e-3, beta1=0.9, beta2=0.999,
                        eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
                        amsgrad=False, maximize=False, **kw)
    else:
        nrms.rmsprop_step([p], [g], [s1], None, None, steps, lr=1e-3, alpha=0.99, eps=1e-8,
                          weight_decay=0.0, momentum=0.0, centered=False, maximize=False, **kw)
    assert torch.equal(p, torch.tensor([1.0, -2.0, 0.5], dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_rmsprop_centered_clamps_variance(dtype):
    """C9: centered RMSprop, grad 3.0 for 133 updates: float32 stays finite (torch: NaN at
    update 133); float64 gives the exact-arithmetic value."""
    p, g = torch.zeros(1, dtype=dtype), torch.full((1,), 3.0, dtype=dtype)
    sq, ga = torch.zeros(1, dtype=dtype), torch.zeros(1, dtype=dtype)
    steps = [torch.tensor(0.0, dtype=torch.float64)]
    pos = torch.tensor(0.0, dtype=torch.float64)
    prog = S.program(S.constant(), "cpu")
    for k in range(133):
        nrms.rmsprop_step([p], [g], [sq], [ga], None, steps, lr=0.01, alpha=0.9, eps=1e-8,
                          weight_decay=0.0, momentum=0.0, centered=True, maximize=False,
                          schedule=prog, position=pos)
        assert torch.isfinite(p).all(), k
        if dtype == torch.float64 and k in (0, 9):
            assert p.item() == pytest.approx({0: -0.0333333330, 9: -0.224476379}[k], abs=1e-9)
    if dtype == torch.float64:
        assert p.item() == pytest.approx(-215.041122, abs=1e-6)


def test_16bit_conversions_exhaustive():
    """Every float16 / bfloat16 bit pattern round-trips, and float32 values round to nearest
    even like torch (halfway points, subnormals, overflow to inf, NaN)."""
    prog = S.program(S.constant(0.0), "cpu")       # lr 0: p = p + 0 * g, a pure round trip
    for dtype in (torch.float16, torch.bfloat16):
        bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
        p = bits.view(dtype).clone()
        g = torch.zeros_like(p)
        nsgd.sgd_step([p], [g], None, [torch.tensor(0.0, dtype=torch.float64)], lr=1.0,
                      momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                      maximize=False, schedule=prog, position=torch.tensor(0.0, dtype=torch.float64))
        nan = torch.isnan(bits.view(dtype))
        assert torch.equal(p.view(torch.int16)[~nan], bits[~nan])
        assert torch.isnan(p[nan]).all()
    # float32 -> 16 bit: the grad_scale write-back stores g / 3 computed in float32
    x = torch.cat([torch.randn(100000) * s for s in (1e-9, 1e-6, 1e-5, 1e-3, 1.0, 1e3, 6e4, 1e38)]
                  + [torch.tensor([65504.0, 65519.99, 65520.0, 70000.0, math.inf, -math.inf,
                                   math.nan, 0.0, -0.0, 2.0 ** -25, 2.0 ** -24 * 1.5])])
    for dtype in (torch.float16, torch.bfloat16):
        g = (x * 3.0).to(dtype)
        expected = (g.float() / 3.0).to(dtype)
        p = torch.zeros_like(g)
        nsgd.sgd_step([p], [g], None, [torch.tensor(0.0, dtype=torch.float64)], lr=1.0,
                      momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                      maximize=False, schedule=prog, position=torch.tensor(0.0, dtype=torch.float64),
                      grad_scale=torch.tensor(3.0))
        nan = torch.isnan(expected)
        assert torch.equal(torch.isnan(g), nan)
        assert torch.equal(g.view(torch.int16)[~nan], expected.view(torch.int16)[~nan])


# ------------------------------------------------------------------- schedule evaluator

ALL_KINDS = [
    S.constant(0.7),
    S.linear(0.25, 1.0, 10),
    S.linear(0.5, 0.2, 0),
    S.step_decay(3, 0.5),
    S.multistep([2, 5, 9], 0.3),
    S.exponential(0.97),
    S.polynomial(12, 2.0, 0.1),
    S.polynomial(0, 2.0, 0.1),
    S.cosine(20, 0.05),
    S.cosine(0, 0.05),
    S.cosine_restarts(10),
    S.cosine_restarts(7, 2, 0.1),
    S.cosine_restarts(3, 3),
    S.one_cycle(50),
    S.one_cycle(37, pct_start=0.25, anneal="linear", three_phase=True),
    S.one_cycle(10, pct_start=0.5, cycle_momentum=False),
    S.cyclic(0.1, step_size_up=5),
    S.cyclic(0.5, step_size_up=5, mode="triangular2", cycle_momentum=False),
    S.cyclic(0.3, step_size_up=4, step_size_down=7, mode="exp_range", gamma=0.999),
    S.inverse_sqrt(10),
    S.inverse_sqrt(0, timescale=100),
    S.warmup_stable_decay(4, 2, 4),
    S.warmup_stable_decay(5, 5, 0),
    S.warmup_stable_decay(100, 0, 0),
    S.warmup_stable_decay(3, 4, 8, decay="cosine", end_factor=0.1, start_factor=0.2),
    S.warmup_stable_decay(3, 4, 8, decay="1-sqrt"),
    S.warmup(S.cosine(10), 5, 0.1),
    S.sequential([S.constant(0.1), S.exponential(0.5)], milestones=[0]),
    S.sequential([S.constant(0.5), S.constant(0.3), S.warmup(S.one_cycle(20), 3)],
                 milestones=[3, 7]),
]

POSITIONS = sorted(set(list(range(0, 130)) + [2 ** k + d for k in range(7, 32) for d in (-1, 0, 1)]
                       + [10240, 2 ** 31]))


@pytest.mark.parametrize("schedule", ALL_KINDS, ids=repr)
def test_evaluator_matches_python_reference(schedule):
    program = S.program(schedule, "cpu").numpy()
    for t in POSITIONS:
        factor, momentum, has_momentum = evaluate(program, float(t))
        expected = schedule(t)
        assert math.isfinite(factor), (t, factor)
        assert factor == pytest.approx(expected, rel=1e-12, abs=1e-13), t
        sm = schedule.momentum(t)
        if sm is None:
            assert has_momentum == 0.0
        else:
            assert has_momentum == 1.0 and momentum == pytest.approx(sm, rel=1e-12, abs=1e-13), t


def test_evaluator_cyclic_triangular2_long_run():
    """C4: 5e-5 / 1e-4 = 0.5 exactly at t = 10240; no overflow up to 2**31. Exact on every
    machine: 0.5 ** (cycle - 1) is a power of two (or 0), which a pow correct to within an
    ulp returns exactly, and base + (1 - base) * scale rounds to base for such a scale."""
    program = S.program(S.cyclic(0.5, step_size_up=5, mode="triangular2", cycle_momentum=False),
                        "cpu").numpy()
    assert evaluate(program, 10240.0)[0] == 0.5
    assert evaluate(program, float(2 ** 31 + 3))[0] == 0.5


def test_evaluator_matches_reference_evaluator_in_ulps():
    """The Numba evaluator against the reference's (kernels/reference/schedule.py), every
    kind at every position: the same has_momentum, and factor and momentum within 4 ulps of
    1. Not bit for bit: the two take pow, cos and log from different libraries (Numba:
    LLVM / the C library; the reference: torch, i.e. libm's pow and MKL's cos and log on
    the CPU) and sqrt from IEEE vs torch's (MKL's, not always correctly rounded), each
    correct to about an ulp (the formulas are the same, in the same order of operations).
    Ulps of 1, the peak factor: an ulp of cos moves ``end + (1 - end) * (1 + cos) / 2`` by
    about an ulp of 1 also where the factor is small (measured: at most half an ulp of 1)."""
    reason = "Numba's libm / LLVM pow, cos, log and IEEE sqrt vs torch's (MKL) ones"
    for schedule in ALL_KINDS:
        program = S.program(schedule, "cpu")
        got, want = [], []
        for t in POSITIONS:
            got.append(evaluate(program.numpy(), float(t)))
            want.append([x.item() for x in
                         reference_evaluate(program, torch.tensor(float(t), dtype=torch.float64))])
        got, want = torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64)
        assert torch.equal(got[:, 2], want[:, 2]), schedule
        cycles = want[:, 2] != 0
        assert_close_ulps(got[:, 0], want[:, 0], 4, f"{schedule!r}: {reason}", scale=1.0)
        assert_close_ulps(got[cycles, 1], want[cycles, 1], 4, f"{schedule!r}: {reason}",
                          scale=1.0)


@pytest.mark.parametrize("beta1,beta2", [(0.0, 0.0), (0.3, 0.5), (0.8, 0.95), (0.9, 0.999),
                                         (0.99, 0.9999), (0.95, 0.99)])
def test_bias_corrections_match_reference_in_ulps(beta1, beta2):
    """Numba's Adam step size ``lr / (1 - beta1**step)`` and ``sqrt(1 - beta2**step)``
    against the reference's (kernels/reference/adam.py), over steps from 1 to 2**40. Not bit
    for bit: pow is Numba's (LLVM) vs torch's and sqrt IEEE vs torch's (MKL), each correct
    to about an ulp; and ``1 - p`` magnifies an ulp of ``p = beta**step`` into
    ``p / (1 - p)`` ulps of the result (999 for beta 0.999 at step 1). Tolerance: that, on
    both sides, plus 2 for the division or square root."""
    reason = (f"Numba's pow and IEEE sqrt vs torch's, beta1={beta1}, beta2={beta2}, "
              "magnified by 1 - beta**step")
    steps = [1, 2, 3, 5, 10, 100, 1000, 10 ** 4, 10 ** 6, 2 ** 24 + 1, 2 ** 40]
    f64 = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
    got, want = [], []
    for step in steps:
        got.append(nadam.bias_corrections(0.01, beta1, beta2, float(step)))
        want.append([x.item() for x in radam.bias_corrections(f64(0.01), f64(beta1),
                                                              f64(beta2), f64(step))])
    got, want = torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64)
    for k, beta in ((0, beta1), (1, beta2)):
        power = torch.tensor([float(beta) ** s for s in steps], dtype=torch.float64)
        magnified = power / (1 - power)
        assert_close_ulps(got[:, k], want[:, k], 2 + 2 * magnified, reason)


def test_same_scalars_do_not_rest_on_torchs_functions(monkeypatch):
    """With torch's cos made a few ulps off (as another library's cos may be, by an ulp, on
    another machine; a few here so that the rounding after it cannot absorb it), a float64
    Numba step and a reference step that takes the Numba kernels' scalars
    (``same_scalars``) still agree bit for bit; a reference that computes them itself does
    not (so the patch does reach the comparison)."""
    cos = torch.cos
    monkeypatch.setattr(torch, "cos", lambda x: cos(x) * (1 + 2 ** -50))
    schedule = S.program(S.one_cycle(6, pct_start=0.4), "cpu")
    outcomes = []
    for same in (True, False):
        mine = Case("adam", torch.float64, [7, 300], ALGOS["adam"][0])
        ref = mine.clone()
        pos_mine, pos_ref = (torch.tensor(2.0, dtype=torch.float64) for _ in range(2))
        mine.step("numba", schedule, pos_mine)
        if same:
            with reference_takes_numba_scalars():
                ref.step("reference", schedule, pos_ref)
        else:
            ref.step("reference", schedule, pos_ref)
        outcomes.append(all(torch.equal(a, e) for la, le in zip(mine.lists, ref.lists)
                            if la is not None for a, e in zip(la, le)))
    assert outcomes == [True, False]


# ------------------------------------------------------- cached address tables (optim)

def test_cached_tables_follow_new_grads_and_loaded_state(torch_sqrt, same_scalars):
    """The optimizer keeps each group's address table between steps: reallocated
    gradients (zero_grad(set_to_none=True)), a moved parameter (p.data = ...) and state
    replaced by load_state_dict must all be picked up (same results as the reference)."""
    import fusedsched

    def run(backend):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(n)) for n in (1000, 3, 300)]
        opt = fusedsched.Adam(ps, lr=0.1, backend=backend, weight_decay=0.1)
        saved = None
        for k in range(6):
            opt.zero_grad(set_to_none=True)
            for p in ps:
                p.grad = torch.randn_like(p)
            if k == 2:
                saved = {"state": opt.state_dict()}
            if k == 4:
                opt.load_state_dict(saved["state"])
            if k == 3:
                ps[1].data = ps[1].data.clone()
            opt.step()
        return ps

    for a, b in zip(run("numba"), run("reference")):
        assert torch.equal(a, b)


def test_f16c_and_integer_half_conversions_agree(monkeypatch):
    """float16 conversions compile to F16C (vcvtph2ps / vcvtps2ph) where the CPU has it and
    to integer code elsewhere: both give the same bits for every float16 pattern and for
    float32 values across the range (round to nearest even, subnormals, overflow); NaNs
    stay NaNs."""
    import numba
    from fusedsched.kernels.numba import _common, _half

    def build():
        @numba.njit
        def widen(h, out):
            for i in range(h.shape[0]):
                out[i] = _common.half_to_float(h[i])

        @numba.njit
        def narrow(f, out):
            for i in range(f.shape[0]):
                out[i] = _common.float_to_half(f[i])
        return widen, narrow

    halves = np.arange(65536, dtype=np.uint16)
    floats = np.concatenate([np.random.default_rng(0).standard_normal(200000).astype(np.float32)
                             * np.float32(s) for s in (1e-8, 1e-5, 1.0, 3e4, 7e4)]
                            + [np.array([65504.0, 65519.99, 65520.0, 2.0 ** -25, 2.0 ** -24 * 1.5,
                                         np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)])
    results = []
    for f16c in (True, False):
        monkeypatch.setattr(_half, "_F16C", f16c)
        widen, narrow = build()
        wide, short = np.empty(65536, np.float32), np.empty(floats.shape, np.uint16)
        widen(halves, wide)
        narrow(floats, short)
        results.append((wide, short))
    (wide_a, short_a), (wide_b, short_b) = results
    nan = np.isnan(wide_a)
    assert np.array_equal(nan, np.isnan(wide_b))
    assert np.array_equal(wide_a[~nan].view(np.uint32), wide_b[~nan].view(np.uint32))
    expected = torch.from_numpy(floats).to(torch.float16).view(torch.int16).numpy().view(np.uint16)
    short_nan = np.isnan(floats)
    for short in (short_a, short_b):
        assert np.array_equal(short[~short_nan], expected[~short_nan])
        assert np.isnan(short[short_nan].view(np.float16)).all()


def test_sqrt_mode_is_checked():
    from fusedsched.kernels.numba import _common
    before = _common.sqrt_mode()
    with pytest.raises(ValueError, match="mode='exact'"):
        set_sqrt_mode("exact")
    assert _common.sqrt_mode() == before


def test_sqrt_mode_from_environment():
    """FUSEDSCHED_SQRT chooses the mode at import; a wrong value names itself."""
    import os
    import subprocess
    import sys
    code = "from fusedsched.kernels.numba import _common; print(_common.sqrt_mode())"
    for value, expected in (("torch", "torch"), ("ieee", "ieee"), ("", None), ("fast", None)):
        env = {**os.environ, "FUSEDSCHED_SQRT": value}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True)
        if expected is None:
            assert run.returncode != 0
            assert f"FUSEDSCHED_SQRT={value!r}" in run.stderr
        else:
            assert run.returncode == 0, run.stderr
            assert run.stdout.strip() == expected
