"""RMSprop update, Numba CPU kernel: one parallel compiled call per step for the whole
tensor list (see ``kernels/reference/rmsprop.py`` for the math, in the same operation
order). Deliberate deviation from torch, as in the reference: the centered variance
``square_avg - grad_avg**2`` is clamped at 0 before the square root (case C9).
"""

import math

import numpy as np
from numba import njit, prange

from ._common import (BLOCK, CHUNK, JIT, PJIT, amp_args, ct, f64_at, finish, first_tensor, fma,
                      lerp, load, marker_of, n_chunks, pack, program_args, scalar, setup_threads,
                      sqrt_fn, store, tmp, view, vsqrt)
from .schedule import evaluate
from ..schedule_encoding import NODE_SIZE

# address table columns
_P, _G, _SQ, _GAVG, _BUF, _STEP = range(6)


@njit(**JIT)
def _segment(p, g, sq, gavg, buf, neg_lr, alpha, one_m_alpha, one_m_w, small_w, eps, momentum,
             wd, sign, gs, centered, has_buf, has_gs, coupled, sqrt_f, t):
    """One segment (the arrays are views of it), in blocks of BLOCK elements: a first
    loop up to the square root's argument (kept in ``t[0]``, with the gradient and the
    parameter in ``t[1]``, ``t[2]``), the square roots as torch takes them (``vsqrt``),
    then the momentum and parameter update. The flags are runtime values: LLVM unswitches
    the loops on them (O3) and the resulting loops vectorise; one specialisation per dtype
    keeps the compile time low."""
    zero = ct(0.0, eps)
    ts, tg, tp = t[0], t[1], t[2]
    n = p.shape[0]
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        for j in range(lo, hi):
            gj = load(g, j)
            if has_gs:
                gj = gj / gs
                store(g, j, gj)
            gj = gj * sign
            pj = load(p, j)
            if coupled:
                gj = fma(pj, wd, gj)
            sqj = fma(one_m_alpha * gj, gj, load(sq, j) * alpha)
            store(sq, j, sqj)
            if centered:
                ga = lerp(load(gavg, j), gj, one_m_alpha, one_m_w, small_w)
                store(gavg, j, ga)
                sqj = fma(-ga, ga, sqj)
                if sqj < zero:
                    sqj = zero
            ts[j - lo] = sqj
            tg[j - lo] = gj
            tp[j - lo] = pj
        vsqrt(sqrt_f, ts, hi - lo)
        for j in range(lo, hi):
            avg = ts[j - lo] + eps
            if has_buf:
                bj = load(buf, j) * momentum + tg[j - lo] / avg
                store(buf, j, bj)
                store(p, j, fma(bj, neg_lr, tp[j - lo]))
            else:
                store(p, j, tp[j - lo] + neg_lr * tg[j - lo] / avg)


@njit(**PJIT)
def _rmsprop_kernel(ptrs, offsets, prog_addr, n_nodes, pos_addr, lr, alpha, eps, weight_decay,
                    momentum, centered, maximize, has_buf, has_gs, gs, found_inf,
                    advance_position, marker, sqrt_f):
    pos = f64_at(pos_addr)
    t = pos[0]
    if not found_inf:
        program = view(prog_addr, n_nodes * NODE_SIZE, 0.0).reshape((n_nodes, NODE_SIZE))
        factor, sched_momentum, has_momentum = evaluate(program, t)
        mom = sched_momentum if has_momentum != 0.0 else momentum
        n = ptrs.shape[0]
        # math-type scalars (float32 unless the storage is float64)
        neg_lr = ct(-(lr * factor), marker)
        alpha_c = ct(alpha, marker)
        one_m_alpha = ct(1.0 - alpha, marker)
        one_m_w = ct(1.0, marker) - one_m_alpha      # lerp's 1 - w, w = 1 - alpha
        small_w = one_m_alpha < ct(0.5, marker)
        eps_c = ct(eps, marker)
        mom_c = ct(mom, marker)
        wd = ct(weight_decay, marker)
        sign = ct(-1.0 if maximize else 1.0, marker)
        gs_c = ct(gs, marker)
        coupled = weight_decay != 0.0
        total = offsets[n]
        for c in prange(n_chunks(offsets)):
            scratch = tmp(marker)
            lo = c * CHUNK
            hi = min(lo + CHUNK, total)
            i = first_tensor(offsets, lo)
            while i < n and offsets[i] < hi:
                start = offsets[i]
                size = offsets[i + 1] - start
                a = max(lo, start) - start
                b = min(hi, offsets[i + 1]) - start
                if b > a:
                    p = view(ptrs[i, _P], size, marker)[a:b]
                    g = view(ptrs[i, _G], size, marker)[a:b]
                    sq = view(ptrs[i, _SQ], size, marker)[a:b]
                    ga = sq
                    bf = sq
                    if centered:
                        ga = view(ptrs[i, _GAVG], size, marker)[a:b]
                    if has_buf:
                        bf = view(ptrs[i, _BUF], size, marker)[a:b]
                    _segment(p, g, sq, ga, bf, neg_lr, alpha_c, one_m_alpha, one_m_w, small_w, eps_c, mom_c, wd,
                             sign, gs_c, centered, has_buf, has_gs, coupled, sqrt_f, scratch)
                i += 1
    finish(ptrs, _STEP, found_inf, pos, t, advance_position)


def rmsprop_step(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, *, lr,
                 alpha, eps, weight_decay, momentum, centered, maximize, schedule, position,
                 grad_scale=None, found_inf=None, advance_position=True):
    """One RMSprop update of every tensor in ``params`` (see ``fusedsched.kernels``)."""
    prog_addr, n_nodes, pos_addr = program_args(schedule, position)
    if not params:
        if advance_position:
            position.add_(1.0)
        return
    if centered and grad_avgs is None:
        raise ValueError("numba rmsprop_step: centered needs grad_avgs")
    table, offsets = pack(params, [grads, square_avgs, grad_avgs if centered else None,
                                   momentum_buffers], steps)
    has_gs, gs, skip = amp_args(grad_scale, found_inf)
    setup_threads()
    _rmsprop_kernel(table, offsets, prog_addr, n_nodes, pos_addr, scalar(lr), float(alpha),
                    float(eps), float(weight_decay), scalar(momentum), bool(centered),
                    bool(maximize), momentum_buffers is not None, has_gs, gs, skip,
                    bool(advance_position), marker_of(params), sqrt_fn(marker_of(params)))
