"""AMP: torch.amp.GradScaler hands grad_scale and found_inf to step() (our optimizers set
``_step_supports_amp_scaling``); the kernels unscale in place and, on found_inf, write
nothing while the schedule position still advances (docs/design.md; C13 there:
pytorch/pytorch#95781)."""

import pytest
import torch

import fusedsched as fs
from fusedsched import schedules as S

from _torch_oracle import OPTIMIZERS, OURS_CLASS, TORCH_CLASS
from conftest import BACKENDS

INF_AT = {0, 4, 5}          # iterations whose loss overflows (the first one included)
STEPS = 9
# the first iteration overflows, so torch warns that its scheduler stepped first
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")


def _model(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(),
                               torch.nn.Linear(4, 2)).to(dtype)


def _train(model, opt, *, sched=None, dtype, steps=STEPS, inf_at=INF_AT):
    """A GradScaler loop; returns the scale after each update and each step's grads."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=3)
    scales, grads = [], []
    for k in range(steps):
        g = torch.Generator().manual_seed(k)
        x = torch.randn(6, 5, generator=g, dtype=torch.float64).to(dtype)
        loss = model(x).pow(2).mean()
        if k in inf_at:
            loss = loss * float("inf")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if sched is not None:
            sched.step()
        scales.append(scaler.get_scale())
        grads.append([p.grad.clone() for p in model.parameters()])
    return scales, grads


def test_optimizers_declare_amp_scaling():
    for cls in OURS_CLASS.values():
        assert cls._step_supports_amp_scaling is True


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_matches_torch_fused_adam(backend):
    """Same scaler, same overflows: fusedsched.Adam with an in-kernel schedule equals
    torch's fused Adam driven by LambdaLR (whose scheduler also advances on skipped
    steps), in parameters, state, per-parameter steps, scales and unscaled grads."""
    schedule = S.warmup(S.cosine(12), 3, start_factor=0.1)
    theirs, ours = _model(torch.float32), _model(torch.float32)
    t_opt = torch.optim.Adam(theirs.parameters(), lr=0.05, weight_decay=0.01, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(t_opt, lambda t: schedule(t))
    o_opt = fs.Adam(ours.parameters(), lr=0.05, weight_decay=0.01, schedule=schedule,
                    backend=backend)
    t_scales, t_grads = _train(theirs, t_opt, sched=sched, dtype=torch.float32)
    o_scales, o_grads = _train(ours, o_opt, dtype=torch.float32)
    assert t_scales == o_scales
    for tg, og in zip(t_grads, o_grads):
        for a, b in zip(tg, og):      # grads are left unscaled (or scaled on a skipped step)
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, equal_nan=True)
    for p, q in zip(theirs.parameters(), ours.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(o_opt.state[q][key], t_opt.state[p][key],
                                       rtol=1e-5, atol=1e-7)
        assert float(o_opt.state[q]["step"]) == float(t_opt.state[p]["step"]) == STEPS - len(INF_AT)
    assert o_opt.param_groups[0]["schedule_position"].item() == STEPS
    assert o_opt.get_last_lr() == pytest.approx([0.05 * schedule(STEPS)], rel=1e-12)


@pytest.mark.parametrize("name,config", [("sgd", {}), ("momentum", {"dampening": 0.5}),
                                         ("momentum", {"nesterov": True}),
                                         ("rmsprop", {"centered": True, "momentum": 0.5}),
                                         ("adam", {"amsgrad": True}), ("adamw", {})])
@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_grad_scaler_matches_torch_for_loop(backend, name, config):
    """fp64, every algorithm: in-kernel unscaling and skipping equal torch's for-loop
    optimizer, which GradScaler unscales on the host and skips entirely (1e-12)."""
    torch_config = OPTIMIZERS[name].torch_kwargs(config)
    theirs, ours = _model(torch.float64), _model(torch.float64)
    t_opt = TORCH_CLASS[name](theirs.parameters(), lr=0.02, **torch_config)
    sched = torch.optim.lr_scheduler.LambdaLR(t_opt, lambda t: 0.9 ** t)
    o_opt = OURS_CLASS[name](ours.parameters(), lr=0.02, schedule=S.exponential(0.9),
                             backend=backend, **config)
    assert _train(theirs, t_opt, sched=sched, dtype=torch.float64)[0] == \
        _train(ours, o_opt, dtype=torch.float64)[0]
    for p, q in zip(theirs.parameters(), ours.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)
        for key, value in t_opt.state[p].items():
            if key != "step":
                torch.testing.assert_close(o_opt.state[q][key], value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["sgd", "momentum", "rmsprop", "adam"])
def test_skipped_step_writes_nothing_but_the_position(backend, name):
    model = _model(torch.float32)
    opt = OURS_CLASS[name](model.parameters(), lr=0.1, schedule=S.exponential(0.5),
                           backend=backend)
    _train(model, opt, dtype=torch.float32, steps=2, inf_at=set())
    params = [p.detach().clone() for p in model.parameters()]
    state = {i: {k: v.clone() for k, v in opt.state[p].items()}
             for i, p in enumerate(model.parameters())}
    scales, grads = _train(model, opt, dtype=torch.float32, steps=1, inf_at={0})
    for p, before in zip(model.parameters(), params):
        assert torch.equal(p.detach(), before)
    for i, p in enumerate(model.parameters()):
        assert state[i].keys() == opt.state[p].keys()
        for k, v in state[i].items():
            assert torch.equal(opt.state[p][k], v), k
    assert all(not torch.isfinite(g).all() or g.abs().sum() == 0 for g in grads[0])
    assert opt.param_groups[0]["schedule_position"].item() == 3
    assert opt.get_last_lr() == [0.1 * 0.5 ** 3]   # the next update's
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dampening", [0.0, 0.5])
def test_skipped_first_step_creates_no_momentum_buffer(backend, dampening):
    """C13: torch's fused SGD leaves an uninitialised buffer after a skipped first step;
    we leave none, so the next update starts the buffer from the gradient, and the
    state_dict loads into torch's SGD with the same meaning."""
    ours, theirs = _model(torch.float64), _model(torch.float64)
    opt = fs.SGD(ours.parameters(), lr=0.1, momentum=0.9, dampening=dampening, backend=backend)
    _train(ours, opt, dtype=torch.float64, steps=2, inf_at={0, 1})
    for p in ours.parameters():
        assert "momentum_buffer" not in opt.state[p]
        assert opt.state[p]["step"].item() == 0
    t_opt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, dampening=dampening)
    t_opt.load_state_dict(opt.state_dict())
    _train(ours, opt, dtype=torch.float64, steps=3, inf_at=set())
    _train(theirs, t_opt, dtype=torch.float64, steps=3, inf_at=set())
    for p, q in zip(theirs.parameters(), ours.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(opt.state[q]["momentum_buffer"],
                                   t_opt.state[p]["momentum_buffer"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_autocast_bf16_with_grad_scaler_runs(backend):
    """A realistic loop: bf16 autocast forward, fp32 master weights, GradScaler."""
    model = _model(torch.float32)
    opt = fs.AdamW(model.parameters(), lr=1e-2, schedule=S.cosine(10), backend=backend)
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(16, 5)
    first = None
    for _ in range(10):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert loss.item() < first
    assert all(torch.isfinite(p).all() for p in model.parameters())
