"""What the Triton kernels of all algorithms share: on the host, tensor tables, the fp64
hyperparameter buffer, the schedule program, counters, the variant choice and the launch
(``launch``); on the device, the kernel prologue (``_proceed``, ``_chunk``, ``_schedule``,
``_grad_scale``, ``_offsets``), the param/grad/state loads and stores (``_load_pg``,
``_load``, ``_store``; ``_load_state``/``_store_state`` in each state format of
``kernels/state_format.py``) and the correctly rounded math helpers.

One launch per step for the whole tensor list. The kernel reads an int64 *tensor table*
(one row per tensor: numel, then the data pointers of param, grad, state..., the address
of its 0-dim float64 step, and in the "8bit" format the states' scale pointers) and an
int64 *block table* (one row per program: tensor index, first element). Pointers are cast
in the kernel with ``.to(tl.pointer_type(DTYPE))``; this works under ``TRITON_INTERPRET=1``
too (checked).
Both tables live in one device buffer, cached across steps by the rule of
``kernels/address_table.py`` (the Numba backend's rule too): a step whose tensors did not
move uploads nothing, one whose gradients moved uploads the tensor table's rows again.

Hyperparameters reach the kernel in fp64 through a small float64 device buffer (Triton
passes Python floats as fp32), cached by their values; a 0-dim tensor hyperparameter
(lr, momentum, betas) is copied into its slot on the device (``copy_``, no host sync).
Nothing that changes between steps is a kernel integer argument, so Triton's integer
specialisation never recompiles: the schedule position and steps are read by pointer.

CUDA graphs. Once the tables and the hyperparameter buffer are cached (any step before the
capture: the usual side-stream warm-up), a step does on the host only dictionary look-ups
and one launch, and on the device: the launch, ``copy_`` of tensor hyperparameters into
their slots, ``torch._foreach_add_`` of the steps (by ``found_inf == 0``, a device
temporary from the caching allocator, which graphs allow) and ``position += 1``. No
``.item()``, no host-device copy, no synchronisation, no recompilation: ``step()`` captures
into a ``torch.cuda.CUDAGraph`` and each replay advances the schedule on the device
(tests_gpu/test_cuda_graphs.py). What a graph cannot see: a *float* hyperparameter changed
on the host after capture (e.g. a ``torch.optim.lr_scheduler`` writing ``group["lr"]``
between replays) -- the graph keeps the buffer of capture time, and outside a graph the new
value costs one small host-to-device copy the first time it is seen. To change lr, momentum
or betas under a graph, make them 0-dim device tensors and update them in place (or use a
fusedsched schedule, which the kernel evaluates on the device). A captured launch reads
the tables of capture time: a graph must be captured again if parameters, gradients or
state are reallocated.
"""

import numpy as np
import torch
import triton
import triton.language as tl

from .. import schedule_encoding as E
from .. import state_format as SF
from ..address_table import TableCache
from ..ops import SIGNATURES
from .schedule import INTERPRET, evaluate

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
#   not always correctly rounded (measured, torch 2.14 AVX2: ~20% of fp32 and ~1.4% of fp64
#   sqrt results are 1 ulp off). So there the three helpers are Python functions that let
#   Triton build the result's type and shape and replace its values with torch's CPU op on
#   the same data (``torch.addcmul``, ``torch.sqrt``, ``Tensor.to``): the device's rounding,
#   as the fp64 ``_pow``/``_cos``/``_log``/``_sqrt`` of ``schedule.py`` are torch's. Interpreted
#   Triton then equals the reference bit for bit on CPU (tests/test_triton_kernels.py checks
#   it with zero tolerance). ``_sqrt`` here runs on a block of the tensor where the reference
#   takes the whole tensor at once: the same function, and torch's CPU sqrt rounds each
#   element alone, whatever the length and offset of the call (MKL's vector sqrt, or IEEE
#   sqrt without MKL; checked by tests/test_triton_kernels.py).
if INTERPRET:
    import numpy as np

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


