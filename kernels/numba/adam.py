"""Adam / AdamW update, Numba CPU kernel: one parallel compiled call per step for the whole
tensor list (see ``kernels/reference/adam.py`` for the math, in the same operation order).

The step's scalars (schedule factor and momentum, bias corrections, step size) are
computed in float64 inside the call from ``position`` and each tensor's ``step``; the
counters are advanced in the same call after the parallel loop.
"""

import math
from time import perf_counter_ns

import numpy as np
from numba import njit
from numba.extending import overload

from . import _launch as tables
from ._common import (BLOCK, FORMAT_MARKERS, JIT, SERIAL_MAX, amp_args, at_block, block_range,
                      blocking, ct, empty_step, finish, flush, fma, format_args, grad_at,
                      hyper_buffer, lerp, load, make_walk, marker_of, position_at,
                      program_args, read_steps, sqrt, sqrt_fn, state_at, store, timed, use_pool,
                      view, vsqrt)
from .schedule import evaluate
from ..ops import SIGNATURES
from ..schedule_encoding import NODE_SIZE

# address table columns
_P, _G, _M, _V, _VMAX, _STEP = range(6)
# the hyperparameter buffer's slots, from the declaration (Numba freezes these globals)
_SIGNATURE = SIGNATURES["adam"]
HP_LR, HP_BETA2, HP_EPS, HP_WEIGHT_DECAY = map(_SIGNATURE.slot,
                                               ("lr", "beta2", "eps", "weight_decay"))
HP_MOMENTUM = _SIGNATURE.slot(_SIGNATURE.momentum)   # beta1, which a cycled momentum replaces


def _moments(p, g, m, v, j, w, one_m_w, small_w, beta2, one_m_beta2, wd, decay, sign, gs,
             has_gs, coupled, decoupled):
    """Element ``j``: the moments written, and (the second moment, the new first moment,
    the decayed parameter) in the math type."""


@overload(_moments)
def _ol_moments(p, g, m, v, j, w, one_m_w, small_w, beta2, one_m_beta2, wd, decay, sign, gs,
                has_gs, coupled, decoupled):
    # An @overload, as grad_at (LLVM inlines it into the loops below). No flag here may
    # guard a store: Numba prunes a branch on a constant flag only in the inline="always"
    # loops, and a conditional store in a loop stops its vectorisation (Adam's one-pass
    # loop stays scalar with amsgrad's store here).
    def impl(p, g, m, v, j, w, one_m_w, small_w, beta2, one_m_beta2, wd, decay, sign, gs,
             has_gs, coupled, decoupled):
        # coupled and decoupled exclude each other: the coupled decay reads p before the
        # decoupled one would change it
        gj, pj = grad_at(g, p, j, gs, has_gs, sign, wd, coupled)
        pd = pj * decay
        if decoupled:
            pj = pd
        mj = lerp(load(m, j), gj, w, one_m_w, small_w)
        vj = fma(one_m_beta2 * gj, gj, load(v, j) * beta2)
        store(m, j, mj)
        store(v, j, vj)
        return vj, mj, pj
    return impl


def _amsgrad_max(vmax, j, vj):
    """``max_exp_avg_sq`` at ``j`` after ``torch.maximum`` with ``vj`` (NaN wins): written
    and returned."""


@overload(_amsgrad_max)
def _ol_amsgrad_max(vmax, j, vj):
    def impl(vmax, j, vj):
        vm = load(vmax, j)
        if not (vm >= vj or vm != vm):        # a select, not a branch
            vm = vj
        store(vmax, j, vm)
        return vm
    return impl


@njit(inline="always", **JIT)
def _first(p, g, m, v, vmax, lo, hi, w, one_m_w, small_w, beta2, one_m_beta2, wd, decay, sign,
           gs, has_gs, coupled, decoupled, amsgrad, ts, tm, tp):
    """Elements [lo, hi) up to the square root's argument, kept in ``ts``, ``tm``, ``tp``
    (the torch-sqrt path). Called with a constant ``amsgrad`` (inlined: two loops)."""
    for j in range(lo, hi):
        vj, mj, pj = _moments(p, g, m, v, j, w, one_m_w, small_w, beta2, one_m_beta2, wd,
                              decay, sign, gs, has_gs, coupled, decoupled)
        if amsgrad:                    # a constant: pruned by Numba, no conditional store
            vj = _amsgrad_max(vmax, j, vj)
        ts[j - lo] = vj
        tm[j - lo] = mj
        tp[j - lo] = pj


