"""Learning-rate schedules: multipliers ``f(t)`` of a parameter group's ``lr``.

``t`` is the schedule position in updates: the k-th call of ``optimizer.step()`` uses
``group["lr"] * f(k - 1)``, exactly as ``LambdaLR(optimizer, f)`` stepped after every
``optimizer.step()`` (and optax's ``schedule(count)``).

Every constructor returns a :class:`Schedule`: ``s(t)`` is the float64 reference value
(Python ``math``), ``s.momentum(t)`` the momentum / beta1 that the cycling schedules
(``one_cycle``, ``cyclic``) set, ``s.rows()`` the compiled program of
``fusedsched.kernels.schedule_encoding`` that the kernels evaluate, ``s.to_spec()`` /
:func:`from_spec` a round trip through plain Python values (``torch.load(weights_only=True)``).

Invalid arguments raise ``ValueError`` at construction, naming the argument and its value.
All values are finite for every integer ``t >= 0``; a phase of length 0 counts as finished.
"""

import bisect
import inspect
import math
import numbers

import torch

from fusedsched.kernels import schedule_encoding as E

__all__ = [
    "Schedule", "constant", "linear", "step_decay", "multistep", "exponential", "polynomial",
    "cosine", "cosine_restarts", "one_cycle", "cyclic", "inverse_sqrt", "warmup_stable_decay",
    "warmup", "sequential", "from_spec", "program",
]


# --------------------------------------------------------------------------------------------
# Shared formulas (the kernels' evaluators compute the same expressions in the same order)


def _progress(done, length):
    """``min(done, length) / length``; a phase of length 0 is finished (1.0)."""
    return 1.0 if length == 0 else min(done, length) / length


def _cosine_anneal(end, position, length):
    """CosineAnnealingLR's closed form: ``end + (1 - end) * (1 + cos(pi * pos / T)) / 2``."""
    if length == 0:
        return end
    return end + (1.0 - end) * (1.0 + math.cos(math.pi * min(position, length) / length)) / 2.0


def _anneal(anneal, start, end, pct):
    """torch's OneCycleLR ``_annealing_cos`` / ``_annealing_linear``."""
    if anneal == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


# --------------------------------------------------------------------------------------------
# Validation


def _fail(kind, name, requirement, value):
    raise ValueError(f"{kind}: {name} must be {requirement}, got {value!r}")


_MAX_STEPS = 2 ** 53  # step counts are float64 in the kernels' encoding: exact up to here


def _integer(kind, name, value, minimum=0):
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum
            or value > _MAX_STEPS):
        _fail(kind, name, ("a non-negative integer" if minimum == 0 else "a positive integer")
              + " <= 2**53", value)
    return int(value)


