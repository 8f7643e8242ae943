"""RMSprop update, Numba CPU kernel: one parallel compiled call per step for the whole
tensor list (see ``kernels/reference/rmsprop.py`` for the math, in the same operation
order). Deliberate deviation from torch, as in the reference: the centered variance
``square_avg - grad_avg**2`` is clamped at 0 before the square root (FastNN#12).
"""

from time import perf_counter_ns

from numba import njit
from numba.extending import overload

from . import _launch as tables
from ._common import (BLOCK, FORMAT_MARKERS, JIT, SERIAL_MAX, amp_args, at_block, block_range,
                      blocking, ct, empty_step, finish, flush, fma, format_args, grad_at,
                      hyper_buffer, lerp, load, make_walk, marker_of, position_at,
                      program_args, sqrt, sqrt_fn, state_at, store, timed, use_pool, view, vsqrt)
from .schedule import evaluate
from ..ops import SIGNATURES
from ..schedule_encoding import NODE_SIZE

# address table columns
_P, _G, _SQ, _GAVG, _BUF, _STEP = range(6)
# the hyperparameter buffer's slots, from the declaration (Numba freezes these globals)
_SIGNATURE = SIGNATURES["rmsprop"]
HP_LR, HP_ALPHA, HP_EPS, HP_WEIGHT_DECAY = map(_SIGNATURE.slot,
                                               ("lr", "alpha", "eps", "weight_decay"))
HP_MOMENTUM = _SIGNATURE.slot(_SIGNATURE.momentum)


def _averages(p, g, sq, gavg, j, one_m_alpha, alpha, one_m_w, small_w, wd, sign, gs, zero,
              has_gs, coupled):
    """Element ``j``: ``square_avg`` written, and (its value, the gradient as the update
    uses it, the parameter) in the math type."""


@overload(_averages)
def _ol_averages(p, g, sq, gavg, j, one_m_alpha, alpha, one_m_w, small_w, wd, sign, gs, zero,
                 has_gs, coupled):
    # An @overload without stores under a flag, as adam._moments (why: see there).
    def impl(p, g, sq, gavg, j, one_m_alpha, alpha, one_m_w, small_w, wd, sign, gs, zero,
             has_gs, coupled):
        gj, pj = grad_at(g, p, j, gs, has_gs, sign, wd, coupled)
        sqj = fma(one_m_alpha * gj, gj, load(sq, j) * alpha)
        store(sq, j, sqj)
        return sqj, gj, pj
    return impl


def _centered(gavg, j, gj, sqj, one_m_alpha, one_m_w, small_w, zero):
    """``grad_avg`` at ``j`` updated and written; returns the variance
    ``square_avg - grad_avg**2`` clamped at 0 (FastNN#12)."""


@overload(_centered)
def _ol_centered(gavg, j, gj, sqj, one_m_alpha, one_m_w, small_w, zero):
    def impl(gavg, j, gj, sqj, one_m_alpha, one_m_w, small_w, zero):
        ga = lerp(load(gavg, j), gj, one_m_alpha, one_m_w, small_w)
        store(gavg, j, ga)
        var = fma(-ga, ga, sqj)
        if var < zero:                 # a select, not a branch
            var = zero
        return var
    return impl


def _update(p, buf, j, avg, gj, pj, neg_lr, momentum, has_buf):
    """The parameter (and momentum buffer) at ``j`` from ``avg = sqrt(...) + eps``."""


@overload(_update, prefer_literal=True)
def _ol_update(p, buf, j, avg, gj, pj, neg_lr, momentum, has_buf):
    # has_buf selects a store: two impls chosen at typing (it is a literal at every call)
    if getattr(has_buf, "literal_value", None) is True:
        def impl(p, buf, j, avg, gj, pj, neg_lr, momentum, has_buf):
            bj = load(buf, j) * momentum + gj / avg
            store(buf, j, bj)
            store(p, j, fma(bj, neg_lr, pj))
    else:
        def impl(p, buf, j, avg, gj, pj, neg_lr, momentum, has_buf):
            store(p, j, pj + neg_lr * gj / avg)
    return impl


