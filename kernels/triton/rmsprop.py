"""RMSprop (plain, centered, momentum), Triton: one launch per step for the tensor list.

Operation order of ``kernels/reference/rmsprop.py`` (torch's ``_single_tensor_rmsprop``):
maximize negates the (unscaled) grad; grad = fma(p, wd, grad) (wd != 0); square_avg =
fma((1-alpha)*g, g, a*alpha); centered: grad_avg lerp, variance fma(-ga, ga, sq) clamped
at 0 before sqrt (case C9: torch
gives NaN when E[g^2] - E[g]^2 rounds below zero; a deliberate deviation); avg = sqrt + eps;
momentum: buf = m*buf + g/avg (the buffer is read as 0 on the first update, torch zero-inits
it), p = fma(buf, -lr_t, p); else p += (-lr_t)*g/avg. Each fma is rounded once, as the
reference's.
"""

import triton
import triton.language as tl

from . import _launch as L
from .schedule import evaluate


@triton.jit
def _rmsprop_body(p_ptr, g_ptr, s_ptr, a_ptr, b_ptr, offs, mask, gs, wd, alpha, w, eps, mom,
                  neg_lr, first, FP64: tl.constexpr, CT: tl.constexpr,
                  CENTERED: tl.constexpr, USE_MOMENTUM: tl.constexpr, MAXIMIZE: tl.constexpr,
                  HAS_GRAD_SCALE: tl.constexpr):
    p = tl.load(p_ptr + offs, mask=mask).to(CT)
    g = tl.load(g_ptr + offs, mask=mask).to(CT)
    if HAS_GRAD_SCALE:
        g = L._div(g, gs, FP64)
        tl.store(g_ptr + offs, L._to(g, g_ptr.dtype.element_ty), mask=mask)
    if MAXIMIZE:
        g = -g
    g = tl.where(wd != 0, L._fma(p, wd, g), g)
    sq = L._fma(w * g, g, tl.load(s_ptr + offs, mask=mask).to(CT) * alpha)
    tl.store(s_ptr + offs, L._to(sq, s_ptr.dtype.element_ty), mask=mask)
    if CENTERED:
        ga = L._lerp(tl.load(a_ptr + offs, mask=mask).to(CT), g, w)
        tl.store(a_ptr + offs, L._to(ga, a_ptr.dtype.element_ty), mask=mask)
        avg = L._sqrt(tl.maximum(L._fma(-ga, ga, sq), 0.0), FP64)
    else:
        avg = L._sqrt(sq, FP64)
    avg = avg + eps
    if USE_MOMENTUM:
        if first:
            buf = L._div(g, avg, FP64)
        else:
            buf = tl.load(b_ptr + offs, mask=mask).to(CT) * mom + L._div(g, avg, FP64)
        tl.store(b_ptr + offs, L._to(buf, b_ptr.dtype.element_ty), mask=mask)
        p = L._fma(buf, neg_lr, p)
    else:
        p = p + L._div(neg_lr * g, avg, FP64)
    tl.store(p_ptr + offs, L._to(p, p_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["n_nodes"])
def rmsprop_kernel(tab_ptr, blk_ptr, hp_ptr, prog_ptr, n_nodes, pos_ptr, gs_ptr, fi_ptr,
                   DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr,
                   CENTERED: tl.constexpr, USE_MOMENTUM: tl.constexpr, MAXIMIZE: tl.constexpr,
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
        s_ptr = tl.load(row + 3).to(tl.pointer_type(DTYPE))
        a_ptr = tl.load(row + 4).to(tl.pointer_type(DTYPE))
        b_ptr = tl.load(row + 5).to(tl.pointer_type(DTYPE))
        step = tl.load(tl.load(row + 6).to(tl.pointer_type(tl.float64)))
        if ALIGNED:
            p_ptr = tl.multiple_of(p_ptr, 16)
            g_ptr = tl.multiple_of(g_ptr, 16)
            s_ptr = tl.multiple_of(s_ptr, 16)
            a_ptr = tl.multiple_of(a_ptr, 16)
            b_ptr = tl.multiple_of(b_ptr, 16)
        # hp = [lr, alpha, eps, weight_decay, momentum]
        factor, s_mom, has_m = evaluate(prog_ptr, n_nodes, tl.load(pos_ptr))
        lr = tl.load(hp_ptr) * factor
        alpha = tl.load(hp_ptr + 1)
        eps = tl.load(hp_ptr + 2).to(CT)
        wd = tl.load(hp_ptr + 3).to(CT)
        mom = tl.where(has_m != 0, s_mom, tl.load(hp_ptr + 4)).to(CT)
        neg_lr = (-lr).to(CT)
        first = step == 0
        gs = tl.full((), 1.0, CT)
        if HAS_GRAD_SCALE:
            gs = tl.load(gs_ptr).to(CT)
        a_c = alpha.to(CT)
        w = (1.0 - alpha).to(CT)
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            _rmsprop_body(p_ptr, g_ptr, s_ptr, a_ptr, b_ptr, offs, None, gs, wd, a_c, w, eps,
                          mom, neg_lr, first, FP64, CT, CENTERED, USE_MOMENTUM, MAXIMIZE,
                          HAS_GRAD_SCALE)
        else:
            _rmsprop_body(p_ptr, g_ptr, s_ptr, a_ptr, b_ptr, offs, offs < n, gs, wd, a_c, w,
                          eps, mom, neg_lr, first, FP64, CT, CENTERED, USE_MOMENTUM, MAXIMIZE,
                          HAS_GRAD_SCALE)


def rmsprop_step(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, *, lr,
                 alpha, eps, weight_decay, momentum, centered, maximize, schedule, position,
                 grad_scale=None, found_inf=None, advance_position=True):
    """One RMSprop update of every tensor in ``params`` (see ``fusedsched.kernels``): a
    single kernel launch, then the counters advance with device ops."""
    if params:
        dtype, device = L.check_tensors(params, grads, square_avgs, grad_avgs,
                                        momentum_buffers)
        tab, blk, n_blocks, aligned = L.tables(
            params, grads, [square_avgs, grad_avgs if centered else None, momentum_buffers],
            steps)
        if n_blocks:
            hp = L.hyperparameters(device, (lr, alpha, eps, weight_decay, momentum))
            prog, n_nodes, pos = L.schedule_args(schedule, position, device)
            rmsprop_kernel[(n_blocks,)](
                tab, blk, hp, prog, n_nodes, pos,
                grad_scale if grad_scale is not None else hp,
                found_inf if found_inf is not None else hp,
                DTYPE=L.tl_dtype(dtype), BLOCK=L.BLOCK[dtype], ALIGNED=aligned,
                CENTERED=bool(centered), USE_MOMENTUM=momentum_buffers is not None,
                MAXIMIZE=bool(maximize), HAS_GRAD_SCALE=grad_scale is not None,
                HAS_FOUND_INF=found_inf is not None, **L.LAUNCH_OPTIONS)
    L.advance(steps, position, found_inf, advance_position)