def _real(kind, name, value, low=0.0, high=math.inf, low_open=False, high_open=True,
          requirement=None):
    """A finite real number in the interval given by low/high (open or closed ends)."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and math.isfinite(value)
          and (value > low if low_open else value >= low)
          and (value < high if high_open else value <= high))
    if not ok:
        if requirement is None:
            requirement = (f"a finite number in {'(' if low_open else '['}{low}, {high}"
                           f"{')' if high_open else ']'}")
        _fail(kind, name, requirement, value)
    return float(value)


def _factor(kind, name, value):
    return _real(kind, name, value, requirement="a finite non-negative number")


def _gamma(kind, value, name="gamma"):
    # gamma > 1 would overflow gamma ** t to inf at large t.
    return _real(kind, name, value, 0.0, 1.0, low_open=True, high_open=False)


def _momentum_arg(kind, name, value):
    return _real(kind, name, value, 0.0, 1.0)


def _choice(kind, name, value, choices):
    if not isinstance(value, str) or value not in choices:
        _fail(kind, name, "one of " + ", ".join(map(repr, choices)), value)
    return value


def _milestones(kind, milestones):
    if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
        _fail(kind, "milestones", "a list of non-negative integers", milestones)
    milestones = list(milestones)
    for m in milestones:
        if (isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 0
                or m > _MAX_STEPS):
            _fail(kind, "milestones", "a list of non-negative integers", milestones)
    milestones = [int(m) for m in milestones]
    if milestones != sorted(milestones):
        _fail(kind, "milestones", "sorted in increasing order", milestones)
    return milestones


def _schedule(kind, name, value):
    if not isinstance(value, Schedule):
        _fail(kind, name, "a fusedsched Schedule (built-in composites compile into the "
              "kernels; pass a Python callable directly as the optimizer's schedule instead)",
              value)
    return value


# --------------------------------------------------------------------------------------------
# Schedule types


class Schedule:
    """Base class: a pure function ``f(t)`` of the schedule position ``t`` (updates).

    Subclasses hold their validated constructor arguments (``_args``, in constructor order)
    and define ``_value(t)``; leaves also define ``_slots()`` (their encoding row), and
    composites ``_pieces()`` (children and absolute milestones, as SequentialLR).
    """

    kind = None  # the constructor's name

    def __init__(self, **args):
        self._args = args
        self._rows = None
        self._programs = {}

    def __getattr__(self, name):
        args = self.__dict__.get("_args", {})
        if name in args:
            return args[name]
        raise AttributeError(name)

    def __call__(self, t):
        t = _position(t)
        return float(self._value(t))

    def momentum(self, t):
        """The momentum (SGD, RMSprop) or beta1 (Adam) set at position ``t``, or None."""
        return self._momentum(_position(t))

    def _momentum(self, t):
        return None

    @property
    def cycles_momentum(self):
        """True when some leaf of this schedule cycles momentum."""
        return False

    def rows(self):
        """The compiled program (``kernels/schedule_encoding.py``), root at row 0."""
        if self._rows is None:
            rows = []
            _compile(self, rows)
            self._rows = rows
        return [list(r) for r in self._rows]

    def to_spec(self):
        """Plain Python values (nested dicts for composites); :func:`from_spec` inverts it."""
        return {"kind": self.kind, **{k: _to_plain(v) for k, v in self._args.items()}}

    def __repr__(self):
        return f"{self.kind}({', '.join(f'{k}={v!r}' for k, v in self._args.items())})"

    def __eq__(self, other):
        return isinstance(other, Schedule) and self.to_spec() == other.to_spec()

    def __hash__(self):
        return hash(repr(self))


def _position(t):
    if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
        raise ValueError(f"schedule position t must be a non-negative integer, got {t!r}")
    return int(t)


def _to_plain(value):
    if isinstance(value, Schedule):
        return value.to_spec()
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    return value


class _Piecewise(Schedule):
    """``children[i](t - milestones[i-1])`` on ``[milestones[i-1], milestones[i])``."""

    def _pieces(self):
        raise NotImplementedError

    def _active(self, t):
        children, milestones = self._pieces()
        i = bisect.bisect_right(milestones, t)
        return children[i], t - (milestones[i - 1] if i else 0)

    def _value(self, t):
        child, t = self._active(t)
        return child._value(t)

    def _momentum(self, t):
        child, t = self._active(t)
        return child._momentum(t)

    @property
    def cycles_momentum(self):
        return any(c.cycles_momentum for c in self._pieces()[0])


class Constant(Schedule):
    kind = "constant"

    def _value(self, t):
        return self.factor

    def _slots(self):
        return E.row(E.CONSTANT, factor=self.factor)


class Linear(Schedule):
    kind = "linear"

    def _value(self, t):
        return self.start_factor + (self.end_factor - self.start_factor) * _progress(
            t, self.total_steps)

    def _slots(self):
        return E.row(E.LINEAR, start=self.start_factor, end=self.end_factor,
                     total=self.total_steps)


class StepDecay(Schedule):
    kind = "step_decay"

    def _value(self, t):
        return self.gamma ** (t // self.step_size)

    def _slots(self):
        return E.row(E.STEP, step_size=self.step_size, gamma=self.gamma)


class MultiStep(_Piecewise):
    kind = "multistep"

    def _pieces(self):
        # gamma ** k as a Python float power, as MultiStepLR's closed form.
        return ([Constant(factor=self.gamma ** k) for k in range(len(self.milestones) + 1)],
                self.milestones)


class Exponential(Schedule):
    kind = "exponential"

    def _value(self, t):
        return self.gamma ** float(t)

    def _slots(self):
        return E.row(E.EXPONENTIAL, gamma=self.gamma)


class Polynomial(Schedule):
    kind = "polynomial"

    def _value(self, t):
        return ((1.0 - _progress(t, self.total_steps)) ** self.power
                * (1.0 - self.end_factor) + self.end_factor)

    def _slots(self):
        return E.row(E.POLYNOMIAL, total=self.total_steps, power=self.power,
                     end=self.end_factor)


class Cosine(Schedule):
    kind = "cosine"

    def _value(self, t):
        return _cosine_anneal(self.end_factor, t, self.total_steps)

    def _slots(self):
        return E.row(E.COSINE, total=self.total_steps, end=self.end_factor)


class CosineRestarts(Schedule):
    kind = "cosine_restarts"

    def _cycle(self, t):
        """(position inside the cycle, cycle length), in exact integer arithmetic."""
        t0, mult = self.first_cycle_steps, self.cycle_mult
        if mult == 1:
            return t % t0, t0
        start, length = 0, t0
        while start + length <= t:
            start, length = start + length, length * mult
        return t - start, length

    def _value(self, t):
        return _cosine_anneal(self.end_factor, *self._cycle(t))

    def _slots(self):
        return E.row(E.COSINE_RESTARTS, first_cycle=self.first_cycle_steps,
                     mult=self.cycle_mult, end=self.end_factor)


class OneCycle(Schedule):
    kind = "one_cycle"

    def _phases(self):
        """torch's OneCycleLR ``_schedule_phases``: (end_step, lr start, lr end, momentum
        start, momentum end), as factors of the peak lr."""
        total, pct = self.total_steps, self.pct_start
        initial = 1.0 / self.div_factor
        minimum = initial / self.final_div_factor
        base, peak = self.base_momentum, self.max_momentum
        if self.three_phase:
            return [(float(pct * total) - 1, initial, 1.0, peak, base),
                    (float(2 * pct * total) - 2, 1.0, initial, base, peak),
                    (total - 1, initial, minimum, peak, peak)]
        return [(float(pct * total) - 1, initial, 1.0, peak, base),
                (total - 1, 1.0, minimum, base, peak)]

    def _anneal_at(self, t):
        """(lr factor, momentum); t >= total_steps - 1 holds the final value (torch raises
        after total_steps)."""
        phases = self._phases()
        t = min(t, self.total_steps - 1)
        start = 0.0
        for i, (end, lr0, lr1, m0, m1) in enumerate(phases):
            if t <= end or i == len(phases) - 1:
                pct = 1.0 if end == start else (t - start) / (end - start)
                return (_anneal(self.anneal, lr0, lr1, pct), _anneal(self.anneal, m0, m1, pct))
            start = end

    def _value(self, t):
        return self._anneal_at(t)[0]

    def _momentum(self, t):
        return self._anneal_at(t)[1] if self.cycle_momentum else None

    @property
    def cycles_momentum(self):
        return self.cycle_momentum

    def _slots(self):
        phases = self._phases()
        e2 = phases[1][0] if self.three_phase else 0.0
        return E.row(E.ONE_CYCLE, end1=phases[0][0], end2=e2, end3=phases[-1][0],
                     initial=phases[0][1], minimum=phases[-1][2],
                     anneal=E.ANNEAL_COS if self.anneal == "cos" else E.ANNEAL_LINEAR,
                     three_phase=self.three_phase, cycle_momentum=self.cycle_momentum,
                     base_momentum=self.base_momentum, max_momentum=self.max_momentum)


_CYCLIC_MODES = {"triangular": E.CYCLIC_TRIANGULAR, "triangular2": E.CYCLIC_TRIANGULAR2,
                 "exp_range": E.CYCLIC_EXP_RANGE}


class Cyclic(Schedule):
    kind = "cyclic"

    def _sizes(self):
        up = float(self.step_size_up)
        down = up if self.step_size_down is None else float(self.step_size_down)
        return up + down, up / (up + down)

    def _scale(self, t):
        """CyclicLR's ``scale_factor * scale_fn``: the height above base, as a fraction."""
        total_size, step_ratio = self._sizes()
        cycle = math.floor(1 + t / total_size)
        x = 1.0 + t / total_size - cycle
        if x <= step_ratio:
            scale_factor = 1.0 if step_ratio == 0 else x / step_ratio
        else:
            scale_factor = (x - 1) / (step_ratio - 1)
        if self.mode == "triangular":
            return scale_factor * 1.0
        if self.mode == "triangular2":
            # torch's 1 / 2.0 ** (cycle - 1) raises OverflowError after ~1024 cycles.
            return scale_factor * 0.5 ** (cycle - 1)
        return scale_factor * self.gamma ** float(t)

    def _value(self, t):
        return self.base_factor + (1.0 - self.base_factor) * self._scale(t)

    def _momentum(self, t):
        if not self.cycle_momentum:
            return None
        return self.max_momentum - (self.max_momentum - self.base_momentum) * self._scale(t)

    @property
    def cycles_momentum(self):
        return self.cycle_momentum

    def _slots(self):
        total_size, step_ratio = self._sizes()
        return E.row(E.CYCLIC, total_size=total_size, step_ratio=step_ratio,
                     base=self.base_factor, mode=_CYCLIC_MODES[self.mode], gamma=self.gamma,
                     cycle_momentum=self.cycle_momentum, base_momentum=self.base_momentum,
                     max_momentum=self.max_momentum)


