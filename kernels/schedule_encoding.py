"""The numeric encoding of a learning-rate schedule, shared by every kernel backend.

``fusedsched.schedules`` compiles a schedule tree into a *program*: a float64 table of shape
``(n_nodes, NODE_SIZE)``; row 0 is the root. Every backend has exactly one evaluator of this
table (``kernels/<backend>/schedule.py``) that all of its optimizers share.

Evaluation of ``f(t)`` (``t`` = schedule position, a float64 holding an integer >= 0):

1. Descent. Starting at row 0, while the row is a ``SWITCH`` node, go to the left child
   with ``t`` unchanged when ``t < milestone``, else to the right child with
   ``t - milestone``. At most ``n_nodes`` iterations (the tree has no cycles).
2. The leaf row gives ``(factor, momentum, has_momentum)``: the lr multiplier, and for
   the cycling kinds (ONE_CYCLE, CYCLIC with ``cycle_momentum``) the momentum (SGD,
   RMSprop) or beta1 (Adam) that replaces the group's value in this update.

``sequential``, ``warmup`` and ``multistep`` are compiled into balanced SWITCH trees (a
warmup is ``switch(W, linear(start, 1, W), child)``; a multistep is a tree over the
constants ``gamma**k``, log2(#milestones) deep), so the evaluators only know the leaf kinds
below.

Slot 0 of every row holds the kind code; each kind's other slots are declared once, by
name, below (``SLOTS``; the constants ``<KIND>_<SLOT>`` are their indices, which the encoder
``row`` and every evaluator use). Their meaning:

=================  ====================================================================
kind               slots
=================  ====================================================================
SWITCH             milestone m, left row, right row
CONSTANT           factor
LINEAR             start, end, total T: start + (end-start)*min(t,T)/T; T == 0 -> end
STEP               step_size, gamma: gamma ** floor(t / step_size)
EXPONENTIAL        gamma: gamma ** t
POLYNOMIAL         total T, power, end: (1 - min(t,T)/T) ** power * (1 - end) + end;
                   T == 0 -> 0 ** power * (1 - end) + end
COSINE             total T, end: end + (1-end)*(1+cos(pi*min(t,T)/T))/2; T == 0 -> end
COSINE_RESTARTS    first_cycle T0, mult, end: cosine of the position inside cycle i of
                   length T0*mult**i
ONE_CYCLE          end1, end2, end3 (phase end steps, torch's ``end_step``; end2 unused
                   when two-phase), initial factor (1/div_factor), minimum factor
                   (1/div_factor/final_div_factor, as torch's min_lr), anneal (ANNEAL_*),
                   three_phase (0/1), cycle_momentum (0/1), base_momentum, max_momentum.
                   t is clamped to end3 (the final value is held).
CYCLIC             total_size, step_ratio, base factor, mode (CYCLIC_*), gamma,
                   cycle_momentum (0/1), base_momentum, max_momentum
INVERSE_SQRT       warmup W, timescale: t/W for t < W, else
                   1/sqrt((t + (timescale - W))/timescale)
WSD                warmup W, stable S, decay_steps D, decay (DECAY_*), end, start:
                   t < W: start + (1-start)*(t/W); t <= W+S: 1; t < W+S+D: end +
                   (1-end)*law(p), p = (t-W-S)/D, law 1-p | 0.5*(1+cos(pi*p)) | 1-sqrt(p);
                   else end. (t == W+S gives 1 also when D == 0.)
=================  ====================================================================

``kernels/reference/schedule.py`` is the executable form of this table (operation order
included: it matches ``fusedsched.schedules`` up to the last bits of pow, cos, log and
sqrt, which are torch's there and Python's ``math`` module's here).

Anneal laws (torch's OneCycleLR): cos: ``end + (start - end) / 2 * (1 + cos(pi * pct))``;
linear: ``(end - start) * pct + start``. A phase of length 0 has ``pct = 1``.
"""

