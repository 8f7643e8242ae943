"""Reliability: every bad input raises naming the argument and its value, before anything is
written; no NaN or inf where float64 is finite; long runs (t up to 2**31, steps past 2**24);
and the deliberate deviations from torch, each held by a test."""

import io
import math

import pytest
import torch

import fusedsched as fs
from fusedsched import schedules as S
from fusedsched.cli.optim_db import DTYPES as DB_DTYPES, OPTIMIZERS

from conftest import BACKENDS

NAN, INF = float("nan"), float("inf")
CLASSES = {name: info.cls for name, info in OPTIMIZERS.items()}


def _p(n=2, dtype=torch.float32):
    return torch.ones(n, dtype=dtype, requires_grad=True)


# ------------------------------------------------------------------------------------------
# 1. Validation: constructors


# (class, bad kwargs, the argument name the message must carry, the value's repr in it)
BAD = []
for _name, _cls in CLASSES.items():
    BAD += [(_cls, {"lr": -1.0}, "lr", "-1.0"), (_cls, {"lr": NAN}, "lr", "nan"),
            (_cls, {"lr": INF}, "lr", "inf"), (_cls, {"lr": -INF}, "lr", "-inf"),
            (_cls, {"lr": torch.tensor(NAN)}, "lr", "nan"),
            (_cls, {"lr": torch.tensor(-0.5)}, "lr", "-0.5"),
            (_cls, {"lr": torch.tensor([0.1, 0.2])}, "lr", "(2,)"),
            (_cls, {"lr": torch.tensor(1)}, "lr", "int64"),
            (_cls, {"lr": "0.1"}, "lr", "'0.1'"), (_cls, {"lr": None}, "lr", "None"),
            (_cls, {"lr": True}, "lr", "True"), (_cls, {"lr": 1j}, "lr", "1j"),
            (_cls, {"weight_decay": -0.1}, "weight_decay", "-0.1"),
            (_cls, {"weight_decay": NAN}, "weight_decay", "nan"),
            (_cls, {"weight_decay": INF}, "weight_decay", "inf"),
            (_cls, {"weight_decay": torch.tensor(0.1)}, "weight_decay", "tensor"),
            (_cls, {"maximize": 1}, "maximize", "1"), (_cls, {"maximize": None}, "maximize", "None"),
            (_cls, {"schedule": "cosine"}, "schedule", "'cosine'"),
            (_cls, {"schedule": 3}, "schedule", "3"),
            (_cls, {"backend": "cuda"}, "backend", "'cuda'")]
for _cls in (fs.SGD, fs.Momentum):
    BAD += [(_cls, {"momentum": -0.1}, "momentum", "-0.1"), (_cls, {"momentum": NAN}, "momentum", "nan"),
            (_cls, {"momentum": INF}, "momentum", "inf"),
            (_cls, {"momentum": torch.tensor(-0.1)}, "momentum", "-0.1"),
            (_cls, {"dampening": 1.5}, "dampening", "1.5"), (_cls, {"dampening": -0.1}, "dampening", "-0.1"),
            (_cls, {"dampening": NAN}, "dampening", "nan"),
            (_cls, {"nesterov": 1}, "nesterov", "1"),
            (_cls, {"nesterov": True, "dampening": 0.1}, "nesterov", "dampening=0.1")]
BAD += [(fs.SGD, {"nesterov": True}, "nesterov", "momentum=0.0"),
        (fs.SGD, {"nesterov": True, "momentum": 0.0}, "nesterov", "momentum=0.0"),
        (fs.Momentum, {"momentum": 0.0}, "momentum", "0.0"),
        (fs.Momentum, {"momentum": torch.tensor(0.0)}, "momentum", "tensor(0.")]
BAD += [(fs.RMSprop, {"alpha": -0.5}, "alpha", "-0.5"), (fs.RMSprop, {"alpha": NAN}, "alpha", "nan"),
        (fs.RMSprop, {"alpha": 1.5}, "alpha", "1.5"), (fs.RMSprop, {"alpha": INF}, "alpha", "inf"),
        (fs.RMSprop, {"eps": -1e-8}, "eps", "-1e-08"), (fs.RMSprop, {"eps": NAN}, "eps", "nan"),
        (fs.RMSprop, {"eps": INF}, "eps", "inf"), (fs.RMSprop, {"momentum": -1.0}, "momentum", "-1.0"),
        (fs.RMSprop, {"momentum": NAN}, "momentum", "nan"),
        (fs.RMSprop, {"centered": "yes"}, "centered", "'yes'")]