# The arguments every kernel takes, in this order (each kernel documents its tab_ptr
# columns):
#
#   tab_ptr,    *int64 [n_tensors, ROW]: per tensor its numel, then the addresses of the
#               param, the grad, up to three state tensors (0 where the variant has none)
#               and the tensor's 0-dim fp64 step
#   blk_ptr,    *int64 [n_programs, 2]: per program its tensor index and first element
#   hp_ptr,     *fp64: the hyperparameter buffer (the kernel module's HP_* slots)
#   prog_ptr,   *fp64 [n_nodes, NODE_SIZE]: the schedule program (schedule_encoding)
#   n_nodes,    int: the program's rows (not specialised: no recompile per schedule)
#   pos_ptr,    *fp64, one element: the schedule position t of this update
#   gs_ptr,     *fp32, one element: GradScaler's scale (read if HAS_GRAD_SCALE)
#   fi_ptr,     *fp32, one element: found_inf; nonzero skips all writes (if HAS_FOUND_INF)
#   DTYPE, BLOCK, ALIGNED: the tensors' element type, elements per program, whether every
#               address is 16-byte aligned (128-bit accesses); then the variant's flags.
#
# The kernel skeleton every algorithm shares. A kernel is
#
#     if _proceed(fi_ptr, HAS_FOUND_INF):
#         start, n, p_ptr, g_ptr, s1, s2, s3, step = _chunk(tab_ptr, blk_ptr, DTYPE, BLOCK, ALIGNED)
#         lr, mom = _schedule(hp_ptr, prog_ptr, n_nodes, pos_ptr, <momentum slot>)
#         ... its fp64 per-program scalars ...
#         offs = start + tl.arange(0, BLOCK)
#         if start + BLOCK <= n:   # full chunk: unmasked fast path
#             _body(..., offs, None, ...)
#         else:
#             _body(..., offs, offs < n, ...)
#
# and a body is ``_load_pg`` (param, grad: unscaled, maximize applied), its own math with
# ``_load``/``_store`` of the state streams, and ``_store`` of the param. On the host,
# ``launch`` checks the tensors, builds the tables and makes the one launch.


@triton.jit
def _proceed(fi_ptr, HAS_FOUND_INF: tl.constexpr):
    """False when the step is skipped (``found_inf != 0``)."""
    ok = tl.full((), 1, tl.int1)
    if HAS_FOUND_INF:
        ok = tl.load(fi_ptr) == 0
    return ok


