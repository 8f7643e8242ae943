"""Schedules: hand values, public cases, torch's schedulers, the reference evaluator, specs.

The public cases (ids of docs/design.md, "Cases from public reports"):

- C1 one_cycle ends exactly at its minimum and holds it after total_steps
  (pytorch/pytorch#91765).
- C2 sequential composition does not multiply its children (pytorch/pytorch#82684).
- C3 a milestone at 0 switches the first schedule off (pytorch/pytorch#185872).
- C4 cyclic triangular2 survives long runs; every schedule finite at huge t
  (pytorch/pytorch#52989).
- C6 zero-length warmup_stable_decay phases (pytorch/torchtitan#1010,
  huggingface/transformers#47285).
"""

import io
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.optim import lr_scheduler as L

from fusedsched import schedules as S
from fusedsched.kernels import schedule_encoding as E
from fusedsched.kernels.reference.schedule import evaluate

HUGE = [2**31 - 1, 2**31, 2**40]


def close(a, b, rel):
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b))


def kernel(s, t):
    """(factor, momentum or None) from the reference evaluator of the compiled program."""
    f, m, h = evaluate(S.program(s, "cpu"), torch.tensor(float(t), dtype=torch.float64))
    assert f.dtype == m.dtype == h.dtype == torch.float64 and f.dim() == 0
    return f.item(), (m.item() if h.item() else None)


def assert_kernel_matches(s, ts, rel=1e-13):
    for t in ts:
        f, m = kernel(s, t)
        assert math.isfinite(f) and close(f, s(t), rel), (s, t, f, s(t))
        ref_m = s.momentum(t)
        assert (m is None) == (ref_m is None), (s, t)
        assert m is None or close(m, ref_m, rel), (s, t, m, ref_m)


# --------------------------------------------------------------------------------------------
# Hand values and public cases


@pytest.mark.parametrize("s, values", [
    (S.constant(0.5), [0.5, 0.5, 0.5]),
    (S.linear(0.5, 1.0, 2), [0.5, 0.75, 1.0, 1.0]),
    (S.linear(0.2, 0.0, 0), [0.0, 0.0]),
    (S.step_decay(2, 0.5), [1, 1, 0.5, 0.5, 0.25]),
    (S.multistep([1, 3, 3], 0.5), [1, 0.5, 0.5, 0.125, 0.125]),
    (S.exponential(0.5), [1, 0.5, 0.25]),
    (S.polynomial(2, 2.0, 0.5), [1, 0.625, 0.5, 0.5]),
    (S.polynomial(0), [0.0, 0.0]),
    (S.cosine(2, 0.5), [1, 0.75, 0.5, 0.5]),
    (S.cosine(0, 0.25), [0.25, 0.25]),
    (S.cosine_restarts(2), [1, 0.5, 1, 0.5]),
    (S.cosine_restarts(1, 2), [1, 1, 0.5, 1, 1 - 0.5 * (1 - math.cos(math.pi / 4)), 0.5]),
    (S.inverse_sqrt(4), [0, 0.25, 0.5, 0.75, 1, 1 / math.sqrt(5 / 4), 1 / math.sqrt(6 / 4)]),
    (S.inverse_sqrt(0), [1.0, 1 / math.sqrt(10001 / 10000)]),
    (S.inverse_sqrt(2, timescale=8), [0, 0.5, 1, 1 / math.sqrt(9 / 8)]),
    (S.warmup_stable_decay(2, 1, 4, "cosine", 0.5, 0.5), [0.5, 0.75, 1, 1,
                                                          0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi / 4)),
                                                          0.75, 0.5 + 0.25 * (1 - 1 / math.sqrt(2)), 0.5]),
    (S.warmup_stable_decay(0, 0, 4, "1-sqrt"), [1, 0.5, 1 - math.sqrt(0.5), 1 - math.sqrt(0.75), 0]),
    (S.warmup(S.constant(), 4), [0, 0.25, 0.5, 0.75, 1, 1]),
    (S.warmup(S.exponential(0.5), 2, 0.5), [0.5, 0.75, 1, 0.5]),
    (S.warmup(S.constant(0.3), 0), [0.3]),
])
def test_hand_values(s, values):
    assert [s(t) for t in range(len(values))] == pytest.approx(values, rel=1e-15, abs=1e-15)
    assert_kernel_matches(s, range(len(values) + 3))


