"""State formats "bfloat16" and "8bit" on CUDA: the compiled Triton kernels against the
reference on CUDA tensors (torch's CUDA ops: fma, sqrt and division correctly rounded, as
the kernels' fma.rn / sqrt.rn / div.rn; amax keeps NaNs as the kernels' block absmax),
bit for bit over several steps, with tests/test_state_formats.py's cases: every
configuration of every algorithm, 16-bit parameters, GradScaler's skips, zero / non-finite
/ extreme values, every program size, and a tensor of 70001 elements (137 fp32 programs)
beside the ragged small ones."""

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
import test_state_formats as T  # noqa: E402  (its cases; its own tests run interpreted)

SIZES = [0, 1, 255, 256, 257, 300, 5000, 70001]
FORMATS = ["bfloat16", "8bit"]


def _steps(mine, schedule, n_steps, *, amp=None, extremes=False, nan_as_nan=False):
    """``n_steps`` of ``mine`` (on CUDA) by the compiled kernels and of its clone by the
    reference, compared after each; ``amp`` the found_inf of each step (grads scaled by
    1024 first)."""
    ref = mine.clone()
    if extremes:
        T._extremes(mine)
        T._extremes(ref)
    program = S.program(schedule, "cuda")
    positions = [torch.tensor(0.0, dtype=torch.float64, device="cuda") for _ in range(2)]
    for step in range(n_steps):
        kw = {}
        if amp is not None:
            kw = dict(grad_scale=torch.tensor(1024.0, device="cuda"),
                      found_inf=torch.tensor(amp[step], device="cuda"))
        elif step % 2:
            kw = dict(grad_scale=torch.tensor(4.0, device="cuda"))
        for case, backend, position in ((mine, "triton", positions[0]),
                                        (ref, "reference", positions[1])):
            if amp is not None:
                for g in case.lists[1]:
                    g.mul_(1024.0)
            case.step(backend, program, position, **{k: v.clone() for k, v in kw.items()})
        T.assert_same_bits(mine, ref, f"step {step}", nan_as_nan=nan_as_nan)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("algo", list(T.CONFIGS))
def test_every_configuration_on_cuda(algo, fmt):
    for k, config in enumerate(T.CONFIGS[algo]):
        for dtype in T.DTYPES if k == 0 else T.DTYPES[:1]:
            mine = T.Case(algo, config, fmt, dtype, SIZES).to("cuda")
            _steps(mine, T.SCHEDULES[k % len(T.SCHEDULES)], 4)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("algo", list(T.CONFIGS))
def test_amp_and_extremes_on_cuda(algo, fmt):
    config = T.CONFIGS[algo][1]
    _steps(T.Case(algo, config, fmt, torch.float32, SIZES).to("cuda"), T.SCHEDULES[1], 4,
           amp=[1.0, 0.0, 1.0, 0.0])
    if algo == "adam" and fmt == "bfloat16":    # as tests/test_state_formats.py says why
        config = dict(config, amsgrad=False, _off=("max_exp_avg_sqs",))
    _steps(T.Case(algo, config, fmt, torch.float32, SIZES).to("cuda"), S.constant(), 2,
           extremes=True, nan_as_nan=True)


@pytest.mark.parametrize("block", [256, 1024, 2048])
def test_every_program_size_on_cuda(block, monkeypatch):
    # a program of any multiple of the 8-bit block computes every element alike
    monkeypatch.setitem(L.BLOCK, torch.float32, block)
    for algo in T.CONFIGS:
        for fmt in FORMATS:
            _steps(T.Case(algo, T.CONFIGS[algo][1], fmt, torch.float32, SIZES).to("cuda"),
                   T.SCHEDULES[2], 2)