for _cls in (fs.Adam, fs.AdamW):
    BAD += [(_cls, {"betas": (1.0, 0.999)}, "betas", "1.0"), (_cls, {"betas": (0.9, -0.1)}, "betas", "-0.1"),
            (_cls, {"betas": (NAN, 0.999)}, "betas", "nan"), (_cls, {"betas": (0.9, INF)}, "betas", "inf"),
            (_cls, {"betas": (0.9,)}, "betas", "(0.9,)"), (_cls, {"betas": (0.9, 0.99, 0.9)}, "betas", "0.99"),
            (_cls, {"betas": 0.9}, "betas", "0.9"), (_cls, {"betas": (0.9, "x")}, "betas", "'x'"),
            (_cls, {"betas": (torch.tensor(1.5), 0.9)}, "betas", "1.5"),
            (_cls, {"eps": -1.0}, "eps", "-1.0"), (_cls, {"eps": NAN}, "eps", "nan"),
            (_cls, {"eps": INF}, "eps", "inf"), (_cls, {"amsgrad": "yes"}, "amsgrad", "'yes'")]
BAD += [(fs.Adam, {"decoupled_weight_decay": 1}, "decoupled_weight_decay", "1")]


@pytest.mark.parametrize("cls,kwargs,name,shown", BAD,
                         ids=[f"{c.__name__}-{k}" for c, k, _, _ in BAD])
def test_bad_constructor_argument_names_it_and_its_value(cls, kwargs, name, shown):
    with pytest.raises((ValueError, TypeError)) as info:
        cls([_p()], **kwargs)
    message = str(info.value)
    assert name in message and shown in message, message


@pytest.mark.parametrize("cls,kwargs,name,shown", BAD[::3],
                         ids=[f"{c.__name__}-{k}" for c, k, _, _ in BAD[::3]])
def test_bad_add_param_group_adds_nothing(cls, kwargs, name, shown):
    if name == "backend":
        return  # not a group key
    opt = cls([_p()], lr=0.1)
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises((ValueError, TypeError), match=name):
        opt.add_param_group({"params": [_p()], **kwargs})
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0].keys() == before[0].keys()


@pytest.mark.parametrize("name", list(CLASSES))
def test_good_edge_values_accepted(name):
    """What torch accepts stays accepted: lr 0, eps 0, weight_decay 0, tensor lr/betas,
    list betas, numpy scalars."""
    import numpy as np
    cls = CLASSES[name]
    cls([_p()], lr=0.0)
    cls([_p()], lr=torch.tensor(0.1))
    cls([_p()], lr=np.float64(0.1))
    if name in ("adam", "adamw"):
        cls([_p()], betas=[0.0, 0.0], eps=0.0)
        cls([_p()], betas=(torch.tensor(0.9), torch.tensor(0.99)))
    if name == "rmsprop":
        cls([_p()], alpha=0.0, eps=0.0)
        cls([_p()], alpha=1.0)


# ------------------------------------------------------------------------------------------
# 1. Validation: schedules