class InverseSqrt(Schedule):
    kind = "inverse_sqrt"

    def _value(self, t):
        if t < self.warmup_steps:
            return t / self.warmup_steps
        shift = self.timescale - self.warmup_steps
        return 1.0 / math.sqrt((t + shift) / self.timescale)

    def _slots(self):
        return E.row(E.INVERSE_SQRT, warmup=self.warmup_steps, timescale=self.timescale)


_DECAYS = {"linear": E.DECAY_LINEAR, "cosine": E.DECAY_COSINE, "1-sqrt": E.DECAY_1_SQRT}


class WarmupStableDecay(Schedule):
    kind = "warmup_stable_decay"

    def _value(self, t):
        w, s, d = self.warmup_steps, self.stable_steps, self.decay_steps
        if t < w:
            return self.start_factor + (1.0 - self.start_factor) * (t / w)
        if t <= w + s:  # also at t == W + S when D == 0: 1 is reached before the drop (C6)
            return 1.0
        if t < w + s + d:
            progress = (t - w - s) / d
            if self.decay == "linear":
                shape = 1.0 - progress
            elif self.decay == "cosine":
                shape = 0.5 * (1.0 + math.cos(math.pi * progress))
            else:
                shape = 1.0 - math.sqrt(progress)
            return self.end_factor + (1.0 - self.end_factor) * shape
        return self.end_factor

    def _slots(self):
        return E.row(E.WSD, warmup=self.warmup_steps, stable=self.stable_steps,
                     decay_steps=self.decay_steps, decay=_DECAYS[self.decay],
                     end=self.end_factor, start=self.start_factor)


