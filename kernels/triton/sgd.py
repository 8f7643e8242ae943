"""SGD (plain, momentum, Nesterov), Triton: one launch per step for the whole tensor list.

Operation order of ``kernels/reference/sgd.py`` (torch's ``_single_tensor_sgd``): maximize
negates the (unscaled) grad; grad = fma(p, wd, grad) (when wd != 0, a runtime branch);
momentum: buf = grad on the parameter's first update (step == 0, as torch clones the
grad), else fma(grad, 1-dampening, buf*momentum); nesterov grad = fma(buf, momentum, grad),
else grad = buf; p = fma(grad, -lr_t, p). Each fma is rounded once, as the reference's.
"""

import triton
import triton.language as tl

from . import _launch as L
from .schedule import evaluate


@triton.jit
def _sgd_body(p_ptr, g_ptr, b_ptr, offs, mask, gs, wd, mom, one_damp, neg_lr, first,
              FP64: tl.constexpr, CT: tl.constexpr, USE_MOMENTUM: tl.constexpr,
              NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr):
    p = tl.load(p_ptr + offs, mask=mask).to(CT)
    g = tl.load(g_ptr + offs, mask=mask).to(CT)
    if HAS_GRAD_SCALE:
        g = L._div(g, gs, FP64)
        tl.store(g_ptr + offs, L._to(g, g_ptr.dtype.element_ty), mask=mask)
    if MAXIMIZE:
        g = -g
    g = tl.where(wd != 0, L._fma(p, wd, g), g)
    if USE_MOMENTUM:
        if first:
            buf = g
        else:
            buf = L._fma(g, one_damp, tl.load(b_ptr + offs, mask=mask).to(CT) * mom)
        tl.store(b_ptr + offs, L._to(buf, b_ptr.dtype.element_ty), mask=mask)
        if NESTEROV:
            g = L._fma(buf, mom, g)
        else:
            g = buf
    p = L._fma(g, neg_lr, p)
    tl.store(p_ptr + offs, L._to(p, p_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["n_nodes"])
def sgd_kernel(tab_ptr, blk_ptr, hp_ptr, prog_ptr, n_nodes, pos_ptr, gs_ptr, fi_ptr,
               DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr,
               USE_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr,
               HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr):
    FP64: tl.constexpr = DTYPE == tl.float64
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    ok = tl.full((), 1, tl.int1)
    if HAS_FOUND_INF:
        ok = tl.load(fi_ptr) == 0
    if ok:
        pid = tl.program_id(0).to(tl.int64)
        ti = tl.load(blk_ptr + 2 * pid)
        start = tl.multiple_of(tl.load(blk_ptr + 2 * pid + 1), BLOCK)  # chunk starts are multiples of BLOCK
        row = tab_ptr + ti * 8
        n = tl.load(row)
        p_ptr = tl.load(row + 1).to(tl.pointer_type(DTYPE))
        g_ptr = tl.load(row + 2).to(tl.pointer_type(DTYPE))
        b_ptr = tl.load(row + 3).to(tl.pointer_type(DTYPE))
        step = tl.load(tl.load(row + 6).to(tl.pointer_type(tl.float64)))
        if ALIGNED:
            p_ptr = tl.multiple_of(p_ptr, 16)
            g_ptr = tl.multiple_of(g_ptr, 16)
            b_ptr = tl.multiple_of(b_ptr, 16)
        # hp = [lr, momentum, dampening, weight_decay]
        factor, s_mom, has_m = evaluate(prog_ptr, n_nodes, tl.load(pos_ptr))
        lr = tl.load(hp_ptr) * factor
        mom = tl.where(has_m != 0, s_mom, tl.load(hp_ptr + 1)).to(CT)
        one_damp = (1.0 - tl.load(hp_ptr + 2)).to(CT)
        wd = tl.load(hp_ptr + 3).to(CT)
        neg_lr = (-lr).to(CT)
        first = step == 0
        gs = tl.full((), 1.0, CT)
        if HAS_GRAD_SCALE:
            gs = tl.load(gs_ptr).to(CT)
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            _sgd_body(p_ptr, g_ptr, b_ptr, offs, None, gs, wd, mom, one_damp, neg_lr, first,
                      FP64, CT, USE_MOMENTUM, NESTEROV, MAXIMIZE, HAS_GRAD_SCALE)
        else:
            _sgd_body(p_ptr, g_ptr, b_ptr, offs, offs < n, gs, wd, mom, one_damp, neg_lr,
                      first, FP64, CT, USE_MOMENTUM, NESTEROV, MAXIMIZE, HAS_GRAD_SCALE)


def sgd_step(params, grads, momentum_buffers, steps, *, lr, momentum, dampening,
             weight_decay, nesterov, maximize, schedule, position, grad_scale=None,
             found_inf=None, advance_position=True):
    """One SGD update of every tensor in ``params`` (see ``fusedsched.kernels``): a single
    kernel launch, then the counters advance with device ops."""
    if params:
        dtype, device = L.check_tensors(params, grads, momentum_buffers)
        tab, blk, n_blocks, aligned = L.tables(params, grads, [momentum_buffers], steps)
        if n_blocks:
            hp = L.hyperparameters(device, (lr, momentum, dampening, weight_decay))
            prog, n_nodes, pos = L.schedule_args(schedule, position, device)
            sgd_kernel[(n_blocks,)](
                tab, blk, hp, prog, n_nodes, pos,
                grad_scale if grad_scale is not None else hp,
                found_inf if found_inf is not None else hp,
                DTYPE=L.tl_dtype(dtype), BLOCK=L.BLOCK[dtype], ALIGNED=aligned,
                USE_MOMENTUM=momentum_buffers is not None, NESTEROV=bool(nesterov),
                MAXIMIZE=bool(maximize), HAS_GRAD_SCALE=grad_scale is not None,
                HAS_FOUND_INF=found_inf is not None, **L.LAUNCH_OPTIONS)
    L.advance(steps, position, found_inf, advance_position)
