"""torch.optim.lr_scheduler on fusedsched optimizers: what a torch scheduler writes into a
param group (lr, momentum, betas) applies from the next step; a tensor lr updated in place
is read by the kernel itself (C15); a built-in schedule and a torch scheduler multiply."""

import io

import pytest
import torch

import fusedsched as fs
from fusedsched import schedules as S

from _torch_oracle import OPTIMIZERS as DB, OURS_CLASS, TORCH_CLASS, grads_for, make_params

LR = torch.optim.lr_scheduler
SHAPES = [(4, 3), (5,), (0,)]

SCHEDULERS = {
    "step": lambda opt: LR.StepLR(opt, step_size=3, gamma=0.5),
    "lambda": lambda opt: LR.LambdaLR(opt, lambda t: 1.0 / (1.0 + t)),
    "cosine": lambda opt: LR.CosineAnnealingLR(opt, T_max=7, eta_min=1e-3),
    "one_cycle": lambda opt: LR.OneCycleLR(opt, max_lr=0.05, total_steps=14, pct_start=0.4),
    "cyclic": lambda opt: LR.CyclicLR(opt, base_lr=0.01, max_lr=0.05, step_size_up=3,
                                      mode="triangular2", base_momentum=0.8, max_momentum=0.9),
}
OPTIMIZERS = [("sgd", {}), ("momentum", {"dampening": 0.1}), ("momentum", {"nesterov": True}),
              ("rmsprop", {"momentum": 0.85, "centered": True}),
              ("adam", {"amsgrad": True}), ("adamw", {})]


def _run(opt, params, sched, steps, start=0, base=None):
    for k in range(start, start + steps):
        for p, g in zip(params, grads_for(k, base if base is not None else params)):
            p.grad = g
        opt.step()
        if sched is not None:
            sched.step()


def _pair(name, config, backend, lr=0.05, **ours_extra):
    base = make_params(torch.float64, SHAPES)
    theirs = [p.clone().requires_grad_() for p in base]
    ours = [p.clone().requires_grad_() for p in base]
    torch_config = DB[name].torch_kwargs(config)
    return (TORCH_CLASS[name](theirs, lr=lr, **torch_config), theirs,
            OURS_CLASS[name](ours, lr=lr, backend=backend, **config, **ours_extra), ours, base)


def _assert_same(t_opt, theirs, o_opt, ours, tol=1e-12):
    for p, q in zip(theirs, ours):
        torch.testing.assert_close(q, p, rtol=tol, atol=tol * 1e-2)
        for key, value in t_opt.state[p].items():
            if key != "step":
                torch.testing.assert_close(o_opt.state[q][key], value, rtol=tol, atol=tol * 1e-2)


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("sched", list(SCHEDULERS))
@pytest.mark.parametrize("name,config", OPTIMIZERS,
                         ids=[f"{n}-{'-'.join(c) or 'plain'}" for n, c in OPTIMIZERS])
def test_torch_scheduler_drives_our_optimizer(backend, sched, name, config):
    """fp64, 1e-12: the same torch scheduler on torch's optimizer and on ours. OneCycleLR
    and CyclicLR also cycle momentum (SGD, RMSprop) or beta1 (Adam) in the group; on plain
    SGD (momentum 0) they switch momentum on, in torch and here alike."""
    t_opt, theirs, o_opt, ours, base = _pair(name, config, backend)
    t_sched, o_sched = SCHEDULERS[sched](t_opt), SCHEDULERS[sched](o_opt)
    _run(t_opt, theirs, t_sched, 13, base=base)
    _run(o_opt, ours, o_sched, 13, base=base)
    _assert_same(t_opt, theirs, o_opt, ours)
    key = "betas" if name.startswith("adam") else "momentum"
    assert o_opt.param_groups[0][key] == t_opt.param_groups[0][key]
    assert o_opt.param_groups[0]["lr"] == t_opt.param_groups[0]["lr"]


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_group_changes_apply_from_the_next_step(backend):
    """A write into the group between steps (what every torch scheduler does) is read
    by the very next kernel call: no cached hyperparameters."""
    t_opt, theirs, o_opt, ours, base = _pair("adam", {}, backend)
    for k in range(6):
        for opt in (t_opt, o_opt):
            opt.param_groups[0]["lr"] = 0.05 * (k + 1)
            opt.param_groups[0]["betas"] = (0.9 - 0.05 * k, 0.999 - 0.01 * k)
            opt.param_groups[0]["weight_decay"] = 0.01 * k
        _run(t_opt, theirs, None, 1, start=k, base=base)
        _run(o_opt, ours, None, 1, start=k, base=base)
        _assert_same(t_opt, theirs, o_opt, ours)


