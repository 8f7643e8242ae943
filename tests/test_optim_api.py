"""The torch-facing contract: bad input raises before anything changes, state_dicts move
between torch.optim and fusedsched and resume mid-schedule, backend selection."""

import copy
import io
import math

import pytest
import torch

import fusedsched as fs
from fusedsched import schedules as S

from _torch_oracle import (OPTIMIZERS, OURS_CLASS, TORCH_CLASS, compare_states, grads_for,
                           make_params)
from conftest import BACKENDS

BAD_CONSTRUCTOR = [
    (fs.SGD, {"lr": -1.0}, "lr"), (fs.SGD, {"lr": float("nan")}, "lr"),
    (fs.SGD, {"lr": float("inf")}, "lr"), (fs.SGD, {"lr": torch.tensor(-0.1)}, "lr"),
    (fs.SGD, {"momentum": -0.1}, "momentum"), (fs.SGD, {"weight_decay": -1e-3}, "weight_decay"),
    (fs.SGD, {"dampening": 1.5}, "dampening"), (fs.SGD, {"nesterov": True}, "momentum"),
    (fs.Momentum, {"momentum": 0.0}, "momentum"),
    (fs.RMSprop, {"alpha": -0.5}, "alpha"), (fs.RMSprop, {"eps": -1e-8}, "eps"),
    (fs.RMSprop, {"momentum": -1.0}, "momentum"),
    (fs.Adam, {"betas": (1.0, 0.999)}, "betas"), (fs.Adam, {"betas": (0.9, -0.1)}, "betas"),
    (fs.Adam, {"betas": (0.9,)}, "betas"), (fs.Adam, {"eps": -1.0}, "eps"),
    (fs.AdamW, {"weight_decay": -0.01}, "weight_decay"), (fs.Adam, {"lr": "0.1"}, "lr"),
    (fs.Adam, {"amsgrad": "yes"}, "amsgrad"), (fs.Adam, {"backend": "cuda"}, "backend"),
    (fs.Adam, {"schedule": 3}, "schedule"),
]


@pytest.mark.parametrize("cls,kwargs,name", BAD_CONSTRUCTOR)
def test_bad_constructor_argument_names_it(cls, kwargs, name):
    p = torch.ones(2, requires_grad=True)
    with pytest.raises((ValueError, TypeError), match=name):
        cls([p], **kwargs)


def _snapshot(opt, params):
    return ([p.detach().clone() for p in params],
            {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in params if p in opt.state})


def _assert_unchanged(opt, params, snap):
    values, states = snap
    for p, v in zip(params, values):
        assert torch.equal(p.detach(), v)
    for p in params:
        if id(p) in states:
            for k, v in states[id(p)].items():
                assert torch.equal(opt.state[p][k], v), k
        else:
            assert p not in opt.state or not opt.state[p]


BAD_GRADS = {
    "sparse": lambda p: torch.ones_like(p).to_sparse(),
    "dtype": lambda p: torch.ones(p.shape, dtype=torch.float64),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", list(BAD_GRADS))
@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])
def test_bad_step_changes_nothing(backend, bad, name):
    good = [torch.ones(3, requires_grad=True)]
    other = [torch.ones(3, requires_grad=True)]
    opt = OURS_CLASS[name]([{"params": good}, {"params": other}], lr=0.1, backend=backend)
    good[0].grad = torch.ones(3)
    other[0].grad = torch.ones(3)
    opt.step()
    snap = _snapshot(opt, good + other)
    position = [g["schedule_position"].clone() for g in opt.param_groups]
    other[0].grad_dtype = None  # torch itself refuses a grad of another dtype otherwise
    other[0].grad = BAD_GRADS[bad](other[0])
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        opt.step()
    assert isinstance(info.value, (ValueError, TypeError))
    _assert_unchanged(opt, good + other, snap)
    assert all(torch.equal(g["schedule_position"], t) for g, t in zip(opt.param_groups, position))


def test_group_changed_to_bad_value_raises_at_step():
    p = torch.ones(2, requires_grad=True)
    opt = fs.Adam([p], lr=0.1)
    p.grad = torch.ones(2)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert p.tolist() == [1.0, 1.0] and not opt.state[p]


def test_add_param_group_validates_and_changes_nothing():
    opt = fs.Adam([torch.ones(2, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="eps"):
        opt.add_param_group({"params": [torch.ones(2, requires_grad=True)], "eps": -1.0})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [torch.ones(2, requires_grad=True)], "schedule": S.cosine(10)})
    assert opt.param_groups[1]["schedule"] == S.cosine(10)


