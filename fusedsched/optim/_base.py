"""What every fused optimizer shares: the torch.optim.Optimizer surface (param groups,
schedule position, hooks), the checks of a step, and its two paths (eager and traced) to
the operator calls.

Each algorithm file (sgd.py, rmsprop.py, adam.py) says which state it keeps and which
kernel arguments a parameter group gives. The launch plan of a group (what a step checked,
remembers and calls) is ``_plan.py``; DTensor shards ``_dtensor.py``; flat storage
``_flat.py``; the training aids ``_aids.py``; argument checks ``_validate.py``;
state_dict, load_state_dict and pickling ``_checkpoint.py``.
"""

import math
import numbers
import operator
from itertools import compress, repeat

import torch
from torch._C._dynamo.eval_frame import get_eval_frame_callback as _eval_frame_callback
from torch.optim import optimizer as _optimizer

from .. import schedules as S
from ..kernels import ops
from . import _aids, _backend, _checkpoint, _flat, _precision, _validate
from ._dtensor import _is_dtensor, _local_shards
from ._plan import (_REAL_DTYPES, _PLAIN, _PLAIN_PARAMS, _Calls, _Memo, _Plan, _check_state,
                    _contiguous, _device_scalar, _fingerprint, _grad, _data_ptr, _device,
                    _dtype, _shape, _staged_call)


class SparseGradientError(RuntimeError, TypeError):
    """A sparse gradient reached an optimizer that does not support it. A RuntimeError as
    torch raises, and a TypeError since it is a wrong kind of input."""


# The program a host-callable schedule runs with (its factor goes into lr); one object so
# that S.program's per-device cache hits every step.
_UNIT = S.constant()


def _eager_under_compile(fn):
    """``torch.compiler.disable``, with the reason that dynamo prints at the graph break
    (``fullgraph=True`` raises it) where torch takes one (2.7 and later)."""
    reason = ("fusedsched steps eagerly here, a graph break: flat=True storage and complex "
              "parameters are not traced (see the torch.compile recipe in fusedsched's "
              "README)")
    try:
        return torch.compiler.disable(fn, reason=reason)
    except TypeError:
        return torch.compiler.disable(fn)


