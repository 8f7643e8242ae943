"""Triton backend (interpreted on CPU tensors) against the reference backend, and the
schedule evaluator against ``fusedsched.schedules`` (docs/design.md, oracle step 3).

TRITON_INTERPRET must be set before triton is imported; if another test module imported
triton first without it, ``@triton.jit`` made compiled-mode functions and these tests skip
(tests/conftest.py should do ``os.environ.setdefault("TRITON_INTERPRET", "1")``).
"""

import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fusedsched import schedules as S  # noqa: E402
from fusedsched.kernels.reference import adam as ref_adam  # noqa: E402
from fusedsched.kernels.reference import rmsprop as ref_rmsprop  # noqa: E402
from fusedsched.kernels.reference import sgd as ref_sgd  # noqa: E402
from fusedsched.kernels.reference.schedule import evaluate as ref_evaluate  # noqa: E402
from fusedsched.kernels.triton import adam as tri_adam  # noqa: E402
from fusedsched.kernels.triton import rmsprop as tri_rmsprop  # noqa: E402
from fusedsched.kernels.triton import sgd as tri_sgd  # noqa: E402
from fusedsched.kernels.triton.schedule import INTERPRET, evaluate  # noqa: E402

from _kernel_cases import ADAM_FLAGS, ALGOS, RMS_FLAGS, SGD_FLAGS  # noqa: E402,F401

pytestmark = pytest.mark.skipif(not INTERPRET, reason="triton was imported before "
                                "TRITON_INTERPRET=1 was set (set it in tests/conftest.py)")

F64 = torch.float64


@triton.jit
def _eval_kernel(prog_ptr, n_nodes, ts_ptr, out_ptr):
    i = tl.program_id(0)
    f, m, h = evaluate(prog_ptr, n_nodes, tl.load(ts_ptr + i))
    tl.store(out_ptr + 3 * i, f)
    tl.store(out_ptr + 3 * i + 1, m)
    tl.store(out_ptr + 3 * i + 2, h)


def _evaluate(sched, ts):
    prog = S.program(sched, "cpu")
    t = torch.tensor([float(x) for x in ts], dtype=F64)
    out = torch.zeros(len(ts), 3, dtype=F64)
    _eval_kernel[(len(ts),)](prog, prog.shape[0], t, out)
    return out


SCHEDULES = [
    S.constant(0.5),
    S.linear(0.25, 1.0, 7),
    S.linear(0.5, 0.1, 0),
    S.step_decay(3, 0.5),
    S.multistep([2, 5, 9], 0.3),
    S.exponential(0.97),
    S.polynomial(10, 2.0, 0.1),
    S.cosine(12, 0.05),
    S.cosine_restarts(3, 1, 0.1),
    S.cosine_restarts(2, 2, 0.0),
    S.cosine_restarts(1, 3, 0.2),
    S.one_cycle(50),
    S.one_cycle(20, pct_start=0.25, anneal="linear", three_phase=True),
    S.one_cycle(10, three_phase=True),
    S.cyclic(0.1, 4, mode="triangular"),
    S.cyclic(0.5, 5, mode="triangular2", cycle_momentum=False),
    S.cyclic(0.2, 3, step_size_down=5, mode="exp_range", gamma=0.99),
    S.inverse_sqrt(4),
    S.inverse_sqrt(0, 10),
    S.warmup_stable_decay(4, 2, 4),
    S.warmup_stable_decay(3, 2, 5, decay="cosine", end_factor=0.1, start_factor=0.2),
    S.warmup_stable_decay(2, 1, 4, decay="1-sqrt"),
    S.warmup_stable_decay(5, 5, 0),
    S.warmup(S.cosine(10), 3, start_factor=0.1),
    S.sequential([S.constant(0.5), S.constant(0.3), S.constant(1.0)], [3, 7]),
    S.sequential([S.constant(0.1), S.exponential(0.5)], [0]),
    S.sequential([S.warmup(S.one_cycle(12), 2), S.sequential([S.cyclic(0.3, 2), S.step_decay(2)], [5])], [6]),
]

BIG_T = [2**20 + 3, 10**7 + 1, 2**31 - 1, 2**31]


def _reference_evaluate(sched, ts):
    prog = S.program(sched, "cpu")
    return torch.tensor([[x.item() for x in ref_evaluate(prog, torch.tensor(float(t), dtype=F64))]
                         for t in ts], dtype=F64)