class Warmup(_Piecewise):
    kind = "warmup"

    def _pieces(self):
        ramp = Linear(start_factor=self.start_factor, end_factor=1.0,
                      total_steps=self.warmup_steps)
        return [ramp, self.schedule], [self.warmup_steps]


class Sequential(_Piecewise):
    kind = "sequential"

    def _pieces(self):
        return self.schedules, self.milestones


# --------------------------------------------------------------------------------------------
# The compiler


def _compile(schedule, rows):
    """Append the rows of ``schedule`` to ``rows``; return the index of its root row.

    Composites become balanced SWITCH trees: children c0..cn with absolute milestones
    m0..m(n-1) split at the middle milestone mk into ``switch(mk - offset, tree(c0..ck),
    tree(c(k+1)..cn))``, since the right child of a SWITCH sees ``t - milestone``. The
    descent is log2(n) deep, so a multistep with thousands of milestones neither recurses
    deeply here nor walks a long chain in the kernels.
    """
    if not isinstance(schedule, _Piecewise):
        rows.append(schedule._slots())
        return len(rows) - 1

    def tree(children, milestones, offset):
        if not milestones:
            return _compile(children[0], rows)
        k = len(milestones) // 2
        index = len(rows)
        rows.append(None)  # filled once the children's indices are known
        left = tree(children[:k + 1], milestones[:k], offset)
        right = tree(children[k + 1:], milestones[k + 1:], milestones[k])
        rows[index] = E.row(E.SWITCH, milestone=milestones[k] - offset, left=left,
                            right=right)
        return index

    return tree(*schedule._pieces(), 0)


