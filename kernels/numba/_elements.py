"""Element access in the math type: ``load``/``store`` convert from and to the storage type
(the *marker*'s; a state handle of another format, ``_state``, loads and stores its own
way), ``ct`` casts a scalar to the math type, ``grad_at`` reads an unscaled,
signed, decayed gradient, ``view`` is an array over an address."""

import numpy as np
from numba import carray, njit, types
from numba.extending import overload

from ._half import bf16_to_float, float_to_bf16, float_to_half, half_to_float
from ._llvm import JIT, address_as_pointer, fma


# --------------------------------------------------------------- generic load / store

def load(a, i):
    """Element ``i`` of storage array ``a`` in its math type."""


def store(a, i, x):
    """Round math value ``x`` to the storage type of ``a`` and write it at ``i``."""


def ct(x, marker):
    """``x`` cast to the math type of storage ``marker`` (float64 for float64, else float32)."""


def _state_access(h, name):
    """The load or store of a state handle of a non-native format (``_state``; imported
    here at typing time: ``_state`` builds on this module)."""
    from . import _state
    if not _state.is_handle(h):
        return None
    fn = getattr(_state, name)
    if name == "state_load":
        return lambda a, i: fn(a, i)
    return lambda a, i, x: fn(a, i, x)


@overload(load)
def _ol_load(a, i):
    if not isinstance(a, types.Array):
        return _state_access(a, "state_load")
    dt = a.dtype
    if dt in (types.float32, types.float64):
        return lambda a, i: a[np.uint64(i)]
    if dt == types.uint16:
        return lambda a, i: half_to_float(a[np.uint64(i)])
    if dt == types.int16:
        return lambda a, i: bf16_to_float(a[np.uint64(i)])


@overload(store)
def _ol_store(a, i, x):
    if not isinstance(a, types.Array):
        return _state_access(a, "state_store")
    dt = a.dtype
    if dt == types.float32:
        def impl(a, i, x):
            a[np.uint64(i)] = np.float32(x)
    elif dt == types.float64:
        def impl(a, i, x):
            a[np.uint64(i)] = np.float64(x)
    elif dt == types.uint16:
        def impl(a, i, x):
            a[np.uint64(i)] = float_to_half(np.float32(x))
    elif dt == types.int16:
        def impl(a, i, x):
            a[np.uint64(i)] = float_to_bf16(np.float32(x))
    else:
        return None
    return impl


@overload(ct)
def _ol_ct(x, marker):
    if marker == types.float64:
        return lambda x, marker: np.float64(x)
    return lambda x, marker: np.float32(x)


def grad_at(g, p, j, gs, has_gs, sign, wd, coupled):
    """(gradient as the update uses it, parameter) at element ``j``: unscaled (``has_gs``),
    negated (``sign``), plus the coupled weight decay ``p * wd`` (``coupled``), as the
    reference orders them. The flags only select values, so that the loops using it
    vectorise. An ``@overload`` (LLVM inlines it): as ``njit(inline="always")`` the call
    stayed a call in SGD's loops ('call instruction cannot be vectorized', checked)."""


@overload(grad_at)
def _ol_grad_at(g, p, j, gs, has_gs, sign, wd, coupled):
    def impl(g, p, j, gs, has_gs, sign, wd, coupled):
        gj = load(g, j)
        gq = gj / gs
        if has_gs:
            gj = gq
        gj = gj * sign
        pj = load(p, j)
        gc = fma(pj, wd, gj)
        if coupled:
            gj = gc
        return gj, pj
    return impl


@njit(**JIT)
def view(address, n, marker):
    """The storage array of ``n`` elements at ``address``."""
    return carray(address_as_pointer(address, marker), n)