@njit(inline="always", **JIT)
def _one_pass(p, g, m, v, vmax, lo, hi, step_size, bc2_sqrt, w, one_m_w, small_w, beta2,
              one_m_beta2, eps, wd, decay, sign, gs, has_gs, coupled, decoupled, amsgrad,
              write_g):
    """The whole update of elements [lo, hi) in one loop, IEEE square root (the default
    path). Called with constant ``amsgrad`` and ``write_g`` (inlined: four loops, none with
    a conditional store); ``write_g`` writes the unscaled gradient back."""
    for j in range(lo, hi):
        vj, mj, pj = _moments(p, g, m, v, j, w, one_m_w, small_w, beta2, one_m_beta2, wd,
                              decay, sign, gs, has_gs, coupled, decoupled)
        if amsgrad:                    # a constant: pruned by Numba, no conditional store
            vj = _amsgrad_max(vmax, j, vj)
        if write_g:                    # after _moments, which reads the scaled g
            store(g, j, load(g, j) / gs)
        denom = sqrt(vj) / bc2_sqrt + eps
        store(p, j, pj + step_size * mj / denom)


@njit(inline="always", **JIT)
def _pass(p, g, m, v, vmax, lo, hi, step_size, bc2_sqrt, w, one_m_w, small_w, beta2,
          one_m_beta2, eps, wd, decay, sign, gs, amsgrad, has_gs, coupled, decoupled):
    """``_one_pass`` over [lo, hi) with ``amsgrad`` and ``has_gs`` (= ``write_g``) made
    constants."""
    if amsgrad:
        if has_gs:
            _one_pass(p, g, m, v, vmax, lo, hi, step_size, bc2_sqrt, w, one_m_w, small_w,
                      beta2, one_m_beta2, eps, wd, decay, sign, gs, True, coupled, decoupled,
                      True, True)
        else:
            _one_pass(p, g, m, v, vmax, lo, hi, step_size, bc2_sqrt, w, one_m_w, small_w,
                      beta2, one_m_beta2, eps, wd, decay, sign, gs, False, coupled, decoupled,
                      True, False)
    elif has_gs:
        _one_pass(p, g, m, v, vmax, lo, hi, step_size, bc2_sqrt, w, one_m_w, small_w, beta2,
                  one_m_beta2, eps, wd, decay, sign, gs, True, coupled, decoupled, False, True)
    else:
        _one_pass(p, g, m, v, vmax, lo, hi, step_size, bc2_sqrt, w, one_m_w, small_w, beta2,
                  one_m_beta2, eps, wd, decay, sign, gs, False, coupled, decoupled, False,
                  False)


@njit(**JIT)
def _segment(p, g, m, v, vmax, step_size, bc2_sqrt, w, one_m_w, small_w, beta2, one_m_beta2,
             eps, wd, decay, sign, gs, amsgrad, has_gs, coupled, decoupled, sqrt_f, t):
    """One segment (the arrays are views of it, the states handles of it: ``_state``), in
    the blocks of its state format (``blocking``: one block but in the 8-bit format and on
    the torch-sqrt path), each block's states flushed after its loops.

    IEEE square root (``sqrt_f == 0``, the default): one pass (``_one_pass``); in the
    native format 28 B moved per fp32 element and nothing else.

    torch's square root (``sqrt_f``: MKL's vector sqrt, see ``_common``), in blocks of BLOCK
    elements: a first loop up to the square root's argument (kept in ``t[0]``, with the
    moment and the parameter in ``t[1]``, ``t[2]``), the unscaled gradient written back
    (``has_gs``), the square roots as torch takes them (``vsqrt``), then the parameter
    update.

    The flags are runtime values (one specialisation per dtype and format keeps the
    compile time low); every loop vectorises (checked in the LLVM remarks and the
    assembly, fp32/fp16/bf16)."""
    n = p.shape[0]
    ts, tm, tp = t[0], t[1], t[2]
    blocks, size = blocking(m, n, n if sqrt_f == 0 else BLOCK)
    for k in range(blocks):
        lo, hi = block_range(k, size, n)
        bm, bv, bvmax = at_block(m, k, lo), at_block(v, k, lo), at_block(vmax, k, lo)
        if sqrt_f == 0:
            _pass(p, g, bm, bv, bvmax, lo, hi, step_size, bc2_sqrt, w, one_m_w, small_w,
                  beta2, one_m_beta2, eps, wd, decay, sign, gs, amsgrad, has_gs, coupled,
                  decoupled)
        elif amsgrad:
            _first(p, g, bm, bv, bvmax, lo, hi, w, one_m_w, small_w, beta2, one_m_beta2, wd,
                   decay, sign, gs, has_gs, coupled, decoupled, True, ts, tm, tp)
        else:
            _first(p, g, bm, bv, bvmax, lo, hi, w, one_m_w, small_w, beta2, one_m_beta2, wd,
                   decay, sign, gs, has_gs, coupled, decoupled, False, ts, tm, tp)
        flush(bm, k, lo, hi)
        flush(bv, k, lo, hi)
        if amsgrad:
            flush(bvmax, k, lo, hi)
        if sqrt_f != 0:
            if has_gs:                 # after the first loop, which reads the scaled g
                for j in range(lo, hi):
                    store(g, j, load(g, j) / gs)
            vsqrt(sqrt_f, ts, hi - lo)
            for j in range(lo, hi):
                denom = ts[j - lo] / bc2_sqrt + eps
                store(p, j, tp[j - lo] + step_size * tm[j - lo] / denom)