def program(schedule, device):
    """The compiled ``schedule`` as a float64 tensor ``(n_nodes, NODE_SIZE)`` on ``device``
    (rows padded with 0), cached on the schedule per device: repeated calls allocate nothing.
    """
    device = torch.device(device)
    cached = schedule._programs.get(device)
    if cached is None:
        rows = [r + [0.0] * (E.NODE_SIZE - len(r)) for r in schedule.rows()]
        cached = torch.tensor(rows, dtype=torch.float64, device=device)
        schedule._programs[device] = cached
    return cached


# --------------------------------------------------------------------------------------------
# Constructors (the public API)


def constant(factor=1.0):
    """``f(t) = factor``. As ``LambdaLR(opt, lambda t: factor)``.

    Raises ValueError: factor negative, NaN or infinite.
    """
    return Constant(factor=_factor("constant", "factor", factor))


def linear(start_factor=1 / 3, end_factor=1.0, total_steps=5):
    """``start + (end - start) * min(t, T) / T``, held at ``end`` after ``T = total_steps``
    (``T == 0``: ``end``). torch's LinearLR (total_iters = total_steps).

    Unlike LinearLR, ``start_factor`` may be 0 (a warmup from zero) and factors may exceed 1.
    Raises ValueError: factors negative / NaN / infinite; total_steps not a non-negative int.
    """
    return Linear(start_factor=_factor("linear", "start_factor", start_factor),
                  end_factor=_factor("linear", "end_factor", end_factor),
                  total_steps=_integer("linear", "total_steps", total_steps))


def step_decay(step_size, gamma=0.1):
    """``gamma ** (t // step_size)``. torch's StepLR.

    Raises ValueError: step_size not a positive int; gamma not in (0, 1] (gamma > 1 would
    overflow at large t).
    """
    return StepDecay(step_size=_integer("step_decay", "step_size", step_size, minimum=1),
                     gamma=_gamma("step_decay", gamma))


def multistep(milestones, gamma=0.1):
    """``gamma ** bisect_right(milestones, t)`` (a repeated milestone counts twice). torch's
    MultiStepLR. Compiles to a SWITCH chain of constants.

    Raises ValueError: milestones not a sorted list of non-negative ints; gamma not a finite
    number > 0, or ``gamma ** len(milestones)`` overflowing.
    """
    milestones = _milestones("multistep", milestones)
    gamma = _real("multistep", "gamma", gamma, low_open=True,
                  requirement="a finite number > 0")
    try:
        finite = math.isfinite(gamma ** len(milestones))
    except OverflowError:
        finite = False
    if not finite:
        _fail("multistep", "gamma", f"such that gamma ** {len(milestones)} (one factor per "
              "milestone) is finite", gamma)
    return MultiStep(milestones=milestones, gamma=gamma)


def exponential(gamma):
    """``gamma ** t``. torch's ExponentialLR.

    Raises ValueError: gamma not in (0, 1].
    """
    return Exponential(gamma=_gamma("exponential", gamma))


