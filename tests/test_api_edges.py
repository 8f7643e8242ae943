"""The edges of the torch-facing API: repeated parameters, what ``get_last_lr()`` /
``get_last_momentum()`` mean (torch's: the next update's), ``repr`` and ``help``, meta-device
values, the float64 schedule position's limit, param groups added later, a loaded
checkpoint's schedule, sparse gradients, and tensor hyperparameters against torch."""

import copy
import pydoc
import re
import warnings

import pytest
import torch

import fusedsched as fs
from fusedsched import schedules as S
from fusedsched.optim._base import SparseGradientError

from _torch_oracle import OPTIMIZERS, OURS_CLASS, TORCH_CLASS, grads_for, make_params
from conftest import BACKENDS

NAMES = list(OPTIMIZERS)


def _p(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype, requires_grad=True)


def _frozen(opt):
    """What an error must leave as it was: the groups (dict identity and values) and the
    state."""
    return ([(g, dict(g), list(g["params"])) for g in opt.param_groups],
            {p: dict(s) for p, s in opt.state.items()})


def _assert_same(opt, frozen):
    groups, state = frozen
    assert len(opt.param_groups) == len(groups)
    for group, (was, values, params) in zip(opt.param_groups, groups):
        assert group is was and group.keys() == values.keys()
        assert all(group[k] is v for k, v in values.items())
        assert group["params"] == params
    assert {p: dict(s) for p, s in opt.state.items()}.keys() == state.keys()


# -- the same parameter twice -------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_repeated_parameter_in_a_group_raises_at_construction(name):
    p, q = _p(3), _p(2, 2)
    with warnings.catch_warnings(record=True) as caught:     # torch only warns
        warnings.simplefilter("always")
        TORCH_CLASS[name]([p, q, p], lr=0.1, **OPTIMIZERS[name].torch_defaults)
    assert any("duplicate parameters" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match=r"parameter 2 of group 0 \(shape \(3,\), dtype "
                                         r"float32\) is parameter 0 of the same group"):
        OURS_CLASS[name]([p, q, p], lr=0.1)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_in_two_groups_raises_at_construction_naming_both(name):
    p, q = _p(3), _p(2)
    with pytest.raises(ValueError, match=r"parameter 1 of group 1 .* is parameter 0 of "
                                         r"group 0"):
        OURS_CLASS[name]([{"params": [p]}, {"params": [q, p], "lr": 0.5}], lr=0.1)


def test_repeated_named_parameter_is_named():
    model = torch.nn.Linear(2, 2)
    named = list(model.named_parameters())
    with pytest.raises(ValueError, match=r"parameter 2 'weight' of group 0 .* parameter 0 "
                                         r"'weight'"):
        fs.AdamW(named + named[:1])


def test_construction_error_leaves_the_callers_groups_as_they_were():
    p, q = _p(3), _p(2)
    groups = [{"params": iter([p])}, {"params": [q, p], "lr": 0.5}]
    with pytest.raises(ValueError, match="appears twice"):
        fs.Adam(groups, lr=0.1)
    assert groups[0] == {"params": [p]}         # the iterator, read once, as a list
    assert groups[1] == {"params": [q, p], "lr": 0.5}


def test_params_given_as_one_tensor_is_torchs_type_error():
    for params in (_p(3), torch.tensor(1.0, requires_grad=True)):
        with pytest.raises(TypeError, match="iterable of Tensors or dicts"):
            fs.SGD(params, lr=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["same_group", "other_group", "generator"])
def test_add_param_group_refuses_a_repeat_and_changes_nothing(backend, where):
    p, q, r = _p(3), _p(2), _p(4)
    opt = fs.Adam([{"params": [p]}, {"params": [q]}], lr=0.1, backend=backend)
    p.grad, q.grad = torch.ones(3), torch.ones(2)
    opt.step()
    frozen = _frozen(opt)
    params = {"same_group": [r, r], "other_group": [r, q],
              "generator": (t for t in [r, p])}[where]
    group = {"params": params, "lr": 0.01}
    before = {"params": list(params) if where != "generator" else [r, p], "lr": 0.01}
    with pytest.raises(ValueError, match="appears twice"):
        opt.add_param_group(group)
    _assert_same(opt, frozen)
    assert group == before and group.keys() == {"params", "lr"}
    p.grad, q.grad = torch.ones(3), torch.ones(2)
    opt.step()                                  # still works
    assert opt.param_groups[0]["schedule_position"].item() == 2