@pytest.mark.parametrize("backend", ["reference", "numba", "triton"])
@pytest.mark.parametrize("shape", [(), (1,)], ids=["0-dim", "1-element"])
def test_tensor_lr_updated_in_place_is_read_by_the_kernel(monkeypatch, backend, shape):
    """C15: ExponentialLR fills a tensor lr in place; our optimizer hands that very tensor
    to the kernel (no float() of it, so no host sync on an accelerator) and the next
    update uses the new value."""
    lr = torch.full(shape, 0.1)
    p = torch.ones(3, requires_grad=True)
    opt = fs.Adam([p], lr=lr, backend=backend)
    calls = []      # the kernel arguments every launch path passes on

    def kernel_args(group, group_lr):
        calls.append(fs.Adam._kernel_args(opt, group, group_lr))
        return calls[-1]
    monkeypatch.setattr(opt, "_kernel_args", kernel_args)
    sched = LR.ExponentialLR(opt, gamma=0.5)
    q = torch.ones(3, requires_grad=True)
    t_opt = torch.optim.Adam([q], lr=torch.full(shape, 0.1), foreach=False)
    t_sched = LR.ExponentialLR(t_opt, gamma=0.5)
    p.grad = torch.ones(3)
    opt.step()
    assert p.tolist() == [0.9000000357627869] * 3
    for k in range(4):
        sched.step()
        assert opt.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.1 * 0.5 ** (k + 1))
        p.grad = torch.full((3,), float(k + 2))
        opt.step()
    q.grad = torch.ones(3)
    t_opt.step()
    for k in range(4):
        t_sched.step()
        q.grad = torch.full((3,), float(k + 2))
        t_opt.step()
    torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert len(calls) == 5 and all(c["lr"] is lr for c in calls)


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("name", ["momentum", "rmsprop", "adam"])
def test_builtin_schedule_and_torch_scheduler_multiply(backend, name):
    """schedule=f in the kernel and a torch scheduler g on group['lr']: the k-th update uses
    lr * g(k - 1) * f(k - 1), as LambdaLR(lambda t: g(t) * f(t)) on torch's optimizer."""
    f = S.exponential(0.9)
    config = {"momentum": 0.5} if name == "rmsprop" else {}
    t_opt, theirs, o_opt, ours, base = _pair(name, config, backend, schedule=f)
    t_sched = LR.LambdaLR(t_opt, lambda t: 0.5 ** (t // 3) * f(t))
    o_sched = LR.StepLR(o_opt, step_size=3, gamma=0.5)
    _run(t_opt, theirs, t_sched, 10, base=base)
    _run(o_opt, ours, o_sched, 10, base=base)
    _assert_same(t_opt, theirs, o_opt, ours)
    assert o_opt.get_last_lr() == pytest.approx([0.05 * 0.5 ** 3 * f(10)], rel=1e-12)


def _save_load(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_checkpoint_with_torch_one_cycle_resumes_exactly(backend):
    """Optimizer and torch scheduler saved mid-cycle, loaded into fresh objects: the run
    continues bit-identically (the scheduler's lr and beta1 land in the loaded groups)."""
    def make(params):
        opt = fs.Adam(params, lr=0.05, backend=backend)
        return opt, LR.OneCycleLR(opt, max_lr=0.05, total_steps=20)
    base = make_params(torch.float32, SHAPES)
    straight = [p.clone().requires_grad_() for p in base]
    opt, sched = make(straight)
    _run(opt, straight, sched, 14)
    first = [p.clone().requires_grad_() for p in base]
    opt1, sched1 = make(first)
    _run(opt1, first, sched1, 8)
    saved = _save_load({"opt": opt1.state_dict(), "sched": sched1.state_dict()})
    resumed = [p.detach().clone().requires_grad_() for p in first]
    opt2, sched2 = make(resumed)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    _run(opt2, resumed, sched2, 6, start=8)
    for p, q in zip(straight, resumed):
        assert torch.equal(p, q)
    assert opt2.param_groups[0]["betas"] == opt.param_groups[0]["betas"]
