"""What the Numba CPU backend alone has (its kernels against the reference are
tests/test_kernels.py): the thread pool's chunk shares, its own 16-bit conversions (F16C
or integer code), its sqrt mode, and its float64 step scalars, which it computes with other
implementations of pow, cos, log and sqrt than the reference's (Numba: LLVM, the C library,
IEEE sqrt; the reference: torch, i.e. libm's pow and MKL's cos / log / sqrt): Adam's bias
corrections compared with the reference's in ulps, with the reason (the schedule
evaluators are in tests/test_kernels.py), and kept out of the bit-for-bit comparisons by
``_torch_oracle.reference_takes_numba_scalars``, which must not rest on torch's functions.
"""

import math

import numpy as np
import pytest
import torch

from fusedsched import schedules as S
from fusedsched.kernels.numba import adam as nadam
from fusedsched.kernels.numba import sgd as nsgd
from fusedsched.kernels.numba._common import ALIGN, CHUNK, chunk_size, set_sqrt_mode
from fusedsched.kernels.reference import adam as radam

from _kernel_cases import CONFIGS, Case
from _torch_oracle import reference_takes_numba_scalars
from _ulps import assert_close_ulps


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


# ------------------------------------------------------------- float64 scalars in ulps

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
    (``reference_takes_numba_scalars``) still agree bit for bit; a reference that computes
    them itself does not (so the patch does reach the comparison)."""
    cos = torch.cos
    monkeypatch.setattr(torch, "cos", lambda x: cos(x) * (1 + 2 ** -50))
    schedule = S.program(S.one_cycle(6, pct_start=0.4), "cpu")
    outcomes = []
    for same in (True, False):
        mine = Case("adam", CONFIGS["adam"][0], "native", torch.float64, [7, 300])
        ref = mine.clone()
        pos_mine, pos_ref = (torch.tensor(2.0, dtype=torch.float64) for _ in range(2))
        mine.step("numba", schedule, pos_mine)
        if same:
            with reference_takes_numba_scalars():
                ref.step("reference", schedule, pos_ref)
        else:
            ref.step("reference", schedule, pos_ref)
        outcomes.append(all(torch.equal(a, e) for (_, a), (_, e)
                            in zip(mine.tensors(), ref.tensors())))
    assert outcomes == [True, False]


# --------------------------------------------------------------------------- sqrt mode

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