@njit(inline="always", **JIT)
def _first(p, g, sq, gavg, lo, hi, alpha, one_m_alpha, one_m_w, small_w, wd, sign, gs, zero,
           has_gs, coupled, centered, ts, tg, tp):
    """Elements [lo, hi) up to the square root's argument, kept in ``ts``, ``tg``, ``tp``
    (the torch-sqrt path). Called with a constant ``centered`` (inlined: two loops)."""
    for j in range(lo, hi):
        sqj, gj, pj = _averages(p, g, sq, gavg, j, one_m_alpha, alpha, one_m_w, small_w, wd,
                                sign, gs, zero, has_gs, coupled)
        if centered:
            sqj = _centered(gavg, j, gj, sqj, one_m_alpha, one_m_w, small_w, zero)
        ts[j - lo] = sqj
        tg[j - lo] = gj
        tp[j - lo] = pj


@njit(inline="always", **JIT)
def _last(p, buf, lo, hi, neg_lr, eps, momentum, has_buf, ts, tg, tp):
    """Elements [lo, hi) from the square root on (the torch-sqrt path). Called with a
    constant ``has_buf`` (inlined: two loops)."""
    for j in range(lo, hi):
        if has_buf:
            _update(p, buf, j, ts[j - lo] + eps, tg[j - lo], tp[j - lo], neg_lr, momentum, True)
        else:
            _update(p, buf, j, ts[j - lo] + eps, tg[j - lo], tp[j - lo], neg_lr, momentum, False)


@njit(inline="always", **JIT)
def _one_pass(p, g, sq, gavg, buf, lo, hi, neg_lr, alpha, one_m_alpha, one_m_w, small_w, eps,
              momentum, wd, sign, gs, zero, has_gs, coupled, centered, has_buf, write_g):
    """The whole update of elements [lo, hi) in one loop, IEEE square root (the default
    path). Called with constant ``centered``, ``has_buf`` and ``write_g`` (inlined: eight
    loops, none with a conditional store); ``write_g`` writes the unscaled gradient back."""
    for j in range(lo, hi):
        sqj, gj, pj = _averages(p, g, sq, gavg, j, one_m_alpha, alpha, one_m_w, small_w, wd,
                                sign, gs, zero, has_gs, coupled)
        if write_g:                    # after _averages, which reads the scaled g
            store(g, j, load(g, j) / gs)
        if centered:
            sqj = _centered(gavg, j, gj, sqj, one_m_alpha, one_m_w, small_w, zero)
        if has_buf:
            _update(p, buf, j, sqrt(sqj) + eps, gj, pj, neg_lr, momentum, True)
        else:
            _update(p, buf, j, sqrt(sqj) + eps, gj, pj, neg_lr, momentum, False)


@njit(inline="always", **JIT)
def _one_pass_flags(p, g, sq, gavg, buf, lo, hi, neg_lr, alpha, one_m_alpha, one_m_w,
                    small_w, eps, momentum, wd, sign, gs, zero, has_gs, coupled, centered,
                    has_buf):
    """``_one_pass`` with ``has_gs`` (= ``write_g``) made a constant."""
    if has_gs:
        _one_pass(p, g, sq, gavg, buf, lo, hi, neg_lr, alpha, one_m_alpha, one_m_w, small_w,
                  eps, momentum, wd, sign, gs, zero, True, coupled, centered, has_buf, True)
    else:
        _one_pass(p, g, sq, gavg, buf, lo, hi, neg_lr, alpha, one_m_alpha, one_m_w, small_w,
                  eps, momentum, wd, sign, gs, zero, False, coupled, centered, has_buf, False)


@njit(inline="always", **JIT)
def _pass(p, g, sq, gavg, buf, lo, hi, neg_lr, alpha, one_m_alpha, one_m_w, small_w, eps,
          momentum, wd, sign, gs, zero, centered, has_buf, has_gs, coupled):
    """``_one_pass_flags`` over [lo, hi) with ``centered`` and ``has_buf`` made
    constants."""
    if centered:
        if has_buf:
            _one_pass_flags(p, g, sq, gavg, buf, lo, hi, neg_lr, alpha, one_m_alpha, one_m_w,
                            small_w, eps, momentum, wd, sign, gs, zero, has_gs, coupled, True,
                            True)
        else:
            _one_pass_flags(p, g, sq, gavg, buf, lo, hi, neg_lr, alpha, one_m_alpha, one_m_w,
                            small_w, eps, momentum, wd, sign, gs, zero, has_gs, coupled, True,
                            False)
    elif has_buf:
        _one_pass_flags(p, g, sq, gavg, buf, lo, hi, neg_lr, alpha, one_m_alpha, one_m_w,
                        small_w, eps, momentum, wd, sign, gs, zero, has_gs, coupled, False, True)
    else:
        _one_pass_flags(p, g, sq, gavg, buf, lo, hi, neg_lr, alpha, one_m_alpha, one_m_w,
                        small_w, eps, momentum, wd, sign, gs, zero, has_gs, coupled, False,
                        False)