def _assert_equals_reference(out, ref, what):
    """Bit for bit: the interpreted evaluator calls the reference's own torch functions for
    pow, cos, log and sqrt (kernels/triton/schedule.py) and rounds the same operations in
    the same order. The momentum is compared where the leaf cycles it (Triton leaves the
    leaf's value in the slot otherwise, the reference 0; neither is read then)."""
    assert torch.equal(out[:, 0], ref[:, 0]), (what, (out[:, 0] != ref[:, 0]).nonzero().flatten())
    assert torch.equal(out[:, 2], ref[:, 2]), what
    cycles = ref[:, 2] != 0
    assert torch.equal(out[cycles, 1], ref[cycles, 1]), what


@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
def test_evaluator_matches_python(sched):
    ts = list(range(0, 40)) + BIG_T
    out = _evaluate(sched, ts)
    _assert_equals_reference(out, _reference_evaluate(sched, ts), sched)
    for i, t in enumerate(ts):
        want = sched(t)
        got = out[i, 0].item()
        assert math.isfinite(got), (t, got)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (t, got, want)
        m = sched.momentum(t)
        if m is None:
            assert out[i, 2].item() == 0.0, t
        else:
            assert out[i, 2].item() == 1.0, t
            assert out[i, 1].item() == pytest.approx(m, rel=1e-12, abs=1e-15), t


def test_evaluator_public_cases():
    # C1: one_cycle holds its final value for t >= e3
    out = _evaluate(S.one_cycle(50), [0, 14, 49, 50, 51, 10**6])[:, 0].tolist()
    assert out[0] == pytest.approx(0.04, rel=1e-12) and out[1] == pytest.approx(1.0, rel=1e-12)
    assert out[2] == pytest.approx(4e-6, rel=1e-9) and out[3:] == [out[2]] * 3
    # C4: triangular2 exactly 0.5 at t=10240, no overflow at 2**31
    out = _evaluate(S.cyclic(0.5, 5, mode="triangular2", cycle_momentum=False), [10240, 2**31])
    assert out[0, 0].item() == 0.5 and out[1, 0].item() == 0.5
    # C6
    out = _evaluate(S.warmup_stable_decay(4, 2, 4), range(11))[:, 0].tolist()
    assert out == pytest.approx([0, .25, .5, .75, 1, 1, 1, .75, .5, .25, 0], abs=1e-15)


# ------------------------------------------------------------------------------------------
# optimizers: triton vs reference

SHAPE_SETS = {
    "empty_first_mixed": [(0,), (700,), (3,), (0,), (1030,), (0,)],
    "many_small": [(k % 5 + 1,) for k in range(23)],
    "single_odd": [(513,)],
}


def _grads(params, k, scale=1.0):
    gen = torch.Generator().manual_seed(1000 + k)
    return [(torch.randn(p.shape, generator=gen, dtype=F64) * scale).to(p.dtype) for p in params]


def _tol(dtype):
    # Bit for bit, on every machine: the kernels round at the reference's fused
    # multiply-adds, and under the interpreter every function that is not correctly rounded
    # is the very torch function the reference calls on the same data: fma / sqrt / store
    # conversion (kernels/triton/_launch.py) and the fp64 pow / cos / log / sqrt of the
    # schedule and the bias corrections (kernels/triton/schedule.py), for every dtype
    # (16-bit math is fp32 with one final rounding). (Compiled Triton on a GPU takes
    # libdevice's pow / cos / log instead, torch's CUDA ops CUDA's own: tests_gpu/ reuses
    # this comparison there, where it rests on those two agreeing.)
    return dict(rtol=0.0, atol=0.0, equal_nan=True)


