"""State formats in the Numba kernels (``kernels/state_format.py``): the random bits, the
stochastic bfloat16 rounding and the 8-bit codes as branch-free 32-bit LLVM IR, and the
*state handles* through which the algorithms' loops load and store their states.

A state is reached through a handle made once per tensor piece (``state_at``):

* ``"native"``: the storage array itself (``_elements.load`` / ``store``: round to
  nearest);
* ``"bfloat16"``: a ``BF16`` (int16 bit patterns and the piece's ``mix``, the seed part
  of the random bits); a store rounds stochastically;
* ``"8bit"``: a ``Q8`` (the uint8 codes, the piece's scales, a scratch row holding the new
  values of the current block, that block's scale and first element, the code constants
  of a signed or non-negative state). A load decodes with the block's scale; a store
  keeps the new value in the scratch row; ``flush`` quantizes the block (absmax, scale,
  codes) once the loop over it is done.

The algorithms walk a piece in *blocks* (``blocking``): one block for the whole piece in
the native and bfloat16 formats (their IEEE-sqrt one-pass loops are unchanged), 256-element
blocks of the tensor in the 8-bit format (a loop-invariant scale per block keeps the loads
vectorised: a scale gathered per element would not be), and the torch-sqrt path's BLOCK
elements otherwise. ``at_block`` gives the handle of one block, ``flush`` ends it.

The format reaches the compiled code as the type of its *format marker*
(``FORMAT_MARKERS``; Numba specialises each kernel per marker type): int8 for "native",
int16 for "bfloat16" (the storage's bit patterns), uint8 for "8bit" (the codes).

Integer work is 32-bit unsigned, emitted as IR: Numba types arithmetic on uint32 scalars
as 64-bit, and 64-bit lanes would halve the vector width of the hash's multiplies. The
values are the reference's (int64 with masks to 32 bits): the products agree modulo
2**32, and the code's ``bits + random`` is taken as ``(bits >> 20) + ((bits & (2**20 - 1))
+ random) >> 20``, which cannot wrap where the reference's int64 sum does not.
"""

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .. import state_format as F
from ._elements import view
from ._half import bf16_to_float
from ._llvm import JIT, f64_at

FORMAT_MARKERS = {"native": np.int8(0), "bfloat16": np.int16(0), "8bit": np.uint8(0)}

_I32 = ir.IntType(32)
_F32 = ir.FloatType()
_CODE_SHIFT = 23 - F.MANTISSA_BITS


def _c(v):
    return ir.Constant(_I32, v)


def _mix32(builder, h):
    """``state_format.mix32`` on an i32 (wrapping multiplies: the products modulo 2**32)."""
    h = builder.xor(h, builder.lshr(h, _c(16)))
    h = builder.mul(h, _c(F.MIX_MULTIPLIER_1))
    h = builder.xor(h, builder.lshr(h, _c(15)))
    h = builder.mul(h, _c(F.MIX_MULTIPLIER_2))
    return builder.xor(h, builder.lshr(h, _c(16)))


@intrinsic
def random_bits(typingctx, x, mix):
    """uint32 random bits of float32 ``x`` with the piece's ``mix`` (uint32): ``mix32(
    bits(x) ^ mix)``, as ``reference._state.random_bits``."""
    if x != types.float32 or mix != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return _mix32(builder, builder.xor(builder.bitcast(args[0], _I32), args[1]))

    return types.uint32(types.float32, types.uint32), codegen


@intrinsic
def round_bf16(typingctx, x, r):
    """float32 ``x`` rounded stochastically to bfloat16 bits (int16) with random bits
    ``r`` (uint32): ``(bits(x) + (r & 0xFFFF)) >> 16`` modulo 2**32, as
    ``reference._state.round_bfloat16``."""
    if x != types.float32 or r != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        b = builder.add(builder.bitcast(args[0], _I32), builder.and_(args[1], _c(F.BF16_RANDOM_MASK)))
        return builder.trunc(builder.lshr(b, _c(16)), ir.IntType(16))

    return types.int16(types.float32, types.uint32), codegen


