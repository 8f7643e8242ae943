"""The optimizer layer's per-group address tables for the Numba kernels (host cost).

``fusedsched.optim`` keeps one ``GroupTable`` per parameter group (single dtype, real,
contiguous tensors): the int64 address table and offsets the kernel reads, built once, so
that a ``step()`` costs one pass over the gradients instead of packing every tensor again.

Per step, ``matches`` re-checks, cheaply and without allocating tensors or arrays: the same
group, ``optimizer.state`` object (``load_state_dict`` replaces it, and with it every state
tensor and step counter), per-parameter state dict and parameters (by identity), the
parameters' data pointers (``p.data = ...`` moves them) and the gradients' data pointers
and contiguity (``zero_grad(set_to_none=True)`` reallocates them: a moved gradient only
updates its table entry), the parameters' contiguity (``p.data = p.data.t()`` keeps the
pointer and shape), and the values of the per-parameter state dicts by identity
(``opt.state[p].clear()``, ``opt.state[p]["exp_avg"] = ...``). Anything else rebuilds the
table. The table holds references to every state tensor it addresses, so that no edit of
the state can leave the kernel an address of freed memory.
"""

import operator
from itertools import chain

import torch

from . import adam, rmsprop, sgd
from ._common import marker_of, pack

_MODULES = {"adam": adam, "rmsprop": rmsprop, "sgd": sgd}
_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_grad = operator.attrgetter("grad")


class GroupTable:
    def __init__(self, algorithm, group, state, params, keys, count=None):
        """``params``: the group's parameters with a gradient, one real dtype, contiguous,
        state initialised. Raises ValueError (from ``pack``) for anything the kernel
        cannot take."""
        self.module = _MODULES[algorithm]
        self.group, self.state, self.keys = group, state, list(keys)
        self.params = list(params)
        self.states = [state[p] for p in self.params]
        lists = [None if k is None else [s[k] for s in self.states] for k in keys]
        grads = list(map(_grad, self.params))
        self.table, self.offsets = pack(self.params, [grads] + lists,
                                        [s["step"] for s in self.states])
        self.param_ptrs, self.grad_ptrs = self.table[:, 0].tolist(), self.table[:, 1].tolist()
        # every value of the state dicts (the addressed tensors among them: references)
        self.values = list(chain.from_iterable(map(dict.values, self.states)))
        self.checked_at = count      # the optimizer's step count when states were last read
        self.marker = marker_of(self.params)
        self.extra = {}
        if algorithm == "sgd":
            self.extra["has_buf"] = keys[0] is not None
        elif algorithm == "rmsprop":
            self.extra["has_buf"] = keys[2] is not None

    def matches(self, group, state, params, keys, ptrs=None, counts=(None, None)):
        """True when the table serves this step (gradient moves are patched in).

        ``ptrs``: ``(param data pointers, grad data pointers, grads)`` of ``params`` when the
        caller read them while checking (``FusedOptimizer._plan``), else None. ``counts``: (the
        optimizer's count of its last step when no per-parameter state dict was replaced
        since, else None; this step's count): the state dicts' identity is re-read only
        when this table was not checked at that last step. One C-level pass (``map``) per
        attribute, pointer lists compared as lists; numpy only patches moved grads in."""
        if (group is not self.group or state is not self.state or keys != self.keys
                or len(params) != len(self.params)
                or not all(map(operator.is_, params, self.params))
                or (counts[0] is None or counts[0] != self.checked_at) and
                not all(map(operator.is_, map(state.get, params), self.states))):
            return False
        if ptrs is None:
            grads = list(map(_grad, params))
            ptrs = list(map(_data_ptr, params)), list(map(_data_ptr, grads)), grads
        param_ptrs, grad_ptrs, grads = ptrs
        # a new grad may sit at the old one's address yet be strided (p.grad = x.t()):
        # contiguity is read every step
        if (param_ptrs != self.param_ptrs or not all(map(_is_contiguous, grads))
                or not all(map(_is_contiguous, params))):
            return False
        values = list(chain.from_iterable(map(dict.values, self.states)))
        if len(values) != len(self.values) or not all(map(operator.is_, values, self.values)):
            return False
        if grad_ptrs != self.grad_ptrs:
            self.table[:, 1] = grad_ptrs   # dtype, shape and device are checked by the caller
            self.grad_ptrs = grad_ptrs
        self.checked_at = counts[1]
        return True

    def launch(self, kernel_args, **kw):
        self.module.launch(self.table, self.offsets, self.marker, **kernel_args, **self.extra,
                           **kw)
