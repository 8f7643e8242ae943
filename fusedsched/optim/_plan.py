"""The launch plan of one parameter group's step: what ``FusedOptimizer._plan`` checked
and worked out for it (``_Plan``), what it remembers between eager steps (``_Memo``), the
operator calls' tensor lists (``_Calls``), and the staging of non-contiguous or complex
tensors (``_staged_call``). The one rule of validity is ``_Memo``'s."""

import operator
from itertools import chain, compress, repeat
from typing import NamedTuple

import torch

from ..kernels import ops
from . import _aids, _precision

_REAL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class _Plan(NamedTuple):
    """What one group's launch needs, worked out (and checked) before anything is written."""
    group: dict
    device: torch.device
    params: list            # the parameters with a gradient
    backend: str
    lr: object              # group["lr"], times f(t) when the schedule is a host callable
    schedule: object        # the schedule the kernel evaluates (unit for a host callable)
    memo: object            # the group's _Memo
    ptrs: object            # (param ptrs, grad ptrs, grads) of params; None: not read
    direct: bool            # no DTensor and nothing an aid lifts: launched as they are


_grad = operator.attrgetter("grad")
_dtype = operator.attrgetter("dtype")
_shape = operator.attrgetter("shape")
_device = operator.attrgetter("device")
_data_ptr = torch.Tensor.data_ptr
_get_device = torch.Tensor.get_device     # an int (-1: CPU): 2x cheaper than .device
_SCALARS = (float, int, bool, str, complex, type(None))


def _fingerprint(group):
    """A key of a group's values other than "params": equal keys mean equal values
    (scalars by type and value, sequences element-wise, tensors by ``_tensor_key``,
    anything else, schedules and callables, by identity)."""
    return [(name, _freeze(value, name != "schedule_position"))
            for name, value in group.items() if name != "params"]


def _freeze(value, by_value):
    kind = type(value)
    if kind in _SCALARS:
        return kind, value
    if kind is tuple or kind is list:
        return kind, tuple(_freeze(v, by_value) for v in value)
    if isinstance(value, torch.Tensor):
        return _tensor_key(value, by_value)
    return kind, id(value)


def _tensor_key(t, by_value=False):
    """What a tensor hyperparameter's validity depends on: in-place writes move ``_version``,
    ``t.data = ...`` the rest; with ``by_value``, a CPU tensor's value too (a write through
    ``t.data`` or numpy moves no version). ``schedule_position`` is advanced by the
    kernels through its address (its ``_version`` stays): the kernels keep it valid, and a
    replaced position (``load_state_dict``, ``_launch`` moving it) is a new tensor."""
    key = (id(t), t._version, t.data_ptr(), t.dtype, t.shape, t.device)
    if by_value and t.device.type == "cpu" and t.numel() == 1:
        return key + (t.item(),)
    return key


