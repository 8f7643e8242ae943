"""The walk every kernel shares: a step's tensors cut into chunks (serial up to
``SERIAL_MAX`` elements, else equal chunks on the thread pool), the per-tensor callback
(``make_walk``), and the counters (``position_at``, ``read_steps``, ``finish``)."""

import numpy as np
from numba import njit, prange

from ._llvm import JIT, f64_at
from ._sqrt import tmp


# Elements per parallel work item, at most. Chunks run over the concatenation of all tensors
# of the call, so a list of many small tensors packs into few chunks. A parallel step cuts
# the concatenation into equal chunks, as many as a multiple of the thread count
# (``chunk_size``): the pool's static schedule then gives every thread the same number of
# elements. With fixed CHUNK-element chunks a step of 1e5 elements on 2 threads split
# 65536 / 34464 and took the time of the larger share.
CHUNK = 1 << 16
# Chunk sizes are multiples of this many elements (a cache line and more of any storage
# dtype): two threads never write one line, and each chunk's loop starts on a vector.
ALIGN = 64


# Steps of at most this many elements (all tensors of the call) run serially in the calling
# thread and never touch the thread pool, where waking it costs about what a second thread
# saves. Above it the pool pays: a cache-resident step is bound by the arithmetic (Adam: a
# square root and two divisions per element, on the divider), which a second thread
# halves, and from about 1e5 fp32 Adam elements the step's arrays outgrow one core's L2
# while each thread's share fits its own. The threshold is where the two cross in the size
# sweep (serial against the pool with equal chunks, Adam, SGD momentum, RMSprop:
# bench/results/cpu_sweep). Above it the pool is the rule where it is measured faster
# (``_host.use_pool``: on cores that other processes hold, it is not).
SERIAL_MAX = 1 << 15
PJIT = dict(cache=True, error_model="numpy", parallel=True)


@njit(**JIT)
def n_chunks(offsets, chunk):
    return (offsets[offsets.shape[0] - 1] + chunk - 1) // chunk


def chunk_size(total, threads):
    """The chunk of a parallel step of ``total`` elements on ``threads`` threads: at most
    about CHUNK elements, a multiple of ALIGN, all chunks of one size but the last (at most
    ALIGN - 1 elements per chunk shorter), and as many (``n_chunks``) as a multiple of
    ``threads`` while a chunk holds more ALIGN-element lines than there are chunks
    (steps up to about CHUNK * CHUNK / ALIGN elements); beyond, the rounding to ALIGN may
    leave a thread one chunk of a thousand fewer."""
    chunks = -(-total // CHUNK)
    chunks += -chunks % threads
    size = -(-total // chunks)
    return size + -size % ALIGN


@njit(**JIT)
def round_up(x, granule):
    """``x`` rounded up to a multiple of ``granule`` (x >= 0)."""
    return (x + granule - 1) // granule * granule


@njit(**JIT)
def first_tensor(offsets, lo):
    """Index of the tensor holding global element ``lo`` (empty tensors are skipped)."""
    return np.searchsorted(offsets, lo, side="right") - 1


# ------------------------------------------------------------------- the shared walk
#
# Each algorithm module supplies only its math: ``_scalars`` (the step's scalars, ``sc``)
# and ``_tensor(ptrs, i, size, a, b, sc, flags, scratch, marker)``, which updates elements
# [a, b) of tensor ``i`` (``size`` elements; ``flags``: the algorithm's runtime flags,
# ``scratch``: a ``tmp`` array private to the calling thread), and makes its walk at import
# with ``make_walk(_tensor)``. Its one entry point reads the position, computes ``sc`` and
# calls the walk.
#
# Why a factory: ``_tensor`` is a closure constant there, so the call to it is a direct call
# (compiled once per algorithm x dtype, as before; the vectorised loops are all inside the
# algorithm's own ``_segment``). Passing ``_tensor`` as an argument instead works for the
# serial walk, but inside a ``prange`` it makes the caller use dynamic globals, and Numba
# then refuses to cache it. The walks are not cached themselves: they are compiled into,
# and cached with, each algorithm's entry point (``cache=True``; checked: a second process
# loads it from the cache).

WALK = dict(error_model="numpy")


def make_walk(tensor):
    """``walk(chunk, ptrs, offsets, sc, flags, marker, granule)`` over every tensor of the table
    with the algorithm's ``tensor`` function (no compilation here: lazy dispatchers)."""

    @njit(parallel=True, **WALK)
    def walk_parallel(ptrs, offsets, sc, flags, marker, chunk, granule):
        """Parallel over ``chunk``-element chunks of the concatenated tensors; a chunk
        updates the pieces of the tensors it overlaps, each piece's ends rounded up to a
        multiple of ``granule`` in its tensor (or its end): adjacent chunks round their
        common end alike, so the pieces still cover every element once."""
        n = ptrs.shape[0]
        total = offsets[n]
        for c in prange(n_chunks(offsets, chunk)):
            scratch = tmp(marker)
            lo = c * chunk
            hi = min(lo + chunk, total)
            i = first_tensor(offsets, lo)
            while i < n and offsets[i] < hi:
                start = offsets[i]
                size = offsets[i + 1] - start
                a = min(round_up(max(lo, start) - start, granule), size)
                b = min(round_up(hi - start, granule), size)
                if b > a:
                    tensor(ptrs, i, size, a, b, sc, flags, scratch, marker)
                i += 1

    @njit(**WALK)
    def walk(chunk, ptrs, offsets, sc, flags, marker, granule):
        """``walk_parallel`` in chunks of ``chunk`` elements if ``chunk`` is not 0 (see
        ``use_pool``), pieces rounded to ``granule`` elements of their tensor (the 8-bit
        format's blocks are never split), else the same in the calling thread, tensor by
        tensor."""
        if chunk > 0:
            walk_parallel(ptrs, offsets, sc, flags, marker, chunk, granule)
        else:
            scratch = tmp(marker)
            for i in range(ptrs.shape[0]):
                start = offsets[i]
                size = offsets[i + 1] - start
                if size > 0:
                    # start - start: int64 like walk_parallel's a (a literal 0 would give
                    # ``tensor`` a second specialisation)
                    tensor(ptrs, i, size, start - start, size, sc, flags, scratch, marker)

    return walk


@njit(**JIT)
def position_at(pos_addr):
    """(the ``position`` array, its value t)."""
    pos = f64_at(pos_addr)
    return pos, pos[0]



@njit(**JIT)
def read_steps(ptrs, column):
    """The per-tensor ``step`` values (float64) read through the address column."""
    n = ptrs.shape[0]
    out = np.empty(n)
    for i in range(n):
        out[i] = f64_at(ptrs[i, column])[0]
    return out


@njit(**JIT)
def finish(ptrs, column, found_inf, pos, t, advance_position):
    """Counters after the update: each ``step`` += 1 unless skipped; ``position`` += 1."""
    if not found_inf:
        for i in range(ptrs.shape[0]):
            s = f64_at(ptrs[i, column])
            s[0] = s[0] + 1.0
    if advance_position:
        pos[0] = t + 1.0