def polynomial(total_steps=5, power=1.0, end_factor=0.0):
    """``(1 - min(t, T) / T) ** power * (1 - end) + end`` (``T == 0``: ``end``). torch's
    PolynomialLR (total_iters = T) for ``end_factor = 0``.

    Raises ValueError: total_steps not a non-negative int; power or end_factor negative,
    NaN or infinite.
    """
    return Polynomial(total_steps=_integer("polynomial", "total_steps", total_steps),
                      power=_factor("polynomial", "power", power),
                      end_factor=_factor("polynomial", "end_factor", end_factor))


def cosine(total_steps, end_factor=0.0):
    """``end + (1 - end) * (1 + cos(pi * min(t, T) / T)) / 2``, held at ``end`` after
    ``T = total_steps``. torch's CosineAnnealingLR closed form with ``eta_min = end * lr``
    (torch's recursive form climbs back after T_max; this one holds).

    Raises ValueError: total_steps not a non-negative int; end_factor negative / NaN / inf.
    """
    return Cosine(total_steps=_integer("cosine", "total_steps", total_steps),
                  end_factor=_factor("cosine", "end_factor", end_factor))


def cosine_restarts(first_cycle_steps, cycle_mult=1, end_factor=0.0):
    """Cosine from 1 to ``end`` within cycles of length ``T0, T0*m, T0*m**2, ...``, restarting
    at 1. torch's CosineAnnealingWarmRestarts (T_0, T_mult, eta_min = end * lr); the cycle
    index is computed exactly (torch's float log can be off by one).

    Raises ValueError: first_cycle_steps or cycle_mult not a positive int; end_factor
    negative / NaN / inf.
    """
    kind = "cosine_restarts"
    return CosineRestarts(
        first_cycle_steps=_integer(kind, "first_cycle_steps", first_cycle_steps, minimum=1),
        cycle_mult=_integer(kind, "cycle_mult", cycle_mult, minimum=1),
        end_factor=_factor(kind, "end_factor", end_factor))


def one_cycle(total_steps, pct_start=0.3, anneal="cos", div_factor=25.0,
              final_div_factor=1e4, three_phase=False, cycle_momentum=True,
              base_momentum=0.85, max_momentum=0.95):
    """torch's OneCycleLR with the group's ``lr`` as max_lr: from ``1/div_factor`` up to 1
    at step ``pct_start*total_steps - 1``, then down to ``1/div_factor/final_div_factor`` at
    ``total_steps - 1`` (three_phase: up, back to ``1/div_factor`` at
    ``2*pct_start*total_steps - 2``, then down). ``anneal`` "cos" or "linear" as torch's.
    With ``cycle_momentum``, ``momentum(t)`` goes max -> base -> max (three_phase: max ->
    base -> max -> max).

    For ``t >= total_steps - 1`` the final value is held (torch raises after total_steps).
    Raises ValueError: total_steps not a positive int; pct_start not in (0, 1); anneal;
    div factors not finite > 0; momenta not in [0, 1); flags not bool.
    """
    kind = "one_cycle"
    if (isinstance(div_factor, numbers.Real) and not isinstance(div_factor, bool)
            and 0 < div_factor < 1 and not math.isfinite(1.0 / div_factor)):
        _fail(kind, "div_factor", "a number whose reciprocal is finite", div_factor)
    for name, flag in (("three_phase", three_phase), ("cycle_momentum", cycle_momentum)):
        if not isinstance(flag, bool):
            _fail(kind, name, "a bool", flag)
    return OneCycle(
        total_steps=_integer(kind, "total_steps", total_steps, minimum=1),
        pct_start=_real(kind, "pct_start", pct_start, 0.0, 1.0, low_open=True),
        anneal=_choice(kind, "anneal", anneal, ("cos", "linear")),
        div_factor=_real(kind, "div_factor", div_factor, low_open=True,
                         requirement="a finite number > 0"),
        final_div_factor=_real(kind, "final_div_factor", final_div_factor, low_open=True,
                               requirement="a finite number > 0"),
        three_phase=three_phase, cycle_momentum=cycle_momentum,
        base_momentum=_momentum_arg(kind, "base_momentum", base_momentum),
        max_momentum=_momentum_arg(kind, "max_momentum", max_momentum))


