"""The reference evaluator of a schedule program (``kernels/schedule_encoding.py``).

Torch ops only, on the program's device, with no host sync: the descent is a fixed number
of ``torch.where`` steps, then every leaf formula is computed and the row's kind selects
one. This is the specification that the Numba and Triton evaluators follow; each formula
is written in the same operation order as ``fusedsched.schedules`` (the Python reference).

Its pow, cos, log and sqrt are torch's, on 0-dim float64 tensors (on the CPU: libm's pow,
and MKL's cos, log and sqrt where torch has MKL). The interpreted Triton evaluator calls
these very functions and equals this one bit for bit; the Python reference (Python's
``math``: libm) and the Numba evaluator (LLVM, the C library, IEEE sqrt) use other
implementations, correct to about an ulp as these are, so they agree with it to an ulp or
so, not to the last bit.
"""

import math

import torch

from .. import schedule_encoding as E


def _progress(t, length):
    """``min(t, length) / length``; a phase of length 0 is finished (1)."""
    return torch.where(length == 0, 1.0, torch.minimum(t, length) / length)


def _cosine_anneal(end, position, length):
    """``end + (1 - end) * (1 + cos(pi * min(position, T) / T)) / 2``; ``T == 0``: end."""
    angle = math.pi * torch.minimum(position, length) / length
    return torch.where(length == 0, end, end + (1.0 - end) * (1.0 + torch.cos(angle)) / 2.0)


def _anneal(anneal, start, end, pct):
    """torch's OneCycleLR ``_annealing_cos`` (anneal 0) / ``_annealing_linear`` (1)."""
    cos = end + (start - end) / 2.0 * (torch.cos(math.pi * pct) + 1)
    linear = (end - start) * pct + start
    return torch.where(anneal == E.ANNEAL_COS, cos, linear)


