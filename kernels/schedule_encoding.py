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

Slot 0 of every row holds the kind code; the meaning of the other slots per kind:

=================  ====================================================================
kind               slots 1..
=================  ====================================================================
SWITCH (0)         1 milestone m, 2 left row, 3 right row
CONSTANT (1)       1 factor
LINEAR (2)         1 start, 2 end, 3 T: start + (end-start)*min(t,T)/T; T == 0 -> end
STEP (3)           1 step_size, 2 gamma: gamma ** floor(t / step_size)
EXPONENTIAL (4)    1 gamma: gamma ** t
POLYNOMIAL (5)     1 T, 2 power, 3 end: (1 - min(t,T)/T) ** power * (1 - end) + end; T == 0 -> 0 ** power * (1 - end) + end
COSINE (6)         1 T, 2 end: end + (1-end)*(1+cos(pi*min(t,T)/T))/2; T == 0 -> end
COSINE_RESTARTS(7) 1 T0, 2 mult, 3 end: cosine of the position inside cycle i of length T0*mult**i
ONE_CYCLE (8)      1 e1, 2 e2, 3 e3 (phase end steps, torch's ``end_step``; e2 unused when
                   two-phase), 4 initial factor (1/div_factor), 5 min factor
                   (1/div_factor/final_div_factor, as torch's min_lr), 6 anneal (0 cos, 1 linear),
                   7 three_phase (0/1), 8 cycle_momentum (0/1), 9 base_momentum,
                   10 max_momentum. t is clamped to e3 (the final value is held).
CYCLIC (9)         1 total_size, 2 step_ratio, 3 base_factor, 4 mode (0 triangular,
                   1 triangular2, 2 exp_range), 5 gamma, 6 cycle_momentum (0/1),
                   7 base_momentum, 8 max_momentum
INVERSE_SQRT (10)  1 W, 2 timescale: t/W for t < W, else 1/sqrt((t + (timescale - W))/timescale)
WSD (11)           1 W, 2 S, 3 D, 4 decay (0 linear, 1 cosine, 2 1-sqrt), 5 end, 6 start
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

ANNEAL_COS = 0
ANNEAL_LINEAR = 1

CYCLIC_TRIANGULAR = 0
CYCLIC_TRIANGULAR2 = 1
CYCLIC_EXP_RANGE = 2

DECAY_LINEAR = 0
DECAY_COSINE = 1
DECAY_1_SQRT = 2