class _Memo:
    """What ``step()`` checked of one group at its last eager step and worked out for its
    launch, reused while what it depends on is unchanged (``FusedOptimizer._plan``).

    Per tensor a step makes C-level passes (``map``) only, the checks of a per-tensor loop:
    its grad, the grads' types (None, DTensor), dtypes, shapes, device indices and data
    pointers (a sparse grad has none: it raises), and the params' data pointers, dtypes and
    shapes (``p.data = ...`` may keep the pointer). No grad object is kept across steps
    (``zero_grad(set_to_none=True)`` must be able to free them). ``launch`` holds the
    group's position, state keys, schedule program and kernel arguments; ``calls`` the
    operator calls' tensor lists (``_Calls``), valid while the per-parameter state dicts
    are unchanged. The one rule: a change of the group's values, of its parameters or of
    their grads' presence, dtype, shape or device rebuilds both; a replaced state dict or
    state value rebuilds ``calls``. A traced step (torch.compile) uses none of this:
    dynamo's guards decide when its graph is valid.
    """

    __slots__ = ("group", "key", "values", "tensors", "lists", "params", "mask", "live",
                 "dtypes", "shapes", "ptrs", "device", "index", "backend", "direct", "launch",
                 "calls")

    def __init__(self, group):
        self.group, self.key, self.values, self.direct = group, None, (), False
        self.launch = self.calls = None

    def checked(self, group):
        """True when the group's values are those checked last (``_check_group`` need not
        run): every value the same object, tensors and lists inside unchanged. C-level
        passes but for the few tensors (``schedule_position``, a tensor lr)."""
        values = list(group.values())
        if (len(values) != len(self.values) or not all(map(operator.is_, values, self.values))
                or list(group) != self.key[0]):
            return False
        for t, was in self.tensors:
            if _tensor_key(t, len(was) > 6) != was:
                return False
        for seq, was in self.lists:
            if len(seq) != len(was) or not all(map(operator.is_, seq, was)):
                return False
        return True

    def remember(self, group, key):
        """Record the values of ``group`` as checked (its ``_fingerprint`` is ``key``)."""
        self.values = list(group.values())      # strong references: no id is reused
        self.key = (list(group), key)
        self.tensors, self.lists = [], []
        for name, value in group.items():
            if name != "params":
                self._watch(value, name != "schedule_position")

    def _watch(self, value, by_value):
        """The tensors and lists inside a group value, with what they held when checked
        (tensors keyed ``by_value``: all but the position, see ``_tensor_key``)."""
        if isinstance(value, torch.Tensor):
            self.tensors.append((value, _tensor_key(value, by_value)))
        elif type(value) in (tuple, list):
            for v in value:
                self._watch(v, by_value)
            if type(value) is list:
                self.lists.append((value, tuple(value)))

    def holds(self, params, grads):
        """``(param ptrs, grad ptrs, grads)`` of the parameters with a grad when the last
        full check still covers this step's parameters and grads, else None."""
        if (not self.direct or len(params) != len(self.params)
                or not all(map(operator.is_, params, self.params))):
            return None
        live = self.live
        if len(live) == len(grads):
            if grads and set(map(type, grads)) != _PLAIN:     # None or a DTensor
                return None
        else:
            if list(map(operator.is_not, grads, repeat(None))) != self.mask:
                return None
            grads = list(compress(grads, self.mask))
            if live and set(map(type, grads)) != _PLAIN:
                return None
        ptrs = list(map(_data_ptr, live))
        if (ptrs != self.ptrs or list(map(_dtype, grads)) != self.dtypes
                or list(map(_dtype, live)) != self.dtypes
                or list(map(_shape, live)) != self.shapes
                or list(map(_shape, grads)) != self.shapes
                or set(map(_get_device, grads)) - self.index):
            return None
        try:
            return ptrs, list(map(_data_ptr, grads)), grads
        except RuntimeError:        # a sparse grad: no storage
            return None


_PLAIN = {torch.Tensor}                             # a grad's type
_PLAIN_PARAMS = {torch.Tensor, torch.nn.Parameter}  # a parameter's (not a DTensor, ...)


def _device_scalar(value, device):
    """A 1-element tensor (GradScaler's grad_scale/found_inf) as a 0-dim tensor on device."""
    if value is None:
        return None
    return value.reshape(()).to(device, non_blocking=True)


def _check_state(p, state, lifted, fmt="native"):
    """The state of a parameter that a step will update matches it (``p.data = ...`` can
    change a parameter under its state): ValueError for a shape, TypeError for a dtype
    (float32 state of an fp16/bf16 parameter an aid lifts is its own; the moments of
    reduced-precision state, ``fmt``, are stored as ``_precision`` says), before anything
    is written."""
    for key, value in state.items():
        if key == "step" or not isinstance(value, torch.Tensor):
            continue
        if fmt == "8bit" and key.endswith(_precision.SCALE):
            problem = _precision.check_value(p, key, value, fmt)
            if problem:
                raise ValueError(problem)
            continue
        if value.shape != p.shape:
            raise ValueError(f"state {key!r} has shape {tuple(value.shape)}, its parameter "
                             f"{tuple(p.shape)} (a parameter replaced with p.data = ...? "
                             f"reset its state: del optimizer.state[p])")
        if _precision.is_moment(key, fmt):
            problem = _precision.check_value(p, key, value, fmt)
            if problem:
                raise TypeError(problem)
            if fmt == "8bit" and key + _precision.SCALE not in state:
                raise ValueError(f"8-bit state {key!r} has no {key + _precision.SCALE!r} "
                                 f"(reset its state: del optimizer.state[p])")
        elif value.dtype != p.dtype and not (p.dtype in lifted
                                             and value.dtype == torch.float32):
            raise TypeError(f"state {key!r} has dtype {value.dtype}, its parameter {p.dtype} "
                            f"(shape {tuple(p.shape)}; reset its state: "
                            f"del optimizer.state[p])")