def _run(algo, dtype, shapes, flags, schedule, n_steps=3, amp=None):
    gen = torch.Generator().manual_seed(7)
    base = [torch.randn(s, generator=gen, dtype=F64).to(dtype) for s in shapes]
    results = []
    for impl in ("triton", "reference"):
        params = [p.clone() for p in base]
        z = lambda: [torch.zeros_like(p) for p in params]  # noqa: E731
        steps = [torch.zeros((), dtype=F64) for _ in params]
        pos = torch.zeros((), dtype=F64)
        prog = S.program(schedule, "cpu") if schedule is not None else None
        if prog is None:
            prog = S.program(S.constant(), "cpu")
        if algo == "adam":
            fn = (tri_adam if impl == "triton" else ref_adam).adam_step
            st = [z(), z(), z() if flags["amsgrad"] else None]
        elif algo == "sgd":
            fn = (tri_sgd if impl == "triton" else ref_sgd).sgd_step
            st = [z() if flags["momentum"] else None]
        else:
            fn = (tri_rmsprop if impl == "triton" else ref_rmsprop).rmsprop_step
            st = [z(), z() if flags["centered"] else None, z() if flags["momentum"] else None]
        grads_seen = []
        for k in range(n_steps):
            grads = _grads(params, k)
            gs = fi = None
            if amp is not None:
                gs = torch.tensor(amp[0], dtype=torch.float32)
                grads = [(g.to(F64) * amp[0]).to(dtype) for g in grads]
                fi = torch.tensor(float(amp[1][k]), dtype=torch.float32)
            if algo == "adam":
                kw = dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=flags["wd"],
                          decoupled_weight_decay=flags["decoupled"], amsgrad=flags["amsgrad"])
            elif algo == "sgd":
                kw = dict(lr=0.1, momentum=0.9 if flags["momentum"] else 0.0,
                          dampening=0.1 if not flags["nesterov"] else 0.0,
                          weight_decay=flags["wd"], nesterov=flags["nesterov"])
            else:
                kw = dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=flags["wd"],
                          momentum=0.8 if flags["momentum"] else 0.0, centered=flags["centered"])
            fn(params, grads, *st, steps, maximize=flags["maximize"], schedule=prog,
               position=pos, grad_scale=gs, found_inf=fi, **kw)
            grads_seen.append(grads)
        results.append((params, st, steps, pos, grads_seen))
    return results


def _compare(results, dtype):
    (p1, s1, k1, pos1, g1), (p2, s2, k2, pos2, g2) = results
    tol = _tol(dtype)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, **tol)
    for la, lb in zip(s1, s2):
        if la is not None:
            for a, b in zip(la, lb):
                torch.testing.assert_close(a, b, **tol)
    assert [x.item() for x in k1] == [x.item() for x in k2]
    assert pos1.item() == pos2.item()
    for ga, gb in zip(g1, g2):
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, **tol)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("algo,flag_list", ALGOS, ids=[a for a, _ in ALGOS])
def test_matches_reference_flags(algo, flag_list, dtype):
    sched = S.warmup(S.cosine(6, 0.1), 2)
    for i, flags in enumerate(flag_list):
        shapes = list(SHAPE_SETS)[i % len(SHAPE_SETS)]
        _compare(_run(algo, dtype, SHAPE_SETS[shapes], flags, sched), dtype)


CYCLING = [S.one_cycle(6, pct_start=0.4), S.cyclic(0.2, 2, mode="triangular2"),
           S.sequential([S.constant(0.3), S.one_cycle(4, three_phase=True)], [2])]


@pytest.mark.parametrize("algo,flag_list", ALGOS, ids=[a for a, _ in ALGOS])
@pytest.mark.parametrize("sched", CYCLING, ids=repr)
def test_cycling_schedules_drive_momentum(algo, flag_list, sched):
    flags = flag_list[-1]  # momentum on (sgd, rmsprop) / amsgrad+decoupled (adam)
    _compare(_run(algo, torch.float64, [(5,), (0,), (300,)], flags, sched, n_steps=6),
             torch.float64)


@pytest.mark.parametrize("algo,flag_list", ALGOS, ids=[a for a, _ in ALGOS])
def test_found_inf_and_grad_scale(algo, flag_list):
    flags = flag_list[1]
    res = _run(algo, torch.float32, [(3,), (0,), (600,)], flags, S.exponential(0.9),
               n_steps=4, amp=(1024.0, [1, 0, 1, 0]))
    _compare(res, torch.float32)
    assert [s.item() for s in res[0][2]] == [2.0, 2.0, 2.0]
    assert res[0][3].item() == 4.0


