"""The address tables the Numba kernels read, cached across steps (host cost).

A kernel call reads an int64 table (one row per tensor: the data pointers of param, grad,
each state tensor, and the address of its 0-dim float64 step) and the element offsets
(``_common.pack``). Building it is a Python pass over every tensor; ``table`` keeps the
table of the last call with the same tensors and reuses it while it is valid, which it
checks at every call, without holding any tensor (a cache that held them would keep the
state of a deleted optimizer alive):

* every column's data pointers are those of the tensors of this call (read now: live
  tensors); ``p.data = ...`` and ``state.data = ...`` move them;
* the parameters' sizes and contiguity are unchanged, and the state tensors and steps are
  the same objects (``id``: a replaced state tensor is another object; the optimizer
  checks a new state tensor's shape and dtype against its parameter before it reaches
  here);
* a gradient is a new object at most steps (``zero_grad(set_to_none=True)``): a moved
  gradient only patches its column, after its dtype, size and contiguity are checked.

Anything else rebuilds the table, with ``pack``'s full checks. Entries are keyed by the
first parameter and dropped when it is freed.
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
_PLAIN = {torch.Tensor, torch.nn.Parameter}


class _Entry:
    __slots__ = ("ptrs", "ids", "grad_ptrs", "numels", "dtype", "table", "offsets")

    def __init__(self, params, grads, states, steps):
        self.table, self.offsets = pack(params, [grads] + states, steps)
        # per column but the grads': data pointers (None: a list that is off)
        self.ptrs = [list(map(_data_ptr, c)) if c is not None else None
                     for c in [params] + states + [steps]]
        self.ids = [list(map(id, c)) if c is not None else None for c in states + [steps]]
        self.grad_ptrs = self.table[:, 1].tolist()
        self.numels = list(map(_numel, params))
        self.dtype = {params[0].dtype}

    def serves(self, params, states, steps):
        if len(params) != len(self.numels) or len(states) + 2 != len(self.ptrs):
            return False
        for col, ptrs in zip([params] + states + [steps], self.ptrs):
            if (col is None) != (ptrs is None) or (
                    col is not None and list(map(_data_ptr, col)) != ptrs):
                return False
        for col, ids in zip(states + [steps], self.ids):
            if col is not None and list(map(id, col)) != ids:
                return False
        return list(map(_numel, params)) == self.numels and all(map(_is_contiguous, params))


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
                            or not set(map(type, grads)) <= _PLAIN
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
