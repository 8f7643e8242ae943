"""The host side of a kernel call: storage markers, the address table's packing and checks
(``pack``), the hyperparameter buffer, the schedule/position/AMP arguments, and the thread
pool's set-up (one OpenMP pool: torch's)."""

import os

import numba
import numpy as np
import torch

from ..state_format import BLOCK_SIZE, FORMATS, n_blocks
from ._state import FORMAT_MARKERS
from ._walk import chunk_size


# ------------------------------------------------------------------ Python-side packing

_MARKERS = {
    torch.float32: np.float32(0),
    torch.float64: np.float64(0),
    torch.float16: np.uint16(0),
    torch.bfloat16: np.int16(0),
}

_threads_set = None

# Threads (torch 2.14 with its bundled libgomp, numba 0.68, omp layer; the observations
# behind these points are in bench/results/numba_decisions.md):
#
# * There is ONE OpenMP pool, torch's. numba's omppool.so is linked against the system
#   libgomp.so.1.0.0, which does get loaded, but torch loads its bundled libgomp.so.1 into
#   the global symbol scope first (``import torch`` above), so omppool's GOMP_parallel,
#   omp_get_thread_num, omp_set_num_threads, ... bind to torch's runtime (LD_DEBUG=bindings;
#   only omp_get_supported_active_levels, missing in torch's copy, binds to the system one).
#   Numba's parallel kernels run on torch's worker threads; numba.set_num_threads sets
#   torch's OpenMP ICV (hence n = torch.get_num_threads() below).
# * So setting GOMP_SPINCOUNT / OMP_WAIT_POLICY "for numba's libgomp only" (while its pool
#   starts) changes nothing: torch's workers keep spinning after a parallel step (torch's
#   own GOMP_SPINCOUNT default), as after a torch op. Only a process-wide
#   OMP_WAIT_POLICY=PASSIVE / GOMP_SPINCOUNT=0 (the user's choice, set before
#   ``import torch``) stops the spin.
# * Steps <= SERIAL_MAX never launch the pool. ``workqueue`` costs an order of magnitude
#   more per launch than omp; ``tbb`` is pip-installable but not a dependency; omp stays
#   first.


def setup_threads():
    """Numba's pool follows ``torch.get_num_threads()``. The threading layer defaults to
    OpenMP first (unless NUMBA_THREADING_LAYER chooses), then TBB, then workqueue; numba
    fixes the layer at the first parallel launch of the process. Returns the thread
    count."""
    global _threads_set
    if _threads_set is None and "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if n != _threads_set:
        numba.set_num_threads(n)
        _threads_set = n
    return n


def hyper_buffer(signature, hyper):
    """float64[len(signature.values)]: the numeric hyperparameters of ``hyper`` (floats or
    one-element CPU tensors) in the declaration's order (``ops.Signature.pack``), which the
    kernels read at their ``HP_*`` slots."""
    return np.array([float(v) for v in signature.pack(hyper)], dtype=np.float64)


def marker_of(params):
    dtype = params[0].dtype
    try:
        return _MARKERS[dtype]
    except KeyError:
        raise TypeError(f"numba backend: unsupported dtype {dtype}") from None


_PLAIN = (torch.Tensor, torch.nn.Parameter)   # a wrapper subclass's data_ptr() is 0


