"""The optimizer layer's per-group address tables for the Numba kernels (host cost).

``fusedsched.optim`` keeps one ``GroupTable`` per parameter group (single dtype, real,
contiguous tensors): the int64 address table and offsets the kernel reads, built once, so
that a ``step()`` costs one pass over the gradients instead of packing every tensor again.

Per step, ``matches`` re-checks, cheaply and without allocating tensors: the same group,
``optimizer.state`` object (``load_state_dict`` replaces it, and with it every state
tensor and step counter), per-parameter state dict and parameters (by identity), the
parameters' data pointers (``p.data = ...`` moves them) and the gradients' data pointers
and contiguity (``zero_grad(set_to_none=True)`` reallocates them: a moved gradient only
updates its table entry). Anything else rebuilds the table. Not detected: a state tensor
replaced by hand inside ``optimizer.state[p]`` (use ``load_state_dict``).
"""

import operator

import numpy as np
import torch

from . import adam, rmsprop, sgd
from ._common import marker_of, pack

_MODULES = {"adam": adam, "rmsprop": rmsprop, "sgd": sgd}
_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_grad = operator.attrgetter("grad")


class GroupTable:
    def __init__(self, algorithm, group, state, params, keys):
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
        self.param_ptrs = self.table[:, 0].copy()
        self.marker = marker_of(self.params)
        self.extra = {}
        if algorithm == "sgd":
            self.extra["has_buf"] = keys[0] is not None
        elif algorithm == "rmsprop":
            self.extra["has_buf"] = keys[2] is not None

    def matches(self, group, state, params, keys):
        """True when the table serves this step (gradient moves are patched in)."""
        if (group is not self.group or state is not self.state or len(params) != len(self.params)
                or keys != self.keys or not all(map(operator.is_, params, self.params))
                or not all(map(operator.is_, map(state.get, params), self.states))):
            return False
        n = len(params)
        if not np.array_equal(np.fromiter(map(_data_ptr, params), np.int64, n), self.param_ptrs):
            return False
        grads = list(map(_grad, params))
        if not all(map(_is_contiguous, grads)):
            return False
        ptrs = np.fromiter(map(_data_ptr, grads), np.int64, n)
        self.table[:, 1] = ptrs        # dtype, shape and device are checked by the caller
        return True

    def launch(self, kernel_args, **kw):
        self.module.launch(self.table, self.offsets, self.marker, **kernel_args, **self.extra,
                           **kw)
