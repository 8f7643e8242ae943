"""The Numba backend's choice between the thread pool and the calling thread for steps above
SERIAL_MAX (``kernels/numba/_host.py``: ``use_pool`` / ``timed``): it follows the measured
wall time of each path, probing the other one every PROBE_EVERY calls, and the choice never
changes a bit of the result (both paths run the same arithmetic per element).

The clock is a fake one here (a step "takes" what the test says for the path it ran on), so
the tests assert the rule, not this machine's timings.
"""

import pytest
import torch

import fusedsched as fs
from fusedsched.kernels.numba import _host, adam, rmsprop, sgd

MODULES = {"adam": adam, "sgd": sgd, "rmsprop": rmsprop}
MAKERS = {"adam": lambda ps: fs.Adam(ps, lr=1e-2, backend="numba"),
          "sgd": lambda ps: fs.SGD(ps, lr=1e-2, momentum=0.9, backend="numba"),
          "rmsprop": lambda ps: fs.RMSprop(ps, lr=1e-2, backend="numba")}


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    # 4 x 300: above the SERIAL_MAX of these tests (``_small_serial_max``), so the pool is
    # the rule
    return [torch.nn.Parameter(torch.randn(300, generator=gen)) for _ in range(4)]


@pytest.fixture(autouse=True)
def _small_serial_max(monkeypatch):
    """Small steps past SERIAL_MAX: the thread pool's path with tensors that step fast."""
    for module in MODULES.values():
        monkeypatch.setattr(module, "SERIAL_MAX", 1000)


def _fake_paths(monkeypatch, module, serial_ns=None, pool_ns=None, cost=None):
    """Record every chunk ``use_pool`` returns in ``module`` (the list returned), and give
    each launch a wall time: ``serial_ns`` or ``pool_ns`` for the path it ran on, or
    ``cost(chosen)`` (``chosen``: the chunks so far, the launch's last)."""
    real = _host.use_pool
    chosen = []
    clock = {"t": 0}
    if cost is None:
        def cost(chosen):
            return serial_ns if chosen[-1] == 0 else pool_ns

    def use_pool(offsets, serial_max):
        chosen.append(real(offsets, serial_max))
        return chosen[-1]

    def perf_counter_ns():
        # called at a launch's start and end: the end's increment is the launch's time
        clock["t"] += cost(chosen)
        return clock["t"]

    monkeypatch.setattr(_host, "_choices", {})
    monkeypatch.setattr(module, "use_pool", use_pool)
    monkeypatch.setattr(module, "perf_counter_ns", perf_counter_ns)
    return chosen