_is_contiguous = torch.Tensor.is_contiguous


def _contiguous(tensors):
    return all(map(_is_contiguous, tensors))


class _Calls:
    """The operator calls of one group's step: per dtype, (params, state lists in kernel
    order, steps, the 8-bit scale lists or None), with any missing state created. Kept in the group's memo while the
    parameters with a grad and every per-parameter state dict are the same objects with
    the same values (``serves``); the gradients are read at each call."""

    __slots__ = ("lists", "state", "keys", "dicts", "states", "values", "plain")

    def __init__(self, opt, params, keys, device):
        state = self.state = opt.state
        by_dtype = {}
        lifted = _aids.lifted_dtypes(opt)
        fmt = _precision.format_of(opt)
        if fmt != "native":
            for p in params:
                _precision.check_param(p, fmt)
        for p in params:
            s = state[p]
            if "step" not in s:
                s["step"] = torch.zeros((), dtype=torch.float64, device=device)
            else:
                step = s["step"]
                if (not isinstance(step, torch.Tensor) or step.dtype != torch.float64
                        or step.device != device or step.dim() != 0):
                    # a count set by hand as torch keeps it (float32, or a number)
                    s["step"] = torch.as_tensor(step).to(device, torch.float64).reshape(())
            _check_state(p, s, lifted, fmt)
            for key in keys:
                if key is not None and key not in s:
                    _precision.create(s, key, p, fmt)
                    if key in opt._count_restarted_by:
                        s["step"] = torch.zeros((), dtype=torch.float64, device=device)
            by_dtype.setdefault(p.dtype, []).append(p)
        self.lists = [(ps, [None if k is None else [state[p][k] for p in ps] for k in keys],
                       [state[p]["step"] for p in ps],
                       _precision.scales([state[p] for p in ps], keys, fmt))
                      for ps in by_dtype.values()]
        self.states = [state[p] for p in params]
        self.keys, self.dicts = list(state), list(state.values())
        self.values = list(chain.from_iterable(map(dict.values, self.states)))
        self.plain = all(dtype in _REAL_DTYPES for dtype in by_dtype) and all(
            _contiguous(s) for _, lists, _, _ in self.lists for s in lists if s is not None)

    def serves(self, state, params):
        """``state`` (the optimizer's, which ``load_state_dict`` replaces) holds for
        ``params`` the per-parameter state dicts, with the values, that the lists were made
        of (``opt.state[p] = {}``, ``opt.state[p].clear()``, ``opt.state[p]["exp_avg"] =
        ...`` rebuild them). Identity passes only: no hashing of tensors."""
        if (state is not self.state or len(params) != len(self.states)
                or len(state) != len(self.keys) or not all(map(operator.is_, state, self.keys))
                or not all(map(operator.is_, state.values(), self.dicts))):
            return False
        values = list(chain.from_iterable(map(dict.values, self.states)))
        return len(values) == len(self.values) and all(map(operator.is_, values, self.values))


def _staged_call(algorithm, backend, ps, grads, states, steps, args, kw):
    """``ops.call`` on contiguous real copies (views) of non-contiguous or complex tensors,
    written back after the call. A gradient is written back only when the kernel unscales
    it, and not when its elements overlap (an expanded grad cannot be written)."""
    staged = _Staged()
    ps = [staged(p) for p in ps]
    grads = [staged(g, kw["grad_scale"] is not None
                    and torch._debug_has_internal_overlap(g) == 0) for g in grads]
    states = [None if s is None else [staged(t) for t in s] for s in states]
    ops.call(algorithm, backend, ps, grads, states, steps, args, **kw)
    staged.write_back()



class _Staged:
    """Contiguous, real views of the tensors a kernel writes; a non-contiguous tensor is
    copied in and written back after the call (rare: parameters are contiguous in
    practice, and this costs one copy each way only for those)."""

    def __init__(self):
        self._pending = []

    def __call__(self, tensor, write_back=True):
        if not tensor.is_contiguous():
            contiguous = tensor.contiguous()
            if write_back:
                self._pending.append((tensor, contiguous))
            tensor = contiguous
        return torch.view_as_real(tensor) if tensor.is_complex() else tensor

    def write_back(self):
        for tensor, contiguous in self._pending:
            tensor.copy_(contiguous)
