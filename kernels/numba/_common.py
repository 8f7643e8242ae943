"""What the Numba kernels of all algorithms share: raw pointers, storage dtypes, threads,
the chunked walk over a tensor list, and the Python-side packing of a call.

Storage types inside the kernels (the *marker* is a zero scalar of that type, passed so that
Numba specialises the kernel per storage dtype):

* float32 -> float32, float64 -> float64 (math in the same type);
* float16 -> uint16 bit patterns, bfloat16 -> int16 bit patterns (the two 16-bit formats
  are told apart by signedness only); math in float32, conversions round to nearest even
  and keep inf, NaN and subnormals.

Nothing is compiled at import: every kernel is a lazy, cached (``cache=True``) dispatcher.
"""

import math
import os

import numba
import numpy as np
import torch
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.extending import intrinsic, overload

# Elements per parallel work item, at most. Chunks run over the concatenation of all tensors
# of the call, so a list of many small tensors packs into few chunks. A parallel step cuts
# the concatenation into equal chunks, as many as a multiple of the thread count
# (``chunk_size``): the pool's static schedule then gives every thread the same number of
# elements. With fixed CHUNK-element chunks a step of 1e5 elements on 2 threads split
# 65536 / 34464 and took the time of the larger share.
CHUNK = 1 << 16
# Chunk sizes are multiples of this many elements (a cache line and more of any storage
# dtype): two threads never write one line, and each chunk's loop starts on a vector.
ALIGN = 64

JIT = dict(cache=True, error_model="numpy")

# Steps of at most this many elements (all tensors of the call) run serially in the calling
# thread and never touch the thread pool, where waking it costs about what a second thread
# saves. Above it the pool pays: a cache-resident step is bound by the arithmetic (Adam: a
# square root and two divisions per element, on the divider), which a second thread
# halves, and from about 1e5 fp32 Adam elements the step's arrays outgrow one core's L2
# while each thread's share fits its own. Measured on 2 cores (serial against the pool with
# equal chunks, Adam, SGD momentum, RMSprop): the serial walk wins at 1e4 elements, the pool
# from 3e4 (bench/results/cpu_sweep). It was 1 << 18, with fixed CHUNK-element chunks that
# left a 1e5-element step's second thread half idle.
SERIAL_MAX = 1 << 15
PJIT = dict(cache=True, error_model="numpy", parallel=True)


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
    """A (3, BLOCK) scratch array of the math type of storage ``marker``."""


@overload(tmp)
def _ol_tmp(marker):
    if marker == types.float64:
        return lambda marker: np.empty((3, BLOCK), dtype=np.float64)
    return lambda marker: np.empty((3, BLOCK), dtype=np.float32)


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
# (tests/test_numba_kernels.py compiles both and compares them bit for bit).
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


# --------------------------------------------------------------- generic load / store

def load(a, i):
    """Element ``i`` of storage array ``a`` in its math type."""


def store(a, i, x):
    """Round math value ``x`` to the storage type of ``a`` and write it at ``i``."""


def ct(x, marker):
    """``x`` cast to the math type of storage ``marker`` (float64 for float64, else float32)."""


@overload(load)
def _ol_load(a, i):
    dt = a.dtype
    if dt in (types.float32, types.float64):
        return lambda a, i: a[np.uint64(i)]
    if dt == types.uint16:
        return lambda a, i: half_to_float(a[np.uint64(i)])
    if dt == types.int16:
        return lambda a, i: bf16_to_float(a[np.uint64(i)])


@overload(store)
def _ol_store(a, i, x):
    dt = a.dtype
    if dt == types.float32:
        def impl(a, i, x):
            a[np.uint64(i)] = np.float32(x)
    elif dt == types.float64:
        def impl(a, i, x):
            a[np.uint64(i)] = np.float64(x)
    elif dt == types.uint16:
        def impl(a, i, x):
            a[np.uint64(i)] = float_to_half(np.float32(x))
    elif dt == types.int16:
        def impl(a, i, x):
            a[np.uint64(i)] = float_to_bf16(np.float32(x))
    else:
        return None
    return impl


@overload(ct)
def _ol_ct(x, marker):
    if marker == types.float64:
        return lambda x, marker: np.float64(x)
    return lambda x, marker: np.float32(x)


