"""State formats "bfloat16" and "8bit" on CUDA: the compiled Triton kernels against the
reference on CUDA tensors (torch's CUDA ops: fma, sqrt and division correctly rounded, as
the kernels' fma.rn / sqrt.rn / div.rn; amax keeps NaNs as the kernels' block absmax),
bit for bit, with tests/test_state_formats.py's runs: every algorithm and flag set,
16-bit and fp64 parameters, AMP, zero / non-finite / extreme values, a tensor of 70001
elements beside the ragged small ones."""

import sys
from pathlib import Path

import pytest
import torch

import fusedsched.kernels.triton.adam  # noqa: E402,F401  compiled-mode @triton.jit first
import fusedsched.kernels.triton.rmsprop  # noqa: E402,F401
import fusedsched.kernels.triton.sgd  # noqa: E402,F401

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_state_formats as T  # noqa: E402  (its runs; its own tests need the interpreter)

from fusedsched import schedules as S  # noqa: E402

SHAPES = T.SHAPES + [(70001,)]


@pytest.mark.parametrize("fmt", T.FORMATS)
@pytest.mark.parametrize("algo,flag_list", T.ALGOS, ids=T.ALGO_IDS)
def test_every_flag_on_cuda(algo, flag_list, fmt):
    for i, flags in enumerate(flag_list):
        T._compare(T._run("triton", algo, fmt, torch.float32, SHAPES, flags, T.WARMUP_COSINE,
                          first_step=0 if i % 2 == 0 else 5, device="cuda"))


@pytest.mark.parametrize("fmt,dtype", T.FORMAT_DTYPES, ids=lambda x: str(x))
@pytest.mark.parametrize("algo,flag_list", T.ALGOS, ids=T.ALGO_IDS)
def test_parameter_dtypes_on_cuda(algo, flag_list, fmt, dtype):
    T._compare(T._run("triton", algo, fmt, dtype, SHAPES, flag_list[-1], T.WARMUP_COSINE,
                      first_step=3, init="plausible", device="cuda"))


@pytest.mark.parametrize("fmt", T.FORMATS)
@pytest.mark.parametrize("algo,flag_list", T.ALGOS, ids=T.ALGO_IDS)
def test_amp_and_cycled_momentum_on_cuda(algo, flag_list, fmt):
    T._compare(T._run("triton", algo, fmt, torch.float32, [(3,), (0,), (4099,)],
                      flag_list[-1], S.exponential(0.9), n_steps=4,
                      amp=(1024.0, [1, 0, 1, 0]), first_step=2, device="cuda"))
    T._compare(T._run("triton", algo, fmt, torch.float32, [(5,), (0,), (3000,)],
                      flag_list[-1], S.one_cycle(6, pct_start=0.4), n_steps=5,
                      device="cuda"))


@pytest.mark.parametrize("fmt", T.FORMATS)
@pytest.mark.parametrize("algo,flags", T.SPECIAL_FLAGS, ids=T.ALGO_IDS)
def test_zero_nonfinite_and_extreme_values_on_cuda(algo, flags, fmt):
    T._compare(T._run("triton", algo, fmt, torch.float32, [(300,), (600,), (257,)], flags,
                      S.constant(), n_steps=2, grads_of=T._special_grads, device="cuda"))