BAD_SCHEDULES = [
    (lambda: S.constant(-1.0), "factor"), (lambda: S.constant(NAN), "factor"),
    (lambda: S.constant(INF), "factor"), (lambda: S.constant("1"), "factor"),
    (lambda: S.linear(total_steps=-1), "total_steps"), (lambda: S.linear(total_steps=2.0), "total_steps"),
    (lambda: S.linear(total_steps=True), "total_steps"), (lambda: S.linear(total_steps=2 ** 60), "total_steps"),
    (lambda: S.linear(start_factor=NAN), "start_factor"), (lambda: S.linear(end_factor=-0.1), "end_factor"),
    (lambda: S.step_decay(0), "step_size"), (lambda: S.step_decay(3, gamma=0.0), "gamma"),
    (lambda: S.step_decay(3, gamma=1.5), "gamma"), (lambda: S.step_decay(3, gamma=NAN), "gamma"),
    (lambda: S.multistep([3, 1]), "milestones"), (lambda: S.multistep([-1, 2]), "milestones"),
    (lambda: S.multistep([1.5]), "milestones"), (lambda: S.multistep("12"), "milestones"),
    (lambda: S.multistep(5), "milestones"), (lambda: S.multistep([1], gamma=0), "gamma"),
    (lambda: S.multistep([1, 2], gamma=1e300), "gamma"),
    (lambda: S.exponential(1.01), "gamma"), (lambda: S.exponential(0.0), "gamma"),
    (lambda: S.exponential(INF), "gamma"),
    (lambda: S.polynomial(power=-1.0), "power"), (lambda: S.polynomial(total_steps=-2), "total_steps"),
    (lambda: S.cosine(-5), "total_steps"), (lambda: S.cosine(5, end_factor=NAN), "end_factor"),
    (lambda: S.cosine_restarts(0), "first_cycle_steps"),
    (lambda: S.cosine_restarts(5, cycle_mult=0), "cycle_mult"),
    (lambda: S.cosine_restarts(5, cycle_mult=1.5), "cycle_mult"),
    (lambda: S.one_cycle(0), "total_steps"), (lambda: S.one_cycle(10, pct_start=0.0), "pct_start"),
    (lambda: S.one_cycle(10, pct_start=1.0), "pct_start"), (lambda: S.one_cycle(10, pct_start=NAN), "pct_start"),
    (lambda: S.one_cycle(10, anneal="cosine"), "anneal"), (lambda: S.one_cycle(10, div_factor=0), "div_factor"),
    (lambda: S.one_cycle(10, div_factor=1e-320), "div_factor"),
    (lambda: S.one_cycle(10, final_div_factor=-1), "final_div_factor"),
    (lambda: S.one_cycle(10, base_momentum=1.0), "base_momentum"),
    (lambda: S.one_cycle(10, max_momentum=-0.1), "max_momentum"),
    (lambda: S.one_cycle(10, three_phase=1), "three_phase"),
    (lambda: S.one_cycle(10, cycle_momentum="no"), "cycle_momentum"),
    (lambda: S.cyclic(-0.1), "base_factor"), (lambda: S.cyclic(0.1, step_size_up=0, step_size_down=0),
                                              "step_size"),
    (lambda: S.cyclic(0.1, step_size_up=-1), "step_size_up"),
    (lambda: S.cyclic(0.1, step_size_down=2.5), "step_size_down"),
    (lambda: S.cyclic(0.1, mode="triangular3"), "mode"), (lambda: S.cyclic(0.1, gamma=1.1), "gamma"),
    (lambda: S.cyclic(0.1, max_momentum=1.0), "max_momentum"),
    (lambda: S.inverse_sqrt(-1), "warmup_steps"), (lambda: S.inverse_sqrt(3, timescale=0), "timescale"),
    (lambda: S.inverse_sqrt(3, timescale=INF), "timescale"),
    (lambda: S.warmup_stable_decay(-1, 0, 0), "warmup_steps"),
    (lambda: S.warmup_stable_decay(1, -1, 0), "stable_steps"),
    (lambda: S.warmup_stable_decay(1, 1, 1.5), "decay_steps"),
    (lambda: S.warmup_stable_decay(1, 1, 1, decay="exp"), "decay"),
    (lambda: S.warmup_stable_decay(1, 1, 1, end_factor=-1), "end_factor"),
    (lambda: S.warmup(lambda t: 1.0, 3), "schedule"), (lambda: S.warmup(0.5, 3), "schedule"),
    (lambda: S.warmup(S.constant(), -3), "warmup_steps"),
    (lambda: S.warmup(S.constant(), 3, start_factor=NAN), "start_factor"),
    (lambda: S.sequential([], []), "schedules"), (lambda: S.sequential(S.constant(), []), "schedules"),
    (lambda: S.sequential([S.constant(), lambda t: 1.0], [3]), "schedules"),
    (lambda: S.sequential([S.constant(), S.constant()], [3, 5]), "milestones"),
    (lambda: S.sequential([S.constant(), S.constant()], []), "milestones"),
    (lambda: S.sequential([S.constant(), S.constant(), S.constant()], [5, 3]), "milestones"),
    (lambda: S.from_spec({"kind": "eval", "code": "1"}), "kind"),
    (lambda: S.from_spec("constant()"), "spec"),
    (lambda: S.from_spec({"kind": "constant", "factor": 1.0, "extra": 1}), "extra"),
    (lambda: S.from_spec({"kind": "sequential"}), "schedules"),
    (lambda: S.from_spec({"kind": "constant", "factor": -1.0}), "factor"),
]


