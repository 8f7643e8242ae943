"""The kernel skeleton every Triton algorithm shares: the arguments, in order, and the
prologue (``_proceed``, ``_chunk``, ``_schedule``, ``_grad_scale``) and the param/grad load
(``_load_pg``) of a program; the tensor-table row layout (``ROW``, ``ROW_8BIT``) that the
host's ``_launch.py`` fills.
"""

import triton
import triton.language as tl

from ._elements import _div, _load, _store
from ._state import _state_type
from .schedule import evaluate

ROW = 8  # int64 slots per tensor-table row: numel, p, g, s1, s2, s3, step, pad
# "8bit" rows: the same, then the fp32 scale pointers of s1, s2, s3 (0 where none)
ROW_8BIT = ROW + 3
_ROW: tl.constexpr = tl.constexpr(ROW)  # the same, for the kernels
_ROW_8BIT: tl.constexpr = tl.constexpr(ROW_8BIT)


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
# ``_launch.launch`` checks the tensors, builds the tables and makes the one launch.


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