def pack(params, grads, states, steps, scales=None, state_dtype=None):
    """(address table int64[n, columns], offsets int64[n + 1]).

    Columns: params, grads, each list of ``states`` (None -> address 0), ``steps``, then,
    when ``scales`` is given (the 8-bit format), each state's scale list in the same order
    (None -> 0). Checks what the raw-pointer kernel relies on: plain contiguous CPU
    tensors; grads of the params' dtype and size, states of ``state_dtype`` (None: the
    params') and size, scales float32 of ``state_format.n_blocks(numel)`` elements.
    ValueError naming the tensor otherwise.
    """
    n = len(params)
    dtype = params[0].dtype
    columns = [(grads, dtype, False)] + [(lst, state_dtype or dtype, False) for lst in states]
    after = [] if scales is None else [(lst, torch.float32, True) for lst in scales]
    rows = []
    offsets = np.zeros(n + 1, dtype=np.int64)
    total = 0
    for i in range(n):
        p = params[i]
        numel = p.numel()
        _check(p, i, dtype, numel)
        row = [p.data_ptr()]
        for k, column in enumerate(columns + [None] + after):
            if k == len(columns):
                s = steps[i]
                if s.device.type != "cpu" or s.dtype != torch.float64 or s.numel() != 1:
                    raise ValueError(f"numba backend: steps[{i}] must be a CPU float64 "
                                     "scalar tensor")
                row.append(s.data_ptr())
            elif column[0] is None:
                row.append(0)
            else:
                lst, want, scale = column
                t = lst[i]
                _check(t, i, want, n_blocks(numel) if scale else numel)
                row.append(t.data_ptr())
        rows.append(row)
        total += numel
        offsets[i + 1] = total
    table = np.array(rows, dtype=np.int64).reshape(n, len(columns) + 2 + len(after))
    return table, offsets


def _check(t, i, dtype, numel):
    if (type(t) not in _PLAIN or t.device.type != "cpu" or t.dtype != dtype
            or t.numel() != numel or not t.is_contiguous() or (numel and not t.data_ptr())):
        raise ValueError(
            "numba backend: every tensor must be a plain (not a subclass), contiguous CPU "
            f"tensor of the expected dtype and size (tensor {i}: {t.device}, {t.dtype}, "
            f"{tuple(t.shape)}, expected {dtype} numel {numel})")


_STATE_DTYPES = {"native": None, "bfloat16": torch.bfloat16, "8bit": torch.uint8}


def format_args(algorithm, state_format, scales, params):
    """(format marker, walk granule, state dtype or None for the params') of a call in
    ``state_format`` (``kernels/state_format.py``). ValueError for an unknown format or
    "8bit" without ``scales``; TypeError for float64 params in another format than
    "native" (the formats' loads and stores are float32)."""
    if state_format not in FORMATS:
        raise ValueError(f"numba {algorithm}_step: state_format={state_format!r}; expected "
                         f"one of {FORMATS}")
    if state_format != "native" and params[0].dtype == torch.float64:
        raise TypeError(f"numba {algorithm}_step: state_format={state_format!r} takes "
                        "float32, float16 or bfloat16 params, not float64")
    if state_format == "8bit" and scales is None:
        raise ValueError(f"numba {algorithm}_step: state_format='8bit' needs scales")
    return (FORMAT_MARKERS[state_format], BLOCK_SIZE if state_format == "8bit" else 1,
            _STATE_DTYPES[state_format])


# The checks that run on every step read ``is_cpu``, a flag, not ``device.type``, which
# builds a torch.device object at each read (several times the cost of the flag).

def check_counter(t, name):
    if not t.is_cpu or t.dtype != torch.float64 or t.numel() != 1 or not t.is_contiguous():
        raise ValueError(f"numba backend: {name} must be a contiguous CPU float64 tensor")


def program_args(schedule, position):
    """(program address, n_nodes, position address) for the kernel."""
    check_counter(position, "position")
    if (not schedule.is_cpu or schedule.dtype != torch.float64 or schedule.dim() != 2
            or not schedule.is_contiguous()):
        raise ValueError("numba backend: schedule must be a contiguous CPU float64 (n, NODE_SIZE) table")
    return schedule.data_ptr(), schedule.shape[0], position.data_ptr()


def amp_args(grad_scale, found_inf):
    """(has_grad_scale, grad_scale, found_inf) as plain values (CPU: no sync to avoid)."""
    gs = 1.0 if grad_scale is None else float(grad_scale)
    skip = False if found_inf is None else float(found_inf) != 0.0
    return grad_scale is not None, gs, skip


