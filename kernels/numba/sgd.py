"""SGD / momentum SGD update, Numba CPU kernel: one parallel compiled call per step for the
whole tensor list (see ``kernels/reference/sgd.py`` for the math, in the same operation
order). The momentum buffer takes the gradient itself on a tensor's first applied update
(``step == 0``).
"""

from time import perf_counter_ns

from numba import njit

from . import _launch as tables
from ._common import (FORMAT_MARKERS, JIT, SERIAL_MAX, amp_args, at_block, block_range,
                      blocking, ct, empty_step, finish, flush, fma, format_args, grad_at,
                      hyper_buffer, load, make_walk, marker_of, position_at, program_args,
                      read_steps, state_at, store, timed, use_pool, view)
from .schedule import evaluate
from ..ops import SIGNATURES
from ..schedule_encoding import NODE_SIZE

# address table columns
_P, _G, _BUF, _STEP = range(4)
# the hyperparameter buffer's slots, from the declaration (Numba freezes these globals)
_SIGNATURE = SIGNATURES["sgd"]
HP_LR, HP_DAMPENING, HP_WEIGHT_DECAY = map(_SIGNATURE.slot, ("lr", "dampening", "weight_decay"))
HP_MOMENTUM = _SIGNATURE.slot(_SIGNATURE.momentum)


@njit(inline="always", **JIT)
def _loop(p, g, buf, lo, hi, neg_lr, momentum, one_m_dampening, wd, sign, gs, first,
          has_buf, has_gs, coupled, nesterov):
    """Elements [lo, hi), one pass. Called with constant ``has_buf`` and ``has_gs`` (inlined:
    four loops, the ones without a buffer never touching it, the ones without a grad
    scale neither dividing nor writing g); no conditional store, the other flags only
    select values, so that the loop vectorises."""
    for j in range(lo, hi):
        gj, pj = grad_at(g, p, j, gs, has_gs, sign, wd, coupled)
        if has_gs:                     # after grad_at, which reads the scaled g
            store(g, j, load(g, j) / gs)
        if has_buf:
            bj = fma(gj, one_m_dampening, load(buf, j) * momentum)
            if first:
                bj = gj
            store(buf, j, bj)
            gn = fma(bj, momentum, gj)
            gj = bj
            if nesterov:
                gj = gn
        store(p, j, fma(gj, neg_lr, pj))


@njit(**JIT)
def _segment(p, g, buf, neg_lr, momentum, one_m_dampening, wd, sign, gs, first, has_buf,
             has_gs, coupled, nesterov):
    """One segment (the arrays are views of it, ``buf`` a state handle: ``_state``) in one
    pass per block of its state format (``blocking``: one block but in the 8-bit format,
    each flushed after its loop), the unscaled gradient written back when ``has_gs``. The
    flags are runtime values (one specialisation per dtype and format keeps the compile
    time low); ``has_buf`` and ``has_gs`` choose between inlined loop copies: as a runtime
    select, ``has_gs`` would cost a division per element even without a grad scale, which
    in a cache-resident SGD step is most of its time. Every loop vectorises (checked in
    the assembly)."""
    n = p.shape[0]
    blocks, size = blocking(buf, n, n)
    for k in range(blocks):
        lo, hi = block_range(k, size, n)
        b = at_block(buf, k, lo)
        if has_buf:
            if has_gs:
                _loop(p, g, b, lo, hi, neg_lr, momentum, one_m_dampening, wd, sign, gs, first,
                      True, True, coupled, nesterov)
            else:
                _loop(p, g, b, lo, hi, neg_lr, momentum, one_m_dampening, wd, sign, gs, first,
                      True, False, coupled, nesterov)
            flush(b, k, lo, hi)
        elif has_gs:
            _loop(p, g, b, lo, hi, neg_lr, momentum, one_m_dampening, wd, sign, gs, first,
                  False, True, coupled, nesterov)
        else:
            _loop(p, g, b, lo, hi, neg_lr, momentum, one_m_dampening, wd, sign, gs, first,
                  False, False, coupled, nesterov)


@njit(**JIT)
def _scalars(ptrs, prog_addr, n_nodes, t, hp, maximize, gs, marker):
    """The step's scalars: the per-tensor steps, then the math-type ones (float32 unless
    the storage is float64)."""
    program = view(prog_addr, n_nodes * NODE_SIZE, 0.0).reshape((n_nodes, NODE_SIZE))
    factor, sched_momentum, has_momentum = evaluate(program, t)
    lr, dampening, weight_decay = hp[HP_LR], hp[HP_DAMPENING], hp[HP_WEIGHT_DECAY]
    mom = sched_momentum if has_momentum != 0.0 else hp[HP_MOMENTUM]
    return (read_steps(ptrs, _STEP), ct(-(lr * factor), marker), ct(mom, marker),
            ct(1.0 - dampening, marker), ct(weight_decay, marker),
            ct(-1.0 if maximize else 1.0, marker), ct(gs, marker), weight_decay != 0.0)


