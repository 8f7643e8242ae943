"""State formats "bfloat16" and "8bit" on CUDA: the compiled Triton kernels against the
reference on CUDA tensors (torch's CUDA ops: fma, sqrt and division correctly rounded, as
the kernels' fma.rn / sqrt.rn / div.rn; amax keeps NaNs as the kernels' block absmax),
bit for bit over several steps, with the cases of tests/test_kernels.py
(tests/_kernel_cases.py): every configuration the formats step through, 16-bit
parameters, GradScaler's skips, zero / non-finite / extreme values, every program size, and
a tensor of 70001 elements (137 fp32 programs) beside the ragged small ones."""

import sys
from pathlib import Path

import pytest
import torch

import fusedsched.kernels.triton.adam  # noqa: E402,F401  compiled-mode @triton.jit first
import fusedsched.kernels.triton.rmsprop  # noqa: E402,F401
import fusedsched.kernels.triton.sgd  # noqa: E402,F401
from fusedsched import schedules as S  # noqa: E402
from fusedsched.kernels.triton import _launch as L  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import _kernel_cases as T  # noqa: E402  (the cases of tests/test_kernels.py)

SIZES = [0, 1, 255, 256, 257, 300, 5000, 70001]


def _on_cuda(algo, config, fmt, dtype=torch.float32):
    return T.Case(algo, config, fmt, dtype, SIZES).to("cuda")


@pytest.mark.parametrize("fmt", T.STORED_FORMATS)
@pytest.mark.parametrize("algo", list(T.CONFIGS))
def test_every_configuration_on_cuda(algo, fmt):
    for k, dtype in T.FORMAT_CASES:
        T.compare_steps(_on_cuda(algo, T.CONFIGS[algo][k], fmt, dtype), "triton",
                        T.SCHEDULES[T.schedule_of(k)], 4)


@pytest.mark.parametrize("fmt", T.STORED_FORMATS)
@pytest.mark.parametrize("algo", list(T.CONFIGS))
def test_amp_and_extremes_on_cuda(algo, fmt):
    config = T.CONFIGS[algo][1]
    T.compare_steps(_on_cuda(algo, config, fmt), "triton", T.SCHEDULES["one_cycle"], 4,
                    amp=[1.0, 0.0, 1.0, 0.0])
    if algo == "adam" and fmt == "bfloat16":
        # amsgrad off: amsgrad's max of a NaN, rounded to bfloat16, is the case of
        # tests/test_kernels.py::test_reference_bfloat16_rounding_keeps_every_nan
        config = dict(config, amsgrad=False, _off=("max_exp_avg_sqs",))
    mine = _on_cuda(algo, config, fmt)
    T.extremes(mine)
    T.compare_steps(mine, "triton", S.constant(), 2, nan_as_nan=True)


@pytest.mark.parametrize("block", [256, 1024, 2048])
def test_every_program_size_on_cuda(block, monkeypatch):
    # a program of any multiple of the 8-bit block computes every element alike
    monkeypatch.setitem(L.BLOCK, torch.float32, block)
    for algo in T.CONFIGS:
        for fmt in T.STORED_FORMATS:
            T.compare_steps(_on_cuda(algo, T.CONFIGS[algo][1], fmt), "triton",
                            T.SCHEDULES["warmup_cosine"], 2)