@njit(**JIT)
def bias_corrections(lr_t, beta1, beta2, step):
    """(``lr_t / (1 - beta1 ** step)``, ``sqrt(1 - beta2 ** step)``) in float64, as
    ``kernels/reference/adam.bias_corrections`` computes them, but with Numba's ``math.pow``
    (LLVM's pow intrinsic) and IEEE ``math.sqrt`` where the reference takes torch's pow and
    sqrt: two implementations, which may differ in the last bits."""
    return lr_t / (1.0 - math.pow(beta1, step)), math.sqrt(1.0 - math.pow(beta2, step))


@njit(**JIT)
def _scalars(ptrs, prog_addr, n_nodes, t, hp, decoupled_weight_decay, maximize, gs, marker):
    """The step's scalars: float64 per tensor (step size, sqrt of bias correction 2),
    then the math-type ones (float32 unless the storage is float64)."""
    program = view(prog_addr, n_nodes * NODE_SIZE, 0.0).reshape((n_nodes, NODE_SIZE))
    factor, sched_momentum, has_momentum = evaluate(program, t)
    lr_t = hp[HP_LR] * factor
    b1 = sched_momentum if has_momentum != 0.0 else hp[HP_MOMENTUM]
    beta2, eps, weight_decay = hp[HP_BETA2], hp[HP_EPS], hp[HP_WEIGHT_DECAY]
    n = ptrs.shape[0]
    steps = read_steps(ptrs, _STEP)
    step_size = np.empty(n)
    bc2_sqrt = np.empty(n)
    for i in range(n):
        size, root = bias_corrections(lr_t, b1, beta2, steps[i] + 1.0)
        step_size[i] = -size
        bc2_sqrt[i] = root
    w = ct(1.0 - b1, marker)
    return (step_size, bc2_sqrt, w, ct(1.0, marker) - w, w < ct(0.5, marker), ct(beta2, marker),
            ct(1.0 - beta2, marker), ct(eps, marker), ct(weight_decay, marker),
            ct(1.0 - lr_t * weight_decay, marker), ct(-1.0 if maximize else 1.0, marker),
            ct(gs, marker), weight_decay != 0.0 and not decoupled_weight_decay,
            weight_decay != 0.0 and decoupled_weight_decay)


