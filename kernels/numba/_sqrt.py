"""The square-root modes of Adam and RMSprop (``set_sqrt_mode``): IEEE, or torch's own CPU
sqrt (MKL's vector function, found in libtorch_cpu) on blocks of ``BLOCK`` elements."""

import math
import os

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ._llvm import JIT


# ------------------------------------------------------------------------------ sqrt
#
# Two ways to take the square roots of Adam and RMSprop (``sqrt_mode``):
#
# * "ieee" (the default): ``math.sqrt``, correctly rounded, vectorised in the update's one
#   loop (vsqrtps). torch's ``fused=True`` CPU kernels take IEEE square roots too, so the
#   fp32 distance from torch's for-loop is the same as torch fused's (the fp32 yardstick).
# * "torch": bit-identical to torch's for-loop optimizers. torch's CPU ``Tensor.sqrt()`` of
#   a contiguous float32/float64 tensor is MKL's vector sqrt (ATen/cpu/vml.h: vmsSqrt /
#   vmdSqrt, mode VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE), which is not correctly
#   rounded: a share of float32 and float64 square roots differ by 1 ulp from IEEE sqrt
#   (position independent; LA/HA/EP modes identical; bench/results/numba_decisions.md). The kernels then take the square roots of each block of BLOCK
#   elements through the same MKL function (exported by libtorch_cpu); without MKL in
#   torch, torch's sqrt is IEEE (``_mm256_sqrt_ps``) and the kernels use ``math.sqrt``.
#   ``sqrt_fns()`` picks, checked once per process against ``torch.sqrt`` on probe values.
#   Bit-identical in float32 and 16-bit; float64 results to about an ulp: the step's float64
#   scalars, lr * f(t) and the bias corrections, come from Numba's pow / cos / sqrt here and
#   from torch's and Python's there, and only a float32 update uses them rounded to float32.
#
# Why "ieee" is the default: MKL's sqrt, a call per block, costs about half of a whole
# memory-bound Adam step again, so "torch" mode runs well below torch fused's speed
# (bench/results/numba_decisions.md). Choose "torch" with the environment variable FUSEDSCHED_SQRT=torch (read at
# import) or ``set_sqrt_mode("torch")``.

SQRT_MODES = ("ieee", "torch")


def _mode_from_env():
    mode = os.environ.get("FUSEDSCHED_SQRT", "ieee")
    if mode not in SQRT_MODES:
        raise ValueError(f"FUSEDSCHED_SQRT must be one of {SQRT_MODES}, got "
                         f"FUSEDSCHED_SQRT={mode!r}")
    return mode


_sqrt_mode = _mode_from_env()


def set_sqrt_mode(mode):
    """Choose how the Numba Adam and RMSprop kernels take square roots, process-wide:
    "ieee" (default: correctly rounded, fastest) or "torch" (MKL's vector sqrt, as torch's
    CPU ``Tensor.sqrt``: float32 results bit-identical to torch's for-loop optimizers,
    slower). Returns the previous mode. Raises ValueError for another value."""
    global _sqrt_mode
    if mode not in SQRT_MODES:
        raise ValueError(f"sqrt mode must be one of {SQRT_MODES}, got mode={mode!r}")
    previous, _sqrt_mode = _sqrt_mode, mode
    return previous


def sqrt_mode():
    """The current square-root mode ("ieee" or "torch")."""
    return _sqrt_mode


BLOCK = 512                     # elements per sqrt batch (far below MKL's threading size)
_VML_MODE = 0x2 | 0x100 | 0x140000          # VML_HA | VML_ERRMODE_IGNORE | VML_FTZDAZ_OFF


@intrinsic
def _call_vsqrt(typingctx, fn, n, src, dst):
    """``fn(int32 n, T *src, T *dst, int64 mode)`` through the address ``fn`` (MKL's
    vmsSqrt / vmdSqrt signature, LP64)."""
    if not all(isinstance(a, types.Integer) for a in (fn, n, src, dst)):
        return None

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(32), i8p, i8p, ir.IntType(64)])
        f = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(f, [builder.trunc(args[1], ir.IntType(32)), builder.inttoptr(args[2], i8p),
                         builder.inttoptr(args[3], i8p), ir.Constant(ir.IntType(64), _VML_MODE)])
        return context.get_dummy_value()

    return types.none(fn, n, src, dst), codegen


@njit(**JIT)
def vsqrt(fn, buf, n):
    """``buf[:n] = sqrt(buf[:n])`` as torch's CPU sqrt rounds (``fn``: the MKL function's
    address, 0 for IEEE sqrt)."""
    if fn != 0:
        if n > 0:
            _call_vsqrt(fn, n, buf.ctypes.data, buf.ctypes.data)
    else:
        for k in range(n):
            buf[k] = math.sqrt(buf[k])


_sqrt_fns = None


def sqrt_fns():
    """(float32 function address, float64 function address) for ``vsqrt``; 0 = IEEE."""
    global _sqrt_fns
    if _sqrt_fns is None:
        _sqrt_fns = (_find_sqrt(torch.float32, "vmsSqrt"), _find_sqrt(torch.float64, "vmdSqrt"))
    return _sqrt_fns


def _find_sqrt(dtype, name):
    import ctypes
    probe = torch.cat([torch.rand(4096, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 4,
                       torch.tensor([0.0, -0.0, 1e-300, 5e-324, 1e-42, math.inf, -1.0, math.nan],
                                    dtype=dtype)])
    expected = probe.sqrt()
    with np.errstate(invalid="ignore"):
        ieee = torch.from_numpy(np.sqrt(probe.numpy()))
    if torch.equal(expected.view(_INT_OF[dtype]), ieee.view(_INT_OF[dtype])):
        return 0                                   # torch's own sqrt is IEEE here
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        fn = getattr(lib, name)
    except (OSError, AttributeError):
        return 0
    fn.restype = None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    got = probe.clone()
    fn(got.numel(), got.data_ptr(), got.data_ptr(), _VML_MODE)
    if not torch.equal(got.view(_INT_OF[dtype]), expected.view(_INT_OF[dtype])):
        return 0
    return ctypes.cast(fn, ctypes.c_void_p).value


_INT_OF = {torch.float32: torch.int32, torch.float64: torch.int64}


def sqrt_fn(marker):
    """The ``vsqrt`` function address for the math type of storage ``marker`` (0: IEEE
    sqrt, the one-pass loops)."""
    if _sqrt_mode == "ieee":
        return 0
    f32, f64 = sqrt_fns()
    return f64 if isinstance(marker, np.float64) else f32


def tmp(marker):
    """A (6, BLOCK) scratch array of the math type of storage ``marker``: rows 0..2 for
    the torch-sqrt path's blocks, rows 3..5 for the 8-bit states' new values of a block
    (``_state``; BLOCK >= state_format.BLOCK_SIZE)."""


@overload(tmp)
def _ol_tmp(marker):
    if marker == types.float64:
        return lambda marker: np.empty((6, BLOCK), dtype=np.float64)
    return lambda marker: np.empty((6, BLOCK), dtype=np.float32)