def test_non_floating_parameter_raises():
    p = torch.ones(2, dtype=torch.int64)
    opt = fs.SGD([torch.ones(1, requires_grad=True)], lr=0.1)
    opt.param_groups[0]["params"].append(p)
    p.grad = torch.ones(2, dtype=torch.int64)
    with pytest.raises(TypeError, match="int64"):
        opt.step()


def test_explicit_backend_that_cannot_serve_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    p = torch.ones(2, requires_grad=True)
    opt = fs.SGD([p], lr=0.1, backend="triton")
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="triton"):
        opt.step()
    assert p.tolist() == [1.0, 1.0]


def test_env_backend_replaces_auto(monkeypatch):
    from fusedsched.optim import _backend
    monkeypatch.setenv("FUSEDSCHED_BACKEND", "reference")
    assert _backend.resolve("auto", torch.device("cpu")) == "reference"
    monkeypatch.setenv("FUSEDSCHED_BACKEND", "numba")
    assert _backend.resolve("auto", torch.device("cpu")) == "numba"
    assert _backend.resolve("reference", torch.device("cpu")) == "reference"
    monkeypatch.delenv("FUSEDSCHED_BACKEND")
    assert _backend.resolve("auto", torch.device("cpu")) == "numba"
    monkeypatch.setenv("FUSEDSCHED_BACKEND", "gpu")
    with pytest.raises(ValueError, match="gpu"):
        _backend.resolve("auto", torch.device("cpu"))


def _train(opt, params, steps, start=0):
    for k in range(start, start + steps):
        for p, g in zip(params, grads_for(k, params)):
            p.grad = g
        opt.step()


def _save_load(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


SCHEDULES = [S.warmup(S.cosine(30), 5), S.one_cycle(total_steps=40),
             S.cyclic(0.2, step_size_up=3, mode="triangular2")]


@pytest.mark.parametrize("saved_on,loaded_on", [(b, c) for b in BACKENDS for c in BACKENDS
                                                if b == c or "triton" not in (b, c) or b == "reference"])
@pytest.mark.parametrize("name,config", [("sgd", {"momentum": 0.9, "nesterov": True}),
                                         ("rmsprop", {"centered": True, "momentum": 0.5}),
                                         ("adam", {"amsgrad": True})])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=["warmup_cosine", "one_cycle", "cyclic"])
def test_resume_mid_schedule_bit_identical(saved_on, loaded_on, name, config, schedule):
    base = make_params(torch.float32, [(4, 3), (5,)])
    straight = [p.clone().requires_grad_() for p in base]
    opt = OURS_CLASS[name](straight, lr=0.05, schedule=schedule, backend=saved_on, **config)
    _train(opt, straight, 12)
    first = [p.clone().requires_grad_() for p in base]
    opt1 = OURS_CLASS[name](first, lr=0.05, schedule=schedule, backend=saved_on, **config)
    _train(opt1, first, 7)
    saved = _save_load(opt1.state_dict())
    resumed = [p.detach().clone().requires_grad_() for p in first]
    opt2 = OURS_CLASS[name](resumed, lr=0.05, schedule=S.constant(), backend=loaded_on, **config)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["schedule"] == schedule
    _train(opt2, resumed, 5, start=7)
    if saved_on == loaded_on:
        for p, q in zip(straight, resumed):
            assert torch.equal(p, q)
    else:
        for p, q in zip(straight, resumed):
            torch.testing.assert_close(p, q, rtol=2e-6, atol=1e-7)
    assert opt2.get_last_lr() == opt.get_last_lr()


@pytest.mark.parametrize("name,config", [("sgd", {"momentum": 0.9}), ("momentum", {}),
                                         ("rmsprop", {"centered": True, "momentum": 0.5}),
                                         ("adam", {"amsgrad": True}), ("adamw", {})])
@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
def test_state_dict_between_torch_and_fusedsched(name, config, direction):
    base = make_params(torch.float64, [(4, 3), (5,), (0,)])
    torch_config = OPTIMIZERS[name].torch_kwargs(config)
    make_torch = lambda ps: TORCH_CLASS[name](ps, lr=0.05, **torch_config)
    make_ours = lambda ps: OURS_CLASS[name](ps, lr=0.05, **config)
    first, second = (make_torch, make_ours) if direction == "torch_to_ours" else (make_ours, make_torch)
    straight = [p.clone().requires_grad_() for p in base]
    ref_opt = make_torch(straight)
    _train(ref_opt, straight, 10)
    a = [p.clone().requires_grad_() for p in base]
    opt_a = first(a)
    _train(opt_a, a, 6)
    b = [p.detach().clone().requires_grad_() for p in a]
    opt_b = second(b)
    opt_b.load_state_dict(_save_load(opt_a.state_dict()))
    _train(opt_b, b, 4, start=6)
    for p, q in zip(straight, b):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)


