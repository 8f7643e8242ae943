"""Argument checks shared by the optimizers. Each raises ValueError (or TypeError for a
wrong type) naming the argument and its value, in torch's wording where torch checks the
same thing. Every check reads only the group: it writes nothing, so ``step()``,
``add_param_group`` and ``load_state_dict`` can check everything before changing anything.

A 1-element tensor hyperparameter (``lr``, ``momentum``, ``betas``: the ones the kernels
read on the device) is checked for its shape and dtype; its value is checked when it lives
on the CPU (reading an accelerator tensor would be a host-device sync on every step), and
not while torch.compile traces a step (a value read there breaks the graph; the eager
steps and the constructor check it).
"""

import math
import numbers

import torch

from .. import schedules as S

def fake_mode_active():
    """A FakeTensorMode is on the dispatch stack (values cannot be read)."""
    if not torch._C._len_torch_dispatch_stack():
        return False
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    return any(isinstance(m, FakeTensorMode) for m in _get_current_dispatch_mode_stack())


def _read(tensor):
    """A 1-element tensor's value as a float where reading it is free, else None."""
    if tensor.device.type != "cpu" or torch.compiler.is_compiling() or fake_mode_active():
        return None
    return float(tensor.detach().reshape(()))


def _number(name, value, what, allow_tensor=True):
    if isinstance(value, torch.Tensor) and allow_tensor:
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got {name} of shape "
                             f"{tuple(value.shape)}")
        if value.is_complex() or not value.is_floating_point():
            raise TypeError(f"Invalid {what}: tensor {name} must be floating point, got "
                            f"dtype {value.dtype}")
        return _read(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a real number or a 1-element float tensor" if allow_tensor else "a real number"
        raise TypeError(f"Invalid {what}: {name} must be {kind}, got {name}={value!r}")
    return float(value)


def nonnegative(name, value, what, allow_tensor=True):
    """``value`` >= 0 and finite (a 1-element float tensor on an accelerator is not read)."""
    v = _number(name, value, what, allow_tensor)
    if v is not None and not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"Invalid {what}: {value!r} ({name} must be finite and >= 0)")
    return value


def in_range(name, value, what, low, high, *, high_open=True, allow_tensor=True):
    """``low <= value < high`` (``<= high`` when not ``high_open``)."""
    v = _number(name, value, what, allow_tensor)
    if v is not None and not (low <= v < high if high_open else low <= v <= high):
        interval = f"[{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"Invalid {what}: {value!r} ({name} must be in {interval})")
    return value


def flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {name}={value!r}")
    return value


# The schedule position is a float64 count: integers are exact up to 2**53, where t + 1 == t
# and the position would stop advancing (every later update would use f(2**53)).
POSITION_LIMIT = 2 ** 53


def _position_value(t):
    if not (math.isfinite(t) and t >= 0 and t == math.floor(t) and t < POSITION_LIMIT):
        raise ValueError(f"schedule_position must hold an integer in [0, 2**53), got "
                         f"schedule_position={t!r} (a float64 position stops advancing at "
                         f"2**53: t + 1 == t there)")


def position(group, where):
    """``group``'s ``schedule_position``, if any, read on whatever device it is on and
    checked as ``common`` checks a CPU one. One host-device sync for an accelerator
    tensor: for ``load_state_dict`` and ``add_param_group``, not for ``step()``."""
    value = group.get("schedule_position")
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_meta:
        try:
            _position_value(float(value.detach().reshape(())))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


def _named(index, names):
    return f"parameter {index}" + (f" {names[index]!r}" if names and index < len(names) else "")


def distinct_params(params, names, groups, new_index):
    """ValueError naming the first parameter (a tensor object, as torch compares them)
    that ``params`` holds twice or that one of ``groups`` already holds: an optimizer
    updates each parameter once a step (torch only warns about a repeat within a group,
    and then updates that parameter twice). Non-tensors are left to torch's own check."""
    seen = {}
    for i, group in enumerate(groups):
        group_names = group.get("param_names")
        for j, p in enumerate(group["params"]):
            seen.setdefault(id(p), (i, j, group_names))
    for j, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            continue
        first = seen.get(id(p))
        if first is None:
            seen[id(p)] = (new_index, j, names)
            continue
        i, k, first_names = first
        where = "of the same group" if i == new_index else f"of group {i}"
        # torch's wording first (its test database matches it), then which and where
        lead = ("optimizer got a parameter group with duplicate parameters"
                if i == new_index else "some parameters appear in more than one parameter group")
        raise ValueError(
            f"{lead}: the same parameter appears twice: {_named(j, names)} of group {new_index} "
            f"(shape {tuple(p.shape)}, dtype {str(p.dtype).replace('torch.', '')}) is "
            f"{_named(k, first_names)} {where}; each parameter may appear once in an "
            f"optimizer (torch.optim warns about a repeat within a group and then updates "
            f"it twice)")


def value_of(value):
    """A hyperparameter as a Python float, or None for a tensor not on the CPU."""
    if isinstance(value, torch.Tensor):
        return _read(value)
    return float(value)


def common(group):
    """What every algorithm's group holds besides its hyperparameters: the schedule (a
    Schedule or a callable: ``None`` was replaced by ``constant()`` when the group was
    made) and the schedule position (a 1-element float tensor holding an integer >= 0,
    e.g. from a loaded state_dict). Parameters' dtypes, devices and gradients are checked
    by ``step()`` itself (``_base.FusedOptimizer._plan``)."""
    schedule = group.get("schedule")
    if not (isinstance(schedule, S.Schedule) or callable(schedule)):
        raise TypeError(f"schedule must be a fusedsched.schedules schedule or a callable "
                        f"f(t) -> float, got schedule={schedule!r}")
    if "schedule_position" in group:
        position = group["schedule_position"]
        if (not isinstance(position, torch.Tensor) or position.numel() != 1
                or not position.is_floating_point()):
            raise TypeError(f"schedule_position must be a 1-element float tensor, got "
                            f"schedule_position={position!r}")
        t = _read(position)
        if t is not None:
            _position_value(t)


def drop_in(**flags):
    """torch.optim's implementation switches (``foreach``, ``fused``, ``capturable``,
    ``differentiable``), accepted so that code written for torch runs with only the class
    changed, and returned for the group defaults, where torch records them. The update is
    always one fused, capturable kernel call whatever they say. As torch: ``fused`` and
    ``foreach`` both true raises RuntimeError. ``differentiable=True`` (autograd through
    ``step()``) raises NotImplementedError."""
    if flags.get("fused") and flags.get("foreach"):
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    if flags.get("differentiable"):
        raise NotImplementedError(
            "differentiable=True is not supported: fusedsched's step() writes parameters and "
            "state in place in a compiled kernel, with no autograd graph through the update")
    return flags


def schedule(schedule):
    """A group's ``schedule``: None (constant 1), a fusedsched schedule or a callable
    f(t) -> float; TypeError naming the value otherwise."""
    if schedule is None:
        return S.constant()
    if isinstance(schedule, S.Schedule) or callable(schedule):
        return schedule
    raise TypeError(f"schedule must be a fusedsched.schedules schedule, a callable "
                    f"f(t) -> float, or None, got schedule={schedule!r}")
