"""What the Triton backend alone has (its kernels against the reference are
tests/test_kernels.py): its host tables, and, interpreted on CPU tensors, what the zero
tolerances of the kernel suite rest on there -- the interpreted kernels call torch's
functions, never numpy's; the reference's fma (torch.addcmul) rounds once; torch's CPU sqrt
rounds each element alone, whatever the length and offset of the call.

TRITON_INTERPRET must be set before triton is imported; if another test module imported
triton first without it, ``@triton.jit`` made compiled-mode functions and these tests skip
(tests/conftest.py should do ``os.environ.setdefault("TRITON_INTERPRET", "1")``).
"""

import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fusedsched import schedules as S  # noqa: E402
from fusedsched.kernels.triton import _launch as L  # noqa: E402
from fusedsched.kernels.triton._kernel import ROW, ROW_8BIT  # noqa: E402
from fusedsched.kernels.triton.schedule import INTERPRET  # noqa: E402

from _kernel_cases import CONFIGS, MOST_STATE, Case, compare_steps  # noqa: E402
from _oracles import (BIG_T, assert_like_reference_evaluator, reference_evaluate,  # noqa: E402
                      triton_evaluate)

pytestmark = pytest.mark.skipif(not INTERPRET, reason="triton was imported before "
                                "TRITON_INTERPRET=1 was set (set it in tests/conftest.py)")

F64 = torch.float64


def test_tables_are_cached():
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
    assert c.tab.view(-1, ROW)[:, 2].tolist() == [g.data_ptr() for g in moved]
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
    params = [torch.zeros(300), torch.zeros(0)]
    grads = [torch.zeros(300), torch.zeros(0)]
    steps = [torch.zeros((), dtype=F64) for _ in params]
    codes = [[torch.zeros(p.shape, dtype=torch.uint8) for p in params] for _ in range(2)]
    scales = [[torch.zeros(2), torch.zeros(0)], [torch.zeros(2), torch.zeros(0)], None]
    t = L.tables(params, grads, codes + [None], steps, "8bit", scales)
    rows = t.tab.view(-1, ROW_8BIT)
    assert rows.shape == (2, ROW_8BIT) and t.n_blocks == 1
    assert rows[0, ROW:].tolist() == [scales[0][0].data_ptr(), scales[1][0].data_ptr(), 0]
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


# ------------------------------------------------------------------------------------------
# portability: the zero tolerances of the kernel suite rest on no library's transcendental
# functions agreeing with another's

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
        assert_like_reference_evaluator(triton_evaluate(sched, ts), reference_evaluate(sched, ts),
                                        repr(sched))
    for algo in CONFIGS:
        for sched in (S.one_cycle(6, pct_start=0.4),
                      S.cyclic(0.2, 2, mode="exp_range", gamma=0.9)):
            mine = Case(algo, CONFIGS[algo][MOST_STATE[algo]], "native", F64, [5, 0, 300])
            compare_steps(mine, "triton", sched, 4, scaled=False)


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
