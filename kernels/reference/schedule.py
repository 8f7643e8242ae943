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
        milestone = row[1]
        right = t >= milestone
        t = torch.where(is_switch & right, t - milestone, t)
        child = torch.where(right, row[3], row[2]).long()
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
    e1, e2, e3, initial, minimum, anneal, three_phase, _, base_m, max_m = s[1:11]
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
    total_size, step_ratio, base, mode, gamma, _, base_m, max_m = s[1:9]
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
    w, stable, d, decay, end, start = s[1:7]
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

    power_step = s[2] ** torch.floor(t / s[1])
    exponential = s[1] ** t
    polynomial = (1.0 - _progress(t, s[1])) ** s[2] * (1.0 - s[3]) + s[3]
    linear = s[1] + (s[2] - s[1]) * _progress(t, s[3])
    cosine = _cosine_anneal(s[2], t, s[1])
    restarts = _cosine_anneal(s[3], *_restarts_cycle(s[1], s[2], t))
    one_cycle, one_cycle_momentum = _one_cycle(s, t)
    cyclic, cyclic_momentum = _cyclic(s, t)
    w, timescale = s[1], s[2]
    inverse_sqrt = torch.where(t < w, t / w, 1.0 / torch.sqrt((t + (timescale - w)) / timescale))

    factor = s[1]  # CONSTANT
    for code, value in ((E.LINEAR, linear), (E.STEP, power_step),
                        (E.EXPONENTIAL, exponential), (E.POLYNOMIAL, polynomial),
                        (E.COSINE, cosine), (E.COSINE_RESTARTS, restarts),
                        (E.ONE_CYCLE, one_cycle), (E.CYCLIC, cyclic),
                        (E.INVERSE_SQRT, inverse_sqrt), (E.WSD, _wsd(s, t))):
        factor = torch.where(kind == code, value, factor)

    is_one_cycle, is_cyclic = kind == E.ONE_CYCLE, kind == E.CYCLIC
    momentum = torch.where(is_one_cycle, one_cycle_momentum,
                           torch.where(is_cyclic, cyclic_momentum, 0.0))
    cycles = (is_one_cycle & (s[8] != 0)) | (is_cyclic & (s[6] != 0))
    has_momentum = cycles.to(torch.float64)
    momentum = torch.where(cycles, momentum, 0.0)
    return factor, momentum, has_momentum
