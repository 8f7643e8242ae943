"""What the reference kernels of all algorithms share: scalars, dtypes, AMP, counters.

Everything here is torch ops on the parameters' device, with no host sync: a found_inf
skip is a ``torch.where`` on the new values, not a Python branch.

Rounding is torch's own: the fused multiply-adds below where torch's CPU kernels fuse, and
``Tensor.sqrt()`` (``sqrt`` below), which on the CPU is MKL's vector square root (not
always correctly rounded: on some CPUs a share of fp32 results is 1 ulp from IEEE's), so
fp32 and 16-bit CPU results are bit-identical to torch's for-loop. (The float64 scalars of a
step, lr * f(t) and the bias corrections, come from torch's pow / cos / sqrt here and from
Python's math module in torch's for-loop, which may differ in the last bit: an fp32 update
uses them only rounded to fp32; float64 results may differ from torch's in the last bits.)
The Numba kernels
call the same MKL function in their "torch" sqrt mode (``kernels/numba/_common.py``); their
default, IEEE sqrt, is what this module computes with ``sqrt`` swapped for a correctly
rounded one.
"""

import torch

from .schedule import evaluate


def sqrt(x: torch.Tensor) -> torch.Tensor:
    """``x.sqrt()``: torch's own square root, as torch's for-loop optimizers take it."""
    return x.sqrt()


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 math for fp64 tensors, fp32 math for fp32, fp16 and bf16 (docs/design.md)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_scalar(value, device) -> torch.Tensor:
    """A float or a 0-dim / one-element tensor as a 0-dim float64 tensor on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(()).to(device=device, dtype=torch.float64)
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def schedule_scalars(schedule, position, lr, momentum):
    """(lr * f(t), momentum of this update): the schedule's momentum replaces the group's
    ``momentum`` (beta1 for Adam) when its active leaf cycles momentum."""
    factor, sched_momentum, has_momentum = evaluate(schedule, position)
    device = position.device
    lr_t = as_scalar(lr, device) * factor
    momentum_t = torch.where(has_momentum != 0, sched_momentum, as_scalar(momentum, device))
    return lr_t, momentum_t


def fma(x, y, z):
    """``x * y + z`` rounded once: how torch's CPU kernels round ``z.add_(x, alpha=y)``,
    ``z.addcmul_(x, y)`` and ``lerp`` (measured bit for bit against torch 2.14 on fp32;
    ``torch.addcmul`` is itself that fused multiply-add). Every backend uses the same
    fused multiply-adds, so fp32 results match torch's for-loop optimizers bit for bit."""
    return torch.addcmul(z, x, y)


def lerp(start, end, weight):
    """torch's ``start.lerp_(end, weight)`` with its two-sided rounding (weight in the
    math dtype, a 0-dim tensor): ``start + weight * (end - start)`` for weight < 0.5,
    else ``end - (end - start) * (1 - weight)``, each as one fused multiply-add."""
    diff = end - start
    return torch.where(weight < 0.5, fma(weight, diff, start), fma(-diff, 1 - weight, end))


def skip_mask(found_inf):
    """0-dim bool tensor: True when this update must write nothing (AMP found an inf)."""
    if found_inf is None:
        return None
    return found_inf.reshape(()) != 0


def load_grad(grad, dtype, grad_scale, skip, maximize):
    """The gradient in math ``dtype``: unscaled by ``grad_scale`` (the unscaled value is
    written back, as torch's fused kernels do, unless the update is skipped), then negated
    for ``maximize``."""
    g = grad.to(dtype)
    if grad_scale is not None:
        g = g / grad_scale.reshape(()).to(dtype)
        store(grad, g, skip)
    return -g if maximize else g


def store(dst, value, skip):
    """Write ``value`` into ``dst`` (rounding to its dtype) unless ``skip``."""
    if skip is not None:
        value = torch.where(skip, dst.to(value.dtype), value)
    dst.copy_(value)


def advance(steps, position, skip, advance_position):
    """Per-parameter steps count applied updates; the position counts ``step()`` calls."""
    if steps:
        torch._foreach_add_(steps, 1.0 if skip is None else (~skip).to(torch.float64))
    if advance_position:
        position.add_(1.0)