@njit(**JIT)
def _tensor(ptrs, i, size, a, b, sc, flags, scratch, marker):
    """Elements [a, b) of tensor ``i`` (``size`` elements; ``walk``'s callback; the scratch
    holds the 8-bit buffer's new values). Without a buffer the handle is one over address
    0, never read (``launch`` then passes the native format marker: a handle of another
    format reads its scales when made)."""
    steps, neg_lr, mom_c, one_m_d, wd, sign, gs_c, coupled = sc
    nesterov, has_buf, has_gs, fmt = flags
    p = view(ptrs[i, _P], size, marker)[a:b]
    g = view(ptrs[i, _G], size, marker)[a:b]
    buf = state_at(fmt, ptrs, i, _BUF, _STEP, size, a, b, marker, True, scratch[3])
    _segment(p, g, buf, neg_lr, mom_c, one_m_d, wd, sign, gs_c, steps[i] == 0.0, has_buf,
             has_gs, coupled, nesterov)


_walk = make_walk(_tensor)


@njit(**JIT)
def _sgd(ptrs, offsets, prog_addr, n_nodes, pos_addr, hp, nesterov, maximize, has_buf, has_gs,
         gs, found_inf, advance_position, marker, chunk, fmt, granule):
    """The whole step: scalars, the walk over the tensors (on the thread pool in chunks of
    ``chunk`` elements rounded to ``granule`` in each tensor, serially when 0; the buffer
    in the format of marker ``fmt``), the counters."""
    pos, t = position_at(pos_addr)
    if not found_inf:
        sc = _scalars(ptrs, prog_addr, n_nodes, t, hp, maximize, gs, marker)
        _walk(chunk, ptrs, offsets, sc, (nesterov, has_buf, has_gs, fmt), marker, granule)
    finish(ptrs, _STEP, found_inf, pos, t, advance_position)


def launch(table, offsets, marker, hyper, *, schedule, position, grad_scale=None,
           found_inf=None, advance_position=True, has_buf, fmt=FORMAT_MARKERS["native"],
           granule=1):
    """``sgd_step`` on an address table already packed (``pack``; the caller keeps it);
    ``hyper``: the hyperparameters of ``ops.SIGNATURES["sgd"]``; ``fmt``, ``granule``: the
    state format's (``format_args``), the native one's without a buffer."""
    if not has_buf:
        fmt, granule = FORMAT_MARKERS["native"], 1
    prog_addr, n_nodes, pos_addr = program_args(schedule, position)
    has_gs, gs, skip = amp_args(grad_scale, found_inf)
    chunk = use_pool(offsets, SERIAL_MAX)
    start = perf_counter_ns()
    _sgd(table, offsets, prog_addr, n_nodes, pos_addr, hyper_buffer(_SIGNATURE, hyper),
         bool(hyper["nesterov"]), bool(hyper["maximize"]), has_buf, has_gs, gs, skip,
         bool(advance_position), marker, chunk, fmt, granule)
    if not skip:    # (a skipped step walks nothing: no time of either path)
        timed(offsets, SERIAL_MAX, chunk, perf_counter_ns() - start)


def sgd_step(params, grads, momentum_buffers, steps, *, schedule, position, grad_scale=None,
             found_inf=None, advance_position=True, state_format="native", scales=None,
             **hyper):
    """One SGD update of every tensor in ``params`` (see ``fusedsched.kernels``; ``hyper``:
    the hyperparameters of ``ops.SIGNATURES["sgd"]``). ``state_format`` and ``scales``:
    how the momentum buffers are stored, as ``adam.adam_step`` takes them."""
    if not params:
        return empty_step(schedule, position, advance_position)
    fmt, granule, state_dtype = format_args("sgd", state_format, scales, params)
    table, offsets = tables.table(params, grads, [momentum_buffers], steps, scales, state_dtype)
    launch(table, offsets, marker_of(params), hyper, schedule=schedule, position=position,
           grad_scale=grad_scale, found_inf=found_inf, advance_position=advance_position,
           has_buf=momentum_buffers is not None, fmt=fmt, granule=granule)