def test_add_param_group_error_leaves_the_group_dict_unfilled():
    """torch fills a group dict with the defaults before its last checks; an error here
    leaves it as the caller wrote it (bad hyperparameter; a parameter an aid refuses)."""
    opt = fs.Adam([_p(3)], lr=0.1, stochastic_rounding=True)
    for group in ({"params": [_p(2)], "lr": -1.0},
                  {"params": [_p(2, dtype=torch.float16)]}):
        before = dict(group)
        with pytest.raises(ValueError):
            opt.add_param_group(group)
        assert group == before and len(opt.param_groups) == 1


# -- get_last_lr / get_last_momentum: the next update's, as torch's schedulers ------------

LAMBDA_SCHEDULES = {
    "warmup_cosine": S.warmup(S.cosine(10), warmup_steps=3),
    "step_decay": S.step_decay(2, gamma=0.5),
    "host_callable": lambda t: 1.0 / (1.0 + t),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("schedule", list(LAMBDA_SCHEDULES))
def test_get_last_lr_matches_lambdalr_step_by_step(backend, schedule):
    """Before any step and after each: ``opt.get_last_lr()`` equals torch's
    ``LambdaLR.get_last_lr()`` after ``scheduler.step()`` (the next update's lr), per group;
    the lr an update used is what ``get_last_lr()`` said just before it (SGD, grad -1:
    the parameter grows by exactly that lr)."""
    f = LAMBDA_SCHEDULES[schedule]
    ours = [_p(1, dtype=torch.float64), _p(1, dtype=torch.float64)]
    theirs = [_p(1, dtype=torch.float64), _p(1, dtype=torch.float64)]
    t_opt = torch.optim.SGD([{"params": [theirs[0]]}, {"params": [theirs[1]], "lr": 0.3}],
                            lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(t_opt, lambda t: f(t))
    o_opt = fs.SGD([{"params": [ours[0]]}, {"params": [ours[1]], "lr": 0.3}], lr=0.1,
                   schedule=f, backend=backend)
    assert o_opt.get_last_lr() == pytest.approx(sched.get_last_lr(), rel=1e-15)
    for k in range(12):
        announced = o_opt.get_last_lr()
        before = [p.item() for p in ours]
        for p in ours + theirs:
            p.grad = -torch.ones(1, dtype=torch.float64)
        t_opt.step()
        sched.step()
        o_opt.step()
        used = [p.item() - b for p, b in zip(ours, before)]
        assert used == pytest.approx(announced, rel=1e-12), k
        assert o_opt.get_last_lr() == pytest.approx(sched.get_last_lr(), rel=1e-15), k
        assert o_opt.get_last_lr() == pytest.approx([0.1 * f(k + 1), 0.3 * f(k + 1)],
                                                    rel=1e-15)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_get_last_momentum_matches_one_cycle_step_by_step(name):
    """one_cycle's momentum (beta1 for Adam): after each step, what torch's OneCycleLR
    leaves in the group for the next update."""
    total = 8
    theirs, ours = _p(2), _p(2)
    config = {"momentum": 0.9} if name == "sgd" else {}
    t_opt = TORCH_CLASS[name]([theirs], lr=0.1, **config)
    sched = torch.optim.lr_scheduler.OneCycleLR(t_opt, max_lr=0.1, total_steps=total)
    o_opt = OURS_CLASS[name]([ours], lr=0.1, schedule=S.one_cycle(total), **config)

    def torch_momentum():
        group = t_opt.param_groups[0]
        return group["momentum"] if name == "sgd" else group["betas"][0]

    for k in range(total - 1):
        assert o_opt.get_last_momentum() == pytest.approx([torch_momentum()], rel=1e-12), k
        assert o_opt.get_last_lr() == pytest.approx(sched.get_last_lr(), rel=1e-12), k
        theirs.grad, ours.grad = torch.ones(2), torch.ones(2)
        t_opt.step()
        sched.step()
        o_opt.step()


def test_get_last_lr_counts_a_step_skipped_by_amp():
    """A skipped step (found_inf) advances the position, as a torch scheduler steps."""
    p = _p(2)
    opt = fs.SGD([p], lr=0.1, schedule=S.exponential(0.5))
    p.grad = torch.ones(2)
    opt.found_inf = torch.ones(1)
    opt.grad_scale = torch.ones(1)
    opt.step()
    del opt.found_inf, opt.grad_scale
    assert torch.equal(p.detach(), torch.zeros(2))
    assert opt.get_last_lr() == [0.1 * 0.5]


# -- repr and help -------------------------------------------------------------------------

def test_repr_is_torchs_with_the_backend_and_the_aids_that_are_on():
    p, h = _p(3), _p(2, dtype=torch.bfloat16)
    opt = fs.AdamW([{"params": [p]}, {"params": [h], "lr": 0.5}], lr=0.1, backend="numba",
                   master_weights=True, max_grad_norm=1.0, schedule=S.cosine(10))
    text = repr(opt)
    assert str(opt) == text
    assert text.splitlines()[:5] == ["AdamW (", "Settings", "    backend: numba",
                                     "    master_weights: True", "    max_grad_norm: 1.0"]
    assert "stochastic_rounding" not in text
    torch_text = torch.optim.Optimizer.__repr__(opt)      # torch's format, every group
    assert text.replace("\n".join(text.splitlines()[1:5]) + "\n", "") == torch_text
    assert "Parameter Group 1\n" in text and "    schedule: cosine(total_steps=10" in text

    plain = repr(fs.SGD([_p(3)], lr=0.1, stochastic_rounding=True))
    lines = plain.splitlines()
    assert lines[1:4] == ["Settings", "    backend: auto (cpu: numba)",
                          "    stochastic_rounding: True"]
    assert lines[4] == "Parameter Group 0"
    assert "master_weights" not in plain and "max_grad_norm" not in plain
    on_meta = torch.zeros(3, device="meta", requires_grad=True)
    assert "backend: numba (meta: cannot serve)" in repr(fs.SGD([on_meta], backend="numba"))


def test_repr_reads_nothing_it_cannot():
    p = torch.zeros(3, device="meta", requires_grad=True)
    opt = fs.SGD([p], lr=0.1)
    p.grad = torch.zeros(3, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)    # no compiled backend for meta
        opt.step()
        assert "backend: auto (meta: reference)" in repr(opt)


def _entries(doc):
    """The names of a docstring's Args entries."""
    args = doc.split("Args:")[1].split("\n\n")[0]
    return re.findall(r"^ {8}(\w+)[ :]", args, flags=re.M)


def test_help_adamw_shows_the_full_docstring():
    text = pydoc.render_doc(fs.AdamW, renderer=pydoc.plaintext)
    doc = fs.AdamW.__doc__
    assert "torch.optim.AdamW" in doc and "torch.optim.Adam``" not in doc
    assert "as ``Adam``" not in doc and "decoupled_weight_decay" not in _entries(doc)
    assert _entries(doc) == [n for n in _entries(fs.Adam.__doc__)
                             if n != "decoupled_weight_decay"]
    assert "default 1e-2" in doc
    for line in ("max_grad_norm (float or None)", "State per parameter", "Raises:",
                 "amsgrad (bool): keep the running maximum"):
        assert line in doc and line in text
    # derived, not copied: the lines Adam and AdamW share are Adam's, in order
    adam = fs.Adam.__doc__.splitlines()
    shared = [line for line in doc.splitlines()[1:] if line in adam]
    assert len(shared) >= len(doc.splitlines()) - 6


def test_help_momentum_shows_the_full_docstring():
    doc = fs.Momentum.__doc__
    assert _entries(doc) == _entries(fs.SGD.__doc__)
    assert "default 0.9" in doc and "as ``SGD``" not in doc
    assert "nesterov (bool)" in doc and "max_grad_norm" in doc


# -- meta-device values --------------------------------------------------------------------

def test_get_last_lr_on_meta_parameters_says_why():
    p = torch.zeros(3, device="meta", requires_grad=True)
    opt = fs.Adam([p], lr=0.1, schedule=S.exponential(0.5))
    assert opt.get_last_lr() == [0.1]       # before a step the position is on the CPU
    p.grad = torch.zeros(3, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt.step()
    for method in (opt.get_last_lr, opt.get_last_momentum):
        with pytest.raises(RuntimeError, match=r"meta device, which holds no values") as info:
            method()
        assert "schedule_position" in str(info.value) and "item()" not in str(info.value)
    lr_on_meta = fs.SGD([_p(2)], lr=torch.tensor(0.1, device="meta"))
    with pytest.raises(RuntimeError, match=r"group 0's lr, a tensor on the meta device"):
        lr_on_meta.get_last_lr()


# -- the schedule position's limit: 2**53 --------------------------------------------------

LIMIT = 2.0 ** 53


@pytest.mark.parametrize("backend", BACKENDS)
def test_position_stops_at_2_53_and_is_refused_there(backend):
    """float64 counts exactly below 2**53; at 2**53, t + 1 == t. Where it is cheap to check,
    a position >= 2**53 raises ValueError: load_state_dict, add_param_group, and a group
    checked at construction or after a change (on the CPU; on an accelerator the check
    would be a host-device sync). step() does not read the position every time: from
    2**53 - 1 a step reaches 2**53 exactly; the next one either raises (the group was
    checked again) or updates with f(2**53) and leaves the position at 2**53."""
    f = S.step_decay(2 ** 53, gamma=0.5)     # 1 before 2**53, 0.5 from there
    p = _p(1, dtype=torch.float64)
    opt = fs.SGD([p], lr=1.0, schedule=f, backend=backend)
    opt.param_groups[0]["schedule_position"] = torch.tensor(LIMIT - 1, dtype=torch.float64)
    p.grad = -torch.ones(1, dtype=torch.float64)
    opt.step()
    assert opt.param_groups[0]["schedule_position"].item() == LIMIT
    assert p.item() == f(2 ** 53 - 1)
    p.grad = -torch.ones(1, dtype=torch.float64)
    try:
        opt.step()
    except ValueError as exc:
        assert "2**53" in str(exc)
        assert p.item() == f(2 ** 53 - 1)
    else:
        assert p.item() == f(2 ** 53 - 1) + f(2 ** 53)
    assert opt.param_groups[0]["schedule_position"].item() == LIMIT
    assert torch.tensor(LIMIT, dtype=torch.float64) + 1 == LIMIT

    saved = copy.deepcopy(opt.state_dict())
    fresh = fs.SGD([_p(1, dtype=torch.float64)], lr=1.0, backend=backend)
    frozen = _frozen(fresh)
    with pytest.raises(ValueError, match=r"schedule_position must hold an integer in "
                                         r"\[0, 2\*\*53\)"):
        fresh.load_state_dict(saved)
    _assert_same(fresh, frozen)
    saved["param_groups"][0]["schedule_position"] = torch.tensor(LIMIT - 1,
                                                                 dtype=torch.float64)
    fresh.load_state_dict(saved)                # below the limit: loads

    with pytest.raises(ValueError, match=r"2\*\*53"):
        opt.add_param_group({"params": [_p(1)],
                             "schedule_position": torch.tensor(LIMIT, dtype=torch.float64)})
    opt.param_groups[0]["schedule_position"] = torch.tensor(LIMIT, dtype=torch.float64)
    p.grad = torch.ones(1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"2\*\*53"):    # a new position: checked
        opt.step()


# -- documented rules: groups added later, loaded schedules, sparse gradients --------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_group_added_later_starts_at_position_0(backend):
    f = S.exponential(0.5)
    p, q = _p(1, dtype=torch.float64), _p(1, dtype=torch.float64)
    opt = fs.SGD([p], lr=1.0, schedule=f, backend=backend)
    for _ in range(3):
        p.grad = -torch.ones(1, dtype=torch.float64)
        opt.step()
    opt.add_param_group({"params": [q], "lr": 0.1})
    assert opt.param_groups[1]["schedule_position"].item() == 0
    assert opt.get_last_lr() == [f(3), 0.1 * f(0)]
    p.grad = q.grad = -torch.ones(1, dtype=torch.float64)
    opt.step()
    assert q.item() == 0.1 * f(0)
    assert [g["schedule_position"].item() for g in opt.param_groups] == [4, 1]
    # joining the others where they are: give the position
    r = _p(1, dtype=torch.float64)
    opt.add_param_group({"params": [r], "schedule_position":
                         opt.param_groups[0]["schedule_position"].clone()})
    assert opt.get_last_lr()[2] == f(4)


def test_load_state_dict_takes_the_checkpoints_schedule():
    """As torch's load_state_dict takes the checkpoint's hyperparameters over the
    constructor's: the schedule and position come from the checkpoint; a host callable
    (saved as {"kind": "callable"}) keeps the receiving group's."""
    p = _p(2)
    saved_by = fs.Adam([p], lr=0.1, schedule=S.cosine(10))
    p.grad = torch.ones(2)
    saved_by.step()
    loaded = fs.Adam([_p(2)], lr=0.5, schedule=S.exponential(0.9))
    loaded.load_state_dict(saved_by.state_dict())
    group = loaded.param_groups[0]
    assert group["schedule"] == S.cosine(10) and group["lr"] == 0.1
    assert group["schedule_position"].item() == 1
    assert loaded.get_last_lr() == [0.1 * S.cosine(10)(1)]

    def mine(t):
        return 0.25

    host = fs.Adam([_p(2)], lr=0.1, schedule=lambda t: 1.0)
    receiving = fs.Adam([_p(2)], lr=0.1, schedule=mine)
    receiving.load_state_dict(host.state_dict())
    assert receiving.param_groups[0]["schedule"] is mine


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_gradients_are_refused_where_torch_sgd_takes_them(backend):
    theirs, ours = _p(3), _p(3)
    grad = torch.ones(3).to_sparse()
    t_opt = torch.optim.SGD([theirs], lr=0.1)
    theirs.grad = grad.clone()
    t_opt.step()                                # torch's SGD accepts a sparse grad
    assert torch.equal(theirs.detach(), torch.full((3,), -0.1))
    opt = fs.SGD([ours], lr=0.1, backend=backend)
    ours.grad = grad.clone()
    with pytest.raises(SparseGradientError, match="sparse") as info:
        opt.step()
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, TypeError)
    assert torch.equal(ours.detach(), torch.zeros(3))


# -- tensor hyperparameters: fusedsched's float64 scalars against torch's float32 ----------

def _adamw_pair(tensor_dtype, which, backend, steps=8):
    """torch's for-loop AdamW (LambdaLR) and fusedsched's on the same float64 parameters
    and gradients, ``which`` ("lr" or "betas") a 1-element tensor of ``tensor_dtype``;
    the largest |difference| / max|p| after each step. float64 parameters: the update's
    math is float64 on both sides, so what differs is the per-step scalars only."""
    base = make_params(torch.float64, [(256,)])
    theirs, ours = base[0].clone().requires_grad_(), base[0].clone().requires_grad_()

    def hyper():
        if which == "lr":
            return dict(lr=torch.tensor(1e-3, dtype=tensor_dtype), betas=(0.9, 0.999),
                        weight_decay=1e-2)
        return dict(lr=1e-3, weight_decay=0.0, betas=(torch.tensor(0.9, dtype=tensor_dtype),
                                                       torch.tensor(0.999, dtype=tensor_dtype)))

    f = S.exponential(0.9)
    t_opt = torch.optim.AdamW([theirs], foreach=False, **hyper())
    sched = torch.optim.lr_scheduler.LambdaLR(t_opt, lambda t: f(t))
    o_opt = fs.AdamW([ours], schedule=f, backend=backend, **hyper())
    out = []
    for k in range(steps):
        g = grads_for(k, base)[0]
        theirs.grad, ours.grad = g.clone(), g.clone()
        t_opt.step()
        sched.step()
        o_opt.step()
        out.append(float((theirs - ours).detach().abs().max() / theirs.detach().abs().max()))
    return out


# Bounds, per step, of the float32 rounding torch applies to its per-step scalars:
# ``1 - lr * weight_decay`` rounded to float32 near 1 is off by up to half an ulp of 1,
# 2**-25 = 3e-8 of the parameter (measured: 1.4e-8 a step); the bias corrections
# ``1 - beta**step`` and the step size, rounded to float32, move the update (~lr = 1e-3
# of the parameter here) by ~1e-7 relative (measured: <= 3.4e-9 of the parameter).
F32_PER_STEP = {"lr": 2.0 ** -25 + 1e-9, "betas": 1e-8}
# float64 tensors: both sides round the same float64 scalars; 4 ulps a step of slack for
# an operation order that differs (measured: 0).
F64_PER_STEP = 4 * 2.0 ** -52


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("which", ["lr", "betas"])
def test_float32_tensor_hyperparameters_differ_from_torch_by_its_float32_rounding(
        backend, which):
    """Deviation from torch: fusedsched computes ``lr * f(t)``, ``1 - lr * wd`` and the
    bias corrections in float64 from a float32 tensor lr / betas, torch in float32. The
    difference is measured here: ~1e-8 of the parameter per step for AdamW's defaults,
    and it vanishes when the tensors are float64."""
    f32 = _adamw_pair(torch.float32, which, backend)
    f64 = _adamw_pair(torch.float64, which, backend)
    assert f32[-1] > 1e-10                      # a real difference...
    for k, (a, b) in enumerate(zip(f32, f64), start=1):
        assert a <= k * F32_PER_STEP[which], (k, a)     # ...of float32 rounding
        assert b <= k * F64_PER_STEP, (k, b)            # float64 tensors: equal to torch