_COMPLEX_DTYPES = (torch.complex64, torch.complex128)
_DTYPES = frozenset(_REAL_DTYPES + _COMPLEX_DTYPES)


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
    _count_restarted_by = ()  # state keys whose creation resets ``step`` to 0
    _dropped_on_skip = None   # a state key that an AMP-skipped first update must not leave
    flat = False              # flat storage (``_flat.py``); pickles made before it lack it

    # The arguments every optimizer shares, documented once; each class docstring holds
    # the marker "{shared_args}" where they go.
    _SHARED_ARGS_DOC = """backend (str): "auto", "triton", "numba" or "reference".
        master_weights (bool): keep a float32 copy of float16/bfloat16 parameters (state
            ``master_param``) and float32 state; the parameter gets the rounded copy.
        stochastic_rounding (bool): round bfloat16 parameter updates stochastically (float32
            state); float32/float64 parameters unchanged, float16 raises ValueError.
        max_grad_norm (float or None): clip by the global L2 norm of all gradients, in the
            kernels (as ``torch.nn.utils.clip_grad_norm_`` then ``step()``);
            ``opt.last_grad_norm`` is that norm, a device tensor.
        foreach, fused, capturable (those that ``torch.optim`` has for this algorithm):
            accepted for drop-in use (None or bool; capturable a bool) and recorded in the
            param groups as torch records them; the update is one fused, CUDA-graph
            capturable kernel call whatever their value.
        differentiable (bool): only False; True raises NotImplementedError (no autograd
            through the in-place kernel update).
        flat (bool): keep each group's parameters, grads and state in one contiguous
            buffer per device and dtype, stepped by one kernel call (``_flat.py``; the
            README says what it changes for ``p.grad``, ``p.data`` and ``zero_grad``);
            TypeError when not a bool.
        state_dtype (None, torch.bfloat16 or "8bit"): the precision of the moments
            (``_precision.py``; the math is float32 in every case). None: the parameter's
            dtype, as torch.optim. torch.bfloat16: bfloat16 moments, rounded
            stochastically (0.5x the memory of float32 state). "8bit": one uint8 code per
            element and one float32 scale per 256 elements (``state[key + "_scale"]``;
            0.254x), stochastically rounded. For float32/float16/bfloat16 parameters
            (ValueError at the step for float64 or complex ones); ValueError for any other
            value. ``load_state_dict`` converts loaded moments to this format;
            ``fusedsched.float32_state_dict`` converts ours for torch.optim."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__doc__ and "{shared_args}" in cls.__doc__:
            cls.__doc__ = cls.__doc__.replace("{shared_args}", cls._SHARED_ARGS_DOC)
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults, backend, *, master_weights, stochastic_rounding,
                 max_grad_norm, flat=False, state_dtype=None):
        self.state_dtype = _precision.check(state_dtype)
        self.flat = _flat.check(flat)
        self.backend = _backend.check_name(backend)
        self.max_grad_norm = _aids.check(master_weights, stochastic_rounding, max_grad_norm)
        self.master_weights = master_weights
        self.stochastic_rounding = stochastic_rounding
        self._results = {}         # what a step reports: "grad_norm"
        self.rounding_seed = torch.initial_seed() % (1 << 63)
        self._rounding_generators = {}
        self._lift_view = (None, {})
        defaults["schedule"] = _validate.schedule(defaults["schedule"])
        self._check_group(defaults)
        given = []
        if not isinstance(params, torch.Tensor):    # torch's TypeError for a tensor
            params = list(params)
            given = [(g, dict(g)) for g in map(_listed, params) if isinstance(g, dict)]
        try:
            super().__init__(params, defaults)
        except BaseException:   # the caller's group dicts as they were (torch fills them in)
            for group, before in given:
                group.clear()
                group.update(before)
            raise

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
        """Add a param group, as ``torch.optim.Optimizer.add_param_group``. Everything is
        checked first: on an error neither this optimizer nor ``param_group`` has changed.

        The group has its own schedule position, 0 unless ``param_group`` holds a
        ``schedule_position``: its first update uses ``lr * f(0)`` whatever the other
        groups' positions are (give ``schedule_position=opt.param_groups[0]
        ["schedule_position"].clone()`` to join them where they are).

        Raises ValueError when a parameter is in the group twice or already in another
        group (torch warns about a repeat within a group, then updates it twice a step),
        and for invalid hyperparameters, naming them."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = _listed(param_group)["params"]
        before, count = dict(param_group), len(self.param_groups)
        try:
            tensors, names = _split_named(params)
            _validate.distinct_params(tensors, names, self.param_groups, count)
            _validate.position(param_group, "add_param_group")
            merged = {**self.defaults, **param_group}
            merged["schedule"] = _validate.schedule(merged.get("schedule"))
            self._check_group(merged)
            super().add_param_group(param_group)
            group = self.param_groups[-1]
            # on torch's list of the group's parameters (names split off)
            _aids.check_group_params(self, group["params"])
            group["schedule"] = merged["schedule"]
            group.setdefault("schedule_position", torch.zeros((), dtype=torch.float64))
        except BaseException:
            del self.param_groups[count:]
            param_group.clear()
            param_group.update(before)
            raise
        if self.flat:       # flat storage: the group's banks (after every check)
            _flat.adopt(self, group)

    def get_last_lr(self):
        """The lr of the NEXT update of each group, as Python floats: ``group["lr"] *
        f(t)`` at the group's position ``t`` (before any step: the first update's lr).

        This is what torch's ``scheduler.get_last_lr()`` returns after
        ``scheduler.step()``: after k calls of ``step()`` it is ``lr * f(k)``, equal to
        ``LambdaLR(torch_opt, f).get_last_lr()`` after k ``scheduler.step()`` calls, so
        logging ported from torch logs the same numbers. The lr that the latest update
        used is the value this returned just before that ``step()`` (``lr * f(k - 1)``).
        Computed from the group's current ``lr``, so a torch scheduler's latest write
        counts. Reads the position: a host-device sync on an accelerator. RuntimeError
        when a value lives on the meta device (it holds none)."""
        return [_host_float(lr, "lr", "get_last_lr", i) * group["schedule"](t)
                for i, (group, lr, t) in enumerate(self._next_updates("get_last_lr"))]

    def get_last_momentum(self):
        """The momentum (beta1 for Adam/AdamW) of the NEXT update of each group, as
        Python floats, in the sense of ``get_last_lr``: the schedule's momentum at the
        group's position for ``one_cycle`` / ``cyclic`` with ``cycle_momentum`` (what
        torch's OneCycleLR / CyclicLR leave in the group after ``scheduler.step()``),
        else the group's own."""
        out = []
        for i, (group, _, t) in enumerate(self._next_updates("get_last_momentum")):
            scheduled = getattr(group["schedule"], "momentum", lambda t: None)(t)
            out.append(_host_float(self._group_momentum(group), "momentum",
                                   "get_last_momentum", i)
                       if scheduled is None else float(scheduled))
        return out

    def _next_updates(self, method):
        """(group, its lr, the position of its next update) per group."""
        for i, group in enumerate(self.param_groups):
            position = group["schedule_position"]
            yield group, group["lr"], int(_host_float(position, "schedule_position", method, i))

    def __repr__(self):
        """torch's ``Optimizer.__repr__`` (every group's values), after a first block of
        this optimizer's settings: the backend (for ``"auto"``, what serves each device
        type of the parameters) and the training aids that are on."""
        lines = [f"    backend: {self._backend_label()}"]
        if getattr(self, "master_weights", False):
            lines.append("    master_weights: True")
        if getattr(self, "stochastic_rounding", False):
            lines.append("    stochastic_rounding: True")
        if getattr(self, "state_dtype", None) is not None:
            lines.append(f"    state_dtype: {self.state_dtype!r}")
        if getattr(self, "max_grad_norm", None) is not None:
            lines.append(f"    max_grad_norm: {self.max_grad_norm}")
        head, _, groups = super().__repr__().partition("\n")
        return "\n".join([head, "Settings", *lines, groups])

    def _backend_label(self):
        backend = getattr(self, "backend", "auto")
        types = []
        for group in self.param_groups:
            for p in group["params"][:1]:
                if p.device.type not in types:
                    types.append(p.device.type)
        served = [f"{kind}: {_backend.preview(backend, kind) or 'cannot serve'}"
                  for kind in types]
        if not served or (backend != "auto" and all(
                _backend.preview(backend, kind) == backend for kind in types)):
            return backend
        return f"{backend} ({', '.join(served)})"

    # -- step --------------------------------------------------------------------------
    def step(self, closure=None):
        """One update of every parameter with a gradient. Everything is checked before
        anything is written: when this raises, no parameter and no state has changed.

        Honours ``self.grad_scale`` / ``self.found_inf`` set by ``torch.amp.GradScaler``
        (gradients are unscaled in the kernel; on found_inf nothing is written and only
        the schedule position advances). With ``max_grad_norm`` the gradients are first
        clipped by their global norm, in the kernels (``_aids.py``). Step pre/post hooks
        (``register_step_pre_hook``, the global ones) and the profiler's
        ``Optimizer.step#<class>.step`` range are torch's own (``_hooked_step``)."""
        # torch wraps a subclass's step in Optimizer.profile_hook_step unless it is marked
        # ``hooked``; that wrapper enters record_function and walks four hook dicts on every
        # call, the largest fixed cost of a one-tensor step. It runs here exactly when it
        # has something to do: a hook, the profiler, tracing (dynamo traces what torch's
        # optimizers run), or a subclass whose own step torch wrapped (its wrapper already
        # ran the hooks: not twice).
        if type(self).step is not FusedOptimizer.step:
            return self._unhooked_step(closure)
        if (torch.compiler.is_compiling() or self._optimizer_step_pre_hooks
                or self._optimizer_step_post_hooks or _optimizer._global_optimizer_pre_hooks
                or _optimizer._global_optimizer_post_hooks
                or torch._C._autograd._profiler_enabled()):
            return self._hooked_step(closure)
        return self._unhooked_step(closure)

    step.hooked = True

    def _unhooked_step(self, closure=None):
        # Runs under no_grad, switched here directly: the @torch.no_grad() decorator's
        # wrapper costs several times the switch on every call.
        if not torch.is_grad_enabled():
            return self._step(closure)
        torch._C._set_grad_enabled(False)
        try:
            return self._step(closure)
        finally:
            torch._C._set_grad_enabled(True)

    _hooked_step = torch.optim.Optimizer.profile_hook_step(_unhooked_step)

    def _step(self, closure):
        # Traced by torch.compile: the same checks and the same operator calls, without the
        # host caches (dynamo's guards on the groups' values and the tensors' metadata
        # decide when the traced step is valid). The eager step is never traced: after a
        # graph break that dynamo cannot resume (one inside torch's step wrapper), it would
        # otherwise compile the eager step's functions frame by frame, pointers and all.
        if torch.compiler.is_compiling() and not self._has_complex() and not self.flat:
            return self._run_step(closure, True)
        if self.flat and torch.compiler.is_compiling():     # see below: a graph break
            return self._eager_step(closure)
        if _validate.fake_mode_active():    # FakeTensorMode: no pointers, no values to read
            return self._run_step(closure, True)
        if _eval_frame_callback() is None:
            # No torch.compile frame is running: no frame can be traced, and the
            # torch.compiler.disable wrapper (which swaps the frame callback) is not needed.
            return self._run_step(closure, False)
        # Complex parameters: Inductor cannot functionalize an in-place operator on their
        # view_as_real views (auto_functionalized_v2 stays in the graph), so a traced step
        # breaks the graph here and steps eagerly. So does flat storage: Inductor's
        # reinplacing fails on the many aliasing views of one buffer ("graph node count
        # mismatch"), and the eager step walks the buffers in one call anyway.
        return self._eager_step(closure)

    def _has_complex(self):
        return any(p.is_complex() for group in self.param_groups for p in group["params"])

    @_eager_under_compile
    def _eager_step(self, closure):
        return self._run_step(closure, False)

    def _run_step(self, closure, traced):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        plan = self._traced_plan if traced else self._plan
        flat = self.flat and not traced
        if flat:        # p.data = ... since the last step: re-adopted or stepped per tensor
            _flat.settle(self)
        plans = [plan(group) for group in self.param_groups]
        _aids.check_params(self, plans)
        if self.max_grad_norm is not None:
            # with flat storage: the live grads in each group's order (the same norm)
            grad_scale = _aids.clipped_grad_scale(self, plans, grad_scale, grads=[
                g for plan in plans for g in _flat.live_grads(self, plan.group, plan.params)]
                if flat else None)
        fresh = []
        # Every direct group's state is created and checked against its parameters
        # before any kernel writes (a state tensor replaced by hand is checked here).
        dropped = self._dropped_on_skip
        if found_inf is not None and dropped:
            fresh = [p for plan in plans for p in plan.params if dropped not in self.state[p]]
        banks = repeat(None)
        if flat:    # the banks' checks, then their state (kernel lists of runs)
            banks = _flat.prepare(self, plans, self._state_keys,
                                  dropped if found_inf is not None else None)
            fresh += [p for step in banks if step is not None for p in step.fresh]
        calls = [self._calls(plan) if plan.direct and (plan.params or not flat) else None
                 for plan in plans]
        for plan, prepared, step in zip(plans, calls, banks):
            if step is not None and step.lists:
                # the banks first: the per-tensor launch advances the position
                plan = self._launch_banks(plan, step, grad_scale, found_inf)
                if plan is None:
                    continue
            if plan.direct:
                # no DTensor, nothing lifted: no context to enter
                self._launch(plan, grad_scale, found_inf, prepared)
                continue
            with _local_shards(self, plan.params) as local, _aids.lifted(self, local) as lifted:
                self._launch(plan._replace(params=lifted, ptrs=None), grad_scale, found_inf)
        if fresh and bool(found_inf.reshape(())):
            # A skipped first update leaves no momentum buffer behind (torch's fused SGD
            # leaves an uninitialised one: LibreYOLO PR 771). One host read of found_inf,
            # only on a step that created buffers.
            for p in fresh:     # a new dict, not a pop: launch caches hold the old one
                self.state[p] = {k: v for k, v in self.state[p].items()
                                 if k != dropped}
        return loss

    def _launch_banks(self, plan, step, grad_scale, found_inf):
        """The kernel calls of a group's banks (``_flat.py``); the plan of its per-tensor
        parameters, None when there are none (the banks' last call advanced the position)."""
        devices = step.devices | ({plan.device} if plan.params else set())
        if len(devices) > 1:
            a, b = sorted(map(str, devices))[:2]
            raise ValueError(f"parameters of one group must be on one device, got {a} and {b}")
        device = next(iter(step.devices))
        alone = not plan.params
        backend = plan.backend if not alone else _flat.backend(self, device)
        calls = _flat.Lists(step.lists)
        self._launch(plan._replace(device=device, backend=backend), grad_scale, found_inf,
                     calls, advance=alone)
        _flat.finish(step, grad_scale is not None)
        return None if alone else plan

    def _traced_plan(self, group):
        """``_plan`` for a step traced by torch.compile: every check of ``_plan`` and
        ``_scan`` of the tensors, run while tracing (on metadata dynamo guards on), no
        cache. The hyperparameters are not validated here (a check that reads a value
        would break the graph or guard on it); they are validated at construction,
        ``add_param_group``, ``load_state_dict`` and every eager step."""
        params = (_flat.traced_live(self, group) if self.flat else
                  [p for p in group["params"] if p.grad is not None])
        device = params[0].device if params else group["schedule_position"].device
        self._check_params(params, [p.grad for p in params], device)
        self._check_states(params)
        lifted = _aids.lifted_dtypes(self)
        direct = not any(_is_dtensor(p) or p.dtype in lifted for p in params)
        lr, schedule = self._scheduled_lr(group)
        return _Plan(group, device, params,
                     self._backend_for(device, params, [p.grad for p in params]), lr,
                     schedule, None, None, direct)

    def _scheduled_lr(self, group):
        """(lr, schedule) the kernel takes: a host-callable schedule is evaluated here (a
        host read of the position) and its factor goes into lr."""
        lr, schedule = group["lr"], group["schedule"]
        if not isinstance(schedule, S.Schedule):
            t = int(group["schedule_position"].item())
            factor = schedule(t)
            if (isinstance(factor, bool) or not isinstance(factor, numbers.Real)
                    or not math.isfinite(factor) or factor < 0):
                raise ValueError(f"schedule callable returned {factor!r} at t={t}; expected "
                                 f"a finite float >= 0")
            lr, schedule = float(lr) * float(factor), _UNIT
        return lr, schedule

    def _plan(self, group):
        """Check one group (no writes); return what its launch needs. What passed the
        checks at the last step is remembered (``_Memo``): unchanged hyperparameters are
        not validated again, and known parameters get C-level passes only."""
        memos = self.__dict__.setdefault("_memos", {})
        memo = memos.get(id(group))
        if memo is None or memo.group is not group:
            memo = memos[id(group)] = _Memo(group)
        if not memo.checked(group):
            # New value objects: compare by value (torch's LR schedulers write a new float
            # into group["lr"] every step) before validating again.
            key = _fingerprint(group)
            try:
                same = memo.key is not None and key == memo.key[1]
            except Exception:       # a value whose == does not give a bool (an array)
                same = False
            if not same:
                memo.launch = memo.calls = None
                self._check_group(group)
            memo.remember(group, key)
        params = _flat.rest(self, group) if self.flat else group["params"]
        grads = list(map(_grad, params))
        ptrs = memo.holds(params, grads)
        if ptrs is None:
            self._scan(memo, group, params, grads)
        lr, schedule = self._scheduled_lr(group)
        return _Plan(group, memo.device, memo.live, memo.backend, lr, schedule, memo, ptrs,
                     memo.direct)

    def _scan(self, memo, group, params, grads):
        """The full check of a group's parameters and grads (C-level passes; the exact
        error from ``_check_param``, run on the offending tensor), remembered in ``memo``."""
        mask = list(map(operator.is_not, grads, repeat(None)))
        live, grads = list(compress(params, mask)), list(compress(grads, mask))
        device = live[0].device if live else group["schedule_position"].device
        dtypes, shapes = list(map(_dtype, live)), list(map(_shape, live))
        plain = not live or (set(map(type, grads)) == _PLAIN
                             and set(map(type, live)) <= _PLAIN_PARAMS)
        try:
            ok = (plain and list(map(_dtype, grads)) == dtypes and _DTYPES.issuperset(dtypes)
                  and list(map(_shape, grads)) == shapes
                  and set(map(_device, live)) | set(map(_device, grads)) <= {device}
                  and (list(map(_data_ptr, grads)) or True))    # a sparse grad raises
            ptrs = list(map(_data_ptr, live)) if plain else None
        except RuntimeError:        # no storage: sparse
            ok = plain = False
        if not ok:
            self._check_params(live, grads, device)
        self._check_states(live)
        memo.params, memo.mask, memo.live = list(params), mask, live
        memo.dtypes, memo.shapes, memo.device = dtypes, shapes, device
        memo.index = {-1 if device.type == "cpu" else device.index}
        memo.ptrs = ptrs if plain else None
        memo.backend = self._backend_for(device, live, grads)
        memo.direct = plain and not set(dtypes) & set(_aids.lifted_dtypes(self))
        memo.launch = memo.calls = None

    def _backend_for(self, device, params, grads):
        """The backend for a group's tensors: the compiled kernels address plain tensors'
        memory; a tensor subclass that wraps others (its ``data_ptr()`` is 0) is stepped
        by the reference backend (in torch ops, as torch.optim steps it) when the backend
        is "auto", and refused by an explicit compiled one."""
        backend = _backend.resolve(self.backend, device)
        if backend == "reference":
            return backend
        wrapped = [t for t in params + grads
                   if type(t) not in _PLAIN_PARAMS and not _is_dtensor(t)]
        if not wrapped:
            return backend
        if self.backend == "auto":
            return "reference"
        raise ValueError(f"backend={self.backend!r} cannot step a {type(wrapped[0]).__name__} "
                         f"tensor (shape {tuple(wrapped[0].shape)}): its kernels address "
                         f"plain tensors' memory; use backend='reference' or 'auto'")

    def _check_params(self, params, grads, device):
        """One cheap test per parameter and grad; the exact reason is worked out
        (``_check_param``) only when it fails, or for DTensor grads."""
        for p, g in zip(params, grads):
            if (type(g) is not torch.Tensor or g.dtype is not p.dtype or g.is_sparse
                    or p.dtype not in _DTYPES or g.shape != p.shape
                    or g.device != device or p.device != device):
                self._check_param(p, g, device)

    def _check_states(self, params):
        """The existing state of each parameter fits it (``_check_state``)."""
        lifted = _aids.lifted_dtypes(self)
        fmt = _precision.format_of(self)
        for p in params:
            state = self.state.get(p)
            if state:
                _check_state(p, state, lifted, fmt)

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

    def _calls(self, plan):
        """The group's ``_Calls``: the memo's while they serve, else made anew (missing
        state created, every state tensor checked against its parameter)."""
        memo = plan.memo
        calls = memo.calls if memo is not None and plan.ptrs is not None else None
        if calls is None or not calls.serves(self.state, plan.params):
            calls = _Calls(self, plan.params, self._state_keys(plan.group), plan.device)
            if memo is not None:
                memo.calls = calls
        return calls

    def _launch(self, plan, grad_scale, found_inf, calls=None, advance=True):
        """One ``torch.ops.fusedsched.<algorithm>_step`` call per dtype of the group's
        parameters (``kernels/ops.py``), with ``calls`` (``_calls``; made here for
        parameters an aid or DTensor replaced)."""
        group, device, params, backend, lr, schedule, memo = plan[:7]
        position = group["schedule_position"]
        if position.device != device or position.dtype != torch.float64:
            position = group["schedule_position"] = position.to(device, torch.float64)
        # The state keys, the program and (kernel-side schedule) the kernel arguments
        # follow from the group's values and device: kept in the memo until _plan sees
        # those change.
        launch = memo.launch if memo else None
        if launch is None or launch[0] is not position:
            args = self._kernel_args(group, lr) if lr is group["lr"] else None
            launch = (position, self._state_keys(group), S.program(schedule, device), args)
            if memo:
                memo.launch = launch
        _, keys, program, args = launch
        if args is None:
            args = self._kernel_args(group, lr)
        grad_scale = _device_scalar(grad_scale, device)
        found_inf = _device_scalar(found_inf, device)
        if calls is None:
            calls = _Calls(self, params, keys, device)
        if not calls.lists:
            if advance:
                position.add_(1.0)
            return
        last = len(calls.lists) - 1 if advance else -1
        fmt = _precision.format_of(self)
        for n, (ps, states, steps, scales) in enumerate(calls.lists):
            grads = [p.grad for p in ps]    # not map(attrgetter): dynamo cannot trace it
            kw = dict(schedule=program, position=position, grad_scale=grad_scale,
                      found_inf=found_inf, advance_position=n == last, state_format=fmt,
                      scales=scales)
            if calls.plain and _contiguous(ps) and _contiguous(grads):
                ops.call(self.algorithm, backend, ps, grads, states, steps, args, **kw)
            else:
                _staged_call(self.algorithm, backend, ps, grads, states, steps, args, kw)

    def zero_grad(self, set_to_none=True):
        """torch's ``zero_grad``. With ``flat=True``, a parameter in a bank keeps its grad
        view bound: the grad buffer is filled in one pass and the parameter counts as
        gradient-less until autograd accumulates into it (``set_to_none=True``), or as
        holding a zero gradient (``set_to_none=False``); other grads as torch treats them."""
        if not self.flat:
            return super().zero_grad(set_to_none)
        _flat.zero_grad(self, set_to_none)

    @property
    def last_grad_norm(self):
        """The global gradient norm of the latest step with ``max_grad_norm`` (a 0-dim
        tensor on the first gradient's device), None before. Kept in a dict that the step
        writes: torch.compile replays a traced step's dict writes, not its attribute
        writes on an optimizer."""
        return self.__dict__.get("_results", {}).get("grad_norm")

    # -- checkpoints (_checkpoint.py) ---------------------------------------------------
    def __getstate__(self):
        """torch's (defaults, state, param_groups) plus this optimizer's settings and its
        rounding generators' states; the launch caches are rebuilt after loading."""
        return _checkpoint.getstate(self, super().__getstate__())

    def __setstate__(self, state):
        _checkpoint.setstate(self, state, super().__setstate__)

    def state_dict(self):
        """torch's state_dict, with each group's schedule as plain data (loads with
        ``torch.load(weights_only=True)``) and its position. A host-callable schedule is
        saved as ``{"kind": "callable"}``; loading keeps the receiving group's."""
        return _checkpoint.state_dict(self, super().state_dict())

    def load_state_dict(self, state_dict):
        """Load a state_dict of this optimizer or of the matching ``torch.optim`` one.
        Groups missing our keys keep this optimizer's schedule and start at position 0.
        Checked before anything changes: a wrong number of groups or parameters, or a
        state tensor of the wrong shape, raises ValueError; a state_dict that is not a
        dict of ``state`` and ``param_groups`` raises TypeError."""
        _checkpoint.load_state_dict(self, state_dict, super().load_state_dict)

    def _group_momentum(self, group):
        return group.get("momentum", 0.0)


