"""The state formats of ``kernels/state_format.py`` in the Triton kernels: the random
bits, bfloat16 stochastic rounding, the 8-bit codes and their block scales, and the loads and
stores of a state stream in any format (``_load_state`` / ``_store_state``), the reference's
``kernels/reference/_state.py`` operation for operation.
"""

import triton
import triton.language as tl

from .. import state_format as SF
from ._elements import _absmax, _div, _load, _store, _to


# FORMAT is a constexpr: "native" compiles to the plain loads and stores of ``_elements``
# and nothing else. A state's SALT is its index in the kernel's state order
# (ops.SIGNATURES), SIGNED whether its 8-bit code has a sign bit (not in
# Signature.nonnegative). Integer work is uint32: wrapping multiplies and logical shifts are
# the reference's int64 arithmetic masked to 32 bits (the interpreter's numpy uint32 does
# the same).
#
# "8bit": a program's elements are [BLOCK // 256, 256] (``_offsets``), one row per 8-bit
# block, so a block's absmax is a reduction along axis 1 and its scale a row value; every
# BLOCK is a multiple of 256 and program starts are multiples of BLOCK, so the rows are the
# tensor's own blocks (the last one masked at numel, masked elements counting 0 as the
# reference's zero padding).

_QB: tl.constexpr = tl.constexpr(SF.BLOCK_SIZE)
_MAX_MAGNITUDE: tl.constexpr = tl.constexpr(SF.MAX_MAGNITUDE)
_MANTISSA: tl.constexpr = tl.constexpr(SF.MANTISSA_BITS)
_CODE_SHIFT: tl.constexpr = tl.constexpr(23 - SF.MANTISSA_BITS)   # fp32 bits >> it: e, f
_FRACTION: tl.constexpr = tl.constexpr(1 << SF.MANTISSA_BITS)      # codes per binade
_STEP_MULTIPLIER: tl.constexpr = tl.constexpr(SF.STEP_MULTIPLIER)
_SALT_MULTIPLIER: tl.constexpr = tl.constexpr(SF.SALT_MULTIPLIER)
_MIX_MULTIPLIER_1: tl.constexpr = tl.constexpr(SF.MIX_MULTIPLIER_1)
_MIX_MULTIPLIER_2: tl.constexpr = tl.constexpr(SF.MIX_MULTIPLIER_2)
_BF16_RANDOM_MASK: tl.constexpr = tl.constexpr(SF.BF16_RANDOM_MASK)
_BF16_NAN: tl.constexpr = tl.constexpr(SF.BF16_NAN)
_CODE_RANDOM_MASK: tl.constexpr = tl.constexpr(SF.CODE_RANDOM_MASK)
# the 8-bit code's constants per signedness (True: a signed state's 4-bit exponent code),
# computed here from state_format's definitions; a kernel reads them when it compiles
_CODE = {signed: {"bias": SF.bias(signed), "top": SF.top_code(signed),
                  "smallest_normal": SF.smallest_normal(signed), "rebase": SF.rebase(signed),
                  "subnormal_unit": SF.smallest_normal(signed) / (1 << SF.MANTISSA_BITS)}
         for signed in (False, True)}


@triton.constexpr_function
def _code(name, signed):
    """``_CODE[signed][name]``: "bias", "top" (the largest magnitude code),
    "smallest_normal" (T), "rebase", "subnormal_unit" (the magnitude of code 1)."""
    return _CODE[signed][name]


@triton.constexpr_function
def _state_type(DTYPE, FORMAT):
    """The element type of the state tensors: the parameters' (native), bf16, or uint8."""
    if FORMAT == "bfloat16":
        return tl.bfloat16
    if FORMAT == "8bit":
        return tl.uint8
    return DTYPE


