"""RMSprop (plain, centered, momentum), Triton: one launch per step for the tensor list.

Operation order of ``kernels/reference/rmsprop.py`` (torch's ``_single_tensor_rmsprop``):
maximize negates the (unscaled) grad; grad = fma(p, wd, grad) (wd != 0); square_avg =
fma((1-alpha)*g, g, a*alpha); centered: grad_avg lerp, variance fma(-ga, ga, sq) clamped
at 0 before sqrt (FastNN#12: torch
gives NaN when E[g^2] - E[g]^2 rounds below zero; a deliberate deviation); avg = sqrt + eps;
momentum: buf = m*buf + g/avg, read on every update as the reference and torch do (the
optimizer zero-initializes it: a first update gives 0*m + g/avg, +0 where g/avg is -0),
p = fma(buf, -lr_t, p); else p += (-lr_t)*g/avg. Each fma is rounded once, as the
reference's.

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

# the float64 hyperparameter buffer's slots (hp_ptr), from the declaration in ops.SIGNATURES;
# HP_MOMENTUM: the one a schedule's momentum replaces
HP_LR, HP_ALPHA, HP_EPS, HP_WEIGHT_DECAY, HP_MOMENTUM = L.slots(
    "rmsprop", "lr", "alpha", "eps", "weight_decay", "momentum")
# the states' random-bit salts and 8-bit signedness: square_avg, grad_avg, momentum_buffer
(S_SALT, S_SIGNED), (A_SALT, A_SIGNED), (B_SALT, B_SIGNED) = L.streams("rmsprop")


@triton.jit
def _rmsprop_body(p_ptr, g_ptr, s_ptr, a_ptr, b_ptr, s_sc, a_sc, b_sc, offs, mask, start, n,
                  step, gs, wd, alpha, w, eps, mom, neg_lr, FP64: tl.constexpr,
                  CT: tl.constexpr, FORMAT: tl.constexpr, CENTERED: tl.constexpr,
                  USE_MOMENTUM: tl.constexpr, MAXIMIZE: tl.constexpr,
                  HAS_GRAD_SCALE: tl.constexpr):
    p, g = _load_pg(p_ptr, g_ptr, offs, mask, gs, CT, FP64, MAXIMIZE, HAS_GRAD_SCALE)
    g = tl.where(wd != 0, _fma(p, wd, g), g)
    sq = _fma(w * g, g,
                _load_state(s_ptr, s_sc, offs, mask, start, n, CT, FORMAT, S_SIGNED) * alpha)
    _store_state(s_ptr, s_sc, offs, mask, sq, start, n, step, S_SALT, FORMAT, S_SIGNED)
    if CENTERED:
        ga = _lerp(_load_state(a_ptr, a_sc, offs, mask, start, n, CT, FORMAT, A_SIGNED), g,
                     w)
        _store_state(a_ptr, a_sc, offs, mask, ga, start, n, step, A_SALT, FORMAT, A_SIGNED)
        avg = _sqrt(tl.maximum(_fma(-ga, ga, sq), 0.0, propagate_nan=tl.PropagateNan.ALL),
                      FP64)   # a NaN stays NaN, as the reference's clamp_min
    else:
        avg = _sqrt(sq, FP64)
    avg = avg + eps
    if USE_MOMENTUM:
        buf = (_load_state(b_ptr, b_sc, offs, mask, start, n, CT, FORMAT, B_SIGNED) * mom
               + _div(g, avg, FP64))
        _store_state(b_ptr, b_sc, offs, mask, buf, start, n, step, B_SALT, FORMAT, B_SIGNED)
        p = _fma(buf, neg_lr, p)
    else:
        p = p + _div(neg_lr * g, avg, FP64)
    _store(p_ptr, offs, p, mask)


@triton.jit(do_not_specialize=["n_nodes"])
def rmsprop_kernel(
        tab_ptr,    # *int64 [n_tensors, ROW or ROW_8BIT]: per tensor its numel, then the
                    #   addresses of the param, the grad, square_avg, grad_avg (0 unless
                    #   centered), momentum_buffer (0 without momentum), the tensor's 0-dim
                    #   fp64 step, a 0, and for "8bit" the three states' scales (0 where none)
        blk_ptr, hp_ptr, prog_ptr, n_nodes, pos_ptr, gs_ptr, fi_ptr,   # as every kernel's
        DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr, FORMAT: tl.constexpr,
        CENTERED: tl.constexpr, USE_MOMENTUM: tl.constexpr, MAXIMIZE: tl.constexpr,
        HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr):
    FP64: tl.constexpr = DTYPE == tl.float64
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    if _proceed(fi_ptr, HAS_FOUND_INF):
        start, n, p_ptr, g_ptr, s_ptr, a_ptr, b_ptr, s_sc, a_sc, b_sc, step = _chunk(
            tab_ptr, blk_ptr, DTYPE, BLOCK, ALIGNED, FORMAT)
        lr, mom = _schedule(hp_ptr, prog_ptr, n_nodes, pos_ptr, HP_LR, HP_MOMENTUM)
        alpha = tl.load(hp_ptr + HP_ALPHA)
        eps = tl.load(hp_ptr + HP_EPS).to(CT)
        wd = tl.load(hp_ptr + HP_WEIGHT_DECAY).to(CT)
        mom = mom.to(CT)
        neg_lr = (-lr).to(CT)
        gs = _grad_scale(gs_ptr, CT, HAS_GRAD_SCALE)
        a_c = alpha.to(CT)
        w = (1.0 - alpha).to(CT)
        offs = _offsets(start, BLOCK, FORMAT)
        if start + BLOCK <= n:
            _rmsprop_body(p_ptr, g_ptr, s_ptr, a_ptr, b_ptr, s_sc, a_sc, b_sc, offs, None,
                          start, n, step + 1.0, gs, wd, a_c, w, eps, mom, neg_lr, FP64,
                          CT, FORMAT, CENTERED, USE_MOMENTUM, MAXIMIZE, HAS_GRAD_SCALE)
        else:
            _rmsprop_body(p_ptr, g_ptr, s_ptr, a_ptr, b_ptr, s_sc, a_sc, b_sc, offs, offs < n,
                          start, n, step + 1.0, gs, wd, a_c, w, eps, mom, neg_lr, FP64,
                          CT, FORMAT, CENTERED, USE_MOMENTUM, MAXIMIZE, HAS_GRAD_SCALE)


def rmsprop_step(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, *,
                 schedule, position, grad_scale=None, found_inf=None, advance_position=True,
                 state_format="native", scales=None, **hyper):
    """One RMSprop update of every tensor in ``params`` (see ``fusedsched.kernels``;
    ``hyper``: the hyperparameters of ``ops.SIGNATURES["rmsprop"]``; ``state_format`` and
    ``scales`` as ``ops.call``'s): a single kernel launch, then the counters advance with
    device ops."""
    centered = hyper["centered"]
    L.launch(rmsprop_kernel, "rmsprop", params, grads,
             [square_avgs, grad_avgs if centered else None, momentum_buffers], steps, hyper,
             schedule=schedule, position=position, grad_scale=grad_scale,
             found_inf=found_inf, advance_position=advance_position,
             state_format=state_format, scales=scales, CENTERED=bool(centered),
             USE_MOMENTUM=momentum_buffers is not None,
             MAXIMIZE=bool(hyper["maximize"]))