def _listed(group):
    """A group dict whose ``params`` is an iterator (``model.parameters()``) gets them as a
    list, as torch's ``add_param_group`` makes it: read once, and still there if an error
    restores the dict."""
    if isinstance(group, dict) and "params" in group and not isinstance(
            group["params"], (torch.Tensor, set, list, tuple)):
        group["params"] = list(group["params"])
    return group


def _split_named(params):
    """The tensors of a group's ``params`` and their names (None if unnamed), as torch's
    ``add_param_group`` splits ``(name, tensor)`` pairs; what torch refuses is left to it."""
    if isinstance(params, torch.Tensor):
        return [params], None
    if isinstance(params, set):
        return [], None
    params = list(params)
    if params and all(isinstance(p, tuple) and len(p) == 2 for p in params):
        return [p[1] for p in params], [p[0] for p in params]
    return params, None


def _host_float(value, what, method, group_index):
    """``float(value)``, or a RuntimeError that says why a meta tensor has no value."""
    if isinstance(value, torch.Tensor) and value.is_meta:
        raise RuntimeError(
            f"{method}() needs the value of group {group_index}'s {what}, a tensor on the "
            f"meta device, which holds no values (the group was stepped, or given "
            f"{what}, on meta parameters): it is known once the parameters and the "
            f"optimizer live on a real device (e.g. model.to_empty(device=...), then a new "
            f"optimizer or load_state_dict)")
    return float(value)
