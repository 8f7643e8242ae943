"""SGD (with momentum, dampening, Nesterov) update, pure torch: the specification the
Numba and Triton kernels follow.

Operation order of torch's ``_single_tensor_sgd`` (torch/optim/sgd.py; Nesterov as in
Sutskever et al. 2013), with ``lr`` replaced by ``lr * f(t)`` and ``momentum`` by the
schedule's when it cycles it. The momentum buffer takes the gradient itself on the first
applied update (``step == 0``), as torch's ``torch.clone(grad)``.
"""

import torch

from ._common import advance, as_scalar, fma, load_grad, math_dtype, schedule_scalars, skip_mask, store
from ._state import state_io


def sgd_step(params, grads, momentum_buffers, steps, *, lr, momentum, dampening,
             weight_decay, nesterov, maximize, schedule, position, grad_scale=None,
             found_inf=None, advance_position=True, state_format="native", scales=None):
    """One SGD update of every tensor in ``params`` (see ``fusedsched.kernels``)."""
    if not params:
        if advance_position:
            position.add_(1.0)
        return
    lr_t, momentum_t = schedule_scalars(schedule, position, lr, momentum)
    skip = skip_mask(found_inf)
    (buf_io,) = state_io("sgd", [momentum_buffers], scales, state_format)
    for i, param in enumerate(params):
        dtype = math_dtype(param.dtype)
        p = param.to(dtype)
        grad = load_grad(grads[i], dtype, grad_scale, skip, maximize)
        if weight_decay != 0:
            grad = fma(p, as_scalar(weight_decay, p.device).to(dtype), grad)
        if momentum_buffers is not None:
            m = momentum_t.to(dtype)
            one_minus_dampening = as_scalar(1 - dampening, p.device).to(dtype)
            buf = torch.where(steps[i] == 0, grad,
                              fma(grad, one_minus_dampening, buf_io.load(i, dtype) * m))
            buf_io.store(i, buf, steps[i] + 1, skip)
            grad = fma(buf, m, grad) if nesterov else buf
        p = fma(grad, (-lr_t).to(dtype), p)
        store(param, p, skip)
    advance(steps, position, skip, advance_position)
