"""The Numba backend's address tables: ``_host.pack``'s int64 table (one row per tensor:
the data pointers of param, grad, each state tensor, the address of its 0-dim float64
step, and in the 8-bit format those of the states' scales) and element offsets, cached
across steps by the rule of ``address_table``."""

from ..address_table import TableCache
from ._host import pack


def _build(params, grads, columns, steps, n_states, state_dtype):
    scales = columns[n_states:] if len(columns) > n_states else None
    return pack(params, grads, columns[:n_states], steps, scales, state_dtype)


def _regrad(table, grad_ptrs):
    table[0][:, 1] = grad_ptrs      # the grad column


_CACHE = TableCache(_build, _regrad)


def table(params, grads, states, steps, scales=None, state_dtype=None):
    """(address table, offsets) for ``params`` (non-empty, one dtype), ``grads``, the state
    lists ``states`` (None: a column of zeros; of ``state_dtype``, None for the params'),
    ``steps`` and, in the 8-bit format, the states' ``scales`` lists (None where a state
    is off); ValueError (``pack``) for a tensor the kernels cannot take, or for a missing
    scale list."""
    if scales is not None:
        if len(scales) != len(states) or any(
                st is not None and sc is None for st, sc in zip(states, scales)):
            raise ValueError("numba backend: state_format='8bit' needs one scale list per "
                             "state list that is on")
    columns = list(states) + ([] if scales is None else
                              [s if st is not None else None for s, st in zip(scales, states)])
    return _CACHE.lookup(params, grads, columns, steps, n_states=len(states),
                         state_dtype=state_dtype)