def test_c1_one_cycle_holds_its_minimum():
    s = S.one_cycle(total_steps=50)
    lr = 0.01
    assert lr * s(0) == pytest.approx(4e-4, rel=1e-15)
    assert lr * s(14) == 0.01
    assert lr * s(49) == pytest.approx(4e-8, rel=1e-15)
    # torch continues the cosine to 2.0168e-5 at t=50 and raises at 51; we hold the minimum.
    for t in [50, 51, 1000] + HUGE:
        assert s(t) == s(49) and s.momentum(t) == s.momentum(49) == 0.95
    assert_kernel_matches(s, [0, 13, 14, 15, 48, 49, 50, 51] + HUGE)


# The exact (==) comparisons of kernel values below are of values that involve no
# transcendental function (constants, linear pieces) or only exact powers of two (0.5 ** k,
# which every pow correct to within an ulp returns exactly): the same on every machine.
# Values that go through cos, pow or sqrt are compared with ``close`` (rel 1e-13).

def test_c2_sequential_does_not_multiply():
    s = S.sequential([S.constant(0.5), S.constant(0.3), S.constant(1.0)], milestones=[3, 7])
    values = [0.5, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3, 1, 1, 1]
    assert [s(t) for t in range(10)] == values
    assert [kernel(s, t)[0] for t in range(10)] == values


def test_c3_milestone_at_zero():
    s = S.sequential([S.constant(0.1), S.exponential(0.5)], milestones=[0])
    assert [s(t) for t in range(5)] == [1, 0.5, 0.25, 0.125, 0.0625]
    assert [kernel(s, t)[0] for t in range(5)] == [1, 0.5, 0.25, 0.125, 0.0625]


def test_c4_triangular2_long_runs():
    s = S.cyclic(base_factor=0.5, step_size_up=5, mode="triangular2", cycle_momentum=False)
    lrs = [1e-4 * s(t) for t in range(20000)]
    assert all(math.isfinite(v) and 5e-5 <= v <= 1e-4 for v in lrs)
    assert lrs[5] == 1e-4 and lrs[15] == pytest.approx(0.75e-4, rel=1e-15)
    assert lrs[10240] == 5e-5
    assert 1e-4 * kernel(s, 10240)[0] == 5e-5
    assert_kernel_matches(s, [10235, 10240, 19999] + HUGE)


def test_c4_every_schedule_finite_at_huge_t():
    for s in ALL_KINDS:
        for t in HUGE + [2**63]:
            assert math.isfinite(s(t)), (s, t)
        assert_kernel_matches(s, HUGE)


@pytest.mark.parametrize("w, stable", [(5, 5), (100, 0)])
def test_c6_zero_length_decay(w, stable):
    s = S.warmup_stable_decay(w, stable, 0)
    assert s(0) == 0 and s(w) == 1 and s(w - 1) == (w - 1) / w
    assert all(s(t) == 1 for t in range(w, w + stable + 1))
    assert s(w + stable) == 1 and s(w + stable + 1) == 0.0  # empty decay: then end_factor
    assert_kernel_matches(s, range(w + stable + 3))


def test_c6_wsd_values():
    s = S.warmup_stable_decay(4, 2, 4, decay="linear", end_factor=0.0)
    values = [0, 0.25, 0.5, 0.75, 1, 1, 1, 0.75, 0.5, 0.25, 0]
    assert [s(t) for t in range(11)] == values
    assert [kernel(s, t)[0] for t in range(11)] == values


def test_zero_length_phases_everywhere():
    for s in [S.linear(0.5, 0.2, 0), S.polynomial(0), S.cosine(0), S.warmup(S.cosine(0), 0),
              S.warmup_stable_decay(0, 0, 0, end_factor=0.3), S.cyclic(0.5, 0, 3),
              S.cyclic(0.5, 3, 0), S.one_cycle(1), S.one_cycle(10, pct_start=0.1),
              S.one_cycle(10, pct_start=0.05, three_phase=True)]:
        assert_kernel_matches(s, range(12))


