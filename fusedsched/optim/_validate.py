"""Argument checks shared by the optimizers. Each raises ValueError (or TypeError for a
wrong type) naming the argument and its value, in torch's wording where torch checks the
same thing."""

import math
import numbers

import torch


def _number(name, value, what):
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise TypeError(f"Invalid {what}: {name} must be a real number, got {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got {name} of shape {tuple(value.shape)}")
        if value.is_complex() or not value.is_floating_point():
            raise TypeError(f"Invalid {what}: tensor {name} must be floating point, got dtype {value.dtype}")
        return float(value.detach().reshape(()).cpu()) if value.device.type == "cpu" else None
    return float(value)


def nonnegative(name, value, what):
    """``value`` >= 0 and finite (a 1-element float tensor on an accelerator is not read)."""
    v = _number(name, value, what)
    if v is not None and not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"Invalid {what}: {name}={value!r}")
    return value


def in_range(name, value, what, low, high, *, high_open=True):
    """``low <= value < high`` (``<= high`` when not ``high_open``)."""
    v = _number(name, value, what)
    if v is not None and not (low <= v < high if high_open else low <= v <= high):
        raise ValueError(f"Invalid {what}: {name}={value!r}")
    return value


def flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value