def test_first_step_skipped_leaves_no_momentum_buffer():
    # C13: a skipped first step leaves the buffer untouched, and the next one initialises it
    p = [torch.ones(4)]
    buf = [torch.full((4,), float("nan"))]
    steps = [torch.zeros((), dtype=F64)]
    pos = torch.zeros((), dtype=F64)
    kw = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
              maximize=False, schedule=S.program(S.constant(), "cpu"), position=pos)
    tri_sgd.sgd_step(p, [torch.ones(4)], buf, steps, found_inf=torch.tensor(1.0), **kw)
    assert torch.isnan(buf[0]).all() and steps[0].item() == 0 and pos.item() == 1
    assert torch.equal(p[0], torch.ones(4))
    tri_sgd.sgd_step(p, [torch.ones(4)], buf, steps, found_inf=torch.tensor(0.0), **kw)
    assert torch.equal(buf[0], torch.ones(4)) and steps[0].item() == 1
    torch.testing.assert_close(p[0], torch.full((4,), 0.9))


def test_public_cases_adam():
    # C5 warmup from zero; C7 amsgrad; C8 empty param anywhere; C14 fp16 zero grad
    def adam(params, grads, n, lr, dtype=None, amsgrad=False, wd=0.0, dec=False, sched=None):
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        x = [torch.zeros_like(p) for p in params] if amsgrad else None
        steps = [torch.zeros((), dtype=F64) for _ in params]
        pos = torch.zeros((), dtype=F64)
        prog = S.program(sched or S.constant(), "cpu")
        for k in range(n):
            tri_adam.adam_step(params, [g(k).to(p.dtype) for g, p in zip(grads, params)], m, v,
                               x, steps, lr=lr, beta1=0.9, beta2=0.999, eps=1e-8,
                               weight_decay=wd, decoupled_weight_decay=dec, amsgrad=amsgrad,
                               maximize=False, schedule=prog, position=pos)
        return m, v, x, steps
    p = [torch.ones(1)]
    m, *_ = adam(p, [lambda k: torch.ones(1)], 1, 0.1, sched=S.warmup(S.constant(), 4))
    assert p[0].item() == 1.0 and m[0].item() == pytest.approx(0.1)
    adam(p, [lambda k: torch.ones(1)], 0, 0.1)
    p = [torch.zeros(1, dtype=F64)]
    seq = [1.0, 0, 0, 0, 0]
    _, _, x, _ = adam(p, [lambda k: torch.tensor([seq[k]], dtype=F64)], 5, 0.1, amsgrad=True)
    assert p[0].item() == pytest.approx(-0.2968700184778925, rel=1e-13)
    assert x[0].item() == pytest.approx(0.0010000000000000009, rel=1e-13)
    for order in ([0, 1], [1, 0], [0, 1, 2]):
        ts = [torch.ones(4), torch.empty(0), torch.ones(4)]
        params = [ts[i] for i in order]
        adam(params, [lambda k, n=p.numel(): torch.ones(n) for p in params], 1, 0.1)
        for q in params:
            if q.numel():
                assert q.tolist() == [0.9000000357627869] * 4
    for dt in (torch.float16, torch.bfloat16):
        p = [torch.tensor([1.0, -2.0, 0.5], dtype=dt)]
        adam(p, [lambda k: torch.zeros(3)], 1, 1e-3)
        assert p[0].tolist() == [1.0, -2.0, 0.5]


def test_tensor_hyperparameters_read_on_device():
    # C15: lr as a 0-dim or 1-element tensor; changing it in place is seen by the next step
    for lr in (torch.tensor(0.1), torch.tensor([0.1])):
        p = [torch.ones(3)]
        kw = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                  decoupled_weight_decay=False, amsgrad=False, maximize=False,
                  schedule=S.program(S.constant(), "cpu"), position=torch.zeros((), dtype=F64))
        st = [[torch.zeros(3)], [torch.zeros(3)], None, [torch.zeros((), dtype=F64)]]
        tri_adam.adam_step(p, [torch.ones(3)], *st, lr=lr, **kw)
        assert p[0].tolist() == [0.9000000357627869] * 3
        lr.mul_(0.0)
        tri_adam.adam_step(p, [torch.ones(3)], *st, lr=lr, **kw)
        assert p[0].tolist() == [0.9000000357627869] * 3


