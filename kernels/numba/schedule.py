"""The Numba evaluator of a schedule program (``kernels.schedule_encoding``), shared by the
SGD, RMSprop and Adam kernels: ``evaluate(program, t) -> (factor, momentum, has_momentum)``.

All in float64. Leaf formulas follow torch's schedulers in operation order (OneCycleLR,
CyclicLR, CosineAnnealingWarmRestarts closed form), in the reference evaluator's
(``kernels/reference/schedule.py``) order of operations; see the encoding doc for each kind.

Transcendental functions: ``math.pow``, ``math.cos`` and ``math.log`` (Numba lowers them to
LLVM's intrinsics, calls of the C library's functions) and ``math.sqrt`` (IEEE), where the
reference calls torch's (on the CPU: libm's pow, MKL's cos, log and sqrt). Each is correct
to about an ulp, but they are two implementations: the two evaluators agree to an ulp or so
of 1, not bit for bit (tests/test_kernels.py compares them in ulps).
"""

import math

from numba import njit

from .. import schedule_encoding as E

_JIT = dict(cache=True, error_model="numpy")


@njit(**_JIT)
def _anneal(start, end, pct, anneal):
    if anneal == E.ANNEAL_COS:
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)
    return (end - start) * pct + start


@njit(**_JIT)
def _one_cycle(r, t):
    e1, e2, e3 = r[E.ONE_CYCLE_END1], r[E.ONE_CYCLE_END2], r[E.ONE_CYCLE_END3]
    initial, minimum, anneal = r[E.ONE_CYCLE_INITIAL], r[E.ONE_CYCLE_MINIMUM], r[E.ONE_CYCLE_ANNEAL]
    three_phase, cycle_momentum = r[E.ONE_CYCLE_THREE_PHASE], r[E.ONE_CYCLE_CYCLE_MOMENTUM]
    base_m, max_m = r[E.ONE_CYCLE_BASE_MOMENTUM], r[E.ONE_CYCLE_MAX_MOMENTUM]
    t = min(t, e3)
    # torch's phase search: the first phase with t <= end_step, else the last one.
    if t <= e1:
        start_step, end_step = 0.0, e1
        lr0, lr1, m0, m1 = initial, 1.0, max_m, base_m
    elif three_phase != 0.0 and t <= e2:
        start_step, end_step = e1, e2
        lr0, lr1, m0, m1 = 1.0, initial, base_m, max_m
    elif three_phase != 0.0:
        start_step, end_step = e2, e3
        lr0, lr1, m0, m1 = initial, minimum, max_m, max_m
    else:
        start_step, end_step = e1, e3
        lr0, lr1, m0, m1 = 1.0, minimum, base_m, max_m
    span = end_step - start_step
    pct = 1.0
    if span != 0.0:
        pct = (t - start_step) / span
    factor = _anneal(lr0, lr1, pct, anneal)
    if cycle_momentum != 0.0:
        return factor, _anneal(m0, m1, pct, anneal), 1.0
    return factor, 0.0, 0.0


@njit(**_JIT)
def _cyclic(r, t):
    total_size, step_ratio = r[E.CYCLIC_TOTAL_SIZE], r[E.CYCLIC_STEP_RATIO]
    base, mode, gamma = r[E.CYCLIC_BASE], r[E.CYCLIC_MODE], r[E.CYCLIC_GAMMA]
    cycle_momentum = r[E.CYCLIC_CYCLE_MOMENTUM]
    base_m, max_m = r[E.CYCLIC_BASE_MOMENTUM], r[E.CYCLIC_MAX_MOMENTUM]
    cycle = math.floor(1.0 + t / total_size)
    x = 1.0 + t / total_size - cycle
    if x <= step_ratio:
        # a rising phase of length 0 (step_ratio 0) is finished: scale 1, never 0 / 0
        scale_factor = 1.0 if step_ratio == 0.0 else x / step_ratio
    else:
        scale_factor = (x - 1.0) / (step_ratio - 1.0)
    if mode == E.CYCLIC_TRIANGULAR2:
        scale = math.pow(0.5, cycle - 1.0)          # underflows to 0, never overflows
    elif mode == E.CYCLIC_EXP_RANGE:
        scale = math.pow(gamma, t)
    else:
        scale = 1.0
    scale = scale_factor * scale
    factor = base + (1.0 - base) * scale
    if cycle_momentum != 0.0:
        return factor, max_m - (max_m - base_m) * scale, 1.0
    return factor, 0.0, 0.0


@njit(**_JIT)
def _restart_start(t0, mult, n):
    return t0 * (math.pow(mult, n) - 1.0) / (mult - 1.0)


