"""Oracle chain step 2: fusedsched against torch.optim driven by LambdaLR (or torch's
OneCycleLR / CyclicLR for the momentum-cycling schedules), in float64, every flag, every
schedule kind, 35 updates; parameters and every torch state key to 1e-10 relative.
Backends: reference and numba (numba is also checked against the reference per dtype in
test_kernels.py)."""

import math

import pytest
import torch

from fusedsched import schedules as S
from fusedsched.cli.optim_db import OPTIMIZERS

from _torch_oracle import OURS_CLASS, TORCH_CLASS, compare_states, run_pair
from _ulps import assert_round_alike_in_fp32

CONFIGS = {name: info.configs for name, info in OPTIMIZERS.items()}
CASES = [(name, cfg) for name, cfgs in CONFIGS.items() for cfg in cfgs]

SCHEDULES = {
    "constant": S.constant(0.7),
    "linear": S.linear(0.25, 1.0, 10),
    "step_decay": S.step_decay(7, gamma=0.5),
    "multistep": S.multistep([5, 12, 12, 30], gamma=0.5),
    "exponential": S.exponential(0.95),
    "polynomial": S.polynomial(total_steps=25, power=2.0),
    "cosine": S.cosine(total_steps=20, end_factor=0.1),
    "cosine_restarts": S.cosine_restarts(5, cycle_mult=2, end_factor=0.05),
    "inverse_sqrt": S.inverse_sqrt(6),
    "wsd": S.warmup_stable_decay(5, 10, 12, decay="cosine", end_factor=0.1),
    "warmup_cosine": S.warmup(S.cosine(total_steps=25), warmup_steps=6),
    "sequential": S.sequential([S.linear(0.1, 1.0, 4), S.exponential(0.9),
                                S.warmup(S.constant(0.5), 3)], milestones=[4, 20]),
}
CYCLING = {
    "one_cycle": S.one_cycle(total_steps=40),
    "one_cycle_3phase_linear": S.one_cycle(total_steps=40, pct_start=0.25, anneal="linear",
                                           three_phase=True),
    "cyclic_triangular2": S.cyclic(0.2, step_size_up=4, step_size_down=6, mode="triangular2"),
    "cyclic_exp_range": S.cyclic(0.3, step_size_up=5, mode="exp_range", gamma=0.97),
}

BACKENDS = ["reference", "numba"]
TOL = 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,config", CASES, ids=[f"{n}-{i}" for n, c in CONFIGS.items()
                                                    for i in range(len(c))])
def test_every_flag_fp64(backend, name, config):
    t_opt, o_opt, theirs, ours = run_pair(name, config, SCHEDULES["warmup_cosine"],
                                          backend=backend)
    assert compare_states(t_opt, o_opt, theirs, ours) <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("name", ["momentum", "rmsprop", "adam"])
def test_every_schedule_fp64(backend, schedule, name):
    config = {"centered": True, "momentum": 0.5} if name == "rmsprop" else {}
    t_opt, o_opt, theirs, ours = run_pair(name, config, SCHEDULES[schedule], backend=backend)
    assert compare_states(t_opt, o_opt, theirs, ours) <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("schedule", list(CYCLING))
@pytest.mark.parametrize("name,config", [("sgd", {"momentum": 0.9}), ("sgd", {}),
                                         ("rmsprop", {"momentum": 0.9}), ("adam", {}),
                                         ("adamw", {"amsgrad": True})])
def test_momentum_cycling_fp64(backend, schedule, name, config):
    """one_cycle / cyclic drive momentum (beta1 for Adam) as torch's OneCycleLR/CyclicLR."""
    t_opt, o_opt, theirs, ours = run_pair(name, config, CYCLING[schedule], backend=backend)
    assert compare_states(t_opt, o_opt, theirs, ours) <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_host_callable_schedule(backend):
    """A plain Python callable is evaluated on the host and equals LambdaLR."""
    t_opt, o_opt, theirs, ours = run_pair("adam", {}, lambda t: 1.0 / (1 + t), backend=backend)
    assert compare_states(t_opt, o_opt, theirs, ours) <= TOL
    assert o_opt.get_last_lr() == pytest.approx([0.05 / 36])   # the next update's, as torch's
    assert o_opt.get_last_lr() == pytest.approx([g["lr"] for g in t_opt.param_groups])


@pytest.mark.parametrize("backend", BACKENDS)
def test_get_last_lr_matches_torch(backend):
    schedule = SCHEDULES["warmup_cosine"]
    t_opt, o_opt, *_ = run_pair("sgd", {"momentum": 0.9}, schedule, backend=backend, steps=9)
    # after 9 updates both report the 10th update's lr (torch: LambdaLR's get_last_lr())
    assert o_opt.get_last_lr() == pytest.approx([0.05 * schedule(9)], rel=1e-15)
    assert o_opt.get_last_lr() == pytest.approx([g["lr"] for g in t_opt.param_groups],
                                                rel=1e-15)


YARDSTICK_CASES = [("sgd", {"momentum": 0.9}), ("adam", {}), ("adamw", {}),
                   ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
                   ("adam", {"amsgrad": True, "weight_decay": 0.1}),
                   ("adamw", {"weight_decay": 0.1, "amsgrad": True}),
                   ("adam", {"betas": (0.3, 0.9), "maximize": True})]