def _step(opt, params, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def _probes(indices):
    """The first calls of the runs of consecutive ``indices`` (a probe is PROBE_CALLS
    consecutive calls), each run PROBE_CALLS long but perhaps the last."""
    starts = [i for i in indices if i - 1 not in indices]
    runs = [len([j for j in indices if s <= j < s + _host.PROBE_CALLS]) for s in starts]
    assert all(r == _host.PROBE_CALLS for r in runs[:-1]), runs
    return starts


def _doubling(starts):
    """Whether the gaps between consecutive probe ``starts`` double (up to PROBE_MAX)."""
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    return len(gaps) >= 2 and all(b == min(2 * a, _host.PROBE_MAX)
                                  for a, b in zip(gaps, gaps[1:]))


@pytest.mark.parametrize("name", list(MODULES))
def test_a_slow_pool_hands_the_step_to_the_calling_thread(name, monkeypatch):
    probe, steps = _host.PROBE_EVERY, 12 * _host.PROBE_EVERY
    params, twin = _params(), _params()
    reference = MAKERS[name](twin)
    _step(reference, twin, steps)          # the real clock: whichever path wins here

    chosen = _fake_paths(monkeypatch, MODULES[name], serial_ns=1_000, pool_ns=10_000)
    opt = MAKERS[name](params)
    _step(opt, params, steps)
    serial = [i for i, c in enumerate(chosen) if c == 0]
    # the pool runs until the calling thread's first probe (calls 32-35) has timed it;
    # then the calling thread runs, the pool only in its probes, ever rarer
    end = probe + _host.PROBE_CALLS
    assert serial[:_host.PROBE_CALLS] == list(range(probe, end))
    assert all(c for c in chosen[:probe])
    pool = [i for i, c in enumerate(chosen) if c and i >= end]
    starts = _probes(pool)
    assert starts[0] == end + probe and len(starts) <= 4 and _doubling(starts)
    # the same bits whichever path ran each step
    assert all(torch.equal(a, b) for a, b in zip(params, twin))
    for p, q in zip(params, twin):
        assert opt.state[p].keys() == reference.state[q].keys()
        for key, value in opt.state[p].items():
            assert torch.equal(value, reference.state[q][key]), key


@pytest.mark.parametrize("name", list(MODULES))
def test_a_fast_pool_keeps_the_step_and_probes_the_calling_thread(name, monkeypatch):
    params = _params()
    chosen = _fake_paths(monkeypatch, MODULES[name], serial_ns=10_000, pool_ns=1_000)
    _step(MAKERS[name](params), params, 16 * _host.PROBE_EVERY)
    starts = _probes([i for i, c in enumerate(chosen) if c == 0])
    assert starts[0] == _host.PROBE_EVERY and len(starts) == 4 and _doubling(starts)


def test_a_probe_counts_its_warm_calls_only(monkeypatch):
    """The first call of a probe of the pool wakes its threads: its time is left out."""
    params = _params()

    def cost(chosen):
        # the calling thread 1 us; the pool 500 ns warm, 100 us after the calling thread ran
        if chosen[-1] == 0:
            return 1_000
        return 100_000 if len(chosen) > 1 and chosen[-2] == 0 else 500

    chosen = _fake_paths(monkeypatch, adam, cost=cost)
    opt = fs.Adam(params, lr=1e-2, backend="numba")
    _step(opt, params, 8 * _host.PROBE_EVERY)
    # the calling thread is probed and loses; the pool keeps the step: the calling thread
    # runs in its probes only (the first pool call after each costs 100 us, uncounted)
    starts = _probes([i for i, c in enumerate(chosen) if c == 0])
    assert starts[0] == _host.PROBE_EVERY and len(starts) == 3 and _doubling(starts)


def test_the_choice_follows_a_change_of_load(monkeypatch):
    """The pool slow at first (other work on the cores), then fast again: the next probe of
    the pool brings the step back to it, and a slow pool again sends it away."""
    params = _params()
    load = {"pool_ns": 10_000}
    chosen = _fake_paths(monkeypatch, adam,
                         cost=lambda chosen: 1_000 if chosen[-1] == 0 else load["pool_ns"])
    opt = fs.Adam(params, lr=1e-2, backend="numba")
    window = _host.PROBE_EVERY - 1          # calls between two probes, at the least
    for pool_ns, runs_on_pool in ((10_000, False), (100, True), (10_000, False)):
        load["pool_ns"] = pool_ns
        _step(opt, params, 40 * _host.PROBE_EVERY)
        # the expected path runs but for at most one probe of the other
        assert sum(bool(c) == runs_on_pool for c in chosen[-window:]) >= (
            window - _host.PROBE_CALLS)


def test_steps_at_most_serial_max_never_time_or_probe(monkeypatch):
    params = [torch.nn.Parameter(torch.randn(1000))]     # = SERIAL_MAX
    chosen = _fake_paths(monkeypatch, adam, serial_ns=10_000, pool_ns=1)
    _step(fs.Adam(params, lr=1e-2, backend="numba"), params, 2 * _host.PROBE_EVERY)
    assert set(chosen) == {0} and _host._choices == {}


def test_a_skipped_step_is_not_timed(monkeypatch):
    """found_inf: the kernel walks nothing, so its time says nothing of either path."""
    params = _params()
    _fake_paths(monkeypatch, adam, serial_ns=1, pool_ns=1)
    opt = fs.Adam(params, lr=1e-2, backend="numba")
    for p in params:
        p.grad = torch.ones_like(p)
    opt.found_inf = torch.ones(())
    for _ in range(3):
        opt.step()
    assert _host._choices == {}


def test_each_table_keeps_its_own_record(monkeypatch):
    """Two optimizers of the same shape, different algorithms: the calling thread wins
    Adam's steps and the pool SGD's, each by its own measurements (a record shared by
    shape would mix the two)."""
    adam_params, sgd_params = _params(), _params(seed=1)
    adam_chosen = _fake_paths(monkeypatch, adam, serial_ns=1_000, pool_ns=10_000)
    sgd_chosen = []
    real = _host.use_pool
    clock = {"t": 0}

    def sgd_use_pool(offsets, serial_max):
        sgd_chosen.append(real(offsets, serial_max))
        return sgd_chosen[-1]

    def sgd_clock():
        clock["t"] += 10_000 if sgd_chosen[-1] == 0 else 1_000
        return clock["t"]

    monkeypatch.setattr(sgd, "use_pool", sgd_use_pool)
    monkeypatch.setattr(sgd, "perf_counter_ns", sgd_clock)
    opts = MAKERS["adam"](adam_params), MAKERS["sgd"](sgd_params)
    for _ in range(8 * _host.PROBE_EVERY):
        _step(opts[0], adam_params, 1)
        _step(opts[1], sgd_params, 1)
    assert len(_host._choices) == 2
    window = _host.PROBE_EVERY - 1
    assert sum(c == 0 for c in adam_chosen[-window:]) >= window - _host.PROBE_CALLS
    assert sum(c != 0 for c in sgd_chosen[-window:]) >= window - _host.PROBE_CALLS


def test_the_choice_runs_in_a_compiled_step(monkeypatch):
    """torch.compile traces the operator call, not its Numba implementation: the choice is
    made at run time, as in an eager step, and the result is the eager twin's."""
    params, twin = _params(), _params()
    chosen = _fake_paths(monkeypatch, adam, serial_ns=1_000, pool_ns=10_000)
    opt, reference = MAKERS["adam"](params), MAKERS["adam"](twin)
    step = torch.compile(opt.step, fullgraph=True)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4 * _host.PROBE_EVERY):
        for p, q in zip(params, twin):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        step()
        reference.step()
    # the compiled twin's calls alternate with the eager one's in ``chosen``; each has its
    # own record (its own table), and both hand the step to the calling thread
    assert len(_host._choices) == 2
    window = 2 * (_host.PROBE_EVERY - 1)
    assert sum(c == 0 for c in chosen[-window:]) >= window - 2 * _host.PROBE_CALLS
    assert all(torch.equal(a, b) for a, b in zip(params, twin))
