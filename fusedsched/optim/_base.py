"""What every fused optimizer shares: schedule position, state layout, checks, dispatch.

Each algorithm file (sgd.py, rmsprop.py, adam.py) says which state it keeps and which
kernel arguments a parameter group gives; everything else is here, once.
"""

import contextlib

import math
import numbers
from typing import NamedTuple

import torch

from .. import schedules as S
from . import _aids, _backend


class _Plan(NamedTuple):
    """What one group's launch needs, worked out (and checked) before anything is written."""
    group: dict
    device: torch.device
    params: list            # the parameters with a gradient
    backend: str
    lr: object              # group["lr"], times f(t) when the schedule is a host callable
    schedule: object        # the schedule the kernel evaluates (unit for a host callable)


class SparseGradientError(RuntimeError, TypeError):
    """A sparse gradient reached an optimizer that does not support it. A RuntimeError as
    torch raises, and a TypeError since it is a wrong kind of input."""


# The program a host-callable schedule runs with (its factor goes into lr); one object so
# that S.program's per-device cache hits every step.
_UNIT = S.constant()

_REAL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_COMPLEX_DTYPES = (torch.complex64, torch.complex128)
_DTYPES = frozenset(_REAL_DTYPES + _COMPLEX_DTYPES)


def _check_schedule(schedule):
    if schedule is None:
        return S.constant()
    if isinstance(schedule, S.Schedule) or callable(schedule):
        return schedule
    raise TypeError(f"schedule must be a fusedsched.schedules schedule, a callable "
                    f"f(t) -> float, or None, got schedule={schedule!r}")


def _device_scalar(value, device):
    """A 1-element tensor (GradScaler's grad_scale/found_inf) as a 0-dim tensor on device."""
    if value is None:
        return None
    return value.reshape(()).to(device, non_blocking=True)


