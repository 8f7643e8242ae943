"""The memory roof of an optimizer step on a CPU, for ``fusedsched bench``.

A Numba parallel kernel with exactly an optimizer's reads and writes and no math: it reads
every column of the address table (param, grad, then each state tensor) and writes every
column but the grad, element by element, over the same tensor list, walked in the same way
as the fused kernels (equal chunks of at most about ``CHUNK`` elements over the
concatenation of all tensors, as many as a multiple of the thread count, ``prange`` over the
chunks; in the calling thread up to ``SERIAL_MAX`` elements: ``kernels/numba/_common``'s
``use_pool``). The value written is the bitwise XOR of the values read, on
integer views of the storage (one integer op per element: no float work, no denormal or NaN
slow path, nothing dead for the compiler to remove).

Columns -> bytes per element for 4-byte storage: 2 (SGD: read p, g; write p) 12 B;
3 (SGD momentum, RMSprop: + one state) 20 B; 4 (Adam, centered RMSprop) 28 B;
5 (Adam amsgrad) 36 B. 2-byte storage halves these, 8-byte doubles them.

Imported lazily (numba is heavy); compiled with ``cache=True``.
"""

import numpy as np
from numba import carray, njit, prange, types
from numba.extending import intrinsic

from fusedsched.kernels.numba._common import CHUNK, SERIAL_MAX, use_pool


_MARKERS = {1: np.int8(0), 2: np.int16(0), 4: np.int32(0), 8: np.int64(0)}


@intrinsic
def _pointer(typingctx, address, marker):
    if not isinstance(address, types.Integer) or not isinstance(marker, types.Integer):
        return None
    ptrty = types.CPointer(marker)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptrty))

    return ptrty(address, marker), codegen


@njit(inline="always")
def _view(address, n, marker):
    return carray(_pointer(address, marker), n)


@njit(inline="always")
def _rw2(p, g):
    for j in range(p.shape[0]):
        p[j] = p[j] ^ g[j]


@njit(inline="always")
def _rw3(p, g, s):
    for j in range(p.shape[0]):
        x = p[j] ^ g[j] ^ s[j]
        p[j] = x
        s[j] = x


@njit(inline="always")
def _rw4(p, g, s, t):
    for j in range(p.shape[0]):
        x = p[j] ^ g[j] ^ s[j] ^ t[j]
        p[j] = x
        s[j] = x
        t[j] = x


@njit(inline="always")
def _rw5(p, g, s, t, u):
    for j in range(p.shape[0]):
        x = p[j] ^ g[j] ^ s[j] ^ t[j] ^ u[j]
        p[j] = x
        s[j] = x
        t[j] = x
        u[j] = x


@njit(cache=True)
def _roof_chunk(ptrs, offsets, marker, c, chunk):
    n = ptrs.shape[0]
    cols = ptrs.shape[1]
    total = offsets[n]
    if True:
        lo = c * chunk
        hi = min(lo + chunk, total)
        i = np.searchsorted(offsets, lo, side="right") - 1
        while i < n and offsets[i] < hi:
            start = offsets[i]
            size = offsets[i + 1] - start
            a = max(lo, start) - start
            b = min(hi, offsets[i + 1]) - start
            if b > a:
                p = _view(ptrs[i, 0], size, marker)[a:b]
                g = _view(ptrs[i, 1], size, marker)[a:b]
                if cols == 2:
                    _rw2(p, g)
                elif cols == 3:
                    _rw3(p, g, _view(ptrs[i, 2], size, marker)[a:b])
                elif cols == 4:
                    _rw4(p, g, _view(ptrs[i, 2], size, marker)[a:b],
                         _view(ptrs[i, 3], size, marker)[a:b])
                else:
                    _rw5(p, g, _view(ptrs[i, 2], size, marker)[a:b],
                         _view(ptrs[i, 3], size, marker)[a:b],
                         _view(ptrs[i, 4], size, marker)[a:b])
            i += 1


@njit(cache=True, parallel=True)
def _roof_parallel(ptrs, offsets, marker, chunk):
    total = offsets[ptrs.shape[0]]
    for c in prange((total + chunk - 1) // chunk):
        _roof_chunk(ptrs, offsets, marker, c, chunk)


@njit(cache=True)
def _roof_serial(ptrs, offsets, marker, chunk):
    total = offsets[ptrs.shape[0]]
    for c in range((total + chunk - 1) // chunk):
        _roof_chunk(ptrs, offsets, marker, c, chunk)


class Roof:
    """The roof of one workload: its own tensors (``columns`` per shape, ``dtype``), packed
    once; ``step()`` is one kernel call that moves ``bytes_per_step`` bytes."""

    def __init__(self, shapes, dtype, columns):
        import torch

        if not 2 <= columns <= 5:
            raise ValueError(f"columns must be in 2..5, got {columns}")
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.marker = _MARKERS[itemsize]
        self.tensors = [[torch.ones(shape, dtype=dtype) for _ in range(columns)]
                        for shape in shapes]
        numels = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
        self.offsets = np.concatenate([[0], np.cumsum(numels)]).astype(np.int64)
        self.ptrs = np.array([[t.data_ptr() for t in row] for row in self.tensors],
                             dtype=np.int64).reshape(len(shapes), columns)
        self.bytes_per_step = int(self.offsets[-1]) * itemsize * (2 * columns - 1)

    def step(self):
        # the fused kernels' threading rule and chunks (use_pool: steps of at most
        # SERIAL_MAX elements run in the calling thread, in one walk of CHUNK-element
        # pieces here)
        chunk = use_pool(self.offsets, SERIAL_MAX)
        if chunk:
            _roof_parallel(self.ptrs, self.offsets, self.marker, chunk)
        else:
            _roof_serial(self.ptrs, self.offsets, self.marker, CHUNK)