def cyclic(base_factor, step_size_up=2000, step_size_down=None, mode="triangular", gamma=1.0,
           cycle_momentum=True, base_momentum=0.8, max_momentum=0.9):
    """torch's CyclicLR with the group's ``lr`` as max_lr and ``base_lr = base_factor*lr``:
    ``base + (1 - base) * scale_factor * scale_fn``, where scale_factor rises 0 -> 1 over
    ``step_size_up`` updates and falls back over ``step_size_down`` (default: up), and
    scale_fn is 1 ("triangular"), ``0.5 ** (cycle - 1)`` ("triangular2"; torch overflows
    after ~1024 cycles, this underflows to 0) or ``gamma ** t`` ("exp_range").
    With ``cycle_momentum``, ``momentum(t) = max_m - (max_m - base_m) * scale``.

    Raises ValueError: base_factor negative / NaN / inf; step sizes not non-negative ints or
    both 0; mode; gamma not in (0, 1]; momenta not in [0, 1); cycle_momentum not bool.
    """
    kind = "cyclic"
    step_size_up = _integer(kind, "step_size_up", step_size_up)
    if step_size_down is not None:
        step_size_down = _integer(kind, "step_size_down", step_size_down)
    if step_size_up + (step_size_up if step_size_down is None else step_size_down) == 0:
        _fail(kind, "step_size_up + step_size_down", "positive", 0)
    if not isinstance(cycle_momentum, bool):
        _fail(kind, "cycle_momentum", "a bool", cycle_momentum)
    return Cyclic(
        base_factor=_factor(kind, "base_factor", base_factor), step_size_up=step_size_up,
        step_size_down=step_size_down,
        mode=_choice(kind, "mode", mode, tuple(_CYCLIC_MODES)),
        gamma=_gamma(kind, gamma), cycle_momentum=cycle_momentum,
        base_momentum=_momentum_arg(kind, "base_momentum", base_momentum),
        max_momentum=_momentum_arg(kind, "max_momentum", max_momentum))


def inverse_sqrt(warmup_steps, timescale=None):
    """``t / W`` for ``t < W``, then ``1 / sqrt((t + (ts - W)) / ts)``; ``ts = timescale``,
    default ``W or 10000``. transformers' ``get_inverse_sqrt_schedule``.

    Raises ValueError: warmup_steps not a non-negative int; timescale not a finite number
    > 0.
    """
    kind = "inverse_sqrt"
    warmup_steps = _integer(kind, "warmup_steps", warmup_steps)
    if timescale is None:
        timescale = warmup_steps or 10_000
    elif isinstance(timescale, numbers.Integral) and not isinstance(timescale, bool):
        timescale = _integer(kind, "timescale", timescale, minimum=1)
    else:
        timescale = _real(kind, "timescale", timescale, low_open=True,
                          requirement="a finite number > 0")
    return InverseSqrt(warmup_steps=warmup_steps, timescale=timescale)


def warmup_stable_decay(warmup_steps, stable_steps, decay_steps, decay="linear",
                        end_factor=0.0, start_factor=0.0):
    """Linear from ``start_factor`` at 0 to 1 at ``W``; 1 until ``W + S``; then the decay
    law from 1 at ``W + S`` to ``end_factor`` at ``W + S + D``: ``"linear"`` (1 - p),
    ``"cosine"`` (0.5 * (1 + cos(pi p))), ``"1-sqrt"`` (1 - sqrt(p)), as
    ``end + (1 - end) * law``; ``end_factor`` after. transformers' ``get_wsd_schedule``
    (min_lr_ratio = end_factor, num_cycles 0.5). With ``decay_steps == 0`` the factor is 1 up
    to and including ``t = W + S`` and ``end_factor`` after (transformers drops to
    min_lr_ratio at ``W + S``, so ``W=100, S=0, D=0`` never reaches 1: transformers#47285).

    Raises ValueError: step counts not non-negative ints; decay; factors negative / NaN /
    inf.
    """
    kind = "warmup_stable_decay"
    return WarmupStableDecay(
        warmup_steps=_integer(kind, "warmup_steps", warmup_steps),
        stable_steps=_integer(kind, "stable_steps", stable_steps),
        decay_steps=_integer(kind, "decay_steps", decay_steps),
        decay=_choice(kind, "decay", decay, tuple(_DECAYS)),
        end_factor=_factor(kind, "end_factor", end_factor),
        start_factor=_factor(kind, "start_factor", start_factor))


