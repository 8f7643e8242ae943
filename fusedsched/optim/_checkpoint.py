"""Checkpoints of a fused optimizer: ``state_dict`` / ``load_state_dict`` and pickling.

The format is torch.optim's (``{"state": {index: {key: tensor}}, "param_groups": [...]}``),
so a state_dict of either library loads into the other, with these additions per group:
``schedule`` as plain data (``Schedule.to_spec()``; ``{"kind": "callable"}`` for a
host-callable schedule, which cannot be saved) and ``schedule_position``, the 0-dim float64
position of the next update. With stochastic rounding the generators' states are saved too,
so that a resumed run draws the same random bits. Everything is plain tensors, numbers,
strings and dicts: ``torch.load(weights_only=True)`` reads it.

Loading checks everything before anything changes (the same number of groups and
parameters, the state each group's flags require, state shapes, integer step counts), then
converts the loaded moments to the receiving optimizer's state format
(``_precision.convert_loaded``) and puts the state and positions on the parameters'
devices.
"""

import math

import torch

from .. import schedules as S
from . import _aids, _flat, _precision, _validate

# What ``__getstate__`` adds to torch's (defaults, state, param_groups); optimizers pickled
# before an attribute existed lack it and get the class default.
PICKLED = ("backend", "max_grad_norm", "master_weights", "stochastic_rounding",
           "rounding_seed", "_results", "flat", "state_dtype")


def getstate(opt, out):
    """``out`` (torch's ``__getstate__``) plus ``opt``'s settings and its rounding
    generators' states; the launch caches are rebuilt after loading."""
    out.update({k: opt.__dict__[k] for k in PICKLED if k in opt.__dict__})
    out["_rounding_states"] = {device: gen.get_state() for device, gen
                               in opt.__dict__.get("_rounding_generators", {}).items()}
    return out


def setstate(opt, state, torch_setstate):
    """Restore a pickled ``opt``: ``torch_setstate`` (torch's ``__setstate__``) on the rest,
    then the rounding generators."""
    state = dict(state)
    rounding = state.pop("_rounding_states", {})
    torch_setstate(state)
    opt._rounding_generators = {}
    opt._lift_view = (None, {})
    for device, rng in rounding.items():
        _aids.generator(opt, device).set_state(rng)


def state_dict(opt, out):
    """``out`` (torch's ``state_dict()`` of ``opt``) with flat views made plain tensors,
    each group's schedule as plain data and the rounding generators' states."""
    if opt.flat:
        _flat.plain(out)
    for group in out["param_groups"]:
        schedule = group["schedule"]
        group["schedule"] = (schedule.to_spec() if isinstance(schedule, S.Schedule)
                             else {"kind": "callable"})
    if opt.stochastic_rounding:    # resumes draw the same random bits
        out["stochastic_rounding"] = {
            "seed": opt.rounding_seed,
            "generators": {device: gen.get_state()
                           for device, gen in opt._rounding_generators.items()}}
    return out


def load_state_dict(opt, state_dict, torch_load):
    """Load ``state_dict`` (of ``opt``'s class or of the matching torch.optim one) into
    ``opt``; ``torch_load`` is torch's ``load_state_dict``. Raises TypeError for a
    state_dict that is not a dict with a ``state`` dict and a ``param_groups`` list or whose
    required state is not tensors, ValueError for a wrong number of groups or parameters, a
    missing state key, a state tensor of the wrong shape or a step count that is not an
    integer in [0, 2**53]; nothing changes then."""
    if (not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict)
            or not isinstance(state_dict.get("param_groups"), list)):
        raise TypeError("state_dict must be a dict with a 'state' dict and a "
                        f"'param_groups' list, got {type(state_dict).__name__} with keys "
                        f"{sorted(state_dict) if isinstance(state_dict, dict) else None}")
    saved_groups = state_dict["param_groups"]
    groups = _checked_groups(opt, state_dict, saved_groups)
    old_groups = list(opt.param_groups)
    torch_load({**state_dict, "param_groups": groups})
    opt.__dict__.pop("_memos", None)       # new group dicts: new memos
    if opt.flat:       # the banks stay; their state is bound again at the next step
        _flat.rebind_groups(opt, old_groups)
    rounding = state_dict.get("stochastic_rounding")
    if opt.stochastic_rounding and rounding is not None:
        opt.rounding_seed = int(rounding["seed"])
        opt._rounding_generators = {}
        for device, rng in rounding["generators"].items():
            _aids.generator(opt, device).set_state(rng)
    for group, saved in zip(opt.param_groups, saved_groups):
        device = group["params"][0].device if group["params"] else torch.device("cpu")
        group["schedule_position"] = group["schedule_position"].to(
            device, torch.float64).clone().reshape(())
        keys = opt._state_keys(group)
        for index, p in zip(saved["params"], group["params"]):
            _place_state(opt, p, state_dict["state"].get(index, {}), keys)