def test_load_state_dict_mismatch_changes_nothing():
    p = [torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)]
    opt = fs.Adam(p, lr=0.1)
    _train(opt, p, 2)
    snap = _snapshot(opt, p)
    sd = opt.state_dict()
    other = fs.Adam([torch.ones(3, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="parameters"):
        opt.load_state_dict(other.state_dict())
    two = fs.Adam([{"params": [torch.ones(3, requires_grad=True)]},
                   {"params": [torch.ones(2, requires_grad=True)]}], lr=0.1)
    with pytest.raises(ValueError, match="groups"):
        opt.load_state_dict(two.state_dict())
    bad = fs.Adam([torch.ones(4, requires_grad=True), torch.ones(2, requires_grad=True)], lr=0.1)
    _train(bad, bad.param_groups[0]["params"], 1)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad.state_dict())
    _assert_unchanged(opt, p, snap)
    opt.load_state_dict(sd)


def test_huge_step_count_loads_and_continues():
    """Per-parameter steps are float64: exact past 2**24, where torch's float32 stops."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = fs.Adam([p], lr=0.1)
    _train(opt, [p], 1)
    sd = opt.state_dict()
    sd["state"][0]["step"] = torch.tensor(2.0 ** 24 + 1, dtype=torch.float64)
    opt.load_state_dict(sd)
    _train(opt, [p], 3)
    assert opt.state[p]["step"].item() == 2.0 ** 24 + 4
    assert math.isfinite(p.item())


@pytest.mark.parametrize("bad", [-1.0, 1.5, float("nan"), 2.0 ** 60, "three"])
def test_load_state_dict_rejects_bad_step_and_changes_nothing(bad):
    p = [torch.ones(3, requires_grad=True)]
    opt = fs.Adam(p, lr=0.1)
    _train(opt, p, 2)
    snap = _snapshot(opt, p)
    sd = copy.deepcopy(opt.state_dict())    # torch's state_dict shares the live state dicts
    sd["state"][0]["step"] = bad if isinstance(bad, str) else torch.tensor(bad, dtype=torch.float64)
    with pytest.raises((ValueError, TypeError), match="step"):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, p, snap)


@pytest.mark.parametrize("bad", [None, [], {"state": {}}, {"param_groups": []}])
def test_load_state_dict_rejects_malformed(bad):
    opt = fs.SGD([torch.ones(3, requires_grad=True)], lr=0.1)
    with pytest.raises(TypeError, match="state_dict"):
        opt.load_state_dict(bad)


@pytest.mark.parametrize("bad", [float("nan"), -0.5, "x", float("inf")])
def test_host_callable_bad_factor_changes_nothing(bad):
    """A host callable is evaluated while checking, before any group is written."""
    a = [torch.ones(2, requires_grad=True)]
    b = [torch.ones(2, requires_grad=True)]
    opt = fs.SGD([{"params": a}, {"params": b, "schedule": lambda t: bad}], lr=0.1)
    for p in a + b:
        p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="schedule"):
        opt.step()
    assert a[0].tolist() == [1.0, 1.0]
    assert all(g["schedule_position"].item() == 0 for g in opt.param_groups)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multistep_with_a_thousand_milestones(backend):
    """Composites compile to balanced SWITCH trees: 1000 milestones neither overflow
    Python's recursion (a chain did) nor change a value, in every kernel. Exact: each leaf
    is a constant ``gamma ** k`` computed once in Python, which every kernel returns as is."""
    s = S.multistep(list(range(1, 3000, 3)), gamma=0.999)
    for t in [0, 3, 4, 1500, 2998, 2999, 5000]:
        p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = fs.SGD([p], lr=1.0, schedule=s, backend=backend)
        opt.param_groups[0]["schedule_position"] = torch.tensor(float(t), dtype=torch.float64)
        p.grad = -torch.ones(1, dtype=torch.float64)
        opt.step()
        assert p.item() == s(t)


@pytest.mark.parametrize("corrupt", ["missing", "not_a_tensor"])
def test_load_state_dict_rejects_incomplete_state(corrupt):
    """A state missing a moment (or holding a non-tensor) is refused on load: torch would
    fail at the next step, and recreating it silently would bias the update."""
    p = [torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)]
    opt = fs.Adam(p, lr=0.1)
    _train(opt, p, 2)
    snap = _snapshot(opt, p)
    sd = copy.deepcopy(opt.state_dict())
    if corrupt == "missing":
        del sd["state"][1]["exp_avg_sq"]
    else:
        sd["state"][1]["exp_avg_sq"] = "x"
    with pytest.raises((ValueError, TypeError), match="exp_avg_sq"):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, p, snap)
