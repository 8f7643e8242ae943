"""Element access and the math helpers of the Triton kernels, rounded as the reference
rounds (``kernels/reference/_common.py``): ``_fma``, ``_sqrt``, ``_div``, ``_lerp``, ``_to``
(the store conversion), ``_absmax`` (a NaN-keeping row maximum), ``_load`` / ``_store`` of a
stream in the math type. Compiled, they are Triton's correctly rounded instructions;
interpreted (``TRITON_INTERPRET=1``), torch's CPU ops on the same data.
"""

import numpy as np
import torch
import triton
import triton.language as tl

from .schedule import INTERPRET

if INTERPRET:
    from triton.runtime.interpreter import TensorHandle


# Device helpers shared by the kernels. fp32 division and sqrt are the correctly rounded
# div_rn / sqrt_rn (Triton's default fp32 `/` is div.full.f32, ~2 ulp; torch's CUDA ones are
# exact).
#
# Bit-exact with the reference. The reference rounds as torch's kernels on its device:
# ``fma`` where torch does add_(alpha)/addcmul_/lerp_ (``kernels/reference/_common.py``), and
# torch's own sqrt. The kernels use ``_fma``, ``_sqrt`` and ``_to`` (the store conversion) at
# exactly those places, so:
# * compiled (CUDA): ``fma.rn``, ``sqrt.rn``, ``cvt.rn``: correctly rounded, as torch's CUDA
#   kernels are;
# * interpreted (``TRITON_INTERPRET=1``, CPU tensors): the interpreter's own ``tl.fma`` is
#   ``x * y + z`` rounded twice and its fp32 -> bf16 cast truncates, and torch's CPU sqrt is
#   not always correctly rounded (MKL's vector sqrt: on some CPUs a share of the results is
#   1 ulp off). So there the three helpers are Python functions that let
#   Triton build the result's type and shape and replace its values with torch's CPU op on
#   the same data (``torch.addcmul``, ``torch.sqrt``, ``Tensor.to``): the device's rounding,
#   as the fp64 ``_pow``/``_cos``/``_log``/``_sqrt`` of ``schedule.py`` are torch's. Interpreted
#   Triton then equals the reference bit for bit on CPU (tests/test_kernels.py checks it
#   with zero tolerance). ``_sqrt`` here runs on a block of the tensor where the reference
#   takes the whole tensor at once: the same function, and torch's CPU sqrt rounds each
#   element alone, whatever the length and offset of the call (MKL's vector sqrt, or IEEE
#   sqrt without MKL; checked by tests/test_triton_machinery.py).
if INTERPRET:
    _TORCH = {tl.float16: torch.float16, tl.bfloat16: torch.bfloat16,
              tl.float32: torch.float32, tl.float64: torch.float64}

    def _torch_of(x):
        data = np.array(x.handle.data)  # a writable copy
        if x.dtype.scalar == tl.bfloat16:
            return torch.from_numpy(data.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(data)

    def _like(ref, t):
        """``ref`` (a tl.tensor of the result's type) with the values of torch tensor t."""
        if t.dtype == torch.bfloat16:
            data = t.view(torch.int16).numpy().view(np.uint16)
        else:
            data = t.numpy()
        data = np.ascontiguousarray(np.broadcast_to(data, np.shape(ref.handle.data)))
        return tl.tensor(TensorHandle(data.astype(ref.handle.data.dtype, copy=False),
                                      ref.handle.dtype), ref.type)

    def _fma(x, y, z):
        return _like(x * y + z, torch.addcmul(_torch_of(z), _torch_of(x), _torch_of(y)))

    def _sqrt(a, FP64=None):
        return _like(tl.sqrt(a), torch.sqrt(_torch_of(a)))

    def _to(x, dtype):
        dtype = getattr(dtype, "value", dtype)
        if x.dtype.scalar == dtype:
            return x
        return _like(x.to(dtype), _torch_of(x).to(_TORCH[dtype]))

    def _absmax(a):
        # the interpreter runs a reduction with a combine function element by element in
        # Python (~0.1 s per 1024 elements); torch's amax is the reference's own, NaN
        # propagating as the compiled combine below
        return _like(tl.max(a, axis=1), torch.amax(_torch_of(a), dim=1))
else:
    @triton.jit
    def _fma(x, y, z):
        return tl.fma(x, y, z)

    @triton.jit
    def _sqrt(a, FP64: tl.constexpr):
        if FP64:
            return tl.sqrt(a)
        else:
            return tl.sqrt_rn(a)

    @triton.jit
    def _to(x, dtype: tl.constexpr):
        return x.to(dtype)

    @triton.jit
    def _max_nan(a, b):
        return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)

    @triton.jit
    def _absmax(a):
        # tl.max drops NaNs (max.f32); the reference's amax, and the 8-bit format's
        # "a non-finite value makes its block's scale non-finite", keep them
        return tl.reduce(a, 1, _max_nan)


@triton.jit
def _div(a, b, FP64: tl.constexpr):
    if FP64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def _lerp(a, b, w):
    """torch's ``a.lerp_(b, w)`` (reference ``lerp``): ``fma(w, b - a, a)`` for w < 0.5,
    else ``fma(-(b - a), 1 - w, b)``; ``w`` is a scalar, so the branch is uniform."""
    d = b - a
    if w < 0.5:
        out = _fma(w, d, a)
    else:
        out = _fma(-d, 1.0 - w, b)
    return out


@triton.jit
def _load(ptr, offs, mask, CT: tl.constexpr):
    return tl.load(ptr + offs, mask=mask).to(CT)


@triton.jit
def _store(ptr, offs, x, mask):
    tl.store(ptr + offs, _to(x, ptr.dtype.element_ty), mask=mask)
