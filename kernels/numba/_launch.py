"""The address tables the Numba kernels read, cached across steps (host cost).

A kernel call reads an int64 table (one row per tensor: the data pointers of param, grad,
each state tensor, and the address of its 0-dim float64 step) and the element offsets
(``_common.pack``). Building it is a Python pass over every tensor; ``table`` keeps the
table of the last call with the same tensors and reuses it while it is valid:

* the parameters, state tensors and steps are the same objects (the cache holds them, so
  no storage it addresses can be freed and its address reused), and the parameters' data
  pointers and contiguity are unchanged (``p.data = ...`` keeps the object);
* the gradients are new objects at most steps (``zero_grad(set_to_none=True)``): their
  data pointers are read every call and a moved gradient only patches its column; a
  gradient that is not contiguous (``p.grad = x.t()`` at the old address) rebuilds.

Anything else rebuilds the table, with ``pack``'s full checks. Entries are keyed weakly by
the first parameter: an optimizer that is gone leaves nothing behind.
"""

import operator
import weakref

import torch

from ._common import pack

_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_numel = torch.Tensor.numel
_dtype = operator.attrgetter("dtype")
# id(params[0]) -> (weak reference to params[0], [_Entry, ...] most recent last). Not a
# WeakKeyDictionary: its look-up compares keys with ``==``, elementwise for tensors.
_ENTRIES = {}
_PER_KEY = 4


class _Entry:
    __slots__ = ("rest", "states", "steps", "param_ptrs", "grad_ptrs", "numels", "dtype",
                 "table", "offsets")

    def __init__(self, params, grads, states, steps):
        self.table, self.offsets = pack(params, [grads] + states, steps)
        self.rest = params[1:]       # params[0] is the key: not held here
        self.states = [None if s is None else list(s) for s in states]
        self.steps = list(steps)
        self.param_ptrs = self.table[:, 0].tolist()
        self.grad_ptrs = self.table[:, 1].tolist()
        self.numels = list(map(torch.Tensor.numel, params))
        self.dtype = {params[0].dtype}

    def serves(self, params, states, steps):
        if (len(params) != len(self.rest) + 1 or len(states) != len(self.states)
                or not all(map(operator.is_, params[1:], self.rest))
                or not all(map(operator.is_, steps, self.steps))):
            return False
        for have, want in zip(states, self.states):
            if (have is None) != (want is None) or (
                    have is not None and not all(map(operator.is_, have, want))):
                return False
        return (list(map(_data_ptr, params)) == self.param_ptrs
                and all(map(_is_contiguous, params)))


def table(params, grads, states, steps):
    """(address table, offsets) for ``params`` (non-empty, one dtype), ``grads``, the state
    lists ``states`` (None: a column of zeros) and ``steps``; ValueError (``pack``) for a
    tensor the kernels cannot take."""
    first = params[0]
    key = id(first)
    found = _ENTRIES.get(key)
    entries = found[1] if found is not None and found[0]() is first else None
    if entries is not None:
        for entry in reversed(entries):
            if entry.serves(params, states, steps):
                if not all(map(_is_contiguous, grads)):
                    break
                grad_ptrs = list(map(_data_ptr, grads))
                if grad_ptrs != entry.grad_ptrs:
                    if (set(map(_dtype, grads)) != entry.dtype
                            or list(map(_numel, grads)) != entry.numels):
                        break
                    entry.table[:, 1] = grad_ptrs
                    entry.grad_ptrs = grad_ptrs
                return entry.table, entry.offsets
    entry = _Entry(params, grads, states, steps)
    if entries is None:
        entries = []
        _ENTRIES[key] = (weakref.ref(first, lambda _, key=key: _forget(key)), entries)
    entries[:] = entries[-(_PER_KEY - 1):] + [entry]
    return entry.table, entry.offsets


def _forget(key):
    found = _ENTRIES.get(key)
    if found is not None and found[0]() is None:
        del _ENTRIES[key]