@pytest.mark.parametrize("make,name", BAD_SCHEDULES, ids=[f"{i}-{n}" for i, (_, n) in
                                                         enumerate(BAD_SCHEDULES)])
def test_bad_schedule_raises_valueerror_naming_it(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_from_spec_refuses_deep_nesting():
    spec = {"kind": "constant", "factor": 1.0}
    for _ in range(100):
        spec = {"kind": "warmup", "schedule": spec, "warmup_steps": 1, "start_factor": 0.0}
    with pytest.raises(ValueError, match="nested"):
        S.from_spec(spec)


@pytest.mark.parametrize("t", [-1, 1.5, True, "3", None])
def test_bad_position_raises(t):
    with pytest.raises(ValueError, match="position"):
        S.cosine(10)(t)


# ------------------------------------------------------------------------------------------
# 1. step(): everything checked before anything is written


def _state_snapshot(opt):
    params = [p for g in opt.param_groups for p in g["params"]]
    return ([p.detach().clone() for p in params],
            [{k: (v.clone() if isinstance(v, torch.Tensor) else v)
              for k, v in opt.state[p].items()} if p in opt.state else None for p in params],
            [torch.as_tensor(g["schedule_position"]).clone() for g in opt.param_groups],
            [{k: v for k, v in g.items() if k not in ("params", "schedule_position")}
             for g in opt.param_groups])


def _assert_same(opt, snap):
    values, states, positions, groups = snap
    params = [p for g in opt.param_groups for p in g["params"]]
    for p, v, s in zip(params, values, states):
        if p.device.type != "meta":
            assert torch.equal(p.detach(), v)
        if s is None:
            assert not opt.state.get(p)
        else:
            assert opt.state[p].keys() == s.keys()
            for k, v in s.items():
                assert torch.equal(opt.state[p][k], v), k
    for g, t in zip(opt.param_groups, positions):
        assert torch.equal(torch.as_tensor(g["schedule_position"]), t) or (
            t.isnan().all() and torch.as_tensor(g["schedule_position"]).isnan().all())


def _sparse(opt, bad):
    bad.grad = torch.ones_like(bad).to_sparse()


def _grad_dtype(opt, bad):
    bad.grad_dtype = None   # torch refuses a grad of another dtype otherwise
    bad.grad = torch.ones(bad.shape, dtype=torch.float64)


def _int_param(opt, bad):
    p = torch.ones(3, dtype=torch.int32)
    p.grad = torch.ones(3, dtype=torch.int32)
    opt.param_groups[1]["params"].append(p)


def _other_device(opt, bad):
    p = torch.ones(3, device="meta", requires_grad=True)
    p.grad = torch.ones(3, device="meta")
    opt.param_groups[1]["params"].append(p)


def _group_value(key, value):
    def apply(opt, bad):
        opt.param_groups[1][key] = value
    apply.__name__ = f"group_{key}"
    return apply


def _position(value):
    def apply(opt, bad):
        opt.param_groups[1]["schedule_position"] = value
    apply.__name__ = "position"
    return apply


BAD_STEPS = {
    "sparse": (_sparse, "sparse"), "grad_dtype": (_grad_dtype, "float64"),
    "int_param": (_int_param, "int32"), "two_devices": (_other_device, "device"),
    "lr_nan": (_group_value("lr", NAN), "lr"), "lr_negative": (_group_value("lr", -0.1), "lr"),
    "weight_decay_inf": (_group_value("weight_decay", INF), "weight_decay"),
    "maximize_str": (_group_value("maximize", "yes"), "maximize"),
    "schedule_int": (_group_value("schedule", 3), "schedule"),
    "position_negative": (_position(torch.tensor(-1.0, dtype=torch.float64)), "schedule_position"),
    "position_nan": (_position(torch.tensor(NAN, dtype=torch.float64)), "schedule_position"),
    "position_float": (_position(3.0), "schedule_position"),
}
SPECIFIC = {"sgd": ("momentum", -1.0), "rmsprop": ("alpha", 2.0), "adam": ("betas", (0.9, 1.0))}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", list(BAD_STEPS) + ["specific"])
@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])
def test_failed_step_changes_nothing(backend, bad, name):
    """Two groups, each stepped once; then the second group goes bad: step() raises
    ValueError/TypeError naming the problem, and no parameter, state or position changed
    (the first group, checked and valid, is not written either)."""
    good, other = _p(3), _p(3)
    opt = CLASSES[name]([{"params": [good]}, {"params": [other]}], lr=0.1,
                        **({"momentum": 0.9} if name == "sgd" else {}), backend=backend)
    for _ in range(2):
        good.grad, other.grad = torch.full((3,), 0.5), torch.full((3,), -0.25)
        opt.step()
    good.grad, other.grad = torch.ones(3), torch.ones(3)
    if bad == "specific":
        apply, word = _group_value(*SPECIFIC[name]), SPECIFIC[name][0]
    else:
        apply, word = BAD_STEPS[bad]
    apply(opt, other)
    snap = _state_snapshot(opt)
    with pytest.raises((ValueError, TypeError)) as info:
        opt.step()
    assert word in str(info.value), str(info.value)
    _assert_same(opt, snap)


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])
def test_failed_first_step_creates_no_state(name):
    a, b = _p(3), _p(3)
    opt = CLASSES[name]([a, b], lr=0.1)
    a.grad = torch.ones(3)
    b.grad_dtype = None
    b.grad = torch.ones(3, dtype=torch.float64)
    with pytest.raises(TypeError):
        opt.step()
    assert not opt.state.get(a) and not opt.state.get(b)
    assert opt.param_groups[0]["schedule_position"].item() == 0