@intrinsic
def abs_bits_max(typingctx, acc, x):
    """``max(acc, bits(|x|))`` (uint32, float32): the absmax of a block as the integer
    maximum of the magnitudes' bits, the float maximum for every non-NaN value (a float
    maximum reduction does not vectorise without fast-math, this one does). A NaN has
    larger bits than any number, so a block with a NaN gets a NaN absmax, as torch's
    ``amax``."""
    if acc != types.uint32 or x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        a = builder.and_(builder.bitcast(args[1], _I32), _c(0x7FFFFFFF))
        return builder.select(builder.icmp_unsigned(">", a, args[0]), a, args[0])

    return types.uint32(types.uint32, types.float32), codegen


@intrinsic
def bits_to_float(typingctx, b):
    """float32 of its bits (uint32)."""
    if b != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], _F32)

    return types.float32(types.uint32), codegen


@intrinsic(prefer_literal=True)
def decode8(typingctx, code, signed, offset, sub_step):
    """The signed magnitude (float32) of 8-bit ``code`` (uint8), before its block's scale:
    code ``c`` (sign bit cleared when ``signed``) is ``bits(c << 20 + offset)`` for ``c >=
    8`` (``offset = (127 - BIAS) << 23``: exponent and mantissa are the code's bits) and
    ``c * sub_step`` below (subnormal, ``sub_step = T / 8``), negated for a signed code
    with bit 7 set (``reference._state.magnitude`` and ``dequantize``; the negation commutes
    with the scale's multiplication)."""
    if (code != types.uint8 or not isinstance(signed, types.BooleanLiteral)
            or offset != types.uint32 or sub_step != types.float32):
        return None
    is_signed = signed.literal_value

    def codegen(context, builder, signature, args):
        c8, _, off, step = args
        c = builder.zext(c8, _I32)
        m = builder.and_(c, _c(127)) if is_signed else c
        normal = builder.bitcast(builder.add(builder.shl(m, _c(_CODE_SHIFT)), off), _F32)
        sub = builder.fmul(builder.uitofp(m, _F32), step)
        mag = builder.select(builder.icmp_unsigned(">=", m, _c(1 << F.MANTISSA_BITS)), normal, sub)
        if not is_signed:
            return mag
        # bit 7 of the code is the sign bit of the value
        sign = builder.shl(builder.and_(c, _c(128)), _c(24))
        return builder.bitcast(builder.xor(builder.bitcast(mag, _I32), sign), _F32)

    return types.float32(code, signed, offset, sub_step), codegen


@intrinsic(prefer_literal=True)
def encode8(typingctx, x, inv, r, signed, smallest, rebase, top):
    """The 8-bit code (uint8) of float32 ``x`` in a block with ``inv = MAX_MAGNITUDE /
    absmax`` (0 for absmax 0), random bits ``r`` (uint32) and the state's constants
    (``smallest`` normal magnitude T, ``rebase``, ``top`` code), step for step as
    ``reference._state.quantize``: ``y = min(|x| * inv, MAX_MAGNITUDE)`` (NaN stays NaN,
    as ``clamp_max``), ``y + T`` below T, the bits plus ``r``'s low 20 shifted right by 20,
    rebased (8 less for a shifted value), at most ``top``; then the sign bit (signed) or
    at least code 1 for a positive value (non-negative).

    ``bits(y) + (r & (2**20 - 1))`` cannot wrap in 32 bits: ``y`` is at most 1.875, or a
    NaN that is ``|x|``'s (sign bit clear) or the product ``inf * 0`` (``inv`` is finite),
    x86's default NaN 0xFFC00000."""
    if (x != types.float32 or inv != types.float32 or r != types.uint32
            or not isinstance(signed, types.BooleanLiteral) or smallest != types.float32
            or rebase != types.uint32 or top != types.uint32):
        return None
    is_signed = signed.literal_value

    def codegen(context, builder, signature, args):
        xv, iv, rv, _, t, rb, tp = args
        a = builder.bitcast(builder.and_(builder.bitcast(xv, _I32), _c(0x7FFFFFFF)), _F32)
        y = builder.fmul(a, iv)
        top_magnitude = ir.Constant(_F32, F.MAX_MAGNITUDE)
        y = builder.select(builder.fcmp_ordered(">", y, top_magnitude), top_magnitude, y)
        small = builder.fcmp_ordered("<", y, t)
        y = builder.select(small, builder.fadd(y, t), y)
        b = builder.add(builder.bitcast(y, _I32), builder.and_(rv, _c(F.CODE_RANDOM_MASK)))
        code = builder.sub(builder.lshr(b, _c(_CODE_SHIFT)),
                           builder.add(rb, builder.select(small, _c(1 << F.MANTISSA_BITS), _c(0))))
        code = builder.select(builder.icmp_unsigned(">", code, tp), tp, code)
        zero = ir.Constant(_F32, 0.0)
        if is_signed:
            code = builder.or_(code, builder.select(builder.fcmp_ordered("<", xv, zero),
                                                    _c(128), _c(0)))
        else:
            at_least_1 = builder.select(builder.icmp_unsigned("<", code, _c(1)), _c(1), code)
            code = builder.select(builder.fcmp_ordered(">", xv, zero), at_least_1, code)
        return builder.trunc(code, ir.IntType(8))

    return types.uint8(x, inv, r, signed, smallest, rebase, top), codegen