def grad_at(g, p, j, gs, has_gs, sign, wd, coupled):
    """(gradient as the update uses it, parameter) at element ``j``: unscaled (``has_gs``),
    negated (``sign``), plus the coupled weight decay ``p * wd`` (``coupled``), as the
    reference orders them. The flags only select values, so that the loops using it
    vectorise. An ``@overload`` (LLVM inlines it): as ``njit(inline="always")`` the call
    stayed a call in SGD's loops ('call instruction cannot be vectorized', checked)."""


@overload(grad_at)
def _ol_grad_at(g, p, j, gs, has_gs, sign, wd, coupled):
    def impl(g, p, j, gs, has_gs, sign, wd, coupled):
        gj = load(g, j)
        gq = gj / gs
        if has_gs:
            gj = gq
        gj = gj * sign
        pj = load(p, j)
        gc = fma(pj, wd, gj)
        if coupled:
            gj = gc
        return gj, pj
    return impl


@njit(**JIT)
def view(address, n, marker):
    """The storage array of ``n`` elements at ``address``."""
    return carray(address_as_pointer(address, marker), n)


@njit(**JIT)
def n_chunks(offsets, chunk):
    return (offsets[offsets.shape[0] - 1] + chunk - 1) // chunk


def chunk_size(total, threads):
    """The chunk of a parallel step of ``total`` elements on ``threads`` threads: at most
    about CHUNK elements, a multiple of ALIGN, all chunks of one size but the last (at most
    ALIGN - 1 elements per chunk shorter), and as many (``n_chunks``) as a multiple of
    ``threads`` while a chunk holds more ALIGN-element lines than there are chunks
    (steps up to about CHUNK * CHUNK / ALIGN elements); beyond, the rounding to ALIGN may
    leave a thread one chunk of a thousand fewer."""
    chunks = -(-total // CHUNK)
    chunks += -chunks % threads
    size = -(-total // chunks)
    return size + -size % ALIGN


@njit(**JIT)
def first_tensor(offsets, lo):
    """Index of the tensor holding global element ``lo`` (empty tensors are skipped)."""
    return np.searchsorted(offsets, lo, side="right") - 1


# ------------------------------------------------------------------- the shared walk
#
# Each algorithm module supplies only its math: ``_scalars`` (the step's scalars, ``sc``)
# and ``_tensor(ptrs, i, size, a, b, sc, flags, scratch, marker)``, which updates elements
# [a, b) of tensor ``i`` (``size`` elements; ``flags``: the algorithm's runtime flags,
# ``scratch``: a ``tmp`` array private to the calling thread), and makes its walk at import
# with ``make_walk(_tensor)``. Its one entry point reads the position, computes ``sc`` and
# calls the walk.
#
# Why a factory: ``_tensor`` is a closure constant there, so the call to it is a direct call
# (compiled once per algorithm x dtype, as before; the vectorised loops are all inside the
# algorithm's own ``_segment``). Passing ``_tensor`` as an argument instead works for the
# serial walk, but inside a ``prange`` it makes the caller use dynamic globals, and Numba
# then refuses to cache it. The walks are not cached themselves: they are compiled into,
# and cached with, each algorithm's entry point (``cache=True``; checked: a second process
# loads it from the cache).

WALK = dict(error_model="numpy")


def make_walk(tensor):
    """``walk(parallel, ptrs, offsets, sc, flags, marker)`` over every tensor of the table
    with the algorithm's ``tensor`` function (no compilation here: lazy dispatchers)."""

    @njit(parallel=True, **WALK)
    def walk_parallel(ptrs, offsets, sc, flags, marker, chunk):
        """Parallel over ``chunk``-element chunks of the concatenated tensors; a chunk
        updates the pieces of the tensors it overlaps."""
        n = ptrs.shape[0]
        total = offsets[n]
        for c in prange(n_chunks(offsets, chunk)):
            scratch = tmp(marker)
            lo = c * chunk
            hi = min(lo + chunk, total)
            i = first_tensor(offsets, lo)
            while i < n and offsets[i] < hi:
                start = offsets[i]
                a = max(lo, start) - start
                b = min(hi, offsets[i + 1]) - start
                if b > a:
                    tensor(ptrs, i, offsets[i + 1] - start, a, b, sc, flags, scratch, marker)
                i += 1

    @njit(**WALK)
    def walk(chunk, ptrs, offsets, sc, flags, marker):
        """``walk_parallel`` in chunks of ``chunk`` elements if ``chunk`` is not 0 (see
        ``use_pool``), else the same in the calling thread, tensor by tensor."""
        if chunk > 0:
            walk_parallel(ptrs, offsets, sc, flags, marker, chunk)
        else:
            scratch = tmp(marker)
            for i in range(ptrs.shape[0]):
                start = offsets[i]
                size = offsets[i + 1] - start
                if size > 0:
                    # start - start: int64 like walk_parallel's a (a literal 0 would give
                    # ``tensor`` a second specialisation)
                    tensor(ptrs, i, size, start - start, size, sc, flags, scratch, marker)

    return walk


@njit(**JIT)
def position_at(pos_addr):
    """(the ``position`` array, its value t)."""
    pos = f64_at(pos_addr)
    return pos, pos[0]


def use_pool(offsets, serial_max):
    """The chunk size (``chunk_size``) when a step of this table runs on the thread pool
    (then set up here), 0 when it runs serially: steps of at most ``serial_max`` elements
    (the algorithm module's SERIAL_MAX) do."""
    total = int(offsets[-1])
    if total <= serial_max:
        return 0
    return chunk_size(total, setup_threads())


def empty_step(schedule, position, advance_position):
    """A step without tensors: only the position moves."""
    program_args(schedule, position)
    if advance_position:
        position.add_(1.0)


@njit(**JIT)
def read_steps(ptrs, column):
    """The per-tensor ``step`` values (float64) read through the address column."""
    n = ptrs.shape[0]
    out = np.empty(n)
    for i in range(n):
        out[i] = f64_at(ptrs[i, column])[0]
    return out


@njit(**JIT)
def finish(ptrs, column, found_inf, pos, t, advance_position):
    """Counters after the update: each ``step`` += 1 unless skipped; ``position`` += 1."""
    if not found_inf:
        for i in range(ptrs.shape[0]):
            s = f64_at(ptrs[i, column])
            s[0] = s[0] + 1.0
    if advance_position:
        pos[0] = t + 1.0


# ------------------------------------------------------------------ Python-side packing

_MARKERS = {
    torch.float32: np.float32(0),
    torch.float64: np.float64(0),
    torch.float16: np.uint16(0),
    torch.bfloat16: np.int16(0),
}

_threads_set = None

# Threads (torch 2.14 with its bundled libgomp, numba 0.68, omp layer; the observations
# behind these points are in bench/results/numba_decisions.md):
#
# * There is ONE OpenMP pool, torch's. numba's omppool.so is linked against the system
#   libgomp.so.1.0.0, which does get loaded, but torch loads its bundled libgomp.so.1 into
#   the global symbol scope first (``import torch`` above), so omppool's GOMP_parallel,
#   omp_get_thread_num, omp_set_num_threads, ... bind to torch's runtime (LD_DEBUG=bindings;
#   only omp_get_supported_active_levels, missing in torch's copy, binds to the system one).
#   Numba's parallel kernels run on torch's worker threads; numba.set_num_threads sets
#   torch's OpenMP ICV (hence n = torch.get_num_threads() below).
# * So setting GOMP_SPINCOUNT / OMP_WAIT_POLICY "for numba's libgomp only" (while its pool
#   starts) changes nothing: torch's workers keep spinning after a parallel step (torch's
#   own GOMP_SPINCOUNT default), as after a torch op. Only a process-wide
#   OMP_WAIT_POLICY=PASSIVE / GOMP_SPINCOUNT=0 (the user's choice, set before
#   ``import torch``) stops the spin.
# * Steps <= SERIAL_MAX never launch the pool. ``workqueue`` costs an order of magnitude
#   more per launch than omp; ``tbb`` is pip-installable but not a dependency; omp stays
#   first.


def setup_threads():
    """Numba's pool follows ``torch.get_num_threads()``. The threading layer defaults to
    OpenMP first (unless NUMBA_THREADING_LAYER chooses), then TBB, then workqueue; numba
    fixes the layer at the first parallel launch of the process. Returns the thread
    count."""
    global _threads_set
    if _threads_set is None and "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if n != _threads_set:
        numba.set_num_threads(n)
        _threads_set = n
    return n


def hyper_buffer(signature, hyper):
    """float64[len(signature.values)]: the numeric hyperparameters of ``hyper`` (floats or
    one-element CPU tensors) in the declaration's order (``ops.Signature.pack``), which the
    kernels read at their ``HP_*`` slots."""
    return np.array([float(v) for v in signature.pack(hyper)], dtype=np.float64)


def marker_of(params):
    dtype = params[0].dtype
    try:
        return _MARKERS[dtype]
    except KeyError:
        raise TypeError(f"numba backend: unsupported dtype {dtype}") from None


_PLAIN = (torch.Tensor, torch.nn.Parameter)   # a wrapper subclass's data_ptr() is 0


def pack(params, lists, steps):
    """(address table int64[n, len(lists) + 2], offsets int64[n + 1]).

    Columns: params, then each list of ``lists`` (None -> address 0), then ``steps``.
    Checks what the raw-pointer kernel relies on: CPU, one dtype, contiguous, equal sizes.
    """
    n = len(params)
    k = len(lists)
    rows = []
    offsets = np.zeros(n + 1, dtype=np.int64)
    dtype = params[0].dtype
    total = 0
    for i in range(n):
        p = params[i]
        numel = p.numel()
        row = [p.data_ptr()]
        cols = [p]
        for lst in lists:
            if lst is None:
                row.append(0)
            else:
                t = lst[i]
                cols.append(t)
                row.append(t.data_ptr())
        for t in cols:
            if (type(t) not in _PLAIN or t.device.type != "cpu" or t.dtype != dtype
                    or t.numel() != numel or not t.is_contiguous()
                    or (numel and not t.data_ptr())):
                raise ValueError(
                    "numba backend: every tensor must be a plain (not a subclass), "
                    "contiguous CPU tensor of the "
                    f"params' dtype and size (tensor {i}: {t.device}, {t.dtype}, "
                    f"{tuple(t.shape)}, expected {dtype} numel {numel})")
        s = steps[i]
        if s.device.type != "cpu" or s.dtype != torch.float64 or s.numel() != 1:
            raise ValueError(f"numba backend: steps[{i}] must be a CPU float64 scalar tensor")
        row.append(s.data_ptr())
        rows.append(row)
        total += numel
        offsets[i + 1] = total
    table = np.array(rows, dtype=np.int64).reshape(n, k + 2)
    return table, offsets


# The checks that run on every step read ``is_cpu``, a flag, not ``device.type``, which
# builds a torch.device object at each read (several times the cost of the flag).

def check_counter(t, name):
    if not t.is_cpu or t.dtype != torch.float64 or t.numel() != 1 or not t.is_contiguous():
        raise ValueError(f"numba backend: {name} must be a contiguous CPU float64 tensor")


def program_args(schedule, position):
    """(program address, n_nodes, position address) for the kernel."""
    check_counter(position, "position")
    if (not schedule.is_cpu or schedule.dtype != torch.float64 or schedule.dim() != 2
            or not schedule.is_contiguous()):
        raise ValueError("numba backend: schedule must be a contiguous CPU float64 (n, NODE_SIZE) table")
    return schedule.data_ptr(), schedule.shape[0], position.data_ptr()


def amp_args(grad_scale, found_inf):
    """(has_grad_scale, grad_scale, found_inf) as plain values (CPU: no sync to avoid)."""
    gs = 1.0 if grad_scale is None else float(grad_scale)
    skip = False if found_inf is None else float(found_inf) != 0.0
    return grad_scale is not None, gs, skip


__all__ = ["SERIAL_MAX", "CHUNK", "JIT", "PJIT", "address_as_pointer", "f64_at", "fma", "sqrt", "lerp", "BLOCK", "vsqrt", "sqrt_fn", "set_sqrt_mode", "sqrt_mode", "tmp", "half_to_float",
           "float_to_half", "bf16_to_float", "float_to_bf16", "load", "store", "ct", "grad_at", "view",
           "ALIGN", "n_chunks", "chunk_size", "first_tensor", "make_walk", "position_at", "use_pool", "empty_step", "read_steps", "finish", "setup_threads",
           "marker_of", "hyper_buffer", "pack", "program_args", "amp_args", "math"]