# --------------------------------------------------------------------------------------------
# Against torch's schedulers


def torch_run(make_scheduler, steps, lr=0.5, optimizer="sgd"):
    """[(lr, momentum or beta1)] of the updates t = 0..steps-1 of a torch scheduler."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    p.grad = torch.zeros_like(p)
    if optimizer == "sgd":
        opt = torch.optim.SGD([p], lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam([p], lr=lr)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        g = opt.param_groups[0]
        out.append((g["lr"], g["momentum"] if optimizer == "sgd" else g["betas"][0]))
        opt.step()
        sched.step()
    return out


def assert_matches_torch(s, make_scheduler, steps, lr=0.5, optimizer="sgd", momentum=False):
    for t, (torch_lr, torch_m) in enumerate(torch_run(make_scheduler, steps, lr, optimizer)):
        assert close(lr * s(t), torch_lr, 1e-12), (s, t, lr * s(t), torch_lr)
        if momentum:
            assert close(s.momentum(t), torch_m, 1e-12), (s, t, s.momentum(t), torch_m)


@pytest.mark.parametrize("s, make, steps", [
    (S.linear(0.25, 0.9, 6), lambda o: L.LinearLR(o, 0.25, 0.9, total_iters=6), 12),
    (S.step_decay(3, 0.5), lambda o: L.StepLR(o, 3, 0.5), 15),
    (S.multistep([2, 5, 5, 9], 0.5), lambda o: L.MultiStepLR(o, [2, 5, 5, 9], 0.5), 14),
    (S.exponential(0.9), lambda o: L.ExponentialLR(o, 0.9), 30),
    (S.polynomial(8, 2.0), lambda o: L.PolynomialLR(o, total_iters=8, power=2.0), 16),
    (S.polynomial(5), lambda o: L.PolynomialLR(o), 9),
    (S.cosine(20, 0.1), lambda o: L.CosineAnnealingLR(o, 20, eta_min=0.05), 21),
    (S.cosine(30), lambda o: L.CosineAnnealingLR(o, 30), 31),
    (S.cosine_restarts(5, 1, 0.1), lambda o: L.CosineAnnealingWarmRestarts(o, 5, 1, 0.05), 40),
    (S.cosine_restarts(3, 2), lambda o: L.CosineAnnealingWarmRestarts(o, 3, 2), 100),
    (S.sequential([S.linear(0.5, 1.0, 4), S.exponential(0.9)], [5]),
     lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.5, 1.0, 4), L.ExponentialLR(o, 0.9)], [5]), 15),
    (S.sequential([S.constant(0.2), S.cosine(6), S.step_decay(2, 0.5)], [3, 9]),
     lambda o: L.SequentialLR(o, [L.LambdaLR(o, lambda t: 0.2), L.CosineAnnealingLR(o, 6),
                                  L.StepLR(o, 2, 0.5)], [3, 9]), 16),
])
def test_against_torch(s, make, steps):
    assert_matches_torch(s, make, steps)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("kw", [
    {}, dict(anneal="linear"), dict(three_phase=True), dict(three_phase=True, anneal="linear"),
    dict(pct_start=0.25, div_factor=10.0, final_div_factor=100.0, base_momentum=0.8,
         max_momentum=0.9),
])
def test_one_cycle_against_torch(kw, optimizer):
    total = 40
    s = S.one_cycle(total, **kw)
    torch_kw = {("anneal_strategy" if k == "anneal" else k): v for k, v in kw.items()}
    assert_matches_torch(s, lambda o: L.OneCycleLR(o, 0.5, total_steps=total, **torch_kw),
                         total, optimizer=optimizer, momentum=True)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("kw", [
    dict(step_size_up=4), dict(step_size_up=3, step_size_down=5, mode="triangular2"),
    dict(step_size_up=2, step_size_down=3, mode="exp_range", gamma=0.97),
])
def test_cyclic_against_torch(kw, optimizer):
    s = S.cyclic(0.2, **kw)
    assert_matches_torch(s, lambda o: L.CyclicLR(o, base_lr=0.1, max_lr=0.5, **kw), 60,
                         optimizer=optimizer, momentum=True)


def test_lambda_lr_equivalence():
    s = S.warmup(S.warmup_stable_decay(3, 2, 5, "cosine", 0.1), 4, 0.2)
    assert_matches_torch(s, lambda o: L.LambdaLR(o, s), 20)


# --------------------------------------------------------------------------------------------
# The reference evaluator


ALL_KINDS = [
    S.constant(0.7), S.linear(), S.linear(0.0, 2.0, 7), S.step_decay(3, 0.8),
    S.multistep([2, 4, 4, 10], 0.5), S.multistep([]), S.exponential(0.99), S.exponential(1.0),
    S.polynomial(9, 0.5, 0.1), S.cosine(11, 0.05), S.cosine(1000),
    S.cosine_restarts(4, 1, 0.1), S.cosine_restarts(3, 3), S.cosine_restarts(1, 2),
    S.one_cycle(30), S.one_cycle(25, 0.4, "linear", three_phase=True, cycle_momentum=False),
    S.one_cycle(1), S.cyclic(0.1, 4), S.cyclic(0.3, 2, 5, "triangular2"),
    S.cyclic(0.0, 3, 1, "exp_range", 0.95, cycle_momentum=False),
    S.inverse_sqrt(6), S.inverse_sqrt(3, timescale=2.5),
    S.warmup_stable_decay(3, 2, 6), S.warmup_stable_decay(2, 0, 5, "cosine", 0.1, 0.3),
    S.warmup_stable_decay(0, 3, 4, "1-sqrt", 0.2),
    S.warmup(S.sequential([S.cosine(5), S.one_cycle(10), S.constant(0.2)], [5, 12]), 4),
    S.sequential([S.warmup(S.cyclic(0.5, 2), 3, 0.5), S.multistep([3], 0.1)], [0]),
    S.sequential([S.sequential([S.constant(0.1), S.exponential(0.9)], [2]),
                  S.warmup(S.cosine_restarts(3, 2), 2)], [6]),
]


@pytest.mark.parametrize("s", ALL_KINDS, ids=repr)
def test_evaluator_matches_python(s):
    assert_kernel_matches(s, list(range(0, 70)) + [99, 100, 101, 999, 1000, 1001] + HUGE)


def test_program_layout_and_cache():
    s = S.warmup(S.cosine(10), 5, 0.1)
    assert s.rows() == [[E.SWITCH, 5, 1, 2], [E.LINEAR, 0.1, 1.0, 5], [E.COSINE, 10, 0.0]]
    p = S.program(s, "cpu")
    assert p.shape == (3, E.NODE_SIZE) and p.dtype == torch.float64
    assert S.program(s, "cpu") is p and S.program(s, torch.device("cpu")) is p
    m = S.multistep([2, 5], 0.5)
    # a balanced SWITCH tree: split at the middle milestone 5, then at 2 on the left
    assert [r[:4] if r[0] == E.SWITCH else r[:2] for r in m.rows()] == [
        [E.SWITCH, 5, 1, 4], [E.SWITCH, 2, 2, 3], [E.CONSTANT, 1.0], [E.CONSTANT, 0.5],
        [E.CONSTANT, 0.25]]


def test_momentum_and_cycles_momentum():
    oc = S.one_cycle(20)
    assert oc.cycles_momentum and oc.momentum(0) == 0.95
    assert not S.one_cycle(20, cycle_momentum=False).cycles_momentum
    assert S.one_cycle(20, cycle_momentum=False).momentum(3) is None
    seq = S.sequential([S.constant(), oc], [5])
    assert seq.cycles_momentum and seq.momentum(0) is None and seq.momentum(5) == 0.95
    assert kernel(seq, 0)[1] is None and kernel(seq, 5)[1] == 0.95
    assert not S.warmup(S.cosine(3), 2).cycles_momentum


def _leaf():
    n = st.integers(0, 12)
    pos = st.integers(1, 12)
    frac = st.floats(0.0, 1.0)
    gamma = st.floats(0.05, 1.0)
    mom = st.floats(0.0, 0.99)
    return st.one_of(
        st.builds(S.constant, frac),
        st.builds(S.linear, frac, frac, n),
        st.builds(S.step_decay, pos, gamma),
        st.builds(S.multistep, st.lists(n, max_size=4).map(sorted), gamma),
        st.builds(S.exponential, gamma),
        st.builds(S.polynomial, n, st.floats(0.0, 3.0), frac),
        st.builds(S.cosine, n, frac),
        st.builds(S.cosine_restarts, pos, st.integers(1, 3), frac),
        st.builds(S.one_cycle, pos, st.floats(0.05, 0.95), st.sampled_from(["cos", "linear"]),
                  st.floats(1.0, 50.0), st.floats(1.0, 1e4), st.booleans(), st.booleans(),
                  mom, mom),
        st.builds(S.cyclic, frac, pos, st.one_of(st.none(), n),
                  st.sampled_from(["triangular", "triangular2", "exp_range"]), gamma,
                  st.booleans(), mom, mom),
        st.builds(S.inverse_sqrt, n, st.one_of(st.none(), pos)),
        st.builds(S.warmup_stable_decay, n, n, n, st.sampled_from(["linear", "cosine", "1-sqrt"]),
                  frac, frac),
    )


def _composite(children):
    seq = st.lists(children, min_size=1, max_size=3).flatmap(
        lambda cs: st.lists(st.integers(0, 10), min_size=len(cs) - 1,
                            max_size=len(cs) - 1).map(lambda ms: S.sequential(cs, sorted(ms))))
    return st.one_of(st.builds(S.warmup, children, st.integers(0, 10), st.floats(0.0, 1.0)), seq)


@settings(max_examples=150, deadline=None)
@given(st.recursive(_leaf(), _composite, max_leaves=6),
       st.lists(st.integers(0, 80), min_size=5, max_size=10))
def test_random_nested_schedules(s, ts):
    assert_kernel_matches(s, ts + HUGE)
    assert S.from_spec(s.to_spec()) == s


# --------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("build, name", [
    (lambda: S.constant(-1.0), "factor"),
    (lambda: S.constant(float("nan")), "factor"),
    (lambda: S.constant(float("inf")), "factor"),
    (lambda: S.constant(True), "factor"),
    (lambda: S.linear(-0.1), "start_factor"),
    (lambda: S.linear(end_factor=float("nan")), "end_factor"),
    (lambda: S.linear(total_steps=-3), "total_steps"),
    (lambda: S.linear(total_steps=2.5), "total_steps"),
    (lambda: S.linear(total_steps=True), "total_steps"),
    (lambda: S.step_decay(0), "step_size"),
    (lambda: S.step_decay(3, 0.0), "gamma"),
    (lambda: S.step_decay(3, 1.5), "gamma"),
    (lambda: S.multistep([3, 1]), "milestones"),
    (lambda: S.multistep([-1, 2]), "milestones"),
    (lambda: S.multistep([1.5]), "milestones"),
    (lambda: S.multistep([1], -0.5), "gamma"),
    (lambda: S.exponential(0), "gamma"),
    (lambda: S.exponential(1.01), "gamma"),
    (lambda: S.polynomial(-1), "total_steps"),
    (lambda: S.polynomial(power=-1.0), "power"),
    (lambda: S.polynomial(end_factor=-0.5), "end_factor"),
    (lambda: S.cosine(-3), "total_steps"),
    (lambda: S.cosine(10, -0.1), "end_factor"),
    (lambda: S.cosine_restarts(0), "first_cycle_steps"),
    (lambda: S.cosine_restarts(3, 0), "cycle_mult"),
    (lambda: S.cosine_restarts(3, 1.5), "cycle_mult"),
    (lambda: S.one_cycle(0), "total_steps"),
    (lambda: S.one_cycle(10, pct_start=0.0), "pct_start"),
    (lambda: S.one_cycle(10, pct_start=1.0), "pct_start"),
    (lambda: S.one_cycle(10, anneal="cosine"), "anneal"),
    (lambda: S.one_cycle(10, div_factor=0.0), "div_factor"),
    (lambda: S.one_cycle(10, final_div_factor=float("inf")), "final_div_factor"),
    (lambda: S.one_cycle(10, three_phase=1), "three_phase"),
    (lambda: S.one_cycle(10, cycle_momentum="yes"), "cycle_momentum"),
    (lambda: S.one_cycle(10, base_momentum=-0.1), "base_momentum"),
    (lambda: S.one_cycle(10, max_momentum=1.0), "max_momentum"),
    (lambda: S.cyclic(-0.1), "base_factor"),
    (lambda: S.cyclic(0.1, -2), "step_size_up"),
    (lambda: S.cyclic(0.1, 2, 1.5), "step_size_down"),
    (lambda: S.cyclic(0.1, 0, 0), "step_size_up + step_size_down"),
    (lambda: S.cyclic(0.1, mode="triangle"), "mode"),
    (lambda: S.cyclic(0.1, gamma=2.0), "gamma"),
    (lambda: S.cyclic(0.1, max_momentum=float("nan")), "max_momentum"),
    (lambda: S.inverse_sqrt(-1), "warmup_steps"),
    (lambda: S.inverse_sqrt(5, timescale=0), "timescale"),
    (lambda: S.inverse_sqrt(5, timescale=-2.0), "timescale"),
    (lambda: S.warmup_stable_decay(-1, 0, 0), "warmup_steps"),
    (lambda: S.warmup_stable_decay(1, 0.5, 0), "stable_steps"),
    (lambda: S.warmup_stable_decay(1, 0, -4), "decay_steps"),
    (lambda: S.warmup_stable_decay(1, 0, 4, "exp"), "decay"),
    (lambda: S.warmup_stable_decay(1, 0, 4, end_factor=-1.0), "end_factor"),
    (lambda: S.warmup_stable_decay(1, 0, 4, start_factor=float("inf")), "start_factor"),
    (lambda: S.warmup(lambda t: 1.0, 5), "schedule"),
    (lambda: S.warmup(S.constant(), -5), "warmup_steps"),
    (lambda: S.warmup(S.constant(), 5, -0.5), "start_factor"),
    (lambda: S.sequential([S.constant(), lambda t: 0.5], [3]), "schedules"),
    (lambda: S.sequential([], []), "schedules"),
    (lambda: S.sequential(S.constant(), []), "schedules"),
    (lambda: S.sequential([S.constant(), S.constant()], [3, 5]), "milestones"),
    (lambda: S.sequential([S.constant(), S.constant(), S.constant()], [5, 3]), "milestones"),
])
def test_bad_arguments(build, name):
    with pytest.raises(ValueError, match=name.replace("+", r"\+")):
        build()


def test_bad_position():
    with pytest.raises(ValueError, match="t"):
        S.cosine(3)(-1)
    with pytest.raises(ValueError, match="t"):
        S.cosine(3)(1.5)


# --------------------------------------------------------------------------------------------
# Specs


@pytest.mark.parametrize("s", ALL_KINDS, ids=repr)
def test_spec_round_trip(s):
    spec = s.to_spec()
    assert S.from_spec(spec) == s and S.from_spec(spec).to_spec() == spec
    buffer = io.BytesIO()
    torch.save({"schedule": spec}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["schedule"]
    assert loaded == spec and S.from_spec(loaded) == s
    assert S.from_spec(loaded).rows() == s.rows()
    assert repr(S.from_spec(loaded)) == repr(s)


def test_repr_and_eq():
    s = S.warmup(S.cosine(10, end_factor=0.1), 5)
    assert repr(s) == ("warmup(schedule=cosine(total_steps=10, end_factor=0.1), warmup_steps=5, "
                       "start_factor=0.0)")
    assert s == S.warmup(S.cosine(10, 0.1), 5) and s != S.warmup(S.cosine(10), 5)
    assert hash(s) == hash(S.warmup(S.cosine(10, 0.1), 5))
    with pytest.raises(ValueError, match="kind"):
        S.from_spec({"kind": "bogus"})