@triton.jit
def _row_ptr(row, SLOT: tl.constexpr, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    ptr = tl.load(row + SLOT).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def _chunk(tab_ptr, blk_ptr, DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr,
           FORMAT: tl.constexpr):
    """This program's chunk, from the block and tensor tables: (start, numel, param, grad,
    state 1, 2, 3 pointers (a null pointer where the tensor has none; elements of the
    format's storage type, ``_state_type``), their 8-bit scale pointers (fp32; None unless
    FORMAT is "8bit"), step before this update (fp64)). A pointer an algorithm does not use
    is loaded and dropped as dead code."""
    pid = tl.program_id(0).to(tl.int64)
    ti = tl.load(blk_ptr + 2 * pid)
    start = tl.multiple_of(tl.load(blk_ptr + 2 * pid + 1), BLOCK)  # chunk starts are multiples of BLOCK
    ST: tl.constexpr = _state_type(DTYPE, FORMAT)
    sc1_ptr, sc2_ptr, sc3_ptr = None, None, None
    if FORMAT == "8bit":
        row = tab_ptr + ti * _ROW_8BIT
        # a few scales per program: no alignment promised (nor checked: ``_build``)
        sc1_ptr = _row_ptr(row, _ROW + 0, tl.float32, False)
        sc2_ptr = _row_ptr(row, _ROW + 1, tl.float32, False)
        sc3_ptr = _row_ptr(row, _ROW + 2, tl.float32, False)
    else:
        row = tab_ptr + ti * _ROW
    n = tl.load(row)
    p_ptr = _row_ptr(row, 1, DTYPE, ALIGNED)
    g_ptr = _row_ptr(row, 2, DTYPE, ALIGNED)
    s1_ptr = _row_ptr(row, 3, ST, ALIGNED)
    s2_ptr = _row_ptr(row, 4, ST, ALIGNED)
    s3_ptr = _row_ptr(row, 5, ST, ALIGNED)
    step = tl.load(tl.load(row + 6).to(tl.pointer_type(tl.float64)))
    return start, n, p_ptr, g_ptr, s1_ptr, s2_ptr, s3_ptr, sc1_ptr, sc2_ptr, sc3_ptr, step


@triton.jit
def _schedule(hp_ptr, prog_ptr, n_nodes, pos_ptr, LR: tl.constexpr, MOM: tl.constexpr):
    """(lr, momentum), fp64: ``hp[LR]`` times the schedule's factor, and the schedule's
    momentum where it cycles one, else ``hp[MOM]`` (the algorithm's declared momentum:
    momentum, or Adam's beta1)."""
    factor, s_mom, has_m = evaluate(prog_ptr, n_nodes, tl.load(pos_ptr))
    lr = tl.load(hp_ptr + LR) * factor
    mom = tl.where(has_m != 0, s_mom, tl.load(hp_ptr + MOM))
    return lr, mom


@triton.jit
def _grad_scale(gs_ptr, CT: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr):
    gs = tl.full((), 1.0, CT)
    if HAS_GRAD_SCALE:
        gs = tl.load(gs_ptr).to(CT)
    return gs


@triton.jit
def _load(ptr, offs, mask, CT: tl.constexpr):
    return tl.load(ptr + offs, mask=mask).to(CT)


@triton.jit
def _store(ptr, offs, x, mask):
    tl.store(ptr + offs, _to(x, ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_pg(p_ptr, g_ptr, offs, mask, gs, CT: tl.constexpr, FP64: tl.constexpr,
             MAXIMIZE: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr):
    """(param, grad) in the math type; the grad unscaled by ``gs`` (and the unscaled grad
    stored back, as GradScaler's unscale_ does), then negated under maximize."""
    p = _load(p_ptr, offs, mask, CT)
    g = _load(g_ptr, offs, mask, CT)
    if HAS_GRAD_SCALE:
        g = _div(g, gs, FP64)
        _store(g_ptr, offs, g, mask)
    if MAXIMIZE:
        g = -g
    return p, g


# ------------------------------------------------------------------------------------------
# State formats (kernels/state_format.py; the reference's loads and stores are
# kernels/reference/_state.py). FORMAT is a constexpr: "native" compiles to the plain loads
# and stores above and nothing else. A state's SALT is its index in the kernel's state
# order (ops.SIGNATURES), SIGNED whether its 8-bit code has a sign bit (not in
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


# Per dtype: (Triton element type name, block size, math dtype is fp64).
# Block sizes give every thread (num_warps=4, 128 threads) 128 bits per tensor per access:
# fp32 512 -> 4 elements (ld.global.v4.b32), fp16/bf16 1024 -> 8, fp64 256 -> 2.
BLOCK = {torch.float32: 512, torch.float16: 1024, torch.bfloat16: 1024, torch.float64: 256}
NUM_WARPS = 4
# Register cap (ptxas .maxnreg, Triton's ``maxnreg`` option). Uncapped, ptxas gave Adam 62-72
# registers (sm_90: fp32 62-66, fp16/bf16 68-72, fp64 62-68; sm_80 similar): the fp64
# schedule evaluator's libdevice pow/cos/log run once per program and the 16-bit variants
# hold 8 elements x 5 streams per thread. Capped at 64, every variant of every kernel
# compiles with no spill (LOCAL 0) and keeps its 128-bit accesses (`fusedsched aot`), so
# 4 warps x 64 registers lets 8 blocks (1024 threads... 2048 on sm_90) stay resident.
MAXNREG = 64
# No floating-point contraction: by default Triton lets LLVM fuse a multiply into a
# following add (checked: ``x * y + w`` compiles to one fma.rn.f32), which rounds once where
# the reference, torch's separate CUDA kernels, rounds twice -- Adam's decoupled decay
# ``p * decay`` before the update's add, RMSprop's ``buf * momentum + g / avg``, an 8-bit
# state's ``magnitude * scale`` into lerp's subtraction. The kernels fuse only where the
# reference does, with ``_fma`` (tl.fma stays one fma.rn).
LAUNCH_OPTIONS = {"num_warps": NUM_WARPS, "maxnreg": MAXNREG,
                  "enable_fp_fusion": False}  # also what `aot` compiles
TL_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
            torch.float64: "fp64"}
ROW = 8  # int64 slots per tensor-table row: numel, p, g, s1, s2, s3, step, pad
# "8bit" rows: the same, then the fp32 scale pointers of s1, s2, s3 (0 where none)
ROW_8BIT = ROW + 3
_ROW: tl.constexpr = tl.constexpr(ROW)  # the same, for the kernels
_ROW_8BIT: tl.constexpr = tl.constexpr(ROW_8BIT)

_CACHE_MAX = 256
_hps = {}
_constant_programs = {}


def _bounded_put(cache, key, value):
    if len(cache) >= _CACHE_MAX:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


def check_tensors(params, *lists):
    if not params:
        return None
    dtype, device = params[0].dtype, params[0].device
    if dtype not in BLOCK:
        raise TypeError(f"triton backend: unsupported dtype {dtype}")
    for lst in (params, *lists):
        if lst is None:
            continue
        for x in lst:
            if (type(x) not in _PLAIN or x.dtype != dtype or x.device != device
                    or not x.is_contiguous()):
                raise ValueError("triton backend: tensors must be plain (not a subclass), "
                                 "contiguous, of one dtype and device; got "
                                 f"{type(x).__name__} {x.dtype} {x.device} "
                                 f"contiguous={x.is_contiguous()}")
    return dtype, device


_PLAIN = (torch.Tensor, torch.nn.Parameter)   # a wrapper subclass's data_ptr() is 0
# the element dtype of the state tensors of a format other than "native"
STATE_DTYPE = {"bfloat16": torch.bfloat16, "8bit": torch.uint8}


def _check_stored(fmt, params, states, scales):
    """ValueError unless every state tensor of ``states`` (lists, None where off) is plain,
    contiguous, of ``fmt``'s dtype, on the params' device with its parameter's numel, and,
    for "8bit", its ``scales`` tensor (same place in ``scales``) plain, contiguous, fp32,
    on that device with one element per 256-element block: the kernel writes every one.
    TypeError for fp64 parameters: the stored formats are formats of float32 math (the
    optimizers refuse them too; so does every backend)."""
    dtype, device = params[0].dtype, params[0].device
    if dtype == torch.float64:
        raise TypeError(f"triton backend: state_format={fmt!r} takes float32, float16 or "
                        "bfloat16 parameters, not float64")
    want = [(STATE_DTYPE[fmt], lambda n: n)]
    if fmt == "8bit":
        want.append((torch.float32, SF.n_blocks))
    for k, lst in enumerate(states):
        if lst is None:
            continue
        columns = [lst]
        if fmt == "8bit":
            if scales[k] is None:
                raise ValueError(f"triton backend: state list {k} has no 8-bit scales")
            columns.append(scales[k])
        for column, (kind, numel) in zip(columns, want):
            for p, x in zip(params, column):
                if (type(x) not in _PLAIN or x.dtype != kind or x.device != device
                        or not x.is_contiguous() or x.numel() != numel(p.numel())):
                    raise ValueError(
                        f"triton backend: state_format={fmt!r} needs plain, contiguous "
                        f"{kind} tensors of {numel(p.numel())} elements on {device}; got "
                        f"{type(x).__name__} {x.dtype} {x.device} numel={x.numel()} "
                        f"contiguous={x.is_contiguous()}")


def _upload(host, out=None):
    """The CPU tensor ``host`` copied to ``out`` (or a new tensor on the params' device,
    when ``out`` is a torch.device). While a CUDA graph is being captured, a copy from
    pageable memory is not allowed: the copy then reads a pinned copy of ``host``,
    non_blocking, which becomes a node of the graph that each replay runs again; the
    pinned buffer is kept with the device tensor (never written again, so every replay
    copies what capture saw)."""
    if isinstance(out, torch.device):
        out = torch.empty(host.shape, dtype=host.dtype, device=out)
    if out.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        pinned = host.pin_memory()
        out.copy_(pinned, non_blocking=True)
        out.__dict__.setdefault("_fusedsched_pinned", []).append(pinned)
    else:
        out.copy_(host)
    return out


class _DeviceTable:
    """A launch's tables on the params' device (``buf``: the tensor table's rows, then the
    block table) and the host copy of the tensor table's rows (``rows``, for ``_regrad``).
    ``aligned``: every data pointer is 16-byte aligned, so the kernel may promise
    ``tl.multiple_of(ptr, 16)`` (128-bit accesses)."""
    __slots__ = ("buf", "rows", "tab", "blk", "n_blocks", "aligned")


def _build(params, grads, columns, steps, fmt):
    """The table of one launch in format ``fmt``: ``columns`` the state lists (None where
    off), then for "8bit" their scale lists in the same order."""
    n_states = len(columns) // 2 if fmt == "8bit" else len(columns)
    states, scales = list(columns[:n_states]), list(columns[n_states:])
    if fmt == "native":
        check_tensors(params, grads, *states)
    else:
        check_tensors(params, grads)
        _check_stored(fmt, params, states, scales)
    dtype, device = params[0].dtype, params[0].device
    pad = [None] * (3 - n_states)
    lists = [params, grads] + states + pad
    scale_lists = scales + pad if fmt == "8bit" else []
    block = BLOCK[dtype]
    rows, blocks = [], []
    aligned = True
    for i, p in enumerate(params):
        n = p.numel()
        ptrs = [lst[i].data_ptr() if lst is not None else 0 for lst in lists]
        scale_ptrs = [lst[i].data_ptr() if lst is not None else 0 for lst in scale_lists]
        if n:
            aligned &= all(a % 16 == 0 for a in ptrs if a)
        rows.append([n, *ptrs, steps[i].data_ptr(), 0, *scale_ptrs])
        blocks.extend([i, s] for s in range(0, n, block))
    table = _DeviceTable()
    table.rows = np.array(rows, dtype=np.int64).reshape(len(rows), len(rows[0]))
    flat = np.concatenate([table.rows.reshape(-1),
                           np.array(blocks, dtype=np.int64).reshape(-1)])
    table.buf = _upload(torch.from_numpy(flat), device)
    n_rows = table.rows.size
    table.tab, table.blk = table.buf[:n_rows], table.buf[n_rows:]
    table.n_blocks, table.aligned = len(blocks), aligned
    return table


def _regrad(table, grad_ptrs):
    """New gradient addresses into the grad column, uploaded (stream ordered: a kernel
    still reading the old table runs before the copy)."""
    table.rows[:, 2] = grad_ptrs
    table.aligned = table.aligned and all(a % 16 == 0 for a in grad_ptrs if a)
    _upload(torch.from_numpy(table.rows.reshape(-1)), table.tab)


# a table is checked for the format it is built for (a state tensor's dtype decides how
# many bytes the kernel reads and writes) and serves no other (``lookup``'s checks)
_TABLES = TableCache(_build, _regrad)
# What launches captured into CUDA graphs read (tables, hyperparameter buffers): kept alive
# here, since a graph replays its kernels on these addresses after the caches have moved
# on. Grows only with captures.
_HELD_BY_GRAPHS = []


def tables(params, grads, states, steps, state_format="native", scales=None):
    """The ``_DeviceTable`` of ``params`` (non-empty), ``grads``, ``states`` (up to 3 lists,
    None where the kernel has none) and ``steps``, cached (``address_table``); for "8bit",
    ``scales`` the states' scale lists in the same order (``ops.SIGNATURES``), their
    pointers in the rows' last three slots (``ROW_8BIT``)."""
    columns = list(states)
    if state_format == "8bit":
        if scales is None:
            raise ValueError("triton backend: state_format='8bit' needs scales")
        columns += [None if lst is None else scales[k] for k, lst in enumerate(states)]
    return _TABLES.lookup(params, grads, columns, steps, fmt=state_format)


def hyperparameters(device, values):
    """A float64 device buffer holding ``values`` (floats or 0-dim/1-element tensors)."""
    key = (device, tuple(("T", i) if isinstance(v, torch.Tensor) else float(v)
                         for i, v in enumerate(values)))
    buf = _hps.get(key)
    if buf is None:
        init = [0.0 if isinstance(v, torch.Tensor) else float(v) for v in values]
        buf = _bounded_put(_hps, key, _upload(torch.tensor(init, dtype=torch.float64), device))
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor):
            buf[i].copy_(v.detach().reshape(()))  # device copy, stream ordered, no sync
    return buf


def constant_program(device):
    prog = _constant_programs.get(device)
    if prog is None:
        rows = torch.zeros(1, E.NODE_SIZE, dtype=torch.float64)
        rows[0, 0] = E.CONSTANT
        rows[0, 1] = 1.0
        prog = _constant_programs[device] = _upload(rows, device)
    return prog


def schedule_args(schedule, position, device):
    """(program, n_nodes, position tensor) for the kernel; no schedule = constant 1."""
    prog = constant_program(device) if schedule is None else schedule
    if position is None:
        position = torch.zeros((), dtype=torch.float64, device=device)
    return prog, prog.shape[0], position


def advance(steps, position, found_inf, advance_position):
    """Counters after the launch, with device ops (the kernel's programs all read them, so
    they cannot be written in the kernel without a race): steps += 1 - (found_inf != 0);
    position += 1 (also on a skipped step)."""
    if steps:
        if found_inf is None:
            torch._foreach_add_(steps, 1.0)
        else:
            torch._foreach_add_(steps, (found_inf.reshape(()) == 0).to(torch.float64))
    if advance_position and position is not None:
        position.add_(1.0)


def tl_dtype(dtype):
    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
            torch.float64: tl.float64}[dtype]