@njit(**_JIT)
def _cosine_restarts(r, t):
    t0, mult, end = r[E.RESTARTS_FIRST_CYCLE], r[E.RESTARTS_MULT], r[E.RESTARTS_END]
    if not t0 > 0.0:
        return end
    if t < t0:
        t_cur, t_i = t, t0
    elif mult == 1.0:
        t_cur, t_i = t % t0, t0
    else:
        n = math.floor(math.log(t / t0 * (mult - 1.0) + 1.0) / math.log(mult))
        # the log is inexact near cycle boundaries: correct n by one each way
        if t < _restart_start(t0, mult, n):
            n -= 1.0
        elif t >= _restart_start(t0, mult, n + 1.0):
            n += 1.0
        t_cur = t - _restart_start(t0, mult, n)
        t_i = t0 * math.pow(mult, n)
    return end + (1.0 - end) * (1.0 + math.cos(math.pi * t_cur / t_i)) / 2.0


@njit(**_JIT)
def _wsd(r, t):
    w, s, d = r[E.WSD_WARMUP], r[E.WSD_STABLE], r[E.WSD_DECAY_STEPS]
    decay, end, start = r[E.WSD_DECAY], r[E.WSD_END], r[E.WSD_START]
    if t < w:
        return start + (1.0 - start) * (t / w)
    if t <= w + s:                     # t == W + S with D == 0: 1 before the drop (C6)
        return 1.0
    if t < w + s + d:
        progress = (t - w - s) / d
        if decay == E.DECAY_LINEAR:
            law = 1.0 - progress
        elif decay == E.DECAY_COSINE:
            law = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            law = 1.0 - math.sqrt(progress)
        return end + (1.0 - end) * law
    return end


@njit(**_JIT)
def _leaf(r, t):
    kind = r[0]
    if kind == E.CONSTANT:
        return r[E.CONSTANT_FACTOR], 0.0, 0.0
    if kind == E.LINEAR:
        start, end, total = r[E.LINEAR_START], r[E.LINEAR_END], r[E.LINEAR_TOTAL]
        progress = 1.0 if total == 0.0 else min(t, total) / total
        return start + (end - start) * progress, 0.0, 0.0
    if kind == E.STEP:
        return math.pow(r[E.STEP_GAMMA], math.floor(t / r[E.STEP_SIZE])), 0.0, 0.0
    if kind == E.EXPONENTIAL:
        return math.pow(r[E.EXPONENTIAL_GAMMA], t), 0.0, 0.0
    if kind == E.POLYNOMIAL:
        total, power, end = r[E.POLYNOMIAL_TOTAL], r[E.POLYNOMIAL_POWER], r[E.POLYNOMIAL_END]
        # a phase of length 0 is finished (progress 1): 0 ** power, which is 1 for power 0
        base = 0.0 if total == 0.0 else 1.0 - min(t, total) / total
        return math.pow(base, power) * (1.0 - end) + end, 0.0, 0.0
    if kind == E.COSINE:
        total, end = r[E.COSINE_TOTAL], r[E.COSINE_END]
        if total == 0.0:
            return end, 0.0, 0.0
        return end + (1.0 - end) * (1.0 + math.cos(math.pi * min(t, total) / total)) / 2.0, 0.0, 0.0
    if kind == E.COSINE_RESTARTS:
        return _cosine_restarts(r, t), 0.0, 0.0
    if kind == E.ONE_CYCLE:
        return _one_cycle(r, t)
    if kind == E.CYCLIC:
        return _cyclic(r, t)
    if kind == E.INVERSE_SQRT:
        w, timescale = r[E.INVERSE_SQRT_WARMUP], r[E.INVERSE_SQRT_TIMESCALE]
        if t < w:
            return t / w, 0.0, 0.0
        return 1.0 / math.sqrt((t + timescale - w) / timescale), 0.0, 0.0
    if kind == E.WSD:
        return _wsd(r, t), 0.0, 0.0
    return math.nan, 0.0, 0.0                       # unknown kind, or a SWITCH cycle


@njit(**_JIT)
def evaluate(program, t):
    """(factor, momentum, has_momentum) of ``program`` (float64[n, NODE_SIZE]) at ``t``."""
    row = 0
    for _ in range(program.shape[0]):
        if program[row, 0] != E.SWITCH:
            break
        milestone = program[row, E.SWITCH_MILESTONE]
        if t < milestone:
            row = int(program[row, E.SWITCH_LEFT])
        else:
            t = t - milestone
            row = int(program[row, E.SWITCH_RIGHT])
    return _leaf(program[row], t)