class FusedOptimizer(torch.optim.Optimizer):
    """Base class: a ``torch.optim.Optimizer`` whose ``step()`` is one kernel call per
    parameter group (per dtype within a group) with the schedule evaluated in the kernel.

    Per group, ``group["schedule"]`` is the schedule (a ``fusedsched.schedules``
    schedule, evaluated in the kernel, or any Python callable ``f(t) -> float``,
    evaluated on the host: that reads the position, a host-device sync, so it is not
    CUDA-graph capturable) and ``group["schedule_position"]`` the position ``t`` of the
    next update, a 0-dim float64 tensor on the parameters' device that the kernel
    advances on every ``step()`` (also one skipped by AMP).
    """

    algorithm = None          # "sgd", "rmsprop" or "adam": the kernel module name

    # The arguments every optimizer shares, documented once; each class docstring holds
    # the marker "{shared_args}" where they go.
    _SHARED_ARGS_DOC = """backend (str): "auto", "triton", "numba" or "reference".
        master_weights (bool): keep a float32 copy of float16/bfloat16 parameters (state
            ``master_param``) and float32 state; the parameter gets the rounded copy.
        stochastic_rounding (bool): round bfloat16 parameter updates stochastically (float32
            state); float32/float64 parameters unchanged, float16 raises ValueError.
        max_grad_norm (float or None): clip by the global L2 norm of all gradients, in the
            kernels (as ``torch.nn.utils.clip_grad_norm_`` then ``step()``);
            ``opt.last_grad_norm`` is that norm, a device tensor."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__doc__ and "{shared_args}" in cls.__doc__:
            cls.__doc__ = cls.__doc__.replace("{shared_args}", cls._SHARED_ARGS_DOC)
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults, backend, *, master_weights, stochastic_rounding,
                 max_grad_norm):
        self.backend = _backend.check_name(backend)
        self.max_grad_norm = _aids.check(master_weights, stochastic_rounding, max_grad_norm)
        self.master_weights = master_weights
        self.stochastic_rounding = stochastic_rounding
        self.last_grad_norm = None
        self.rounding_seed = torch.initial_seed() % (1 << 63)
        self._rounding_generators = {}
        self._lift_view = (None, {})
        defaults["schedule"] = _check_schedule(defaults["schedule"])
        self._check_group(defaults)
        super().__init__(params, defaults)

    # -- what each algorithm defines ---------------------------------------------------
    def _check_group(self, group):
        """Raise ValueError/TypeError for an invalid hyperparameter of ``group``."""
        raise NotImplementedError

    def _state_keys(self, group):
        """State tensor keys, in kernel argument order (None where a list is off)."""
        raise NotImplementedError

    def _kernel_args(self, group, lr):
        """The kernel call's arguments from a group, its lr and its state lists."""
        raise NotImplementedError

    # -- param groups ------------------------------------------------------------------
    def add_param_group(self, param_group):
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        merged = {**self.defaults, **param_group}
        merged["schedule"] = _check_schedule(merged.get("schedule"))
        self._check_group(merged)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["schedule"] = merged["schedule"]
        group.setdefault("schedule_position", torch.zeros((), dtype=torch.float64))

    def get_last_lr(self):
        """The lr of the latest update of each group (before any step: of the first), as
        Python floats. Reads the position: a host-device sync on an accelerator."""
        return [float(lr) * group["schedule"](t)
                for group, lr, t in self._last_updates()]

    def get_last_momentum(self):
        """The momentum (beta1 for Adam) of the latest update of each group, as above."""
        out = []
        for group, _, t in self._last_updates():
            scheduled = getattr(group["schedule"], "momentum", lambda t: None)(t)
            out.append(float(self._group_momentum(group) if scheduled is None else scheduled))
        return out

    def _last_updates(self):
        for group in self.param_groups:
            t = max(int(group["schedule_position"].item()) - 1, 0)
            yield group, group["lr"], t

    # -- step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient. Everything is checked before
        anything is written: when this raises, no parameter and no state has changed.

        Honours ``self.grad_scale`` / ``self.found_inf`` set by ``torch.amp.GradScaler``
        (gradients are unscaled in the kernel; on found_inf nothing is written and only
        the schedule position advances). With ``max_grad_norm`` the gradients are first
        clipped by their global norm, in the kernels (``_aids.py``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        plans = [self._plan(group) for group in self.param_groups]
        _aids.check_params(self, plans)
        if self.max_grad_norm is not None:
            grad_scale = _aids.clipped_grad_scale(self, plans, grad_scale)
        fresh = []
        for plan in plans:
            if found_inf is not None and self.algorithm == "sgd":
                fresh += [p for p in plan.params if "momentum_buffer" not in self.state[p]]
            with _local_shards(self, plan.params) as local, _aids.lifted(self, local) as lifted:
                self._launch(plan._replace(params=lifted), grad_scale, found_inf)
        if fresh and bool(found_inf.reshape(())):
            # A skipped first update leaves no momentum buffer behind (torch's fused SGD
            # leaves an uninitialised one: case C13). One host read of found_inf, only on a
            # step that created buffers.
            for p in fresh:     # a new dict, not a pop: launch caches hold the old one
                self.state[p] = {k: v for k, v in self.state[p].items()
                                 if k != "momentum_buffer"}
        return loss

    def _plan(self, group):
        """Check one group (no writes); return what its launch needs."""
        self._check_group(group)
        params = [p for p in group["params"] if p.grad is not None]
        device = params[0].device if params else group["schedule_position"].device
        for p in params:
            g = p.grad
            # One cheap test per parameter (host cost is per tensor); the exact reason is
            # worked out only when it fails, or for DTensor grads.
            if (type(g) is not torch.Tensor or g.dtype is not p.dtype or g.is_sparse
                    or p.dtype not in _DTYPES or g.shape != p.shape
                    or g.device != device or p.device != device):
                self._check_param(p, g, device)
        lr, schedule = group["lr"], group["schedule"]
        if not isinstance(schedule, S.Schedule):      # host callable: evaluated here
            t = int(group["schedule_position"].item())
            factor = schedule(t)
            if (isinstance(factor, bool) or not isinstance(factor, numbers.Real)
                    or not math.isfinite(factor) or factor < 0):
                raise ValueError(f"schedule callable returned {factor!r} at t={t}; expected "
                                 f"a finite float >= 0")
            lr, schedule = float(lr) * float(factor), _UNIT
        return _Plan(group, device, params, _backend.resolve(self.backend, device), lr, schedule)

    def _check_param(self, p, g, device):
        """Raise the error that fits a parameter and grad that failed the quick test."""
        if g.is_sparse:
            raise SparseGradientError(
                f"{type(self).__name__} does not support sparse gradients "
                f"(a parameter of shape {tuple(p.shape)} has a sparse grad)")
        if p.dtype not in _DTYPES:
            raise TypeError(f"{type(self).__name__} supports floating point and complex "
                            f"parameters, got a parameter of dtype {p.dtype}")
        if g.dtype != p.dtype:
            raise TypeError(f"grad dtype {g.dtype} differs from its parameter's dtype "
                            f"{p.dtype} (shape {tuple(p.shape)})")
        if g.shape != p.shape:
            raise ValueError(f"grad shape {tuple(g.shape)} differs from its parameter's "
                             f"shape {tuple(p.shape)}")
        if _is_dtensor(p) != _is_dtensor(g) or (_is_dtensor(p) and (
                p.placements != g.placements or p.device_mesh != g.device_mesh)):
            raise ValueError(
                f"a DTensor parameter needs a DTensor grad on the same mesh with the same "
                f"placements (shape {tuple(p.shape)}: parameter "
                f"{getattr(p, 'placements', 'a plain tensor')}, grad "
                f"{getattr(g, 'placements', 'a plain tensor')})")
        if p.device != device or g.device != device:
            raise ValueError(f"parameters of one group must be on one device, got "
                             f"{device} and {p.device if p.device != device else g.device}")

    def _launch(self, plan, grad_scale, found_inf):
        group, device, params, backend, lr, schedule = plan
        position = group["schedule_position"]
        if position.device != device or position.dtype != torch.float64:
            position = group["schedule_position"] = position.to(device, torch.float64)
        program = S.program(schedule, device)
        grad_scale = _device_scalar(grad_scale, device)
        found_inf = _device_scalar(found_inf, device)

        keys = self._state_keys(group)
        if backend == "numba":      # cached address tables (kernels/numba/_launch.py)
            tables = self.__dict__.setdefault("_numba_tables", {})
            table = tables.get(id(group))
            if table is not None and table.matches(group, self.state, params, keys):
                table.launch(self._kernel_args(group, lr), schedule=program, position=position,
                             grad_scale=grad_scale, found_inf=found_inf)
                return
            tables.pop(id(group), None)
        by_dtype = {}
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float64, device=device)
            for key in keys:
                if key is not None and key not in state:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
            by_dtype.setdefault(p.dtype, []).append(p)
        step_fn = _backend.kernel(backend, self.algorithm)
        if not by_dtype:
            position.add_(1.0)
            return
        if (backend == "numba" and len(by_dtype) == 1 and next(iter(by_dtype)) in _REAL_DTYPES
                and all(p.is_contiguous() and p.grad.is_contiguous() for p in params)):
            from ..kernels.numba._launch import GroupTable
            try:
                table = GroupTable(self.algorithm, group, self.state, params, keys)
            except ValueError:      # a non-contiguous state tensor: the generic path
                table = None
            if table is not None:
                tables[id(group)] = table
                table.launch(self._kernel_args(group, lr), schedule=program, position=position,
                             grad_scale=grad_scale, found_inf=found_inf)
                return
        for n, (dtype, ps) in enumerate(by_dtype.items()):
            staged = _Staged()
            tensors = [staged(p) for p in ps]
            grads = [staged(p.grad) for p in ps]
            states = [None if key is None else [staged(self.state[p][key]) for p in ps]
                      for key in keys]
            steps = [self.state[p]["step"] for p in ps]
            step_fn(tensors, grads, *states, steps, **self._kernel_args(group, lr),
                    schedule=program, position=position, grad_scale=grad_scale,
                    found_inf=found_inf, advance_position=n == len(by_dtype) - 1)
            staged.write_back()

    # -- state_dict --------------------------------------------------------------------
    def state_dict(self):
        """torch's state_dict, with each group's schedule as plain data (loads with
        ``torch.load(weights_only=True)``) and its position. A host-callable schedule is
        saved as ``{"kind": "callable"}``; loading keeps the receiving group's."""
        state_dict = super().state_dict()
        for group in state_dict["param_groups"]:
            schedule = group["schedule"]
            group["schedule"] = (schedule.to_spec() if isinstance(schedule, S.Schedule)
                                 else {"kind": "callable"})
        if self.stochastic_rounding:    # resumes draw the same random bits
            state_dict["stochastic_rounding"] = {
                "seed": self.rounding_seed,
                "generators": {device: gen.get_state()
                               for device, gen in self._rounding_generators.items()}}
        return state_dict

    def load_state_dict(self, state_dict):
        """Load a state_dict of this optimizer or of the matching ``torch.optim`` one.
        Groups missing our keys keep this optimizer's schedule and start at position 0.
        Checked before anything changes: a wrong number of groups or parameters, or a
        state tensor of the wrong shape, raises ValueError."""
        if (not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict)
                or not isinstance(state_dict.get("param_groups"), list)):
            raise TypeError("state_dict must be a dict with a 'state' dict and a "
                            f"'param_groups' list, got {type(state_dict).__name__} with keys "
                            f"{sorted(state_dict) if isinstance(state_dict, dict) else None}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        groups = []
        for i, (saved, current) in enumerate(zip(saved_groups, self.param_groups)):
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
                                 _check_schedule(spec))
            self._check_group(group)
            # the state an applied update leaves (buffers that a flag turned on later adds
            # are created then: momentum_buffer, max_exp_avg_sq)
            required = ({k for k in self._state_keys(group) if k}
                        - {"momentum_buffer", "max_exp_avg_sq"})
            for index, param in zip(saved["params"], current["params"]):
                saved_state = state_dict["state"].get(index, {})
                missing = required - saved_state.keys() if saved_state else set()
                if missing:
                    raise ValueError(f"loaded state of parameter {index} (group {i}) lacks "
                                     f"{sorted(missing)}; it has {sorted(saved_state)}")
                for key, value in saved_state.items():
                    if key in required and not isinstance(value, torch.Tensor):
                        raise TypeError(f"loaded state {key!r} of parameter {index} (group "
                                        f"{i}) must be a tensor, got {value!r}")
                    if key == "step":
                        _check_step(value, i)
                    elif (isinstance(value, torch.Tensor)
                            and value.shape != param.shape):
                        raise ValueError(f"loaded state {key!r} of group {i} has shape "
                                         f"{tuple(value.shape)}, its parameter "
                                         f"{tuple(param.shape)}")
            groups.append(group)
        super().load_state_dict({**state_dict, "param_groups": groups})
        rounding = state_dict.get("stochastic_rounding")
        if self.stochastic_rounding and rounding is not None:
            self.rounding_seed = int(rounding["seed"])
            self._rounding_generators = {}
            for device, rng in rounding["generators"].items():
                _aids.generator(self, device).set_state(rng)
        for group, saved in zip(self.param_groups, saved_groups):
            device = group["params"][0].device if group["params"] else torch.device("cpu")
            group["schedule_position"] = group["schedule_position"].to(
                device, torch.float64).clone().reshape(())
            for index, p in zip(saved["params"], group["params"]):
                state = self.state.get(p)
                if state and p.dtype in _aids.lifted_dtypes(self):
                    # torch casts state to the parameter's dtype: keep float32 state and
                    # master copies of fp16/bf16 parameters as saved (bit-identical resume).
                    for key, value in state_dict["state"].get(index, {}).items():
                        if (key != "step" and isinstance(value, torch.Tensor)
                                and value.dtype == torch.float32):
                            state[key] = value.to(p.device, copy=True)
                if state:
                    # torch's SGD keeps no count: a parameter with state has had at least
                    # one update, which is all our SGD kernel asks of it (first or not).
                    step = state.get("step", 1.0)
                    state["step"] = torch.as_tensor(step).to(
                        p.device, torch.float64).clone().reshape(())

    def _group_momentum(self, group):
        return group.get("momentum", 0.0)


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


