"""float16 and bfloat16 <-> float32 conversions, branch-free LLVM IR (F16C where the CPU
has it), round to nearest even, inf, NaN and subnormals kept."""

from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


# ------------------------------------------------------------------ 16-bit conversions
#
# Branch-free (selects only) 32-bit integer arithmetic, emitted as LLVM IR so that the
# loops using them vectorise (8 lanes per ymm on AVX2); the results are those of the
# earlier branchy int64 versions, bit for bit (every 16-bit pattern, every float32 class).

# With F16C (x86 since 2012; checked in the host CPU's features, as Numba compiles for the
# host) the float16 conversions are LLVM's fpext / fptrunc of ``half``: one vcvtph2ps /
# vcvtps2ph per 8 lanes, round to nearest even, subnormals exact; NaNs stay NaNs (payload
# quieted). The integer versions below run float16 Adam at about a third of torch fused's
# speed, F16C at par (bench/results/numba_decisions.md). Without F16C, LLVM would lower ``half`` to
# libcalls that Numba's JIT does not link, so the integer versions stay for those CPUs
# (tests/test_numba_machinery.py compiles both and compares them bit for bit).
_F16C = "+f16c" in llvm_binding.get_host_cpu_features().flatten().split(",")


def _i32(v):
    return ir.Constant(ir.IntType(32), v)


@intrinsic
def half_to_float(typingctx, h):
    """IEEE binary16 bits (uint16) -> float32 (exact; NaN payload kept)."""
    if h != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        if _F16C:
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        f32 = ir.FloatType()
        u = builder.zext(args[0], ir.IntType(32))
        sign = builder.shl(builder.and_(u, _i32(0x8000)), _i32(16))
        em = builder.and_(u, _i32(0x7FFF))
        e13 = builder.shl(em, _i32(13))
        normal = builder.add(e13, _i32(112 << 23))                 # rebias the exponent
        infnan = builder.or_(e13, _i32(0x7F800000))                # inf / NaN (payload kept)
        bits = builder.select(builder.icmp_unsigned(">=", em, _i32(0x7C00)), infnan, normal)
        # zero / subnormal: em * 2**-24 (exact)
        sub = builder.fmul(builder.sitofp(em, f32), ir.Constant(f32, 5.9604644775390625e-08))
        bits = builder.select(builder.icmp_unsigned("<", em, _i32(0x0400)),
                              builder.bitcast(sub, ir.IntType(32)), bits)
        return builder.bitcast(builder.or_(bits, sign), f32)

    return types.float32(types.uint16), codegen


@intrinsic
def float_to_half(typingctx, f):
    """float32 -> IEEE binary16 bits (uint16), round to nearest even; NaN -> quiet NaN
    0x7E00 (with the sign)."""
    if f != types.float32:
        return None

    def codegen(context, builder, signature, args):
        if _F16C:
            return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
        f32, i32 = ir.FloatType(), ir.IntType(32)
        u = builder.bitcast(args[0], i32)
        sign = builder.and_(builder.lshr(u, _i32(16)), _i32(0x8000))
        a = builder.and_(u, _i32(0x7FFFFFFF))
        # normal range: rebias, round to nearest even on the 13 dropped bits; a carry into
        # the exponent (including up to inf at >= 65520) is the correct result.
        odd = builder.and_(builder.lshr(a, _i32(13)), _i32(1))
        normal = builder.lshr(builder.add(builder.add(a, _i32(0xFFF - (112 << 23))), odd), _i32(13))
        # subnormal range (< 2**-14): add 0.5 so that the float adder rounds the 10 kept
        # bits (round to nearest even), then take the low mantissa bits.
        sub = builder.sub(builder.bitcast(builder.fadd(builder.bitcast(a, f32), ir.Constant(f32, 0.5)), i32),
                          _i32(0x3F000000))
        h = builder.select(builder.icmp_unsigned("<", a, _i32(113 << 23)), sub, normal)
        big = builder.select(builder.icmp_unsigned(">", a, _i32(0x7F800000)), _i32(0x7E00), _i32(0x7C00))
        h = builder.select(builder.icmp_unsigned(">=", a, _i32(143 << 23)), big, h)   # >= 65536, inf, NaN
        return builder.trunc(builder.or_(h, sign), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def bf16_to_float(typingctx, h):
    """bfloat16 bits (int16 storage) -> float32 (exact)."""
    if h != types.int16:
        return None

    def codegen(context, builder, signature, args):
        u = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(u, _i32(16)), ir.FloatType())

    return types.float32(types.int16), codegen


@intrinsic
def float_to_bf16(typingctx, f):
    """float32 -> bfloat16 bits (int16), round to nearest even; NaN -> quiet NaN (high
    half with the quiet bit set)."""
    if f != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        u = builder.bitcast(args[0], i32)
        hi = builder.lshr(u, _i32(16))
        # wraps only for negative NaNs, replaced below; the high half is all that is kept
        r = builder.lshr(builder.add(builder.add(u, _i32(0x7FFF)), builder.and_(hi, _i32(1))), _i32(16))
        nan = builder.icmp_unsigned(">", builder.and_(u, _i32(0x7FFFFFFF)), _i32(0x7F800000))
        r = builder.select(nan, builder.or_(hi, _i32(0x40)), r)
        return builder.trunc(r, ir.IntType(16))

    return types.int16(types.float32), codegen