# ------------------------------------------------------------------------ state handles

class BF16(NamedTuple):
    """A bfloat16 state piece: ``bits`` (int16 array), ``mix`` (uint32)."""
    bits: object
    mix: object


class Q8(NamedTuple):
    """An 8-bit piece of a non-negative state (see the module docstring); ``scale`` and
    ``lo`` are those of the current block (``at_block``); the rest the code's constants."""
    codes: object
    scales: object
    buf: object
    scale: object
    lo: object
    mix: object
    offset: object
    sub_step: object
    smallest: object
    rebase: object
    top: object


class Q8Signed(Q8):
    """An 8-bit piece of a signed state (its own type: the code's sign bit is compiled in,
    not selected per element)."""


def _is(h, cls):
    if not isinstance(h, types.BaseNamedTuple):
        return False
    if cls is Q8:
        return h.instance_class in (Q8, Q8Signed)
    return h.instance_class is cls


def _signed(h):
    return _is(h, Q8Signed)


_M32 = np.uint64(F.MASK32)
_STEP_MULTIPLIER = np.uint64(F.STEP_MULTIPLIER)
_SALT_MULTIPLIER = np.uint64(F.SALT_MULTIPLIER)


@njit(**JIT)
def piece_mix(ptrs, i, step_column, salt):
    """``state_format.step_mix`` (uint32) of tensor ``i``'s step after this update (its
    ``step`` + 1, read through the table's step column) and state ``salt``."""
    step = np.uint64(np.int64(f64_at(ptrs[i, step_column])[0] + 1.0)) & _M32
    return np.uint32((step * _STEP_MULTIPLIER + np.uint64(salt) * _SALT_MULTIPLIER) & _M32)


def state_at(fmt, ptrs, i, column, step_column, size, a, b, marker, signed, buf):
    """The handle of elements [a, b) of tensor ``i``'s state in table ``column`` (format
    marker ``fmt``; ``marker`` the params' storage marker). In the 8-bit format ``a`` is a
    multiple of BLOCK_SIZE (the walk's ``granule``), the scales are read in column
    ``column + step_column - 1`` (the table puts the scale columns after the step column,
    in state order), ``signed`` chooses the code and ``buf`` is the block's scratch row
    (math type, BLOCK_SIZE elements at least). The salt is the state's kernel-order index
    ``column - 2``."""


