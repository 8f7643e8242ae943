"""Raw pointers and LLVM intrinsics of the Numba kernels: a typed pointer from an address
(``address_as_pointer``, ``f64_at``), fused multiply-add (``fma``), IEEE square root
(``sqrt``) and torch's ``lerp``; and ``JIT``, the options every kernel compiles with."""

from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic


JIT = dict(cache=True, error_model="numpy")


# ----------------------------------------------------------------------------- pointers

@intrinsic
def address_as_pointer(typingctx, address, marker):
    """int64 address -> typed pointer ``marker_type*`` (use with ``numba.carray``)."""
    if not isinstance(address, types.Integer) or not isinstance(marker, (types.Float, types.Integer)):
        return None
    ptrty = types.CPointer(marker)
    sig = ptrty(address, marker)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptrty))

    return sig, codegen


@njit(**JIT)
def f64_at(address):
    """A length-1 float64 array over the scalar at ``address`` (steps, position)."""
    return carray(address_as_pointer(address, 0.0), 1)


@intrinsic
def _f32_to_bits(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _bits_to_f32(typingctx, x):
    if x != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def fma(typingctx, x, y, z):
    """``x * y + z`` rounded once (``llvm.fma``; one ``vfmadd`` per vector in the loops on
    x86 with FMA): the fused multiply-adds of ``kernels/reference/_common.fma``, placed
    exactly where the reference has them. Nothing else is contracted (no ``fastmath``)."""
    if not (isinstance(x, types.Float) and x == y and y == z):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(args[0], args[1], args[2])

    return x(x, y, z), codegen


@intrinsic
def sqrt(typingctx, x):
    """IEEE square root (``llvm.sqrt``; ``vsqrtps`` per vector in the loops). Not
    ``math.sqrt``: Numba lowers that to a call of libm's ``sqrtf``, which may set errno, so
    LLVM keeps it a scalar call and the loop around it does not vectorise (bench/results/
    numba_decisions.md)."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.sqrt", [args[0].type])
        return builder.call(fn, [args[0]])

    return x(x), codegen


@njit(**JIT)
def lerp(start, end, w, one_m_w, small_w):
    """torch's ``start.lerp_(end, w)`` as ``kernels/reference/_common.lerp``:
    ``fma(w, end - start, start)`` when ``small_w`` (w < 0.5), else
    ``fma(-(end - start), 1 - w, end)``."""
    diff = end - start
    if small_w:
        return fma(w, diff, start)
    return fma(-diff, one_m_w, end)