# Pool or calling thread, measured. Above serial_max the pool is the rule, but it only pays
# while its threads get cores: when other processes hold them (data-loader workers, a
# second job), waking the pool waits on the OS scheduler, and a step that takes 0.1 ms in
# one thread can take several on the pool (bench/results/cpu_sweep/pool_choice.md). Both
# paths give the same bits (the chunking changes no element's arithmetic), so the choice
# may follow the clock. Per address table (its offsets array, which the table cache keeps
# with it: one per optimizer, algorithm and state format, whose costs differ; keyed with
# its elements and tensors, so an id reused after a table is freed keys the same shape), the
# launch's wall time on the path that runs is a moving average; the other path is tried in
# probes of PROBE_CALLS consecutive calls, whose mean but for the first replaces its
# estimate (the machine's state now, not an average over load that has gone). The first
# call on a path after the other ran is not counted on either path: on the pool it wakes
# threads that slept while the calling thread ran. The faster estimate runs. Probes start
# PROBE_EVERY calls after the faster path changed, then come at doubling intervals up to
# PROBE_MAX: a probe on the slower path costs little. The first call of a table is not
# counted (it may compile, or start the threads).
PROBE_EVERY = 32
PROBE_MAX = 1024
PROBE_CALLS = 4
_WEIGHT = 0.25      # of a new time in the running path's moving average
_CHOICES_MAX = 256


class _Choice:
    __slots__ = ("ns", "calls", "best", "interval", "next_probe", "probe_left", "probe_ns",
                 "last")

    def __init__(self):
        self.ns = [None, None]      # wall time of [serial, pool] launches, ns
        self.calls = 0
        self.best = 1               # the path with the lower estimate (1: the pool)
        self.interval = PROBE_EVERY
        self.next_probe = PROBE_EVERY
        self.probe_left = 0         # calls left in the current probe
        self.probe_ns = []          # their times
        self.last = 1               # the path of the last timed call


_choices = {}


def use_pool(offsets, serial_max):
    """The chunk size (``chunk_size``) when a step of this table runs on the thread pool
    (then set up here), 0 when it runs serially: steps of at most ``serial_max`` elements
    (the algorithm module's SERIAL_MAX) do, and larger ones where the calling thread has
    been measured faster (``timed``), but for the probes of the pool."""
    total = int(offsets[-1])
    if total <= serial_max:
        return 0
    choice = _choices.get((id(offsets), total, len(offsets)))
    pool = True
    if choice is not None:
        choice.calls += 1
        if not choice.probe_left:
            serial_ns, pool_ns = choice.ns
            best = int(serial_ns is None or (pool_ns is not None and pool_ns <= serial_ns))
            if best != choice.best:         # the faster path changed: look again soon
                choice.best, choice.interval = best, PROBE_EVERY
                choice.next_probe = choice.calls + PROBE_EVERY
            if choice.calls >= choice.next_probe:
                choice.probe_left = PROBE_CALLS
                choice.probe_ns.clear()     # (a probe cut short by a skipped step)
                choice.interval = min(2 * choice.interval, PROBE_MAX)
                choice.next_probe = choice.calls + choice.interval
        pool = bool(choice.best) != bool(choice.probe_left)
        if choice.probe_left:
            choice.probe_left -= 1
    return chunk_size(total, setup_threads()) if pool else 0


def timed(offsets, serial_max, chunk, ns):
    """Record a launch's wall time ``ns`` on the path ``use_pool`` chose (``chunk``)."""
    total = int(offsets[-1])
    if total <= serial_max:
        return
    key = (id(offsets), total, len(offsets))
    choice = _choices.get(key)
    if choice is None:
        if len(_choices) >= _CHOICES_MAX:
            _choices.pop(next(iter(_choices)))
        _choices[key] = _Choice()
        return
    path = 1 if chunk else 0
    switched, choice.last = path != choice.last, path
    if path != choice.best:         # a probe's call
        choice.probe_ns.append(ns)
        if len(choice.probe_ns) == PROBE_CALLS:
            warm = choice.probe_ns[1:]
            choice.ns[path] = sum(warm) / len(warm)
            choice.probe_ns.clear()
    elif not switched:              # (the first call back from a probe wakes its path too)
        old = choice.ns[path]
        choice.ns[path] = ns if old is None else old + _WEIGHT * (ns - old)


def empty_step(schedule, position, advance_position):
    """A step without tensors: only the position moves."""
    program_args(schedule, position)
    if advance_position:
        position.add_(1.0)
