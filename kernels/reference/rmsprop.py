"""RMSprop update, pure torch: the specification the Numba and Triton kernels follow.

Operation order of torch's ``_single_tensor_rmsprop`` (torch/optim/rmsprop.py; Hinton's
lecture 6e, centered form from Graves 2013), with ``lr`` replaced by ``lr * f(t)`` and
``momentum`` by the schedule's when it cycles it. One deliberate deviation: the centered
variance ``square_avg - grad_avg**2`` is clamped at 0 before the square root, where
torch's rounding can make it negative and produce NaN (FastNN#12).
"""

import torch

from ._common import (advance, as_scalar, fma, lerp, load_grad, math_dtype, schedule_scalars,
                      skip_mask, sqrt, store)
from ._state import state_io


def rmsprop_step(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, *, lr,
                 alpha, eps, weight_decay, momentum, centered, maximize, schedule, position,
                 grad_scale=None, found_inf=None, advance_position=True, state_format="native",
                 scales=None):
    """One RMSprop update of every tensor in ``params`` (see ``fusedsched.kernels``)."""
    if not params:
        if advance_position:
            position.add_(1.0)
        return
    lr_t, momentum_t = schedule_scalars(schedule, position, lr, momentum)
    alpha_t = as_scalar(alpha, position.device)
    skip = skip_mask(found_inf)
    sq_io, avg_io, buf_io = state_io("rmsprop", [square_avgs, grad_avgs, momentum_buffers],
                                     scales, state_format)
    for i, param in enumerate(params):
        step = steps[i] + 1
        dtype = math_dtype(param.dtype)
        p = param.to(dtype)
        grad = load_grad(grads[i], dtype, grad_scale, skip, maximize)
        if weight_decay != 0:
            grad = fma(p, as_scalar(weight_decay, p.device).to(dtype), grad)
        square_avg = fma((1 - alpha_t).to(dtype) * grad, grad,
                         sq_io.load(i, dtype) * alpha_t.to(dtype))
        if centered:
            grad_avg = lerp(avg_io.load(i, dtype), grad, (1 - alpha_t).to(dtype))
            avg = sqrt(fma(-grad_avg, grad_avg, square_avg).clamp_min(0))
            avg_io.store(i, grad_avg, step, skip)
        else:
            avg = sqrt(square_avg)
        avg = avg + eps
        if momentum_buffers is not None:
            buf = buf_io.load(i, dtype) * momentum_t.to(dtype) + grad / avg
            p = fma(buf, (-lr_t).to(dtype), p)
            buf_io.store(i, buf, step, skip)
        else:
            p = p + (-lr_t).to(dtype) * grad / avg
        sq_io.store(i, square_avg, step, skip)
        store(param, p, skip)
    advance(steps, position, skip, advance_position)