NODE_SIZE = 12

SWITCH = 0
CONSTANT = 1
LINEAR = 2
STEP = 3
EXPONENTIAL = 4
POLYNOMIAL = 5
COSINE = 6
COSINE_RESTARTS = 7
ONE_CYCLE = 8
CYCLIC = 9
INVERSE_SQRT = 10
WSD = 11

SLOTS = {}
"""kind code -> the names of its slots 1, 2, ... in order."""


def _slots(kind, *names):
    """Declare the slots of ``kind``: returns their indices (slot 0 is the kind)."""
    assert kind not in SLOTS and len(names) < NODE_SIZE
    SLOTS[kind] = names
    return range(1, len(names) + 1)


SWITCH_MILESTONE, SWITCH_LEFT, SWITCH_RIGHT = _slots(SWITCH, "milestone", "left", "right")
(CONSTANT_FACTOR,) = _slots(CONSTANT, "factor")
LINEAR_START, LINEAR_END, LINEAR_TOTAL = _slots(LINEAR, "start", "end", "total")
STEP_SIZE, STEP_GAMMA = _slots(STEP, "step_size", "gamma")
(EXPONENTIAL_GAMMA,) = _slots(EXPONENTIAL, "gamma")
POLYNOMIAL_TOTAL, POLYNOMIAL_POWER, POLYNOMIAL_END = _slots(POLYNOMIAL, "total", "power", "end")
COSINE_TOTAL, COSINE_END = _slots(COSINE, "total", "end")
RESTARTS_FIRST_CYCLE, RESTARTS_MULT, RESTARTS_END = _slots(
    COSINE_RESTARTS, "first_cycle", "mult", "end")
(ONE_CYCLE_END1, ONE_CYCLE_END2, ONE_CYCLE_END3, ONE_CYCLE_INITIAL, ONE_CYCLE_MINIMUM,
 ONE_CYCLE_ANNEAL, ONE_CYCLE_THREE_PHASE, ONE_CYCLE_CYCLE_MOMENTUM, ONE_CYCLE_BASE_MOMENTUM,
 ONE_CYCLE_MAX_MOMENTUM) = _slots(
    ONE_CYCLE, "end1", "end2", "end3", "initial", "minimum", "anneal", "three_phase",
    "cycle_momentum", "base_momentum", "max_momentum")
(CYCLIC_TOTAL_SIZE, CYCLIC_STEP_RATIO, CYCLIC_BASE, CYCLIC_MODE, CYCLIC_GAMMA,
 CYCLIC_CYCLE_MOMENTUM, CYCLIC_BASE_MOMENTUM, CYCLIC_MAX_MOMENTUM) = _slots(
    CYCLIC, "total_size", "step_ratio", "base", "mode", "gamma", "cycle_momentum",
    "base_momentum", "max_momentum")
INVERSE_SQRT_WARMUP, INVERSE_SQRT_TIMESCALE = _slots(INVERSE_SQRT, "warmup", "timescale")
WSD_WARMUP, WSD_STABLE, WSD_DECAY_STEPS, WSD_DECAY, WSD_END, WSD_START = _slots(
    WSD, "warmup", "stable", "decay_steps", "decay", "end", "start")


def row(kind, **slots):
    """One program row (floats, unpadded): ``kind`` and its slots by name. ValueError when
    the names are not exactly the kind's (``SLOTS``)."""
    names = SLOTS[kind]
    if set(slots) != set(names):
        raise ValueError(f"schedule kind {kind}: slots {sorted(slots)}, expected {list(names)}")
    return [float(kind)] + [float(slots[name]) for name in names]


ANNEAL_COS = 0
ANNEAL_LINEAR = 1

CYCLIC_TRIANGULAR = 0
CYCLIC_TRIANGULAR2 = 1
CYCLIC_EXP_RANGE = 2

DECAY_LINEAR = 0
DECAY_COSINE = 1
DECAY_1_SQRT = 2