# ------------------------------------------------------------------------------------------
# 1. load_state_dict: checked before anything changes


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


BAD_LOADS = {
    "lr_nan": lambda sd: sd["param_groups"][0].update(lr=NAN),
    "schedule_spec": lambda sd: sd["param_groups"][0].update(
        schedule={"kind": "cosine", "total_steps": -3}),
    "schedule_code": lambda sd: sd["param_groups"][0].update(
        schedule={"kind": "__import__('os').system('true')"}),
    "position_negative": lambda sd: sd["param_groups"][0].update(
        schedule_position=torch.tensor(-2.0, dtype=torch.float64)),
    "position_fraction": lambda sd: sd["param_groups"][0].update(
        schedule_position=torch.tensor(2.5, dtype=torch.float64)),
    "state_shape": lambda sd: sd["state"][0].update(exp_avg=torch.zeros(7)),
    "flag": lambda sd: sd["param_groups"][0].update(amsgrad="yes"),
}


@pytest.mark.parametrize("bad", list(BAD_LOADS))
def test_bad_load_state_dict_changes_nothing(bad):
    p = _p(3)
    opt = fs.Adam([p], lr=0.1, schedule=S.cosine(10))
    for _ in range(2):
        p.grad = torch.ones(3)
        opt.step()
    sd = _roundtrip(opt.state_dict())
    BAD_LOADS[bad](sd)
    snap = _state_snapshot(opt)
    with pytest.raises((ValueError, TypeError)):
        opt.load_state_dict(sd)
    _assert_same(opt, snap)
    assert opt.param_groups[0]["schedule"] == S.cosine(10)
    assert opt.param_groups[0]["lr"] == 0.1


# ------------------------------------------------------------------------------------------
# 2. NaN-safe numerics: optimizer x flags x dtype x extreme gradients