@pytest.mark.parametrize("name,config", YARDSTICK_CASES)
def test_fp32_no_farther_than_torch_fused(name, config):
    """Oracle step 4: fp32 distance from torch's for-loop is no larger than torch's own
    fused=True distance (on the CPU, where torch has a fused kernel). Numba in its default
    sqrt mode (IEEE square roots, as torch's fused kernels take)."""
    shapes = [(257, 33), (1000,), (0,)]
    schedule = SCHEDULES["warmup_cosine"]
    t_loop, o_opt, loop_params, ours = run_pair(name, config, schedule, dtype=torch.float32,
                                                backend="numba", shapes=shapes,
                                                torch_extra={"foreach": False})
    _, _, _, fused_params = run_pair(name, config, schedule, dtype=torch.float32,
                                     backend="reference", shapes=shapes)
    t_fused, _, fused_torch, _ = run_pair(name, config, schedule, dtype=torch.float32,
                                          shapes=shapes, torch_extra={"fused": True})
    def dist(a, b):
        return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b) if x.numel())

    torch_fused = dist(loop_params, fused_torch)
    # torch's fused and for-loop paths may agree bit for bit on the CPU; then one fp32 ulp
    # of the parameters' scale is the yardstick instead of 0.
    yardstick = max(torch_fused, 2 * torch.finfo(torch.float32).eps * 3.0)
    print(f"{name}: torch fused {torch_fused:.3g}, numba {dist(loop_params, ours):.3g}, "
          f"reference {dist(loop_params, fused_params):.3g}")
    assert dist(loop_params, ours) <= yardstick
    assert dist(loop_params, fused_params) <= yardstick


FP32_CASES = [("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
              ("sgd", {"momentum": 0.9, "dampening": 0.3, "maximize": True}),
              ("adam", {"amsgrad": True, "weight_decay": 0.1}), ("adamw", {"weight_decay": 0.1}),
              ("adam", {"betas": (0.3, 0.9)}),
              ("rmsprop", {"centered": True, "momentum": 0.9, "weight_decay": 0.1}),
              ("rmsprop", {"alpha": 0.3, "centered": True})]


def _scalars_in_fp32(name, config, schedule, lr, steps):
    """The float64 scalars of each update that fusedsched and torch's for-loop compute with
    different implementations of pow, cos and sqrt (fusedsched: the kernels' evaluator and
    bias corrections, torch or Numba; torch: LambdaLR over the Python schedule, Python
    floats): lr * f(t), Adam's step size and sqrt(1 - beta2**step), AdamW's 1 - lr * wd.
    Both sides use each of them only rounded to float32 in a float32 update."""
    beta1, beta2 = config.get("betas", (0.9, 0.999))
    decay = config.get("weight_decay", 1e-2 if name == "adamw" else 0.0)
    decoupled = name == "adamw" or config.get("decoupled_weight_decay", False)
    out = []
    for k in range(steps):
        lr_t = lr * (schedule(k) if schedule is not None else 1.0)
        out.append(lr_t)
        if name in ("adam", "adamw"):
            out += [lr_t / (1 - beta1 ** (k + 1)), math.sqrt(1 - beta2 ** (k + 1))]
            if decoupled:
                out.append(1 - lr_t * decay)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,config", FP32_CASES)
def test_fp32_bit_identical_to_torch_for_loop(backend, name, config, torch_sqrt):
    """On the CPU every backend rounds as torch's for-loop does (the same fused
    multiply-adds, see kernels/reference/_common.fma, and, Numba in its "torch" sqrt mode,
    the same square roots), so fp32 results are identical. The float64 scalars (lr * f(t),
    bias corrections) come from other implementations of cos, pow and sqrt on the two
    sides and may differ in their last bits; the update uses them rounded to float32,
    which such a difference cannot change for the values of this run (asserted)."""
    assert_round_alike_in_fp32(_scalars_in_fp32(name, config, SCHEDULES["warmup_cosine"], 0.05, 8),
                               f"{name} {config}: lr * f(t) and bias corrections")
    shapes = [(257, 33), (1000,), (3,), (0,)]
    t_opt, o_opt, theirs, ours = run_pair(name, config, SCHEDULES["warmup_cosine"],
                                          dtype=torch.float32, backend=backend, shapes=shapes,
                                          steps=8, torch_extra={"foreach": False})
    for p, q in zip(theirs, ours):
        assert torch.equal(p, q)
        for key, value in t_opt.state[p].items():
            if key != "step":
                assert torch.equal(value, o_opt.state[q][key]), key


@pytest.mark.parametrize("backend", BACKENDS + ["triton"])
@pytest.mark.parametrize("name,config", [("sgd", {"momentum": 0.9}), ("rmsprop", {"centered": True}),
                                         ("adam", {"amsgrad": True})])
def test_non_contiguous_parameters_fp32_bit_identical(backend, name, config, torch_sqrt):
    """A transposed parameter and a strided view (a parameter that is a slice of a larger
    buffer) step exactly as torch's for-loop steps them, on every backend (Adam's bias
    corrections: as in test_fp32_bit_identical_to_torch_for_loop)."""
    assert_round_alike_in_fp32(_scalars_in_fp32(name, config, None, 0.05, 4),
                               f"{name} {config}: bias corrections")
    def params():
        g = torch.Generator().manual_seed(3)
        return [torch.randn(6, 5, generator=g).t().requires_grad_(),
                torch.randn(20, generator=g)[::3].detach().requires_grad_(),
                torch.randn(4, generator=g).requires_grad_()]
    theirs, ours = params(), params()
    assert not theirs[0].is_contiguous() and not theirs[1].is_contiguous()
    t_opt = TORCH_CLASS[name](theirs, lr=0.05, foreach=False, **config)
    o_opt = OURS_CLASS[name](ours, lr=0.05, backend=backend, **config)
    for k in range(4):
        for p, q in zip(theirs, ours):
            g = torch.Generator().manual_seed(10 + k)
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        t_opt.step()
        o_opt.step()
    for p, q in zip(theirs, ours):
        assert torch.equal(p, q)
        assert q.stride() == p.stride()
