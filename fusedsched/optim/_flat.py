"""Flat storage (``flat=True``): per parameter group and per (device, dtype), the
parameters, their gradients and their state live in one contiguous buffer each (a *bank*),
and one kernel call walks the buffer.

What a bank does to its parameters (the user-visible contract is in the README):

* adoption (construction, ``add_param_group``): each parameter's values are copied into
  the bank's buffer and ``p.data`` becomes a view of its segment (bit for bit the same
  values); ``p.grad`` becomes a view of the grad buffer (holding the old grad, if any) and
  stays bound across ``zero_grad``. Segments start at multiples of ``ALIGN`` elements, so
  every pointer the kernels get is 16-byte aligned (Triton specialises on that) and each
  segment starts a cache line for 4-byte dtypes;
* gradient presence: ``zero_grad(set_to_none=True)`` fills the grad buffer with -0.0 (the
  additive identity: autograd's in-place accumulation ``-0.0 + g`` is ``g`` bit for bit, so
  a fresh grad and an accumulated one are the same as torch's) and marks every parameter
  *idle*; a post-accumulate-grad hook per parameter clears the mark (``touched``) when
  autograd accumulates into it. At a step a parameter is *live* (updated and counted, as torch
  updates a parameter whose grad is not None) when its grad is its view and not idle, or a
  tensor of its own (``p.grad = t``, DDP's bucket views), which is copied into the view
  first and not rebound; a None grad is not live;
* state: one buffer per state key; ``state[p][key]`` is a view of it and
  ``state[p]["step"]`` a 0-dim float64 view of one steps buffer;
* one kernel row per *run*: consecutive live parameters whose counts are known equal (the
  kernels read one step per row), a view over their segments. Equal counts are tracked on
  the host as labels: parameters stepped together stay equal, a step refines the labels by
  its live mask, and the labels are read back from the counts (one host sync) after
  ``load_state_dict``, a hand edit of a count (the steps buffer's version moves) or a
  traced step. After the call the count of each run's head is copied to its other members
  (one index_copy_, no host sync). The runs of a live mask are cached.

What breaks a view is detected at the next step, before anything is written, and repaired
or routed around: ``p.data = t`` of the same shape and dtype is re-adopted (``t``'s values
copied into the segment, ``p.data`` a view again), of another shape or dtype the parameter
leaves the bank (its state and grad become tensors of their own) and is stepped by the
per-tensor path, as ``flat=False`` steps it; a state dict or state value replaced by hand
(``opt.state[p] = {}``, ``opt.state[p]["exp_avg"] = t``, ``load_state_dict``) is copied
into the bank and the view bound again. Kernels write only into the buffers a bank holds,
whose pointers are checked at every step.

Kept out of banks (stepped per tensor, as ``flat=False``): parameters whose storage is
held by anything but the group's parameters (a base tensor, another view, another live
optimizer's bank) or whose elements overlap another's (adopting would break the
sharing), non-contiguous, empty, complex, DTensor or other subclass parameters,
parameters that do not require grad (no hook can be registered), a grad that is not a
plain dense tensor of the parameter's dtype and shape at adoption, float16/bfloat16
parameters that ``master_weights`` or ``stochastic_rounding`` lift to float32, and every
parameter of an optimizer with reduced-precision state (``state_dtype``).
"""

import collections
import functools
import operator
import weakref
from itertools import compress, repeat

import torch

from . import _aids

ALIGN = 16          # elements: segment starts (16-byte aligned for every dtype)
_SLICES = 4         # runs whose counts are copied by slices (more: two index ops)

_grad = operator.attrgetter("grad")
_data_ptr = torch.Tensor.data_ptr
_REAL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_ptrs_equal = torch._C._tensors_data_ptrs_at_indices_equal
_use_count = torch._C._storage_Use_Count


def check(flat):
    """``flat`` as given; TypeError naming it when it is not a bool."""
    if not isinstance(flat, bool):
        raise TypeError(f"flat must be a bool, got flat={flat!r}")
    return flat


class _Dead:
    """Stands for a parameter that left its bank: no grad, so never live."""
    grad = None


_DEAD = _Dead()


_put = dict.__setitem__