def test_schedule_advances_without_host_input():
    # SGD, lr 1, grad 1: each step moves p by exactly -f(t), t advancing on the device
    sched = S.sequential([S.constant(0.5), S.exponential(0.5)], [2])
    prog = S.program(sched, "cpu")
    p, steps, pos = [torch.zeros(3, dtype=F64)], [torch.zeros((), dtype=F64)], torch.zeros((), dtype=F64)
    want = 0.0
    for t in range(6):
        tri_sgd.sgd_step(p, [torch.ones(3, dtype=F64)], None, steps, lr=1.0, momentum=0.0,
                         dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False,
                         schedule=prog, position=pos)
        want -= sched(t)
        assert p[0].tolist() == [want] * 3
    assert pos.item() == 6 and steps[0].item() == 6
    # advance_position=False leaves the position alone
    tri_sgd.sgd_step(p, [torch.ones(3, dtype=F64)], None, steps, lr=1.0, momentum=0.0,
                     dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False,
                     schedule=prog, position=pos, advance_position=False)
    assert pos.item() == 6 and steps[0].item() == 7


def test_rmsprop_centered_never_nan():
    # C9: fp32, grad 3.0 for 133 updates: variance clamped at 0, no NaN
    p, steps, pos = [torch.zeros(1)], [torch.zeros((), dtype=F64)], torch.zeros((), dtype=F64)
    sq, ga = [torch.zeros(1)], [torch.zeros(1)]
    for _ in range(133):
        tri_rmsprop.rmsprop_step(p, [torch.full((1,), 3.0)], sq, ga, None, steps, lr=0.01,
                                 alpha=0.9, eps=1e-8, weight_decay=0.0, momentum=0.0,
                                 centered=True, maximize=False,
                                 schedule=S.program(S.constant(), "cpu"), position=pos)
    assert torch.isfinite(p[0]).all()


def test_tables_are_cached():
    from fusedsched.kernels.triton import _launch as L
    params = [torch.zeros(5), torch.zeros(0)]
    grads = [torch.zeros(5), torch.zeros(0)]
    steps = [torch.zeros((), dtype=F64) for _ in params]
    a = L.tables(params, grads, [None], steps)
    b = L.tables(params, grads, [None], steps)
    assert a is b and a.n_blocks == 1 and a.aligned
    # gradients at new addresses patch the grad column of the same table, host and device
    moved = [torch.ones(5), torch.zeros(0)]
    c = L.tables(params, moved, [None], steps)
    assert c is a
    assert c.tab.view(-1, L.ROW)[:, 2].tolist() == [g.data_ptr() for g in moved]
    assert c.rows[:, 2].tolist() == [g.data_ptr() for g in moved]
    # a moved parameter builds a new one
    params[0] = torch.zeros(5)
    assert L.tables(params, moved, [None], steps) is not a
    h1 = L.hyperparameters(torch.device("cpu"), (0.1, 0.9))
    assert h1 is L.hyperparameters(torch.device("cpu"), (0.1, 0.9))
    assert h1.dtype == F64 and h1.tolist() == [0.1, 0.9]


def test_state_format_tables():
    # "8bit" rows: the native row, then the scale pointers of the three states (0 where a
    # state is off); a table checked for one format serves no other, even on the very
    # tensors (bf16 params and bf16 states are "native" and "bfloat16" alike)
    from fusedsched.kernels.triton import _launch as L
    params = [torch.zeros(300), torch.zeros(0)]
    grads = [torch.zeros(300), torch.zeros(0)]
    steps = [torch.zeros((), dtype=F64) for _ in params]
    codes = [[torch.zeros(p.shape, dtype=torch.uint8) for p in params] for _ in range(2)]
    scales = [[torch.zeros(2), torch.zeros(0)], [torch.zeros(2), torch.zeros(0)], None]
    t = L.tables(params, grads, codes + [None], steps, "8bit", scales)
    rows = t.tab.view(-1, L.ROW_8BIT)
    assert rows.shape == (2, L.ROW_8BIT) and t.n_blocks == 1
    assert rows[0, L.ROW:].tolist() == [scales[0][0].data_ptr(), scales[1][0].data_ptr(), 0]
    assert L.tables(params, grads, codes + [None], steps, "8bit", scales) is t
    with pytest.raises(ValueError, match="2 elements"):      # one scale per 256 elements
        L.tables(params, grads, codes + [None], steps, "8bit",
                 [[torch.zeros(1), torch.zeros(0)]] + scales[1:])
    half = [torch.zeros(4, dtype=torch.bfloat16)]
    state = [[torch.zeros(4, dtype=torch.bfloat16)]]
    one = [torch.zeros((), dtype=F64)]
    native = L.tables(half, half, state, one, "native")
    assert L.tables(half, half, state, one, "bfloat16") is not native
    assert L.tables(half, half, state, one, "native") is native
    with pytest.raises(ValueError, match="bfloat16"):         # fp32 state is not bfloat16
        L.tables(params, grads, [[torch.zeros(300), torch.zeros(0)]], steps, "bfloat16")


