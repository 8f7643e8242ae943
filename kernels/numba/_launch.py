"""The Numba backend's address tables: ``_host.pack``'s int64 table (one row per tensor:
the data pointers of param, grad, each state tensor, and the address of its 0-dim float64
step) and element offsets, cached across steps by the rule of ``address_table``."""

from ..address_table import TableCache
from ._host import pack


def _build(params, grads, states, steps):
    return pack(params, [grads] + states, steps)


def _regrad(table, grad_ptrs):
    table[0][:, 1] = grad_ptrs      # the grad column


_CACHE = TableCache(_build, _regrad)


def table(params, grads, states, steps):
    """(address table, offsets) for ``params`` (non-empty, one dtype), ``grads``, the state
    lists ``states`` (None: a column of zeros) and ``steps``; ValueError (``pack``) for a
    tensor the kernels cannot take."""
    return _CACHE.lookup(params, grads, states, steps)