@overload(state_at, prefer_literal=True)
def _ol_state_at(fmt, ptrs, i, column, step_column, size, a, b, marker, signed, buf):
    if fmt == types.int8:
        def impl(fmt, ptrs, i, column, step_column, size, a, b, marker, signed, buf):
            return view(ptrs[i, column], size, marker)[a:b]
    elif fmt == types.int16:
        def impl(fmt, ptrs, i, column, step_column, size, a, b, marker, signed, buf):
            return BF16(view(ptrs[i, column], size, np.int16(0))[a:b],
                        piece_mix(ptrs, i, step_column, column - 2))
    elif fmt == types.uint8:
        if not isinstance(signed, types.BooleanLiteral):
            return None
        is_signed = signed.literal_value
        cls = Q8Signed if is_signed else Q8
        e = F.exponent_bits(is_signed)
        bias = F.bias(is_signed)
        offset, sub_step = np.uint32((127 - bias) << 23), np.float32(F.smallest_normal(is_signed) / 8)
        smallest, rebase = np.float32(F.smallest_normal(is_signed)), np.uint32(F.rebase(is_signed))
        top = np.uint32(F.top_code(is_signed))
        assert sub_step == F.smallest_normal(is_signed) / (1 << F.MANTISSA_BITS) and e

        def impl(fmt, ptrs, i, column, step_column, size, a, b, marker, signed, buf):
            n_blocks = (size + F.BLOCK_SIZE - 1) // F.BLOCK_SIZE
            scales = view(ptrs[i, column + step_column - 1], n_blocks, np.float32(0))
            return cls(view(ptrs[i, column], size, np.uint8(0))[a:b],
                       scales[a // F.BLOCK_SIZE:(b + F.BLOCK_SIZE - 1) // F.BLOCK_SIZE], buf,
                       np.float32(0.0), a - a, piece_mix(ptrs, i, step_column, column - 2),
                       offset, sub_step, smallest, rebase, top)
    else:
        return None
    return impl


def blocking(h, n, size):
    """(number of blocks, block size) of a piece of ``n`` elements reached through handle
    ``h``: BLOCK_SIZE-element blocks in the 8-bit format, else ``size``-element ones."""


@overload(blocking)
def _ol_blocking(h, n, size):
    if _is(h, Q8):
        return lambda h, n, size: ((n + F.BLOCK_SIZE - 1) // F.BLOCK_SIZE, n - n + F.BLOCK_SIZE)
    return lambda h, n, size: ((n + size - 1) // size, size)


@njit(**JIT)
def block_range(k, size, n):
    """(lo, hi): the elements of block ``k`` of ``size`` of a piece of ``n``."""
    lo = k * size
    return lo, min(lo + size, n)


def at_block(h, k, lo):
    """The handle of block ``k`` (first element ``lo``) of ``h``'s piece."""


@overload(at_block)
def _ol_at_block(h, k, lo):
    if _is(h, Q8):
        cls = h.instance_class

        def impl(h, k, lo):
            return cls(h.codes, h.scales, h.buf, h.scales[np.uint64(k)], lo, h.mix, h.offset,
                       h.sub_step, h.smallest, h.rebase, h.top)
        return impl
    return lambda h, k, lo: h


def flush(h, k, lo, hi):
    """End block ``k`` (elements [lo, hi)) of ``h``: in the 8-bit format, its scale and
    codes from the new values its loop stored (``reference._state.quantize``); nothing in
    the others (their stores are done)."""


# The codes are encoded in loops of their own after each block's update loop. Encoding the
# previous block's codes inside the next block's update loop instead (in its stores, beside
# the divisions and square roots) measured slower (bench/results/state_dtype/README.md).
@overload(flush)
def _ol_flush(h, k, lo, hi):
    if not _is(h, Q8):
        return lambda h, k, lo, hi: None
    signed = _signed(h)

    def impl(h, k, lo, hi):
        buf, codes = h.buf, h.codes
        m = hi - lo
        acc = np.uint32(0)
        for j in range(m):
            acc = abs_bits_max(acc, np.float32(buf[np.uint64(j)]))
        absmax = bits_to_float(acc)
        top = np.float32(F.MAX_MAGNITUDE)
        inv = top / absmax if absmax > np.float32(0.0) else np.float32(0.0)
        for j in range(m):
            x = np.float32(buf[np.uint64(j)])
            codes[np.uint64(lo + j)] = encode8(x, inv, random_bits(x, h.mix), signed,
                                               h.smallest, h.rebase, h.top)
        h.scales[np.uint64(k)] = absmax / top
    return impl


def state_load(h, j):
    """Element ``j`` of the state behind handle ``h`` (float32), for ``_elements.load``."""


@overload(state_load)
def _ol_state_load(h, j):
    if _is(h, BF16):
        return lambda h, j: bf16_to_float(h.bits[np.uint64(j)])
    if _is(h, Q8):
        signed = _signed(h)
        return lambda h, j: decode8(h.codes[np.uint64(j)], signed, h.offset,
                                    h.sub_step) * h.scale
    return None


def state_store(h, j, x):
    """Store the new value ``x`` (math type) of element ``j`` through handle ``h``, for
    ``_elements.store``: rounded stochastically (bfloat16), kept for ``flush`` (8-bit)."""


@overload(state_store)
def _ol_state_store(h, j, x):
    if _is(h, BF16):
        def impl(h, j, x):
            x32 = np.float32(x)
            h.bits[np.uint64(j)] = round_bf16(x32, random_bits(x32, h.mix))
        return impl
    if _is(h, Q8):
        def impl(h, j, x):
            h.buf[np.uint64(j - h.lo)] = np.float32(x)
        return impl
    return None


def is_handle(h):
    """Whether Numba type ``h`` is a state handle of a non-native format."""
    return _is(h, BF16) or _is(h, Q8)
