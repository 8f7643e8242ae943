"""The address tables of the compiled backends, cached across steps by one rule.

A Numba or Triton kernel call reads a *table*: per tensor, the data pointers of param,
grad, each state tensor and the address of its 0-dim float64 step (the Numba backend
packs it as a numpy array, the Triton one uploads it to the device with its block table).
Building one is a Python pass over every tensor; ``TableCache.lookup`` returns the table
of the last call with the same tensors while it is valid, which it checks at every call,
without holding any tensor (a cache that held them would keep the state of a deleted
optimizer alive):

* every column's data pointers are those of the tensors of this call (read now: live
  tensors); ``p.data = ...`` and ``state.data = ...`` move them;
* the parameters' sizes and contiguity are unchanged, and the state tensors and steps are
  the same objects (``id``: a replaced state tensor is another object; the optimizer
  checks a new state tensor's shape and dtype against its parameter before it reaches
  here);
* a gradient is a new object at most steps (``zero_grad(set_to_none=True)``): moved
  gradients only patch the table's grad column (the backend's ``regrad``), after their
  type, dtype, device, size and contiguity are checked.

Anything else builds the table again, with the backend's full checks (``build`` raises
ValueError for a tensor its kernels cannot take). Entries are keyed by the first
parameter and dropped when it is freed.
"""

import operator
import weakref

import torch

_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_numel = torch.Tensor.numel
_get_device = torch.Tensor.get_device
_dtype = operator.attrgetter("dtype")
_PLAIN = {torch.Tensor, torch.nn.Parameter}   # a wrapper subclass's data_ptr() is 0
_PER_KEY = 4


class _Entry:
    __slots__ = ("ptrs", "ids", "grad_ptrs", "numels", "dtype", "device", "table", "checks")

    def __init__(self, params, grads, states, steps, table):
        self.table = table
        # per column but the grads': data pointers (None: a list that is off)
        self.ptrs = [list(map(_data_ptr, c)) if c is not None else None
                     for c in [params] + states + [steps]]
        self.ids = [list(map(id, c)) if c is not None else None for c in states + [steps]]
        self.grad_ptrs = list(map(_data_ptr, grads))
        self.numels = list(map(_numel, params))
        self.dtype = {params[0].dtype}
        self.device = {params[0].get_device()}

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

    def takes(self, grads):
        """Gradients at new addresses that may replace the table's: plain, contiguous,
        of the parameters' dtype, device and sizes."""
        return (set(map(type, grads)) <= _PLAIN and set(map(_dtype, grads)) == self.dtype
                and set(map(_get_device, grads)) == self.device
                and list(map(_numel, grads)) == self.numels)


class TableCache:
    """One backend's tables. ``build(params, grads, states, steps)`` makes a table (and
    raises ValueError for tensors its kernels cannot take); ``regrad(table, grad_ptrs)``
    writes new gradient addresses into it."""

    def __init__(self, build, regrad):
        self._build, self._regrad = build, regrad
        # id(params[0]) -> (weak reference to params[0], [_Entry, ...] most recent last).
        # Not a WeakKeyDictionary: its look-up compares keys with ``==``, elementwise for
        # tensors.
        self._entries = {}

    def lookup(self, params, grads, states, steps, **checks):
        """The table for ``params`` (non-empty, one dtype and device), ``grads``, the state
        lists ``states`` (None: a list that is off) and ``steps``; ``checks`` go to
        ``build`` (what the tensors must be) and must equal those of a cached table (a
        table checked for one state dtype serves no other)."""
        first = params[0]
        key = id(first)
        found = self._entries.get(key)
        entries = found[1] if found is not None and found[0]() is first else None
        if entries is not None:
            for entry in reversed(entries):
                if entry.checks == checks and entry.serves(params, states, steps):
                    if not all(map(_is_contiguous, grads)):
                        break
                    grad_ptrs = list(map(_data_ptr, grads))
                    if grad_ptrs != entry.grad_ptrs:
                        if not entry.takes(grads):
                            break
                        self._regrad(entry.table, grad_ptrs)
                        entry.grad_ptrs = grad_ptrs
                    return entry.table
        entry = _Entry(params, grads, states, steps,
                       self._build(params, grads, states, steps, **checks))
        entry.checks = checks
        if entries is None:
            entries = []
            self._entries[key] = (weakref.ref(first, lambda _, key=key: self._forget(key)),
                                  entries)
        entries[:] = entries[-(_PER_KEY - 1):] + [entry]
        return entry.table

    def _forget(self, key):
        found = self._entries.get(key)
        if found is not None and found[0]() is None:
            del self._entries[key]

    def clear(self):
        self._entries.clear()