def test_reference_fma_is_correctly_rounded():
    # The reference's fma (torch.addcmul) and so the interpreted _fma round once, as the
    # compiled kernels' fma.rn does: checked against exact rational arithmetic (fp32).
    from fractions import Fraction
    gen = torch.Generator().manual_seed(3)
    x, y = (torch.randn(400, generator=gen) for _ in range(2))
    z = torch.randn(400, generator=gen) * torch.rand(400, generator=gen) * 1e-3
    got = torch.addcmul(z, x, y)
    assert not torch.equal(got, x * y + z)  # the sample does tell fused from unfused
    for i in range(400):
        exact = Fraction(x[i].item()) * Fraction(y[i].item()) + Fraction(z[i].item())
        c = torch.tensor(float(exact), dtype=torch.float32)
        cands = [torch.nextafter(c, torch.tensor(-math.inf)), c,
                 torch.nextafter(c, torch.tensor(math.inf))]
        err = [abs(Fraction(v.item()) - exact) for v in cands]
        assert got[i].item() == cands[err.index(min(err))].item(), i


@pytest.mark.parametrize("algo,flag_list", ALGOS, ids=[a for a, _ in ALGOS])
def test_long_ragged_list_one_launch(algo, flag_list, monkeypatch):
    # 300 tensors of ragged sizes (empty ones among them), one launch per step
    shapes = [((k * 37) % 131,) for k in range(300)]
    launches = []
    mod = {"adam": tri_adam, "sgd": tri_sgd, "rmsprop": tri_rmsprop}[algo]
    kernel = getattr(mod, f"{algo}_kernel")

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]
    monkeypatch.setattr(mod, f"{algo}_kernel", Counting())
    _compare(_run(algo, torch.float32, shapes, flag_list[-1], S.one_cycle(4), n_steps=2),
             torch.float32)
    assert len(launches) == 2


@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adam"])
def test_optimizer_mixed_dtypes_one_launch_per_dtype(name, monkeypatch):
    # A group with fp32, fp16, bf16 and fp64 parameters: one launch per dtype, and the same
    # parameters and state as the reference backend, bit for bit; the schedule position
    # advances once per step().
    import fusedsched as fs
    gen = torch.Generator().manual_seed(5)
    dts = [torch.float32, torch.float16, torch.float32, torch.bfloat16, torch.float64,
           torch.float16]
    base = [torch.randn(n, generator=gen, dtype=F64).to(dt)
            for n, dt in zip([5, 0, 600, 7, 3, 1030], dts)]
    grads = [[torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype) for p in base]
             for _ in range(3)]
    out = {}
    calls = []
    from fusedsched.kernels import ops as _backend  # the operators' kernel look-up
    real = _backend.kernel

    def counting(backend, algorithm):
        fn = real(backend, algorithm)

        def wrapped(*a, **k):
            calls.append((backend, a[0][0].dtype if a[0] else None))
            return fn(*a, **k)
        return wrapped
    monkeypatch.setattr(_backend, "kernel", counting)
    for backend in ("triton", "reference"):
        params = [torch.nn.Parameter(p.clone()) for p in base]
        kw = dict(momentum=0.9) if name != "Adam" else dict(amsgrad=True)
        opt = getattr(fs, name)(params, lr=0.01, schedule=S.warmup(S.cosine(5), 1),
                                backend=backend, **kw)
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()
        out[backend] = (params, opt)
    assert sum(1 for b, _ in calls if b == "triton") == 3 * 4
    (pt, ot), (pr, orf) = out["triton"], out["reference"]
    for a, b in zip(pt, pr):
        assert torch.equal(a, b)
        for key, va in ot.state[a].items():
            torch.testing.assert_close(va, orf.state[b][key], rtol=0, atol=0)
    assert ot.param_groups[0]["schedule_position"].item() == 3.0


