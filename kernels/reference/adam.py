"""Adam / AdamW update, pure torch: the specification the Numba and Triton kernels follow.

Operation order of torch's ``_single_tensor_adam`` (torch/optim/adam.py), with
``lr`` replaced by ``lr * f(t)`` and beta1 by the schedule's momentum when it cycles it.
"""

import torch

from ._common import (advance, as_scalar, fma, lerp, load_grad, math_dtype, schedule_scalars,
                      skip_mask, sqrt, store)
from ._state import state_io


def bias_corrections(lr_t, beta1, beta2, step):
    """(``lr_t / (1 - beta1 ** step)``, ``sqrt(1 - beta2 ** step)``): the step size and the
    square root of the second bias correction, 0-dim float64 tensors (torch's pow and sqrt
    on the device)."""
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    return lr_t / bias_correction1, bias_correction2.sqrt()


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr, beta1,
              beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize, schedule,
              position, grad_scale=None, found_inf=None, advance_position=True,
              state_format="native", scales=None):
    """One Adam update of every tensor in ``params`` (see ``fusedsched.kernels``)."""
    if not params:
        if advance_position:
            position.add_(1.0)
        return
    lr_t, beta1_t = schedule_scalars(schedule, position, lr, beta1)
    beta2_t = as_scalar(beta2, position.device)
    skip = skip_mask(found_inf)
    m_io, v_io, vmax_io = state_io("adam", [exp_avgs, exp_avg_sqs,
                                            max_exp_avg_sqs if amsgrad else None],
                                   scales, state_format)
    for i, param in enumerate(params):
        dtype = math_dtype(param.dtype)
        step = steps[i] + 1
        step_size, bias_correction2_sqrt = bias_corrections(lr_t, beta1_t, beta2_t, step)
        step_size = step_size.to(dtype)
        bias_correction2_sqrt = bias_correction2_sqrt.to(dtype)

        p = param.to(dtype)
        grad = load_grad(grads[i], dtype, grad_scale, skip, maximize)
        if weight_decay != 0:
            if decoupled_weight_decay:
                p = p * (1 - lr_t * weight_decay).to(dtype)
            else:
                grad = fma(p, as_scalar(weight_decay, p.device).to(dtype), grad)
        exp_avg = lerp(m_io.load(i, dtype), grad, (1 - beta1_t).to(dtype))
        exp_avg_sq = fma((1 - beta2_t).to(dtype) * grad, grad,
                         v_io.load(i, dtype) * beta2_t.to(dtype))
        if amsgrad:
            max_exp_avg_sq = torch.maximum(vmax_io.load(i, dtype), exp_avg_sq)
            denom = sqrt(max_exp_avg_sq) / bias_correction2_sqrt + eps
            vmax_io.store(i, max_exp_avg_sq, step, skip)
        else:
            denom = sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
        p = p + (-step_size) * exp_avg / denom
        m_io.store(i, exp_avg, step, skip)
        v_io.store(i, exp_avg_sq, step, skip)
        store(param, p, skip)
    advance(steps, position, skip, advance_position)