def _descend(program, t):
    """Follow SWITCH rows from the root: (leaf row, position inside the leaf)."""
    n_nodes = program.shape[0]
    index = torch.zeros((), dtype=torch.long, device=program.device)
    row = program[0]
    # A tree with k SWITCH rows has k + 1 leaves, so a path crosses at most (n - 1) // 2.
    for _ in range((n_nodes - 1) // 2):
        is_switch = row[0] == E.SWITCH
        milestone = row[E.SWITCH_MILESTONE]
        right = t >= milestone
        t = torch.where(is_switch & right, t - milestone, t)
        child = torch.where(right, row[E.SWITCH_RIGHT], row[E.SWITCH_LEFT]).long()
        index = torch.where(is_switch, child, index)
        row = program.index_select(0, index.reshape(1))[0]
    return row, t


def _restarts_cycle(t0, mult, t):
    """(position inside the cycle, cycle length) of CosineAnnealingWarmRestarts; the float
    log estimate of the cycle index is corrected by one either way, so it is exact."""
    geometric = mult != 1
    safe_mult = torch.where(geometric, mult, 2.0)
    estimate = torch.where(geometric,
                           torch.floor(torch.log(t * (safe_mult - 1) / t0 + 1)
                                       / torch.log(safe_mult)),
                           torch.floor(t / t0))

    def cycle_start(i):  # T0 * (m**i - 1) / (m - 1), or T0 * i when m == 1
        return torch.where(geometric, t0 * (safe_mult ** i - 1) / (safe_mult - 1), t0 * i)

    estimate = torch.where(cycle_start(estimate) > t, estimate - 1, estimate)
    estimate = torch.where(cycle_start(estimate + 1) <= t, estimate + 1, estimate)
    return t - cycle_start(estimate), t0 * mult ** estimate


def _one_cycle(s, t):
    """(factor, momentum) of OneCycleLR; ``t`` clamped to the last phase end (held)."""
    e1, e2, e3 = s[E.ONE_CYCLE_END1], s[E.ONE_CYCLE_END2], s[E.ONE_CYCLE_END3]
    initial, minimum, anneal = s[E.ONE_CYCLE_INITIAL], s[E.ONE_CYCLE_MINIMUM], s[E.ONE_CYCLE_ANNEAL]
    three_phase = s[E.ONE_CYCLE_THREE_PHASE]
    base_m, max_m = s[E.ONE_CYCLE_BASE_MOMENTUM], s[E.ONE_CYCLE_MAX_MOMENTUM]
    three = three_phase != 0
    t = torch.minimum(t, e3)
    # torch picks the first phase with t <= end_step, else the last one.
    first = t <= e1
    middle = three & ~first & (t <= e2)
    last_start = torch.where(three, e2, e1)
    start = torch.where(first, 0.0, torch.where(middle, e1, last_start))
    end = torch.where(first, e1, torch.where(middle, e2, e3))
    lr_start = torch.where(first, initial, torch.where(middle | ~three, 1.0, initial))
    lr_end = torch.where(first, 1.0, torch.where(middle, initial, minimum))
    m_start = torch.where(first, max_m, torch.where(middle | ~three, base_m, max_m))
    m_end = torch.where(first, base_m, max_m)
    pct = torch.where(end == start, 1.0, (t - start) / (end - start))
    return _anneal(anneal, lr_start, lr_end, pct), _anneal(anneal, m_start, m_end, pct)


def _cyclic(s, t):
    """(factor, momentum) of CyclicLR; triangular2 uses 0.5 ** (cycle - 1) (underflows to 0,
    never overflows)."""
    total_size, step_ratio = s[E.CYCLIC_TOTAL_SIZE], s[E.CYCLIC_STEP_RATIO]
    base, mode, gamma = s[E.CYCLIC_BASE], s[E.CYCLIC_MODE], s[E.CYCLIC_GAMMA]
    base_m, max_m = s[E.CYCLIC_BASE_MOMENTUM], s[E.CYCLIC_MAX_MOMENTUM]
    cycle = torch.floor(1 + t / total_size)
    x = 1.0 + t / total_size - cycle
    scale_factor = torch.where(x <= step_ratio,
                               torch.where(step_ratio == 0, 1.0, x / step_ratio),
                               (x - 1) / (step_ratio - 1))
    scale_fn = torch.where(mode == E.CYCLIC_TRIANGULAR, 1.0,
                           torch.where(mode == E.CYCLIC_TRIANGULAR2, 0.5 ** (cycle - 1),
                                       gamma ** t))
    scale = scale_factor * scale_fn
    return base + (1.0 - base) * scale, max_m - (max_m - base_m) * scale


def _wsd(s, t):
    w, stable, d = s[E.WSD_WARMUP], s[E.WSD_STABLE], s[E.WSD_DECAY_STEPS]
    decay, end, start = s[E.WSD_DECAY], s[E.WSD_END], s[E.WSD_START]
    progress = (t - w - stable) / d
    shape = torch.where(decay == E.DECAY_LINEAR, 1.0 - progress,
                        torch.where(decay == E.DECAY_COSINE,
                                    0.5 * (1.0 + torch.cos(math.pi * progress)),
                                    1.0 - torch.sqrt(progress)))
    return torch.where(t < w, start + (1.0 - start) * (t / w),
                       torch.where(t <= w + stable, 1.0,
                                   torch.where(t < w + stable + d,
                                               end + (1.0 - end) * shape, end)))


def evaluate(program: torch.Tensor, position: torch.Tensor):
    """``(factor, momentum, has_momentum)`` of the schedule ``program`` at ``position``.

    program: float64 ``(n_nodes, NODE_SIZE)``; position: 0-dim float64 ``t``, an integer
    >= 0. Returns three 0-dim float64 tensors on the program's device; ``has_momentum`` is
    1.0 when the active leaf cycles momentum (``momentum`` is then its value, else 0).
    """
    s, t = _descend(program, position.to(torch.float64))
    kind = s[0]

    power_step = s[E.STEP_GAMMA] ** torch.floor(t / s[E.STEP_SIZE])
    exponential = s[E.EXPONENTIAL_GAMMA] ** t
    end = s[E.POLYNOMIAL_END]
    polynomial = ((1.0 - _progress(t, s[E.POLYNOMIAL_TOTAL])) ** s[E.POLYNOMIAL_POWER]
                  * (1.0 - end) + end)
    start = s[E.LINEAR_START]
    linear = start + (s[E.LINEAR_END] - start) * _progress(t, s[E.LINEAR_TOTAL])
    cosine = _cosine_anneal(s[E.COSINE_END], t, s[E.COSINE_TOTAL])
    restarts = _cosine_anneal(s[E.RESTARTS_END], *_restarts_cycle(
        s[E.RESTARTS_FIRST_CYCLE], s[E.RESTARTS_MULT], t))
    one_cycle, one_cycle_momentum = _one_cycle(s, t)
    cyclic, cyclic_momentum = _cyclic(s, t)
    w, timescale = s[E.INVERSE_SQRT_WARMUP], s[E.INVERSE_SQRT_TIMESCALE]
    inverse_sqrt = torch.where(t < w, t / w, 1.0 / torch.sqrt((t + (timescale - w)) / timescale))

    factor = s[E.CONSTANT_FACTOR]
    for code, value in ((E.LINEAR, linear), (E.STEP, power_step),
                        (E.EXPONENTIAL, exponential), (E.POLYNOMIAL, polynomial),
                        (E.COSINE, cosine), (E.COSINE_RESTARTS, restarts),
                        (E.ONE_CYCLE, one_cycle), (E.CYCLIC, cyclic),
                        (E.INVERSE_SQRT, inverse_sqrt), (E.WSD, _wsd(s, t))):
        factor = torch.where(kind == code, value, factor)

    is_one_cycle, is_cyclic = kind == E.ONE_CYCLE, kind == E.CYCLIC
    momentum = torch.where(is_one_cycle, one_cycle_momentum,
                           torch.where(is_cyclic, cyclic_momentum, 0.0))
    cycles = ((is_one_cycle & (s[E.ONE_CYCLE_CYCLE_MOMENTUM] != 0))
              | (is_cyclic & (s[E.CYCLIC_CYCLE_MOMENTUM] != 0)))
    has_momentum = cycles.to(torch.float64)
    momentum = torch.where(cycles, momentum, 0.0)
    return factor, momentum, has_momentum
