"""SGD (plain, momentum, Nesterov), Triton: one launch per step for the whole tensor list.

Operation order of ``kernels/reference/sgd.py`` (torch's ``_single_tensor_sgd``): maximize
negates the (unscaled) grad; grad = fma(p, wd, grad) (when wd != 0, a runtime branch);
momentum: buf = grad on the parameter's first update (step == 0, as torch clones the
grad), else fma(grad, 1-dampening, buf*momentum); nesterov grad = fma(buf, momentum, grad),
else grad = buf; p = fma(grad, -lr_t, p). Each fma is rounded once, as the reference's.

States are stored in ``FORMAT`` (``kernels/state_format.py``: native, bfloat16 rounded
stochastically, 8-bit blockwise codes), through ``_load_state``/``_store_state``; the
parameter update uses each new state value before it is rounded for storage.
"""

import triton
import triton.language as tl

from . import _launch as L
from ._elements import _fma, _store
from ._kernel import _chunk, _grad_scale, _load_pg, _proceed, _schedule
from ._state import _load_state, _offsets, _store_state

# the float64 hyperparameter buffer's slots (hp_ptr), from the declaration in ops.SIGNATURES;
# HP_MOMENTUM: the one a schedule's momentum replaces
HP_LR, HP_DAMPENING, HP_WEIGHT_DECAY, HP_MOMENTUM = L.slots(
    "sgd", "lr", "dampening", "weight_decay", "momentum")
# the momentum buffer's random-bit salt and 8-bit signedness
((B_SALT, B_SIGNED),) = L.streams("sgd")


@triton.jit
def _sgd_body(p_ptr, g_ptr, b_ptr, b_sc, offs, mask, start, n, step, gs, wd, mom, one_damp,
              neg_lr, first, FP64: tl.constexpr, CT: tl.constexpr, FORMAT: tl.constexpr,
              USE_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr,
              HAS_GRAD_SCALE: tl.constexpr):
    p, g = _load_pg(p_ptr, g_ptr, offs, mask, gs, CT, FP64, MAXIMIZE, HAS_GRAD_SCALE)
    g = tl.where(wd != 0, _fma(p, wd, g), g)
    if USE_MOMENTUM:
        if first:
            buf = g
        else:
            buf = _fma(g, one_damp,
                         _load_state(b_ptr, b_sc, offs, mask, start, n, CT, FORMAT,
                                       B_SIGNED) * mom)
        _store_state(b_ptr, b_sc, offs, mask, buf, start, n, step + 1.0, B_SALT, FORMAT,
                       B_SIGNED)
        if NESTEROV:
            g = _fma(buf, mom, g)
        else:
            g = buf
    p = _fma(g, neg_lr, p)
    _store(p_ptr, offs, p, mask)


@triton.jit(do_not_specialize=["n_nodes"])
def sgd_kernel(
        tab_ptr,    # *int64 [n_tensors, ROW or ROW_8BIT]: per tensor its numel, then the
                    #   addresses of the param, the grad, momentum_buffer (0 without
                    #   momentum), two unused 0s, the tensor's 0-dim fp64 step, a 0, and for
                    #   "8bit" the buffer's scales and two unused 0s
        blk_ptr, hp_ptr, prog_ptr, n_nodes, pos_ptr, gs_ptr, fi_ptr,   # as every kernel's
        DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr, FORMAT: tl.constexpr,
        USE_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr,
        HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr):
    FP64: tl.constexpr = DTYPE == tl.float64
    CT: tl.constexpr = tl.float64 if FP64 else tl.float32
    if _proceed(fi_ptr, HAS_FOUND_INF):
        start, n, p_ptr, g_ptr, b_ptr, _s2, _s3, b_sc, _sc2, _sc3, step = _chunk(
            tab_ptr, blk_ptr, DTYPE, BLOCK, ALIGNED, FORMAT)
        lr, mom = _schedule(hp_ptr, prog_ptr, n_nodes, pos_ptr, HP_LR, HP_MOMENTUM)
        mom = mom.to(CT)
        one_damp = (1.0 - tl.load(hp_ptr + HP_DAMPENING)).to(CT)
        wd = tl.load(hp_ptr + HP_WEIGHT_DECAY).to(CT)
        neg_lr = (-lr).to(CT)
        first = step == 0
        gs = _grad_scale(gs_ptr, CT, HAS_GRAD_SCALE)
        offs = _offsets(start, BLOCK, FORMAT)
        if start + BLOCK <= n:
            _sgd_body(p_ptr, g_ptr, b_ptr, b_sc, offs, None, start, n, step, gs, wd, mom,
                      one_damp, neg_lr, first, FP64, CT, FORMAT, USE_MOMENTUM, NESTEROV,
                      MAXIMIZE, HAS_GRAD_SCALE)
        else:
            _sgd_body(p_ptr, g_ptr, b_ptr, b_sc, offs, offs < n, start, n, step, gs, wd, mom,
                      one_damp, neg_lr, first, FP64, CT, FORMAT, USE_MOMENTUM, NESTEROV,
                      MAXIMIZE, HAS_GRAD_SCALE)


def sgd_step(params, grads, momentum_buffers, steps, *, schedule, position, grad_scale=None,
             found_inf=None, advance_position=True, state_format="native", scales=None,
             **hyper):
    """One SGD update of every tensor in ``params`` (see ``fusedsched.kernels``; ``hyper``:
    the hyperparameters of ``ops.SIGNATURES["sgd"]``; ``state_format`` and ``scales`` as
    ``ops.call``'s): a single kernel launch, then the counters advance with device ops."""
    L.launch(sgd_kernel, "sgd", params, grads, [momentum_buffers], steps, hyper,
             schedule=schedule, position=position, grad_scale=grad_scale,
             found_inf=found_inf, advance_position=advance_position,
             state_format=state_format, scales=scales,
             USE_MOMENTUM=momentum_buffers is not None, NESTEROV=bool(hyper["nesterov"]),
             MAXIMIZE=bool(hyper["maximize"]))
