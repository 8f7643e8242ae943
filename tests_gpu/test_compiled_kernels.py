"""Compiled Triton kernels on CUDA against the reference backend on CUDA (torch's CUDA ops:
fma, sqrt and division correctly rounded, as the kernels' fma.rn / sqrt.rn / div.rn):
every configuration of tests/_kernel_cases.py (every flag set) in every dtype, ragged
lists with empty tensors beside a tensor of 70001 elements, bit for bit."""

import sys
from pathlib import Path

import pytest
import torch

import fusedsched.kernels.triton.adam  # noqa: E402,F401  compiled-mode @triton.jit first
import fusedsched.kernels.triton.rmsprop  # noqa: E402,F401
import fusedsched.kernels.triton.sgd  # noqa: E402,F401
from fusedsched import schedules as S  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import _kernel_cases as K  # noqa: E402  (the cases of tests/test_kernels.py)

# empty tensors first, in the middle and last; many small ones; one just past a program
SHAPES = [[0, 700, 3, 0, 1030, 0], [k % 5 + 1 for k in range(23)], [513]]


@pytest.mark.parametrize("dtype", K.DTYPES, ids=str)
@pytest.mark.parametrize("algo", list(K.CONFIGS))
def test_compiled_matches_reference_on_cuda(algo, dtype):
    for k, config in enumerate(K.CONFIGS[algo]):
        mine = K.Case(algo, config, "native", dtype, SHAPES[k % len(SHAPES)] + [70001])
        K.compare_steps(mine.to("cuda"), "triton", S.warmup(S.one_cycle(8), 2), 3,
                        scaled=False)


@pytest.mark.parametrize("algo", list(K.CONFIGS))
def test_compiled_amp_on_cuda(algo):
    mine = K.Case(algo, K.CONFIGS[algo][1], "native", torch.float32, [3, 0, 4099]).to("cuda")
    K.compare_steps(mine, "triton", S.exponential(0.9), 4, amp=[1, 0, 1, 0])
    assert [s.item() for s in mine.lists[-1]] == [i % 3 + 2.0 for i in range(3)]


def _n_binaries(jit_fn):
    caches = getattr(jit_fn, "device_caches", {})
    return sum(len(v[0]) for v in caches.values())


def test_one_launch_no_recompile_across_steps():
    # the position and steps are read by pointer: stepping compiles nothing new
    import fusedsched as fs
    from fusedsched.kernels.triton.adam import adam_kernel
    p = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in (10, 0, 5000)]
    opt = fs.Adam(p, lr=1e-3, schedule=S.cosine(100), backend="triton")
    for q in p:
        q.grad = torch.randn_like(q)
    opt.step()
    n0 = _n_binaries(adam_kernel)
    for _ in range(20):
        opt.step()
    assert _n_binaries(adam_kernel) == n0