def _is_dtensor(tensor):
    # torch.distributed.tensor imports lazily: most runs never meet a DTensor.
    return type(tensor).__name__ == "DTensor" and hasattr(tensor, "to_local")


@contextlib.contextmanager
def _local_shards(opt, params):
    """Give ``_launch`` plain tensors for DTensor parameters (FSDP2's ``fully_shard``,
    tensor parallelism): each rank updates its local shard, one kernel call per group.

    Yields the list to launch with: plain parameters as they are, each DTensor ``p`` as
    ``p.to_local()`` (a view of its shard) whose ``grad`` is the grad's local view, and
    ``opt.state`` is swapped meanwhile for a dict from those views to the local views of
    ``p``'s state. State that the launch creates (zeros like the local shard) is stored
    back as DTensors placed like ``p``, as torch keeps it; ``step`` stays a plain tensor."""
    if not any(_is_dtensor(p) for p in params):
        yield params
        return
    from torch.distributed.tensor import DTensor

    real = opt.state
    local_params, local_state = [], {}
    for p in params:
        if not _is_dtensor(p):
            local_params.append(p)
            local_state[p] = real[p]
            continue
        local = p.to_local()
        local.grad = p.grad.to_local()
        local_state[local] = {k: v.to_local() if _is_dtensor(v) else v
                              for k, v in real[p].items()}
        local_params.append(local)
    opt.state = local_state
    try:
        yield local_params
    finally:
        opt.state = real
        for p, local in zip(params, local_params):
            if local is p:
                continue
            state = real[p]
            for key, value in local_state[local].items():
                if key not in state:
                    state[key] = (value if key == "step" or value.shape != local.shape else
                                  DTensor.from_local(value, p.device_mesh, p.placements,
                                                     shape=p.shape, stride=p.stride()))
            local.grad = None


class _Staged:
    """Contiguous, real views of the tensors a kernel writes; a non-contiguous tensor is
    copied in and written back after the call (rare: parameters are contiguous in
    practice, and this costs one copy each way only for those)."""

    def __init__(self):
        self._pending = []

    def __call__(self, tensor):
        if not tensor.is_contiguous():
            contiguous = tensor.contiguous()
            self._pending.append((tensor, contiguous))
            tensor = contiguous
        return torch.view_as_real(tensor) if tensor.is_complex() else tensor

    def write_back(self):
        for tensor, contiguous in self._pending:
            tensor.copy_(contiguous)