def slots(algorithm, *names):
    """The slots of hyperparameters ``names`` in ``algorithm``'s hyperparameter buffer, as
    ``tl.constexpr`` (a kernel module binds them to its ``HP_*`` globals), from the
    declaration (``ops.SIGNATURES``); the name ``"momentum"`` stands for the hyperparameter
    that a schedule's momentum replaces (momentum, or Adam's beta1)."""
    signature = SIGNATURES[algorithm]
    return tuple(tl.constexpr(signature.slot(signature.momentum if name == "momentum"
                                             else name)) for name in names)


def streams(algorithm):
    """Per state of ``algorithm`` in kernel order (``ops.SIGNATURES``): (SALT, SIGNED) as
    ``tl.constexpr``, the arguments of ``_load_state``/``_store_state`` (a kernel module
    binds them to its ``*_SALT``/``*_SIGNED`` globals)."""
    signature = SIGNATURES[algorithm]
    return tuple((tl.constexpr(k), tl.constexpr(name not in signature.nonnegative))
                 for k, name in enumerate(signature.states))


def launch(kernel, algorithm, params, grads, states, steps, hyper, *, schedule, position,
           grad_scale, found_inf, advance_position, state_format, scales, **flags):
    """One update of every tensor in ``params`` by ``kernel``: a single launch over the
    tensor list, then the counters advance with device ops (``advance``).

    ``states``: the kernel's state lists (up to 3 in ``ops.SIGNATURES`` order, None where
    a variant has none), stored in ``state_format`` (``kernels/state_format.py``; the
    kernel's FORMAT), ``scales`` their 8-bit scale lists (for "8bit"); ``hyper``: the
    declared hyperparameters of ``algorithm``, whose numeric ones fill the hyperparameter
    buffer in declaration order; ``flags``: the kernel's own compile-time flags.
    """
    if state_format not in SF.FORMATS:
        raise ValueError(f"triton {algorithm}_step: state_format={state_format!r}; expected "
                         f"one of {SF.FORMATS}")
    hps = SIGNATURES[algorithm].pack(hyper)
    if params:
        table = tables(params, grads, states, steps, state_format, scales)
        if table.n_blocks:
            dtype, device = params[0].dtype, params[0].device
            hp = hyperparameters(device, hps)
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                # One table serves every graph of these tensors; each replay first writes
                # the pointers of its own capture (another graph's gradients may sit
                # elsewhere in its pool).
                _upload(torch.from_numpy(table.rows.reshape(-1)), table.tab)
                _HELD_BY_GRAPHS.append((table, hp))
            prog, n_nodes, pos = schedule_args(schedule, position, device)
            kernel[(table.n_blocks,)](
                table.tab, table.blk, hp, prog, n_nodes, pos,
                grad_scale if grad_scale is not None else hp,
                found_inf if found_inf is not None else hp,
                DTYPE=tl_dtype(dtype), BLOCK=BLOCK[dtype], ALIGNED=table.aligned,
                FORMAT=state_format,
                HAS_GRAD_SCALE=grad_scale is not None, HAS_FOUND_INF=found_inf is not None,
                **flags, **LAUNCH_OPTIONS)
    advance(steps, position, found_inf, advance_position)