@njit(**JIT)
def _segment(p, g, sq, gavg, buf, neg_lr, alpha, one_m_alpha, one_m_w, small_w, eps, momentum,
             wd, sign, gs, centered, has_buf, has_gs, coupled, sqrt_f, t):
    """One segment (the arrays are views of it, the states handles of it: ``_state``), in
    the blocks of its state format (``blocking``: one block but in the 8-bit format and on
    the torch-sqrt path), each block's states flushed after its loops.

    IEEE square root (``sqrt_f == 0``, the default): one pass (``_one_pass``).

    torch's square root (``sqrt_f``: MKL's vector sqrt, see ``_common``), in blocks of BLOCK
    elements: a first loop up to the square root's argument (kept in ``t[0]``, with the
    gradient and the parameter in ``t[1]``, ``t[2]``), the unscaled gradient written back
    (``has_gs``; its own loop after the first, which reads the scaled g), the square roots
    as torch takes them (``vsqrt``), then the momentum and parameter update.

    The flags are runtime values (one specialisation per dtype and format keeps the
    compile time low); ``centered``, ``has_buf`` and ``has_gs`` choose between inlined
    loop copies. Every loop vectorises (checked in the assembly: vsqrtps, ymm)."""
    zero = ct(0.0, eps)
    n = p.shape[0]
    ts, tg, tp = t[0], t[1], t[2]
    blocks, size = blocking(sq, n, n if sqrt_f == 0 else BLOCK)
    for k in range(blocks):
        lo, hi = block_range(k, size, n)
        bsq, bga, bbf = at_block(sq, k, lo), at_block(gavg, k, lo), at_block(buf, k, lo)
        if sqrt_f == 0:
            _pass(p, g, bsq, bga, bbf, lo, hi, neg_lr, alpha, one_m_alpha, one_m_w, small_w,
                  eps, momentum, wd, sign, gs, zero, centered, has_buf, has_gs, coupled)
        else:
            if centered:
                _first(p, g, bsq, bga, lo, hi, alpha, one_m_alpha, one_m_w, small_w, wd, sign,
                       gs, zero, has_gs, coupled, True, ts, tg, tp)
            else:
                _first(p, g, bsq, bga, lo, hi, alpha, one_m_alpha, one_m_w, small_w, wd, sign,
                       gs, zero, has_gs, coupled, False, ts, tg, tp)
            if has_gs:                 # after the first loop, which reads the scaled g
                for j in range(lo, hi):
                    store(g, j, load(g, j) / gs)
            vsqrt(sqrt_f, ts, hi - lo)
            if has_buf:
                _last(p, bbf, lo, hi, neg_lr, eps, momentum, True, ts, tg, tp)
            else:
                _last(p, bbf, lo, hi, neg_lr, eps, momentum, False, ts, tg, tp)
        flush(bsq, k, lo, hi)
        if centered:
            flush(bga, k, lo, hi)
        if has_buf:
            flush(bbf, k, lo, hi)


@njit(**JIT)
def _scalars(prog_addr, n_nodes, t, hp, maximize, gs, marker):
    """The step's math-type scalars (float32 unless the storage is float64)."""
    program = view(prog_addr, n_nodes * NODE_SIZE, 0.0).reshape((n_nodes, NODE_SIZE))
    factor, sched_momentum, has_momentum = evaluate(program, t)
    lr, alpha, eps, weight_decay = hp[HP_LR], hp[HP_ALPHA], hp[HP_EPS], hp[HP_WEIGHT_DECAY]
    mom = sched_momentum if has_momentum != 0.0 else hp[HP_MOMENTUM]
    one_m_alpha = ct(1.0 - alpha, marker)
    return (ct(-(lr * factor), marker), ct(alpha, marker), one_m_alpha,
            ct(1.0, marker) - one_m_alpha,          # lerp's 1 - w, w = 1 - alpha
            one_m_alpha < ct(0.5, marker), ct(eps, marker), ct(mom, marker),
            ct(weight_decay, marker), ct(-1.0 if maximize else 1.0, marker), ct(gs, marker),
            weight_decay != 0.0)