class _StateDict(dict):
    """A parameter's state under ``flat=True``: a dict that marks its optimizer's state
    changed when a value is set or removed (the banks then check it: an identity pass over
    every state value at every step would cost more than the step)."""

    __slots__ = ("changed",)

    def __init__(self, *args, changed=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.changed = changed if changed is not None else [True]

    def __reduce__(self):
        return (_StateDict, (dict(self),), {"changed": self.changed})

    def __setstate__(self, state):
        self.changed = state["changed"]


class _State(collections.defaultdict):
    """``opt.state`` under ``flat=True``: torch's ``defaultdict(dict)``, marking itself
    changed when a parameter's state dict is set, removed or made (``changed[0]``)."""

    def __init__(self, items=()):
        super().__init__(dict)
        self.changed = [True]
        for key, value in dict(items).items():
            _put(self, key, _own(value, self.changed))

    def __missing__(self, key):
        value = self[key] = _StateDict(changed=self.changed)
        return value

    def __reduce__(self):
        return (_State, (dict(self),))


def _mark(name):
    def method(self, *args, **kwargs):
        self.changed[0] = True
        return getattr(dict, name)(self, *args, **kwargs)
    method.__name__ = name
    return method


for _name in ("__setitem__", "__delitem__", "pop", "popitem", "clear", "update",
              "setdefault", "__ior__"):
    setattr(_StateDict, _name, _mark(_name))
    setattr(_State, _name, _mark(_name))


def _own(value, changed):
    """A parameter's state dict as a ``_StateDict`` of ``changed`` (the same dict if it
    is one)."""
    if type(value) is _StateDict and value.changed is changed:
        return value
    return _StateDict(value, changed=changed) if isinstance(value, dict) else value


def plain(state_dict):
    """A state_dict's per-parameter states as plain dicts (torch's format: loads with
    ``weights_only=True``)."""
    state_dict["state"] = {k: dict(v) if isinstance(v, dict) else v
                           for k, v in state_dict["state"].items()}
    return state_dict


def watched(opt):
    """``opt.state`` as a ``_State`` (made from the current one when it is not)."""
    state = opt.state
    if type(state) is not _State:
        state = opt.state = _State(state)
    return state


def _touch(touched, i, _param):
    touched[i] = True


class _Bank:
    """One group's parameters of one (device, dtype): the buffers, the views, the runs."""

    def __init__(self, params, device, dtype):
        n = len(params)
        self.device, self.dtype = device, dtype
        self.params = list(params)          # _DEAD where a parameter left
        self.shapes = [p.shape for p in params]
        self.numels = [p.numel() for p in params]
        offsets, o = [], 0
        for size in self.numels:
            offsets.append(o)
            o += -(-size // ALIGN) * ALIGN
        self.offsets, self.total = offsets, o
        buf = self.buf = torch.zeros(o, dtype=dtype, device=device)
        self.views = self._views(buf)
        for v, p in zip(self.views, params):
            v.copy_(p.detach())
        for v, p in zip(self.views, params):
            p.data = v
        self.gbuf = torch.full((o,), -0.0, dtype=dtype, device=device)
        self.gviews = self._views(self.gbuf)
        self.touched = [False] * n         # autograd accumulated into the view
        for i, (p, gv) in enumerate(zip(params, self.gviews)):
            if p.grad is not None:
                gv.copy_(p.grad)
                self.touched[i] = True
            p.grad = gv
        self.gcount = _use_count(self.gbuf.untyped_storage()._cdata)
        self.hooks = [p.register_post_accumulate_grad_hook(
            functools.partial(_touch, self.touched, i)) for i, p in enumerate(params)]
        # a bank that is gone leaves no hooks behind (optimizers made again and again)
        weakref.finalize(self, _remove, list(self.hooks))
        self.checked = list(params)         # ptrs checked against self.ptrs
        self.ptrs = list(map(_data_ptr, params))
        self.index = list(range(n))
        self.steps = torch.zeros(n, dtype=torch.float64, device=device)
        self.step_views = list(self.steps.unbind())
        self.bufs = {}                      # state key -> buffer
        self.buffer_ptrs = [self.buf.data_ptr(), self.gbuf.data_ptr(), self.steps.data_ptr()]
        self.state_views = {}               # state key -> per-param views
        self.dicts = [None] * n             # the state dict each parameter's views are in
        self.labels = [0] * n               # equal labels: equal counts
        self.derive = False                 # labels to be read back from the counts
        self.version = self.steps._version
        self.runs = None                    # (mask, keys, lists, copy index pair)
        self.state = None                   # the optimizer's state dict last checked
        self.counts = []                    # state buffers' use counts when checked
        self.unsettled = False              # a state value the bank could not bind
        self.created = None                 # (mask, keys) whose state is all bound

    def _views(self, buf):
        return [buf[o:o + n].view(s) for o, n, s in zip(self.offsets, self.numels, self.shapes)]

    def members(self):
        return [(i, p) for i, p in enumerate(self.params) if p is not _DEAD]

    # -- leaving ---------------------------------------------------------------------
    def evict(self, opt, i):
        """Parameter ``i`` leaves the bank: its state and grad become its own tensors."""
        p = self.params[i]
        self.hooks[i].remove()
        g = p.grad
        if g is self.gviews[i] and g.shape == p.shape and g.dtype == p.dtype:
            p.grad = g.clone()
        # else torch refuses the assignment: the view stays (a dead segment), and the
        # step raises for its shape or dtype as flat=False does
        s = self.dicts[i]
        if s is not None and opt.state.get(p) is s:
            for key, value in list(s.items()):
                if isinstance(value, torch.Tensor) and self._is_mine(value):
                    _put(s, key, value.clone())
        self.params[i] = _DEAD
        self.checked[i] = self.views[i]
        self.ptrs[i] = self.views[i].data_ptr()
        self.dicts[i] = None
        self.runs = None
        self.record()

    def _is_mine(self, t):
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            return False
        return ptr in {b.untyped_storage().data_ptr() for b in
                       [self.buf, self.gbuf, self.steps, *self.bufs.values()]}

    # -- the checks of a step -----------------------------------------------------------
    def check_buffers(self):
        """The buffers still hold the memory they were made with (only ``p.data._base.data
        = ...`` could rebind one): RuntimeError otherwise. The kernels get views of them,
        which keep that memory alive."""
        buffers = [self.buf, self.gbuf, self.steps, *self.bufs.values()]
        if list(map(_data_ptr, buffers)) != self.buffer_ptrs[:len(buffers)] or len(
                buffers) != len(self.buffer_ptrs):
            raise RuntimeError("flat=True: a buffer of the optimizer's flat storage was "
                               "rebound (.data = ...); make a new optimizer")

    def check_params(self, opt):
        """``p.data = ...`` since the last step: re-adopt or evict (before any write of
        the step: re-adoption writes only the parameter's own segment). True when a
        parameter left (the group's per-tensor list changes)."""
        if _ptrs_equal(self.checked, self.ptrs, self.index):
            return False
        left = False
        for i, p in self.members():
            if p.data_ptr() == self.ptrs[i]:
                continue
            v = self.views[i]
            if (type(p.data) is torch.Tensor and p.shape == v.shape and p.dtype == v.dtype
                    and p.device == v.device and _alone(p)):
                v.copy_(p.detach())
                p.data = v
            else:
                self.evict(opt, i)
                left = True
        return left

    def scan_grads(self, opt):
        """(live mask, [(i, foreign grad)]): which parameters this step updates. A
        foreign grad that does not fit raises the per-tensor path's error."""
        params = self.params
        if _use_count(self.gbuf.untyped_storage()._cdata) != self.gcount:
            self._check_grad_views()
        if all(map(operator.is_, map(_grad, params), self.gviews)):
            return self.touched[:], ()
        grads = list(map(_grad, params))
        mine = list(map(operator.is_, grads, self.gviews))
        touched = self.touched
        mask, foreign = [], []
        for i, (g, own) in enumerate(zip(grads, mine)):
            if own:
                mask.append(touched[i])
            elif g is None:
                mask.append(False)
            else:
                p = params[i]
                if (type(g) is not torch.Tensor or g.is_sparse or g.dtype != p.dtype
                        or g.shape != p.shape or g.device != p.device):
                    opt._check_params([p], [g], p.device)
                    raise TypeError(f"flat=True: a grad of type {type(g).__name__} cannot "
                                    f"be stepped (shape {tuple(g.shape)})")
                mask.append(True)
                foreign.append((i, g))
        return mask, foreign

    def _check_grad_views(self):
        """A grad view rebound with ``.data = ...`` (``module.to(...)`` does it) releases
        the grad buffer: such a grad is foreign from now on, and the bank makes a new view
        of the segment."""
        base, size = self.gbuf.data_ptr(), self.gbuf.element_size()
        for i, (gv, o) in enumerate(zip(self.gviews, self.offsets)):
            if gv.data_ptr() != base + o * size:
                self.gviews[i] = self.gbuf[o:o + self.numels[i]].view(self.shapes[i])
        self.gcount = _use_count(self.gbuf.untyped_storage()._cdata)

    def check_state(self, opt, state, mask, lifted):
        """The state of every bank parameter is bound to the bank's views: what was
        replaced by hand is copied in and bound again; what does not fit a live parameter
        raises (``_check_state``'s errors), before any write. Checked in full when the
        optimizer's state marked itself changed (``_State``) or a state buffer's use count
        moved (``state[p][key].data = ...``)."""
        from ._plan import _check_state
        if self.steps._version != self.version:
            self.derive = True      # a count edited by hand
        if (not state.changed[0] and state is self.state and not self.unsettled
                and self._counts() == self.counts):
            return
        if state is not self.state:
            self.derive = True
        self.unsettled = False
        for i, p in self.members():
            s = state.get(p)
            if s is not None and type(s) is not _StateDict:
                s = _own(s, state.changed)
                _put(state, p, s)
            if s is not self.dicts[i]:
                self._unbind(i)
            if s is None:
                continue
            if mask[i]:
                _check_state(p, s, lifted)
            self._rebind(i, s)
        self.state = state
        self.runs = None
        self.record()

    def _counts(self):
        """The use counts of the state buffers' storages (a view rebound with
        ``.data = ...`` releases its reference)."""
        return [_use_count(b.untyped_storage()._cdata) for b in self.bufs.values()]

    def record(self):
        """Remember the state buffers' use counts (``check_state``)."""
        self.created = None
        self.counts = self._counts()

    def _unbind(self, i):
        self.dicts[i] = None

    def _rebind(self, i, s):
        """Bind the views of parameter ``i`` into its state dict ``s`` (copying in what
        the dict holds that is not a view yet, or a view rebound with ``.data = ...``)."""
        step = s.get("step")
        if step is not None and not self._at(step, self.steps, i, 1, self.step_views, i,
                                             ()):
            value = torch.as_tensor(step).to(self.device, torch.float64).reshape(())
            self.step_views[i].copy_(value)
            _put(s, "step", self.step_views[i])
            self.derive = True
        for key, value in list(s.items()):
            if key == "step" or not isinstance(value, torch.Tensor):
                continue
            views = self.state_views.get(key)
            if views is not None and self._at(value, self.bufs[key], self.offsets[i],
                                              self.numels[i], views, i, self.shapes[i]):
                continue
            if (type(value) is not torch.Tensor or value.shape != self.shapes[i]
                    or value.dtype != self.dtype or value.device != self.device):
                # not ours to hold: checked against the parameter at each step
                self.unsettled = True
                continue
            views = self._buffer(key)
            if self._is_mine(value):
                value = value.clone()
            views[i].copy_(value)
            _put(s, key, views[i])
        self.dicts[i] = s

    @staticmethod
    def _at(value, buf, offset, numel, views, i, shape):
        """``value`` is the bank's view ``views[i]`` and still views its segment of
        ``buf``; a view rebound with ``.data = ...`` is replaced by a new one."""
        if value is not views[i]:
            return False
        if value.data_ptr() == buf.data_ptr() + offset * buf.element_size():
            return True
        views[i] = buf[offset:offset + numel].view(shape)
        return False

    def _buffer(self, key):
        views = self.state_views.get(key)
        if views is None:
            buf = self.bufs[key] = torch.zeros(self.total, dtype=self.dtype,
                                               device=self.device)
            self.buffer_ptrs.append(buf.data_ptr())
            views = self.state_views[key] = self._views(buf)
            self.runs = None
        return views

    # -- state creation -----------------------------------------------------------------
    def create_state(self, opt, state, mask, keys):
        """Missing state of the live parameters, as views (zeros; a count of 0)."""
        if self.created == (mask, keys):
            return False
        restart = opt._count_restarted_by
        fresh = None
        for key in keys:
            if key is not None:
                self._buffer(key)
        changed = False
        for i in compress(range(len(mask)), mask):
            p = self.params[i]
            s = self.dicts[i]
            if s is None:
                s = state.get(p)
                if s is None:
                    s = _StateDict(changed=state.changed)
                    _put(state, p, s)
                self._rebind(i, s)
                changed = True
            if "step" not in s:
                self.step_views[i].zero_()
                _put(s, "step", self.step_views[i])
                fresh = fresh if fresh is not None else object()
                self.labels[i] = fresh
                changed = True
            for key in keys:
                if key is not None and key not in s:
                    view = self.state_views[key][i]
                    view.zero_()
                    _put(s, key, view)
                    changed = True
                    if key in restart:
                        self.step_views[i].zero_()
                        fresh = fresh if fresh is not None else object()
                        self.labels[i] = fresh
        if changed:
            self.runs = None
            self.record()
        self.version = self.steps._version
        self.created = (mask, list(keys))
        return changed

    # -- runs ---------------------------------------------------------------------------
    def lists(self, mask, keys):
        """The kernel lists of this step: ([runs], [state runs per key], [head steps]),
        and the (members, heads) index pair for the count copy (None: none)."""
        runs = self.runs
        if runs is not None and not self.derive and runs[1] == keys and runs[0] == mask:
            return runs[2], runs[3]
        if self.derive:
            self.labels = self.steps.tolist()
            self.derive = False
        labels = self.labels
        # parameters stepped together stay equal: refine the labels by the mask
        table = {}
        labels = self.labels = [table.setdefault((label, live), len(table))
                                for label, live in zip(labels, mask)]
        spans = []      # [first, last] indices of each run
        for i in compress(range(len(mask)), mask):
            if spans and spans[-1][1] == i - 1 and labels[spans[-1][0]] == labels[i]:
                spans[-1][1] = i
            else:
                spans.append([i, i])
        ps, states, steps, members, heads = [], [[] if k else None for k in keys], [], [], []
        for first, last in spans:
            lo = self.offsets[first]
            hi = self.offsets[last] + self.numels[last]
            run = self.buf[lo:hi]
            run.grad = self.gbuf[lo:hi]
            ps.append(run)
            for k, col in zip(keys, states):
                if k is not None:
                    col.append(self.bufs[k][lo:hi])
            steps.append(self.step_views[first])
            members += range(first + 1, last + 1)
            heads += [first] * (last - first)
        copy = None
        shared = [(first, last) for first, last in spans if last > first]
        if len(shared) <= _SLICES:      # a slice copy per run: no index tensors
            copy = [(self.steps[first + 1:last + 1], self.step_views[first])
                    for first, last in shared] or None
        else:
            copy = (torch.tensor(members, device=self.device),
                    torch.tensor(heads, device=self.device))
        lists = (ps, states, steps) if ps else None
        self.runs = (list(mask), list(keys), lists, copy)
        self.counts = self._counts()        # the runs' views hold the buffers too
        self.gcount = _use_count(self.gbuf.untyped_storage()._cdata)
        return lists, copy

    def finish(self, copy):
        """After the kernel: the members of each run get their head's count."""
        if type(copy) is list:
            for members, head in copy:
                members.copy_(head)
        elif copy is not None:
            self.steps.index_copy_(0, copy[0], self.steps.index_select(0, copy[1]))
        self.version = self.steps._version


def _alone(p):
    """True when nothing but ``p`` holds its storage (adopting would not break sharing)."""
    try:
        # the storage object made for the call holds one reference
        return _use_count(p.untyped_storage()._cdata) == 2
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


def _unshared(params):
    """The ids of the parameters that adoption would not break a sharing of: a storage
    held by these parameters only (no base tensor, no other view, no other optimizer's
    bank), their elements disjoint. Parameters of a bank whose optimizer is gone share
    its buffer that way, and are adopted again."""
    by_storage = {}
    for p in params:
        by_storage.setdefault(p.untyped_storage().data_ptr(), []).append(p)
    out = set()
    for ps in by_storage.values():
        try:
            holders = _use_count(ps[0].untyped_storage()._cdata) - 1    # the call's own
        except (RuntimeError, NotImplementedError, AttributeError):
            continue
        if holders != len(ps) or len({id(p) for p in ps}) != len(ps):
            continue
        spans = sorted((p.data_ptr(), p.data_ptr() + p.numel() * p.element_size())
                       for p in ps)
        if all(a[1] <= b[0] for a, b in zip(spans, spans[1:])):
            out.update(map(id, ps))
    return out


def _remove(handles):
    for handle in handles:
        handle.remove()


class FlatGroup:
    """The banks of one parameter group and its parameters stepped per tensor."""

    def __init__(self, opt, group):
        self.group = group
        lifted = _aids.lifted_dtypes(opt)
        params = group["params"]
        # reduced-precision state (``state_dtype``) is stepped per tensor: a bank's state
        # buffers are in the parameters' dtype
        native = getattr(opt, "state_dtype", None) is None
        fits = [p for p in params
                if native and type(p) in _PLAIN and p.dtype in _REAL and p.dtype not in lifted
                and p.requires_grad and p.numel() > 0 and p.is_contiguous()
                and not p.is_sparse and p.device.type != "meta"
                and (p.grad is None or (type(p.grad) is torch.Tensor and not p.grad.is_sparse
                                        and p.grad.dtype == p.dtype
                                        and p.grad.shape == p.shape
                                        and p.grad.device == p.device))]
        unshared = _unshared(fits)
        by_key = {}
        for p in fits:
            if id(p) in unshared:
                by_key.setdefault((p.device, p.dtype), []).append(p)
        with torch.no_grad():
            self.banks = [_Bank(ps, device, dtype) for (device, dtype), ps in by_key.items()]
        self.rest_of(params)

    def rest_of(self, params):
        ids = {id(p) for bank in self.banks for p in bank.params if p is not _DEAD}
        self.rest = [p for p in params if id(p) not in ids]
        # per position of group["params"]: (bank, index) or None (the traced path)
        where = {id(p): (bank, i) for bank in self.banks for i, p in bank.members()}
        self.where = [where.get(id(p)) for p in params]

    def zero_grad(self, set_to_none):
        fill = -0.0 if set_to_none else 0.0
        for bank in self.banks:
            bank.gbuf.fill_(fill)
            grads = list(map(_grad, bank.params))
            mine = list(map(operator.is_, grads, bank.gviews))
            for i in compress(range(len(mine)), map(operator.not_, mine)):
                p = bank.params[i]
                if p is _DEAD:
                    continue
                if set_to_none:
                    p.grad = bank.gviews[i]
                elif grads[i] is not None:
                    _zero(grads[i])
            if set_to_none:
                bank.touched[:] = repeat(False, len(mine))
            else:   # an idle view is torch's None grad: it stays one, holding -0.0
                for i in compress(range(len(mine)), map(operator.not_, bank.touched)):
                    bank.gviews[i].fill_(-0.0)
        for p in self.rest:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    _zero(p.grad)


def _zero(g):
    """torch's ``zero_grad(set_to_none=False)`` of one grad."""
    if g.grad_fn is not None:
        g.detach_()
    else:
        g.requires_grad_(False)
    g.zero_()


class _Step:
    """One group's bank launches of one step."""
    __slots__ = ("lists", "finish", "devices", "live", "fresh")
    # lists: per bank with live parameters, the kernel lists (runs, state runs, steps);
    # finish: (bank, count copy, foreign grads); devices: of those banks

    def __init__(self):
        self.lists, self.finish, self.devices, self.live, self.fresh = [], [], set(), [], []


def groups(opt):
    """The optimizer's FlatGroup per param group (made for groups that have none)."""
    table = opt.__dict__.setdefault("_flat_groups", {})
    out = []
    for group in opt.param_groups:
        fg = table.get(id(group))
        if fg is None or fg.group is not group:
            fg = table[id(group)] = FlatGroup(opt, group)
        out.append(fg)
    return out


@torch._disable_dynamo
def zero_grad(opt, set_to_none):
    """``zero_grad`` of a flat optimizer (``FusedOptimizer.zero_grad``)."""
    with torch.no_grad():
        settle(opt)     # a parameter rebound since the last step: re-adopted or out
        for fg in groups(opt):
            fg.zero_grad(set_to_none)


def adopt(opt, group):
    opt.__dict__.setdefault("_flat_groups", {})[id(group)] = FlatGroup(opt, group)


def rebind_groups(opt, old_groups):
    """After ``load_state_dict`` replaced the group dicts: keep the banks."""
    table = opt.__dict__.get("_flat_groups", {})
    for old, new in zip(old_groups, opt.param_groups):
        fg = table.pop(id(old), None)
        if fg is not None:
            fg.group = new
            table[id(new)] = fg


def flat_group(opt, group):
    fg = opt.__dict__.get("_flat_groups", {}).get(id(group))
    return fg if fg is not None and fg.group is group else None


def rest(opt, group):
    """The group's parameters stepped per tensor (not in a bank)."""
    fg = flat_group(opt, group)
    return group["params"] if fg is None else fg.rest


def traced_live(opt, group):
    """The parameters a traced step updates (torch.compile): the per-tensor path over
    every live parameter, bank views included (the same kernel math per element)."""
    fg = flat_group(opt, group)
    out = []
    for p, where in zip(group["params"], fg.where if fg is not None else repeat(None)):
        g = p.grad
        if g is None:
            continue
        if where is not None:
            bank, i = where
            if not bank.touched[i] and g is bank.gviews[i]:
                continue
        out.append(p)
    if fg is not None and fg.banks:
        opt._results["flat_traced"] = True
    return out


def backend(opt, device):
    """The backend of a bank's device (``_backend_for``, cached per backend name)."""
    cache = opt.__dict__.setdefault("_flat_backends", {})
    key = (opt.backend, device)
    found = cache.get(key)
    if found is None:
        found = cache[key] = opt._backend_for(device, [], [])
    return found


def settle(opt):
    """Before a step's plans: every bank's buffers checked and its parameters still
    viewing them (``p.data = ...``: re-adopted or moved to the per-tensor path)."""
    for fg in groups(opt):
        left = False
        for bank in fg.banks:
            bank.check_buffers()
            left |= bank.check_params(opt)
        if left or len(fg.where) != len(fg.group["params"]):
            fg.rest_of(fg.group["params"])


def prepare(opt, plans, keys_of, dropped=None):
    """Check the grads and state of every bank (before any write of the step) and return
    per plan a ``_Step`` (None for a group without banks). Then the missing state is
    created and foreign grads are copied into their views."""
    state = watched(opt)
    lifted = _aids.lifted_dtypes(opt)
    traced = opt._results.pop("flat_traced", False)
    out = []
    for plan in plans:
        fg = flat_group(opt, plan.group)
        if fg is None or not fg.banks:
            out.append(None)
            continue
        step = _Step()
        for bank in fg.banks:
            if traced:
                bank.derive = True
                bank.runs = None
            mask, foreign = bank.scan_grads(opt)
            bank.check_state(opt, state, mask, lifted)
            if True in mask:
                step.devices.add(bank.device)
                step.live.append((bank, mask, foreign))
        out.append(step)
    # every check passed: state creation, foreign grads copied into the views
    state.changed[0] = False
    for step, plan in zip(out, plans):
        if step is None:
            continue
        keys = keys_of(plan.group)
        for bank, mask, foreign in step.live:
            if dropped:     # AMP: a skipped first update must not leave this key
                step.fresh += [bank.params[i] for i in compress(range(len(mask)), mask)
                               if bank.dicts[i] is None or dropped not in bank.dicts[i]]
            bank.create_state(opt, state, mask, keys)
            for i, g in foreign:
                bank.gviews[i].copy_(g)
            lists, copy = bank.lists(mask, keys)
            step.lists.append(lists)
            step.finish.append((bank, copy, foreign))
    return out


class Lists:
    """``_Calls``'s shape for the banks' runs: one list triple per bank."""
    __slots__ = ("lists", "plain")

    def __init__(self, lists):
        # banks hold native-format state only (``FlatGroup``): no 8-bit scale lists
        self.lists, self.plain = [(ps, states, steps, None) for ps, states, steps in lists], True


def finish(step, write_back):
    for bank, copy, foreign in step.finish:
        bank.finish(copy)
        if write_back:
            for i, g in foreign:
                g.copy_(bank.gviews[i])


def live_grads(opt, group, plan_params):
    """The grads a step of ``group`` updates with, in the group's order (the clipping
    norm: the same per-tensor norms as ``flat=False``)."""
    fg = flat_group(opt, group)
    if fg is None:
        return [p.grad for p in plan_params]
    rest = {id(p) for p in plan_params}
    out = []
    for p, where in zip(group["params"], fg.where):
        if where is None:
            if id(p) in rest:
                out.append(p.grad)
            continue
        bank, i = where
        g = p.grad
        if g is None or (g is bank.gviews[i] and not bank.touched[i]):
            continue
        out.append(g)
    return out