# ------------------------------------------------------------------------------------------
# portability: the zero tolerances above rest on no library's transcendental functions
# agreeing with another's

def _one_ulp_up(fn):
    def off(*args, **kwargs):
        out = fn(*args, **kwargs)
        if np.issubdtype(np.asarray(out).dtype, np.floating):
            return np.nextafter(out, np.inf)
        return out
    return off


@triton.jit
def _numpy_cos_kernel(x_ptr, out_ptr):
    tl.store(out_ptr, tl.cos(tl.load(x_ptr)))


PORTABILITY_SCHEDULES = [S.exponential(0.97), S.step_decay(3, 0.7), S.polynomial(10, 1.7, 0.1),
                         S.cosine(12, 0.05), S.cosine_restarts(2, 2, 0.1), S.one_cycle(20),
                         S.cyclic(0.2, 3, mode="exp_range", gamma=0.99),
                         S.cyclic(0.5, 5, mode="triangular2"), S.inverse_sqrt(4, 3),
                         S.warmup_stable_decay(2, 1, 6, decay="cosine"),
                         S.warmup_stable_decay(2, 1, 6, decay="1-sqrt")]


def test_interpreted_kernels_do_not_rest_on_numpy(monkeypatch):
    """numpy's power, exp, log, cos, sin and sqrt made 1 ulp off everywhere (as numpy's SIMD
    power is on AVX-512 CPUs next to libm's): the interpreted evaluator, and float64 Adam,
    SGD and RMSprop with schedules that cycle momentum, still equal the reference bit for
    bit. They call torch's functions, as the reference does, so these comparisons hold on
    every machine (the interpreter's own tl.cos is numpy's: the patch reaches it)."""
    for name in ("power", "exp", "exp2", "log", "log2", "cos", "sin", "sqrt"):
        monkeypatch.setattr(np, name, _one_ulp_up(getattr(np, name)))
    x, out = torch.tensor([0.5], dtype=F64), torch.zeros(1, dtype=F64)
    _numpy_cos_kernel[(1,)](x, out)
    assert out.item() == math.nextafter(math.cos(0.5), math.inf)    # numpy is now off
    ts = list(range(0, 25)) + BIG_T
    for sched in PORTABILITY_SCHEDULES:
        _assert_equals_reference(_evaluate(sched, ts), _reference_evaluate(sched, ts), sched)
    for algo, flags in (("adam", ADAM_FLAGS[3]), ("sgd", SGD_FLAGS[3]), ("rmsprop", RMS_FLAGS[3])):
        for sched in (S.one_cycle(6, pct_start=0.4),
                      S.cyclic(0.2, 2, mode="exp_range", gamma=0.9)):
            _compare(_run(algo, F64, [(5,), (0,), (300,)], flags, sched, n_steps=4), F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_torch_cpu_sqrt_rounds_each_element_alone(dtype):
    """What the zero tolerance for the update's square roots rests on: interpreted Triton
    takes torch's sqrt of one block at a time where the reference takes it of the whole
    tensor -- the same function (MKL's vector sqrt where torch has MKL, else IEEE sqrt),
    which rounds each element independently of the length and the offset of the call. (So
    do the Numba kernels in their "torch" sqrt mode, in blocks of 512 elements.)"""
    gen = torch.Generator().manual_seed(11)
    x = torch.cat([torch.rand(6000, generator=gen, dtype=dtype) * 4,
                   torch.rand(2000, generator=gen, dtype=dtype) * 1e-30,
                   torch.tensor([0.0, 1.0, 2.0, torch.finfo(dtype).tiny / 8, math.inf], dtype=dtype)])
    whole = torch.sqrt(x)
    starts = [0, 1, 3, 255, 256, 511, 512, 700, 1023, 4095, 6001, x.numel() - 5]
    for start in starts:
        for length in (1, 2, 7, 16, 255, 256, 512, 1024, 1030):
            part = x[start:start + length].clone()
            assert torch.equal(torch.sqrt(part), whole[start:start + length]), (start, length)
    assert torch.equal(torch.stack([torch.sqrt(v) for v in x[::37]]), whole[::37])