@njit(**JIT)
def _tensor(ptrs, i, size, a, b, sc, flags, scratch, marker):
    """Elements [a, b) of tensor ``i`` (``size`` elements; ``walk``'s callback)."""
    neg_lr, alpha_c, one_m_alpha, one_m_w, small_w, eps_c, mom_c, wd, sign, gs_c, coupled = sc
    centered, has_buf, has_gs, sqrt_f, fmt = flags
    p = view(ptrs[i, _P], size, marker)[a:b]
    g = view(ptrs[i, _G], size, marker)[a:b]
    sq = state_at(fmt, ptrs, i, _SQ, _STEP, size, a, b, marker, False, scratch[3])
    # a signed state's handle where a list is off, never used: over square_avgs, read
    # nowhere (a handle of the 8-bit format reads its scales' address when made)
    ga = state_at(fmt, ptrs, i, _SQ, _STEP, size, a, b, marker, True, scratch[4])
    bf = ga
    if centered:
        ga = state_at(fmt, ptrs, i, _GAVG, _STEP, size, a, b, marker, True, scratch[4])
    if has_buf:
        bf = state_at(fmt, ptrs, i, _BUF, _STEP, size, a, b, marker, True, scratch[5])
    _segment(p, g, sq, ga, bf, neg_lr, alpha_c, one_m_alpha, one_m_w, small_w, eps_c, mom_c,
             wd, sign, gs_c, centered, has_buf, has_gs, coupled, sqrt_f, scratch)


_walk = make_walk(_tensor)


@njit(**JIT)
def _rmsprop(ptrs, offsets, prog_addr, n_nodes, pos_addr, hp, centered, maximize, has_buf,
             has_gs, gs, found_inf, advance_position, marker, sqrt_f, chunk, fmt, granule):
    """The whole step: scalars, the walk over the tensors (on the thread pool in chunks of
    ``chunk`` elements rounded to ``granule`` in each tensor, serially when 0; states in
    the format of marker ``fmt``), the counters."""
    pos, t = position_at(pos_addr)
    if not found_inf:
        sc = _scalars(prog_addr, n_nodes, t, hp, maximize, gs, marker)
        _walk(chunk, ptrs, offsets, sc, (centered, has_buf, has_gs, sqrt_f, fmt), marker,
              granule)
    finish(ptrs, _STEP, found_inf, pos, t, advance_position)


def launch(table, offsets, marker, hyper, *, schedule, position, grad_scale=None,
           found_inf=None, advance_position=True, has_buf, fmt=FORMAT_MARKERS["native"],
           granule=1):
    """``rmsprop_step`` on an address table already packed (``pack``; the caller keeps it);
    ``hyper``: the hyperparameters of ``ops.SIGNATURES["rmsprop"]``; ``fmt``, ``granule``:
    the state format's (``format_args``)."""
    prog_addr, n_nodes, pos_addr = program_args(schedule, position)
    has_gs, gs, skip = amp_args(grad_scale, found_inf)
    chunk = use_pool(offsets, SERIAL_MAX)
    start = perf_counter_ns()
    _rmsprop(table, offsets, prog_addr, n_nodes, pos_addr, hyper_buffer(_SIGNATURE, hyper),
             bool(hyper["centered"]), bool(hyper["maximize"]), has_buf, has_gs, gs, skip,
             bool(advance_position), marker, sqrt_fn(marker), chunk, fmt, granule)
    if not skip:    # (a skipped step walks nothing: no time of either path)
        timed(offsets, SERIAL_MAX, chunk, perf_counter_ns() - start)


def rmsprop_step(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, *,
                 schedule, position, grad_scale=None, found_inf=None, advance_position=True,
                 state_format="native", scales=None, **hyper):
    """One RMSprop update of every tensor in ``params`` (see ``fusedsched.kernels``;
    ``hyper``: the hyperparameters of ``ops.SIGNATURES["rmsprop"]``). ``state_format`` and
    ``scales``: how the states are stored, as ``adam.adam_step`` takes them."""
    if not params:
        return empty_step(schedule, position, advance_position)
    centered = hyper["centered"]
    if centered and grad_avgs is None:
        raise ValueError("numba rmsprop_step: centered needs grad_avgs")
    fmt, granule, state_dtype = format_args("rmsprop", state_format, scales, params)
    table, offsets = tables.table(params, grads, [square_avgs, grad_avgs if centered else None,
                                                  momentum_buffers], steps, scales, state_dtype)
    launch(table, offsets, marker_of(params), hyper, schedule=schedule, position=position,
           grad_scale=grad_scale, found_inf=found_inf, advance_position=advance_position,
           has_buf=momentum_buffers is not None, fmt=fmt, granule=granule)