@njit(**JIT)
def _tensor(ptrs, i, size, a, b, sc, flags, scratch, marker):
    """Elements [a, b) of tensor ``i`` (``size`` elements; ``walk``'s callback)."""
    (step_size, bc2_sqrt, w, one_m_w, small_w, beta2_c, one_m_beta2, eps_c, wd, decay, sign,
     gs_c, coupled, decoupled) = sc
    amsgrad, has_gs, sqrt_f, fmt = flags
    p = view(ptrs[i, _P], size, marker)[a:b]
    g = view(ptrs[i, _G], size, marker)[a:b]
    m = state_at(fmt, ptrs, i, _M, _STEP, size, a, b, marker, True, scratch[3])
    v = state_at(fmt, ptrs, i, _V, _STEP, size, a, b, marker, False, scratch[4])
    vmax = v
    if amsgrad:
        vmax = state_at(fmt, ptrs, i, _VMAX, _STEP, size, a, b, marker, False, scratch[5])
    _segment(p, g, m, v, vmax, ct(step_size[i], marker), ct(bc2_sqrt[i], marker), w, one_m_w,
             small_w, beta2_c, one_m_beta2, eps_c, wd, decay, sign, gs_c, amsgrad, has_gs,
             coupled, decoupled, sqrt_f, scratch)


_walk = make_walk(_tensor)


@njit(**JIT)
def _adam(ptrs, offsets, prog_addr, n_nodes, pos_addr, hp, decoupled_weight_decay, amsgrad,
          maximize, has_gs, gs, found_inf, advance_position, marker, sqrt_f, chunk, fmt,
          granule):
    """The whole step: scalars, the walk over the tensors (on the thread pool in chunks of
    ``chunk`` elements rounded to ``granule`` in each tensor, serially when 0; states in
    the format of marker ``fmt``), the counters."""
    pos, t = position_at(pos_addr)
    if not found_inf:
        sc = _scalars(ptrs, prog_addr, n_nodes, t, hp, decoupled_weight_decay, maximize, gs,
                      marker)
        _walk(chunk, ptrs, offsets, sc, (amsgrad, has_gs, sqrt_f, fmt), marker, granule)
    finish(ptrs, _STEP, found_inf, pos, t, advance_position)


def launch(table, offsets, marker, hyper, *, schedule, position, grad_scale=None,
           found_inf=None, advance_position=True, fmt=FORMAT_MARKERS["native"], granule=1):
    """``adam_step`` on an address table already packed (``pack``; the caller keeps it);
    ``hyper``: the hyperparameters of ``ops.SIGNATURES["adam"]``; ``fmt``, ``granule``:
    the state format's (``format_args``)."""
    prog_addr, n_nodes, pos_addr = program_args(schedule, position)
    has_gs, gs, skip = amp_args(grad_scale, found_inf)
    chunk = use_pool(offsets, SERIAL_MAX)
    start = perf_counter_ns()
    _adam(table, offsets, prog_addr, n_nodes, pos_addr, hyper_buffer(_SIGNATURE, hyper),
          bool(hyper["decoupled_weight_decay"]), bool(hyper["amsgrad"]),
          bool(hyper["maximize"]), has_gs, gs, skip, bool(advance_position), marker,
          sqrt_fn(marker), chunk, fmt, granule)
    if not skip:    # (a skipped step walks nothing: no time of either path)
        timed(offsets, SERIAL_MAX, chunk, perf_counter_ns() - start)


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, schedule,
              position, grad_scale=None, found_inf=None, advance_position=True,
              state_format="native", scales=None, **hyper):
    """One Adam update of every tensor in ``params`` (see ``fusedsched.kernels``; ``hyper``:
    the hyperparameters of ``ops.SIGNATURES["adam"]``). ``state_format``: how the states
    are stored (``kernels/state_format.py``): "native" (the params' dtype), "bfloat16"
    (bfloat16 states) or "8bit" (uint8 codes of the params' numel, and ``scales``: per
    state list, float32 tensors of ``n_blocks(numel)`` elements, None where the list is
    off). ValueError / TypeError for tensors or a format the kernel cannot take
    (``format_args``, ``pack``)."""
    if not params:
        return empty_step(schedule, position, advance_position)
    amsgrad = hyper["amsgrad"]
    if amsgrad and max_exp_avg_sqs is None:
        raise ValueError("numba adam_step: amsgrad needs max_exp_avg_sqs")
    fmt, granule, state_dtype = format_args("adam", state_format, scales, params)
    table, offsets = tables.table(params, grads, [exp_avgs, exp_avg_sqs,
                                                  max_exp_avg_sqs if amsgrad else None], steps,
                                  scales, state_dtype)
    launch(table, offsets, marker_of(params), hyper, schedule=schedule, position=position,
           grad_scale=grad_scale, found_inf=found_inf, advance_position=advance_position,
           fmt=fmt, granule=granule)
