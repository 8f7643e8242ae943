"""Adam / AdamW, Triton: one launch per step for the whole tensor list.

Operation order of ``kernels/reference/adam.py`` (torch's ``_single_tensor_adam``): maximize
negates the (unscaled) grad; coupled wd grad = fma(p, wd, grad), decoupled p *= 1 - lr_t*wd; exp_avg
lerp; exp_avg_sq = fma((1-beta2)*g, g, v*beta2); bias corrections from step+1 in fp64; amsgrad
max; denom = sqrt(v)/sqrt(bc2) + eps; p += (-step_size)*m/denom. fp32 ``/`` and ``sqrt``
are ``div_rn``/``sqrt_rn`` (Triton's default fp32 ``/`` is the approximate div.full.f32).

States are stored in ``FORMAT`` (``kernels/state_format.py``: native, bfloat16 rounded
stochastically, 8-bit blockwise codes), through ``_load_state``/``_store_state``; the
parameter update uses each new state value before it is rounded for storage.
"""

import triton
import triton.language as tl

from . import _launch as L
from ._elements import _div, _fma, _lerp, _sqrt, _store
from ._kernel import _chunk, _grad_scale, _load_pg, _proceed, _schedule
from ._state import _load_state, _offsets, _store_state
from .schedule import _pow, _sqrt as _sqrt64

# the float64 hyperparameter buffer's slots (hp_ptr), from the declaration in ops.SIGNATURES;
# HP_MOMENTUM: the one a schedule's momentum replaces
HP_LR, HP_BETA2, HP_EPS, HP_WEIGHT_DECAY, HP_MOMENTUM = L.slots(
    "adam", "lr", "beta2", "eps", "weight_decay", "momentum")
# the states' random-bit salts and 8-bit signedness: exp_avg, exp_avg_sq, max_exp_avg_sq
(M_SALT, M_SIGNED), (V_SALT, V_SIGNED), (X_SALT, X_SIGNED) = L.streams("adam")


@triton.jit
def _adam_body(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, m_sc, v_sc, x_sc, offs, mask, start, n, step,
               gs, wd, decay, w1, b2, one_b2, step_size, bc2_sqrt, eps, CT: tl.constexpr,
               FP64: tl.constexpr, FORMAT: tl.constexpr, AMSGRAD: tl.constexpr,
               DECOUPLED: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr):
    p, g = _load_pg(p_ptr, g_ptr, offs, mask, gs, CT, FP64, MAXIMIZE, HAS_GRAD_SCALE)
    if DECOUPLED:
        p = p * decay
    else:
        g = tl.where(wd != 0, _fma(p, wd, g), g)
    m = _lerp(_load_state(m_ptr, m_sc, offs, mask, start, n, CT, FORMAT, M_SIGNED), g, w1)
    v = _fma(one_b2 * g, g,
             _load_state(v_ptr, v_sc, offs, mask, start, n, CT, FORMAT, V_SIGNED) * b2)
    if AMSGRAD:
        vmax = tl.maximum(_load_state(x_ptr, x_sc, offs, mask, start, n, CT, FORMAT, X_SIGNED),
                          v, propagate_nan=tl.PropagateNan.ALL)   # as torch.maximum
        _store_state(x_ptr, x_sc, offs, mask, vmax, start, n, step, X_SALT, FORMAT, X_SIGNED)
        denom = _div(_sqrt(vmax, FP64), bc2_sqrt, FP64) + eps
    else:
        denom = _div(_sqrt(v, FP64), bc2_sqrt, FP64) + eps
    p = p + _div(-step_size * m, denom, FP64)
    _store_state(m_ptr, m_sc, offs, mask, m, start, n, step, M_SALT, FORMAT, M_SIGNED)
    _store_state(v_ptr, v_sc, offs, mask, v, start, n, step, V_SALT, FORMAT, V_SIGNED)
    _store(p_ptr, offs, p, mask)


@triton.jit(do_not_specialize=["n_nodes"])
def adam_kernel(
        tab_ptr,    # *int64 [n_tensors, ROW or ROW_8BIT]: per tensor its numel, then the
                    #   addresses of the param, the grad, exp_avg, exp_avg_sq, max_exp_avg_sq
                    #   (0 without amsgrad), the tensor's 0-dim fp64 step, a 0, and for
                    #   "8bit" the three states' scales (0 without amsgrad)
        blk_ptr, hp_ptr, prog_ptr, n_nodes, pos_ptr, gs_ptr, fi_ptr,   # as every kernel's
        DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr, FORMAT: tl.constexpr,
        AMSGRAD: tl.constexpr, DECOUPLED: tl.constexpr, MAXIMIZE: tl.constexpr,
        HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr):
    FP64: tl.constexpr = DTYPE == tl.float64
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    if _proceed(fi_ptr, HAS_FOUND_INF):
        start, n, p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, m_sc, v_sc, x_sc, step = _chunk(
            tab_ptr, blk_ptr, DTYPE, BLOCK, ALIGNED, FORMAT)
        # per-program fp64 scalars
        lr, beta1 = _schedule(hp_ptr, prog_ptr, n_nodes, pos_ptr, HP_LR, HP_MOMENTUM)
        step = step + 1.0
        beta2 = tl.load(hp_ptr + HP_BETA2)
        wd = tl.load(hp_ptr + HP_WEIGHT_DECAY)
        bc1 = 1.0 - _pow(beta1, step)
        bc2 = 1.0 - _pow(beta2, step)
        step_size = (lr / bc1).to(CT)
        bc2_sqrt = _sqrt64(bc2).to(CT)
        gs = _grad_scale(gs_ptr, CT, HAS_GRAD_SCALE)
        offs = _offsets(start, BLOCK, FORMAT)
        wd_c = wd.to(CT)
        decay = (1.0 - lr * wd).to(CT)
        w1 = (1.0 - beta1).to(CT)
        b2 = beta2.to(CT)
        one_b2 = (1.0 - beta2).to(CT)
        eps = tl.load(hp_ptr + HP_EPS).to(CT)
        if start + BLOCK <= n:
            _adam_body(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, m_sc, v_sc, x_sc, offs, None, start,
                       n, step, gs, wd_c, decay, w1, b2, one_b2, step_size, bc2_sqrt, eps, CT,
                       FP64, FORMAT, AMSGRAD, DECOUPLED, MAXIMIZE, HAS_GRAD_SCALE)
        else:
            _adam_body(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, m_sc, v_sc, x_sc, offs, offs < n,
                       start, n, step, gs, wd_c, decay, w1, b2, one_b2, step_size, bc2_sqrt,
                       eps, CT, FP64, FORMAT, AMSGRAD, DECOUPLED, MAXIMIZE, HAS_GRAD_SCALE)


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, schedule,
              position, grad_scale=None, found_inf=None, advance_position=True,
              state_format="native", scales=None, **hyper):
    """One Adam update of every tensor in ``params`` (see ``fusedsched.kernels``; ``hyper``:
    the hyperparameters of ``ops.SIGNATURES["adam"]``; ``state_format`` and ``scales`` as
    ``ops.call``'s): a single kernel launch, then the counters advance with device ops."""
    amsgrad = hyper["amsgrad"]
    L.launch(adam_kernel, "adam", params, grads,
             [exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else None], steps,
             hyper, schedule=schedule, position=position,
             grad_scale=grad_scale, found_inf=found_inf, advance_position=advance_position,
             state_format=state_format, scales=scales,
             AMSGRAD=bool(amsgrad), DECOUPLED=bool(hyper["decoupled_weight_decay"]),
             MAXIMIZE=bool(hyper["maximize"]))