def _checked_groups(opt, state_dict, saved_groups):
    """The param groups to hand torch: ``opt``'s own settings under the saved ones, with
    the schedule rebuilt from its spec; every check of a load happens here."""
    if len(saved_groups) != len(opt.param_groups):
        raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, "
                         f"this optimizer has {len(opt.param_groups)}")
    groups = []
    for i, (saved, current) in enumerate(zip(saved_groups, opt.param_groups)):
        if len(saved["params"]) != len(current["params"]):
            raise ValueError(f"loaded state dict's group {i} has {len(saved['params'])} "
                             f"parameters, this optimizer's has {len(current['params'])}")
        group = {k: v for k, v in current.items() if k != "params"}
        group["schedule_position"] = torch.zeros((), dtype=torch.float64)
        group.update(saved)
        spec = group["schedule"]
        group["schedule"] = (current["schedule"] if isinstance(spec, dict)
                             and spec.get("kind") == "callable" else
                             S.from_spec(spec) if isinstance(spec, dict) else
                             _validate.schedule(spec))
        opt._check_group(group)
        _validate.position(group, f"loaded state dict's group {i}")
        # the state an applied update leaves (buffers that a flag turned on later adds
        # are created then: momentum_buffer, max_exp_avg_sq)
        required = ({k for k in opt._state_keys(group) if k}
                    - {"momentum_buffer", "max_exp_avg_sq"})
        for index, param in zip(saved["params"], current["params"]):
            _check_saved_state(state_dict["state"].get(index, {}), required, param, index, i)
        groups.append(group)
    return groups


def _check_saved_state(saved_state, required, param, index, group_index):
    missing = required - saved_state.keys() if saved_state else set()
    if missing:
        raise ValueError(f"loaded state of parameter {index} (group {group_index}) lacks "
                         f"{sorted(missing)}; it has {sorted(saved_state)}")
    for key, value in saved_state.items():
        if key in required and not isinstance(value, torch.Tensor):
            raise TypeError(f"loaded state {key!r} of parameter {index} (group "
                            f"{group_index}) must be a tensor, got {value!r}")
        if key == "step":
            _check_step(value, group_index)
        elif (isinstance(value, torch.Tensor) and value.shape != param.shape
                and not key.endswith(_precision.SCALE)):
            raise ValueError(f"loaded state {key!r} of group {group_index} has shape "
                             f"{tuple(value.shape)}, its parameter {tuple(param.shape)}")


def _place_state(opt, p, saved_state, keys):
    """``opt.state[p]`` as torch loaded it, made this optimizer's: the moments in its state
    format, float32 state and master copies of lifted fp16/bf16 parameters kept as saved,
    and ``step`` a 0-dim float64 tensor on the parameter's device."""
    state = opt.state.get(p)
    if not state:
        return
    lifted = p.dtype in _aids.lifted_dtypes(opt)
    # moments in this optimizer's state format, from the saved tensors
    state = opt.state[p] = _precision.convert_loaded(
        opt, p, state, saved_state, keys, torch.float32 if lifted else p.dtype)
    if not state:
        return
    if lifted:
        # torch casts state to the parameter's dtype: keep float32 state and master copies
        # of fp16/bf16 parameters as saved (bit-identical resume).
        for key, value in saved_state.items():
            if (key != "step" and isinstance(value, torch.Tensor)
                    and value.dtype == torch.float32):
                state[key] = value.to(p.device, copy=True)
    # torch's SGD keeps no count: a parameter with state has had at least one update,
    # which is all our SGD kernel asks of it (first or not).
    step = state.get("step", 1.0)
    state["step"] = torch.as_tensor(step).to(p.device, torch.float64).clone().reshape(())


def _check_step(value, group_index):
    """A loaded per-parameter count: an integer in [0, 2**53] (exact in float64)."""
    try:
        step = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"loaded state 'step' of group {group_index} must be a number or a "
                        f"1-element tensor, got {value!r}") from None
    if not (math.isfinite(step) and step == int(step) and 0 <= step <= 2.0 ** 53):
        raise ValueError(f"loaded state 'step' of group {group_index} must be an integer in "
                         f"[0, 2**53], got {value!r}")