SWEEP = [("sgd", {}), ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
         ("sgd", {"momentum": 0.9, "dampening": 0.5, "maximize": True}),
         ("rmsprop", {}), ("rmsprop", {"centered": True}),
         ("rmsprop", {"centered": True, "momentum": 0.9, "weight_decay": 0.1}),
         ("adam", {}), ("adam", {"amsgrad": True, "weight_decay": 0.1}),
         ("adam", {"decoupled_weight_decay": True, "weight_decay": 0.1, "maximize": True}),
         ("adamw", {"amsgrad": True})]
DTYPES = list(DB_DTYPES)
TORCH = {name: info.torch_cls for name, info in OPTIMIZERS.items()}


def _extreme_grads(dtype):
    """One gradient per element: 0, the smallest subnormal, the smallest normal, 1, and a
    huge value, in both signs, constant over steps (the centered RMSprop cancellation).
    Huge: the state must be able to hold it (exp_avg_sq ~ g**2, a momentum buffer ~ 10 g in
    the storage dtype): float16 state overflows from g ~ 256 on, in torch as here."""
    info = torch.finfo(dtype)
    huge = {torch.float64: 1e150, torch.float32: 1e18, torch.bfloat16: 1e18,
            torch.float16: 200.0}[dtype]
    subnormal = info.smallest_normal * info.eps
    values = [0.0, subnormal, -subnormal, info.smallest_normal, -info.smallest_normal, 1.0,
              -3.0, huge, -huge, 3.0]
    return torch.tensor(values, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,config", SWEEP, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SWEEP)])
def test_no_nan_or_inf_where_float64_is_finite(backend, dtype, name, config):
    """Six updates with the extreme gradients, then two with zero gradients (C14: eps in
    fp32 for 16-bit parameters). The float64 reference is torch.optim in float64 on the
    same values; wherever its parameter or state is finite, ours is too."""
    grads = _extreme_grads(dtype)
    start = torch.linspace(-2, 2, grads.numel(), dtype=torch.float64).to(dtype)
    ours = start.clone().requires_grad_()
    ref = start.to(torch.float64).requires_grad_()
    opt = CLASSES[name]([ours], lr=0.01, backend=backend, **config)
    ref_opt = TORCH[name]([ref], lr=0.01, foreach=False, **config)
    for k in range(8):
        g = grads if k < 6 else torch.zeros_like(grads)
        ours.grad = g.clone()
        ref.grad = g.to(torch.float64)
        opt.step()
        ref_opt.step()
        finite = torch.isfinite(ref.detach())
        assert torch.isfinite(ours.detach()[finite]).all(), (k, ours, ref)
        for key, value in ref_opt.state[ref].items():
            if key != "step":
                mine = opt.state[ours][key]
                assert torch.isfinite(mine[torch.isfinite(value)]).all(), (k, key, mine)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_centered_rmsprop_clamps_variance_deviation(backend, dtype):
    """Deviation from torch (C9): square_avg - grad_avg**2 is clamped at 0. torch's fp32
    for-loop gives NaN at update 133 with grad 3.0; ours stays finite at every update (a
    variance that rounds to 0 gives a large step lr * g / eps, as in exact arithmetic's
    limit, never NaN)."""
    p = torch.zeros((), dtype=dtype, requires_grad=True)
    opt = fs.RMSprop([p], lr=0.01, alpha=0.9, eps=1e-8, centered=True, backend=backend)
    for k in range(133):
        p.grad = torch.tensor(3.0, dtype=dtype)
        opt.step()
        assert math.isfinite(p.item()), k
    if dtype == torch.float32:
        t = torch.zeros((), requires_grad=True)
        t_opt = torch.optim.RMSprop([t], lr=0.01, alpha=0.9, eps=1e-8, centered=True,
                                    foreach=False)
        for _ in range(133):
            t.grad = torch.tensor(3.0)
            t_opt.step()
        assert math.isnan(t.item())  # the deviation: torch gives NaN here


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop"])
def test_half_zero_grad_eps_in_fp32_deviation(backend, dtype, name):
    """Deviation from torch's for-loop (C14): 16-bit math in fp32, so eps=1e-8 does not
    underflow; torch's for-loop gives NaN on float16 (0 / (0 + 0))."""
    p = torch.tensor([1.0, -2.0, 0.5], dtype=dtype, requires_grad=True)
    opt = CLASSES[name]([p], lr=1e-3, eps=1e-8, backend=backend, weight_decay=0.0)
    p.grad = torch.zeros(3, dtype=dtype)
    opt.step()
    assert p.tolist() == [1.0, -2.0, 0.5]
    if dtype == torch.float16 and name == "adam":
        t = torch.tensor([1.0, -2.0, 0.5], dtype=dtype, requires_grad=True)
        t_opt = torch.optim.Adam([t], lr=1e-3, eps=1e-8, foreach=False)
        t.grad = torch.zeros(3, dtype=dtype)
        t_opt.step()
        assert t.isnan().all()


# ------------------------------------------------------------------------------------------
# 3. Long runs: schedules exact and finite up to t = 2**31, in Python and in every kernel

LONG_SCHEDULES = {
    "constant": S.constant(0.5), "linear": S.linear(0.1, 1.0, 1000),
    "step_decay": S.step_decay(1, gamma=0.5), "multistep": S.multistep([10, 2 ** 31], 0.5),
    "exponential": S.exponential(0.999), "exponential_1": S.exponential(1.0),
    "polynomial": S.polynomial(100, power=3.0), "cosine": S.cosine(2 ** 31 - 1, 0.1),
    "cosine_restarts": S.cosine_restarts(7, cycle_mult=1, end_factor=0.05),
    "cosine_restarts_mult": S.cosine_restarts(3, cycle_mult=2),
    "cosine_restarts_mult7": S.cosine_restarts(1, cycle_mult=7, end_factor=0.2),
    "one_cycle": S.one_cycle(total_steps=50), "one_cycle_3": S.one_cycle(100, three_phase=True,
                                                                          anneal="linear"),
    "cyclic_triangular": S.cyclic(0.5, step_size_up=5, cycle_momentum=False),
    "cyclic_triangular2": S.cyclic(0.5, step_size_up=5, mode="triangular2",
                                   cycle_momentum=False),
    "cyclic_exp_range": S.cyclic(0.3, step_size_up=3, step_size_down=4, mode="exp_range",
                                 gamma=0.9999, cycle_momentum=False),
    "inverse_sqrt": S.inverse_sqrt(100), "inverse_sqrt_0": S.inverse_sqrt(0, timescale=0.5),
    "wsd": S.warmup_stable_decay(10, 2 ** 30, 2 ** 30 + 7, decay="1-sqrt", end_factor=0.01),
    "wsd_zero": S.warmup_stable_decay(0, 0, 0),
    "warmup_sequential": S.warmup(S.sequential([S.cosine(100), S.exponential(0.5),
                                                S.constant(0.25)], [100, 2 ** 30]), 5),
}
LONG_T = [0, 1, 2 ** 24 - 1, 2 ** 24, 2 ** 24 + 1, 2 ** 31 - 1, 2 ** 31]


@pytest.mark.parametrize("name", list(LONG_SCHEDULES))
def test_python_schedules_finite_up_to_2_31(name):
    s = LONG_SCHEDULES[name]
    for t in LONG_T + [2 ** 40, 2 ** 53]:
        value = s(t)
        assert math.isfinite(value) and value >= 0, (t, value)
        m = s.momentum(t)
        assert m is None or math.isfinite(m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_schedules_exact_up_to_2_31(backend):
    """One SGD step with lr 1, grad -1 on p = 0 gives p = f(t): every schedule at every
    large t in one call (a group each), against the Python reference."""
    groups, expected = [], []
    for s in LONG_SCHEDULES.values():
        for t in LONG_T:
            p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
            p.grad = -torch.ones(1, dtype=torch.float64)
            groups.append({"params": [p], "schedule": s})
            expected.append((s, t))
    opt = fs.SGD(groups, lr=1.0, backend=backend)
    for g, (_, t) in zip(opt.param_groups, expected):
        g["schedule_position"] = torch.tensor(float(t), dtype=torch.float64)
    opt.step()
    bad = []
    for g, (s, t) in zip(opt.param_groups, expected):
        got = g["params"][0].item()
        if not (math.isfinite(got) and got == pytest.approx(s(t), rel=1e-12, abs=1e-300)):
            bad.append((s, t, got, s(t)))
        assert g["schedule_position"].item() == t + 1
    assert not bad, bad[:5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_cyclic_with_zero_step_size_up(backend):
    """step_size_up=0 is valid (all descent): at the start of each cycle x == step_ratio
    == 0 and the factor is 1 (the Python reference and torch's ``x / step_ratio`` branch
    guarded), never 0/0."""
    s = S.cyclic(0.5, step_size_up=0, step_size_down=5, cycle_momentum=False)
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = fs.SGD([p], lr=1.0, schedule=s, backend=backend)
    total = 0.0
    for t in range(12):
        p.grad = -torch.ones(1, dtype=torch.float64)
        opt.step()
        total += s(t)
        assert p.item() == pytest.approx(total, rel=1e-14), t
    assert [s(t) for t in (0, 5, 10)] == [1.0, 1.0, 1.0]


def test_deviation_one_cycle_holds_final_value():
    """Deviation from torch: OneCycleLR continues the cosine past total_steps (2.0168e-5 x
    lr at t=50 for C1) and raises after it; ours holds the final value."""
    s = S.one_cycle(total_steps=50)
    final = s(49)
    assert final == pytest.approx(1 / 25 / 1e4, rel=1e-9)
    assert s(50) == s(51) == s(2 ** 31) == final


def test_deviation_cyclic_triangular2_underflows():
    """Deviation from torch (C4): CyclicLR's 1 / 2.0 ** (cycle - 1) raises OverflowError
    after ~1024 cycles; ours underflows to base, exactly 5e-5 of lr 1e-4 at t=10240."""
    s = S.cyclic(base_factor=0.5, step_size_up=5, mode="triangular2", cycle_momentum=False)
    assert 1e-4 * s(10240) == 5e-5
    assert all(math.isfinite(s(t)) for t in range(0, 20000, 7))
    assert s(2 ** 31) == 0.5
    with pytest.raises(OverflowError):
        1 / 2.0 ** (10240 // 10 + 1 - 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,config", [("sgd", {"momentum": 0.9}), ("rmsprop", {"centered": True}),
                                         ("adam", {"amsgrad": True}), ("adamw", {})])
@pytest.mark.parametrize("step", [2.0 ** 24, 2.0 ** 31, 2.0 ** 52])
def test_huge_step_loads_and_continues_exactly(backend, name, config, step):
    """Deviation from torch: per-parameter step is float64 (torch's float32 counter stops
    at 2**24). A state_dict with a huge step loads through torch.load(weights_only=True)
    and continues: the count stays exact and the bias corrections stay finite."""
    p = torch.zeros(4, dtype=torch.float32, requires_grad=True)
    opt = CLASSES[name]([p], lr=0.01, backend=backend,
                              schedule=S.warmup(S.constant(), 5), **config)
    p.grad = torch.ones(4)
    opt.step()
    sd = _roundtrip(opt.state_dict())
    sd["state"][0]["step"] = torch.tensor(step, dtype=torch.float64)
    sd["param_groups"][0]["schedule_position"] = torch.tensor(step, dtype=torch.float64)
    opt.load_state_dict(sd)
    before = p.detach().clone()
    for _ in range(3):
        p.grad = torch.ones(4)
        opt.step()
    assert opt.state[p]["step"].item() == step + 3
    assert opt.param_groups[0]["schedule_position"].item() == step + 3
    assert torch.isfinite(p).all() and not torch.equal(p.detach(), before)
    assert torch.tensor(2.0 ** 24, dtype=torch.float32) + 1 == 2.0 ** 24  # torch's counter


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_bias_corrections_at_huge_step_match_closed_form(backend):
    """At step 2**40 the bias corrections are 1 to float64 rounding: one Adam update from a
    fresh moment is lr * (1-b1) g / (sqrt((1-b2) g^2) + eps)."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = fs.Adam([p], lr=0.1, backend=backend)
    p.grad = torch.zeros(1, dtype=torch.float64)
    opt.step()
    opt.state[p]["step"].fill_(2.0 ** 40)
    p.grad = torch.ones(1, dtype=torch.float64)
    opt.step()
    expected = -0.1 * 0.1 / (math.sqrt(0.001) + 1e-8)
    assert p.item() == pytest.approx(expected, rel=1e-12)
