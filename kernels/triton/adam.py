"""Adam / AdamW, Triton: one launch per step for the whole tensor list.

Operation order of ``kernels/reference/adam.py`` (torch's ``_single_tensor_adam``): maximize
negates the (unscaled) grad; coupled wd grad = fma(p, wd, grad), decoupled p *= 1 - lr_t*wd; exp_avg
lerp; exp_avg_sq = fma((1-beta2)*g, g, v*beta2); bias corrections from step+1 in fp64; amsgrad
max; denom = sqrt(v)/sqrt(bc2) + eps; p += (-step_size)*m/denom. fp32 ``/`` and ``sqrt``
are ``div_rn``/``sqrt_rn`` (Triton's default fp32 ``/`` is the approximate div.full.f32).
"""

import torch
import triton
import triton.language as tl

from . import _launch as L
from ._launch import _div, _fma, _lerp, _sqrt, _to
from .schedule import _pow, evaluate


@triton.jit
def _adam_body(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, offs, mask, gs, wd, decay, w1, b2, one_b2,
               step_size, bc2_sqrt, eps, CT: tl.constexpr, FP64: tl.constexpr,
               AMSGRAD: tl.constexpr, DECOUPLED: tl.constexpr, MAXIMIZE: tl.constexpr,
               HAS_GRAD_SCALE: tl.constexpr):
    p = tl.load(p_ptr + offs, mask=mask).to(CT)
    g = tl.load(g_ptr + offs, mask=mask).to(CT)
    if HAS_GRAD_SCALE:
        g = _div(g, gs, FP64)
        tl.store(g_ptr + offs, _to(g, g_ptr.dtype.element_ty), mask=mask)
    if MAXIMIZE:
        g = -g
    if DECOUPLED:
        p = p * decay
    else:
        g = tl.where(wd != 0, _fma(p, wd, g), g)
    m = _lerp(tl.load(m_ptr + offs, mask=mask).to(CT), g, w1)
    v = _fma(one_b2 * g, g, tl.load(v_ptr + offs, mask=mask).to(CT) * b2)
    if AMSGRAD:
        vmax = tl.maximum(tl.load(x_ptr + offs, mask=mask).to(CT), v)
        tl.store(x_ptr + offs, _to(vmax, x_ptr.dtype.element_ty), mask=mask)
        denom = _div(_sqrt(vmax, FP64), bc2_sqrt, FP64) + eps
    else:
        denom = _div(_sqrt(v, FP64), bc2_sqrt, FP64) + eps
    p = p + _div(-step_size * m, denom, FP64)
    tl.store(m_ptr + offs, _to(m, m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, _to(v, v_ptr.dtype.element_ty), mask=mask)
    tl.store(p_ptr + offs, _to(p, p_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["n_nodes"])
def adam_kernel(tab_ptr, blk_ptr, hp_ptr, prog_ptr, n_nodes, pos_ptr, gs_ptr, fi_ptr,
                DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr,
                AMSGRAD: tl.constexpr, DECOUPLED: tl.constexpr, MAXIMIZE: tl.constexpr,
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
        m_ptr = tl.load(row + 3).to(tl.pointer_type(DTYPE))
        v_ptr = tl.load(row + 4).to(tl.pointer_type(DTYPE))
        x_ptr = tl.load(row + 5).to(tl.pointer_type(DTYPE))
        step = tl.load(tl.load(row + 6).to(tl.pointer_type(tl.float64))) + 1.0
        if ALIGNED:
            p_ptr = tl.multiple_of(p_ptr, 16)
            g_ptr = tl.multiple_of(g_ptr, 16)
            m_ptr = tl.multiple_of(m_ptr, 16)
            v_ptr = tl.multiple_of(v_ptr, 16)
            x_ptr = tl.multiple_of(x_ptr, 16)
        # per-program fp64 scalars: hp = [lr, beta1, beta2, eps, weight_decay]
        factor, s_mom, has_m = evaluate(prog_ptr, n_nodes, tl.load(pos_ptr))
        lr = tl.load(hp_ptr) * factor
        beta1 = tl.where(has_m != 0, s_mom, tl.load(hp_ptr + 1))
        beta2 = tl.load(hp_ptr + 2)
        wd = tl.load(hp_ptr + 4)
        bc1 = 1.0 - _pow(beta1, step)
        bc2 = 1.0 - _pow(beta2, step)
        step_size = (lr / bc1).to(CT)
        bc2_sqrt = _sqrt(bc2, True).to(CT)
        gs = tl.full((), 1.0, CT)
        if HAS_GRAD_SCALE:
            gs = tl.load(gs_ptr).to(CT)
        offs = start + tl.arange(0, BLOCK)
        wd_c = wd.to(CT)
        decay = (1.0 - lr * wd).to(CT)
        w1 = (1.0 - beta1).to(CT)
        b2 = beta2.to(CT)
        one_b2 = (1.0 - beta2).to(CT)
        eps = tl.load(hp_ptr + 3).to(CT)
        if start + BLOCK <= n:
            _adam_body(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, offs, None, gs, wd_c, decay, w1, b2,
                       one_b2, step_size, bc2_sqrt, eps, CT, FP64,
                       AMSGRAD, DECOUPLED, MAXIMIZE, HAS_GRAD_SCALE)
        else:
            _adam_body(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, offs, offs < n, gs, wd_c, decay, w1, b2,
                       one_b2, step_size, bc2_sqrt, eps, CT, FP64,
                       AMSGRAD, DECOUPLED, MAXIMIZE, HAS_GRAD_SCALE)


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr, beta1,
              beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize, schedule,
              position, grad_scale=None, found_inf=None, advance_position=True):
    """One Adam update of every tensor in ``params`` (see ``fusedsched.kernels``): a single
    kernel launch, then the counters advance with device ops."""
    if params:
        dtype, device = L.check_tensors(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs)
        tab, blk, n_blocks, aligned = L.tables(
            params, grads, [exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else None], steps)
        if n_blocks:
            hp = L.hyperparameters(device, (lr, beta1, beta2, eps, weight_decay))
            prog, n_nodes, pos = L.schedule_args(schedule, position, device)
            adam_kernel[(n_blocks,)](
                tab, blk, hp, prog, n_nodes, pos,
                grad_scale if grad_scale is not None else hp,
                found_inf if found_inf is not None else hp,
                DTYPE=L.tl_dtype(dtype), BLOCK=L.BLOCK[dtype], ALIGNED=aligned,
                AMSGRAD=bool(amsgrad), DECOUPLED=bool(decoupled_weight_decay),
                MAXIMIZE=bool(maximize), HAS_GRAD_SCALE=grad_scale is not None,
                HAS_FOUND_INF=found_inf is not None, **L.LAUNCH_OPTIONS)
    L.advance(steps, position, found_inf, advance_position)