def warmup(schedule, warmup_steps, start_factor=0.0):
    """``start + (1 - start) * t / W`` for ``t < W``, then ``schedule(t - W)``. optax's
    ``join_schedules([linear_schedule(start, 1, W), schedule], [W])``.

    Raises ValueError: schedule not a Schedule (a Python callable cannot be compiled);
    warmup_steps not a non-negative int; start_factor negative / NaN / inf.
    """
    return Warmup(schedule=_schedule("warmup", "schedule", schedule),
                  warmup_steps=_integer("warmup", "warmup_steps", warmup_steps),
                  start_factor=_factor("warmup", "start_factor", start_factor))


def sequential(schedules, milestones):
    """``schedules[i](t - milestones[i-1])`` for ``milestones[i-1] <= t < milestones[i]``
    (i = bisect_right(milestones, t)). torch's SequentialLR, without its bugs: children are
    not multiplied together (pytorch#82684) and a milestone at 0 switches the first schedule
    off (pytorch#185872).

    Raises ValueError: schedules not a non-empty list of Schedules; milestones not a sorted
    list of non-negative ints; ``len(milestones) != len(schedules) - 1``.
    """
    kind = "sequential"
    if isinstance(schedules, Schedule) or not isinstance(schedules, (list, tuple)) \
            or not schedules:
        _fail(kind, "schedules", "a non-empty list of Schedules", schedules)
    schedules = [_schedule(kind, "schedules", s) for s in schedules]
    milestones = _milestones(kind, milestones)
    if len(milestones) != len(schedules) - 1:
        raise ValueError(
            f"{kind}: milestones must have len(schedules) - 1 = {len(schedules) - 1} "
            f"entries (one more schedule than milestones), got {milestones!r}")
    return Sequential(schedules=schedules, milestones=milestones)


_CONSTRUCTORS = {f.__name__: f for f in (
    constant, linear, step_decay, multistep, exponential, polynomial, cosine, cosine_restarts,
    one_cycle, cyclic, inverse_sqrt, warmup_stable_decay, warmup, sequential)}


def from_spec(spec):
    """The Schedule of ``spec`` (from :meth:`Schedule.to_spec`), validated again.

    Only plain data is read (never evaluated); nesting deeper than 64 levels is refused.
    Raises ValueError: unknown kind, unknown or missing arguments, or any argument error of
    the constructor.
    """
    return _from_spec(spec, 0)


def _from_spec(spec, depth):
    if not isinstance(spec, dict) or spec.get("kind") not in _CONSTRUCTORS:
        raise ValueError(f"from_spec: spec must be a dict with a known 'kind', got {spec!r}")
    if depth > 64:
        raise ValueError("from_spec: schedules nested deeper than 64 levels")
    args = {k: v for k, v in spec.items() if k != "kind"}
    if "schedule" in args:
        args["schedule"] = _from_spec(args["schedule"], depth + 1)
    if spec["kind"] == "sequential":
        children = args.get("schedules")
        if not isinstance(children, (list, tuple)):
            raise ValueError(f"from_spec: sequential needs a list 'schedules', got {spec!r}")
        args["schedules"] = [_from_spec(s, depth + 1) for s in children]
    constructor = _CONSTRUCTORS[spec["kind"]]
    try:
        inspect.signature(constructor).bind(**args)
    except TypeError as exc:
        raise ValueError(f"from_spec: bad arguments for {spec['kind']}: {exc}") from None
    return constructor(**args)