@triton.jit
def _offsets(start, BLOCK: tl.constexpr, FORMAT: tl.constexpr):
    """The program's element offsets (int64): [BLOCK], or [BLOCK // 256, 256] for "8bit"
    (row r the 8-bit block that starts at ``start + 256 r``)."""
    if FORMAT == "8bit":
        offs = start + (tl.arange(0, BLOCK // _QB)[:, None] * _QB
                        + tl.arange(0, _QB)[None, :])
    else:
        offs = start + tl.arange(0, BLOCK)
    return offs


@triton.jit
def _scale_rows(offs, start, n):
    """(scale offsets [rows], mask) of the 8-bit blocks of a program's [rows, 256] ``offs``:
    the rows that start below numel ``n``."""
    rows = start // _QB + tl.arange(0, offs.shape[0])
    return rows, rows * _QB < n


@triton.jit
def _random_bits(x, step, SALT: tl.constexpr):
    """uint32 random bits of the fp32 values ``x`` (``random_bits`` of the reference):
    their bits mixed with ``step`` (fp64, the parameter's step after this update) and the
    state's SALT."""
    tl.static_assert(SALT * _SALT_MULTIPLIER < 2**31)   # the constant is an int32 literal
    mix = step.to(tl.int64).to(tl.uint32) * _STEP_MULTIPLIER + SALT * _SALT_MULTIPLIER
    h = x.to(tl.uint32, bitcast=True) ^ mix
    h ^= h >> 16
    h = h * _MIX_MULTIPLIER_1
    h ^= h >> 15
    h = h * _MIX_MULTIPLIER_2
    return h ^ (h >> 16)


@triton.jit
def _round_bfloat16(x, r):
    """fp32 ``x`` rounded stochastically to bf16 with uint32 random bits ``r``: the bits
    plus ``r``'s low 16, the low 16 dropped, a NaN the quiet NaN (``round_bfloat16`` of
    the reference)."""
    b = (x.to(tl.uint32, bitcast=True) + (r & _BF16_RANDOM_MASK)) >> 16
    b = tl.where(x != x, _BF16_NAN, b)
    return b.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _dequantize(codes, scale, SIGNED: tl.constexpr):
    """fp32 values of uint8 ``codes`` [rows, 256] with their blocks' fp32 ``scale`` [rows]
    (``dequantize`` of the reference): ``magnitude(code) * scale``, negated by bit 7 when
    SIGNED."""
    c = codes.to(tl.uint32)
    if SIGNED:
        m = c & 127
    else:
        m = c
    e = m >> _MANTISSA
    f = m & (_FRACTION - 1)
    normal = ((e + (127 - _code("bias", SIGNED))) << 23) | (f << _CODE_SHIFT)
    normal = normal.to(tl.float32, bitcast=True)   # (for e == 0 unused)
    subnormal = f.to(tl.float32) * _code("subnormal_unit", SIGNED)
    value = tl.where(e > 0, normal, subnormal) * scale[:, None]
    if SIGNED:
        value = tl.where(c >= 128, -value, value)
    return value


@triton.jit
def _quantize(x, r, mask, SIGNED: tl.constexpr):
    """(uint8 codes [rows, 256], fp32 scales [rows]) of fp32 ``x`` [rows, 256] with uint32
    random bits ``r`` (``quantize`` of the reference); ``mask`` (None: all) the elements
    that count for the absmax."""
    a = tl.abs(x)
    if mask is None:
        absmax = _absmax(a)
    else:
        absmax = _absmax(tl.where(mask, a, 0.0))
    top = tl.full(absmax.shape, _MAX_MAGNITUDE, tl.float32)
    scale = _div(absmax, top, False)
    # (1.875 / 1.875 where absmax is 0 or NaN: no division by zero, the same inv = 0)
    inv = tl.where(absmax > 0, _div(top, tl.where(absmax > 0, absmax, top), False), 0.0)
    y = tl.minimum(a * inv[:, None], _MAX_MAGNITUDE, propagate_nan=tl.PropagateNan.ALL)
    small = y < _code("smallest_normal", SIGNED)
    y = tl.where(small, y + _code("smallest_normal", SIGNED), y)
    code = ((y.to(tl.uint32, bitcast=True) + (r & _CODE_RANDOM_MASK)) >> _CODE_SHIFT
            ) - _code("rebase", SIGNED)
    code = tl.where(small, code - _FRACTION, code)
    code = tl.minimum(code, _code("top", SIGNED))   # (unsigned: a NaN wraps to the top too)
    if SIGNED:
        code = tl.where(x < 0, code | 128, code)
    else:
        code = tl.where(x > 0, tl.maximum(code, 1), code)
    return code.to(tl.uint8), scale


@triton.jit
def _load_state(ptr, sc_ptr, offs, mask, start, n, CT: tl.constexpr, FORMAT: tl.constexpr,
                SIGNED: tl.constexpr):
    """A state stream's values in the math type CT: the stored dtype converted ("native",
    "bfloat16"), or the 8-bit codes dequantized with their scales (``sc_ptr``)."""
    if FORMAT == "8bit":
        rows, rmask = _scale_rows(offs, start, n)
        scale = tl.load(sc_ptr + rows, mask=rmask)
        value = _dequantize(tl.load(ptr + offs, mask=mask), scale, SIGNED).to(CT)
    else:
        value = _load(ptr, offs, mask, CT)
    return value


@triton.jit
def _store_state(ptr, sc_ptr, offs, mask, x, start, n, step, SALT: tl.constexpr,
                 FORMAT: tl.constexpr, SIGNED: tl.constexpr):
    """Store a state stream's new values ``x`` (math type) in FORMAT: rounded to nearest
    ("native"), stochastically to bf16, or quantized with the blocks' new scales ("8bit");
    ``step`` (fp64) is the parameter's step after this update."""
    if FORMAT == "native":
        _store(ptr, offs, x, mask)
    else:
        x = _to(x, tl.float32)
        r = _random_bits(x, step, SALT)
        if FORMAT == "bfloat16":
            tl.store(ptr + offs, _round_bfloat16(x, r), mask=mask)
        else:
            codes, scale = _quantize(x, r, mask, SIGNED)
            tl.store(ptr + offs, codes, mask=mask)
            rows, rmask = _scale_rows(offs, start, n)
            tl.store(sc_ptr + rows, scale, mask=rmask)
