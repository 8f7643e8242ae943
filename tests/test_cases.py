"""Optimizer cases taken from public bug reports, each with its value, on every backend
(Triton interpreted on CPU tensors). The ids are those of docs/design.md ("Cases from public
reports"); the schedule cases C1-C4 and C6 are in test_schedules.py. Here:

- C5 warmup from zero (google-research/big_transfer#58, google-research/bert#1293): an
  update with lr 0 leaves p unchanged but counts (step, exp_avg); weight decay with lr 0.
- C7 amsgrad keeps the running maximum of exp_avg_sq (pytorch/pytorch#78807).
- C8 an empty parameter anywhere in a group, every optimizer (NVIDIA/TransformerEngine#3207,
  pytorch/pytorch#100811).
- C9 centered RMSprop whose variance cancels below zero: no NaN (FastNN#12).
- C10 complex parameters: Adam equals Adam on view_as_real (pytorch/pytorch#59998).
- C11 maximize with weight decay, SGD/momentum/Adam/AdamW (pytorch/pytorch#149476).
- C12 a parameter whose grad is None on some steps keeps its own step count
  (InfiniTrain#235, DeepSpeed#8471).
- C13 found_inf skips the update, grad_scale unscales; a skipped first momentum step
  leaves no buffer (pytorch/pytorch#95781; LibreYOLO PR 771).
- C14 fp16/bf16 parameters with a zero gradient stay finite (google-deepmind/optax#1754).
- C15 lr given as a tensor, updated in place by a torch scheduler (pytorch/pytorch#145461).
- C16 Nesterov and dampening values; invalid combinations raise (ml-explore/mlx#473).
"""

import math

import pytest
import torch

import fusedsched as fs
from fusedsched import schedules as S
from fusedsched.cli.optim_db import OPTIMIZERS

from conftest import BACKENDS

ALL = pytest.mark.parametrize("backend", BACKENDS)


def _step(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else torch.as_tensor(g, dtype=p.dtype).expand_as(p).clone()
    opt.step()


@ALL
def test_c5_warmup_from_zero(backend):
    p = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = fs.Adam([p], lr=0.1, schedule=S.warmup(S.constant(), warmup_steps=4), backend=backend)
    _step(opt, [p], [1.0])
    assert p.item() == 1.0
    assert opt.state[p]["step"].item() == 1
    assert opt.state[p]["exp_avg"].item() == pytest.approx(0.1, rel=1e-15)
    _step(opt, [p], [1.0])
    assert p.item() == pytest.approx(0.975, rel=1e-9)


@ALL
@pytest.mark.parametrize("cls,exp_avg", [(fs.Adam, 0.11), (fs.AdamW, 0.1)])
def test_c5_lr_zero_with_weight_decay(backend, cls, exp_avg):
    p = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = cls([p], lr=0.1, weight_decay=0.1, schedule=S.warmup(S.constant(), 4), backend=backend)
    _step(opt, [p], [1.0])
    assert p.item() == 1.0
    assert opt.state[p]["exp_avg"].item() == pytest.approx(exp_avg, rel=1e-14)


@ALL
def test_c7_amsgrad_running_max(backend):
    for amsgrad, want in [(True, -0.2968700184778925), (False, -0.297090637982806)]:
        p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = fs.Adam([p], lr=0.1, amsgrad=amsgrad, backend=backend)
        for g in [1.0, 0.0, 0.0, 0.0, 0.0]:
            _step(opt, [p], [g])
        assert p.item() == pytest.approx(want, rel=1e-13)
        if amsgrad:
            assert opt.state[p]["max_exp_avg_sq"].item() == pytest.approx(0.0010000000000000009, rel=1e-13)


# C8 steps every optimizer of the database at lr 0.1, with its defaults or these flags
C8_FLAGS = {"rmsprop": dict(centered=True, momentum=0.5), "adamw": dict(amsgrad=True)}


def _c8_optimizer(name, params, backend):
    return OPTIMIZERS[name].cls(params, lr=0.1, backend=backend, **C8_FLAGS.get(name, {}))


@ALL
@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("order", ["ab", "ba", "aba"])
def test_c8_empty_parameter_anywhere(backend, name, order):
    make = {"a": lambda: torch.ones(4, requires_grad=True),
            "b": lambda: torch.empty(0, requires_grad=True)}
    params = [make[c]() for c in order]
    opt = _c8_optimizer(name, params, backend)
    _step(opt, params, [1.0] * len(params))
    ref = [make[c]() for c in order]
    ref_opt = _c8_optimizer(name, ref, "reference")
    _step(ref_opt, ref, [1.0] * len(ref))
    for p, r, c in zip(params, ref, order):
        assert p.shape == r.shape
        torch.testing.assert_close(p, r, rtol=1e-6, atol=0)
    if name == "adam":
        assert params[order.index("a")].tolist() == [0.9000000357627869] * 4


@ALL
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c9_centered_rmsprop_never_nan(backend, dtype):
    p = torch.zeros((), dtype=dtype, requires_grad=True)
    opt = fs.RMSprop([p], lr=0.01, alpha=0.9, eps=1e-8, centered=True, backend=backend)
    values = {}
    for k in range(1, 134):
        _step(opt, [p], [3.0])
        values[k] = p.item()
        assert math.isfinite(values[k]), f"NaN/inf at update {k}"
    if dtype == torch.float64:
        assert values[1] == pytest.approx(-0.0333333330, rel=1e-8)
        assert values[10] == pytest.approx(-0.224476379, rel=1e-8)
        assert values[133] == pytest.approx(-215.041122, rel=1e-8)


@ALL
def test_c10_complex_equals_view_as_real(backend):
    values = [1 + 2j, -0.5 + 0.25j]
    grads = [[0.5 - 1j, 2 + 0j], [-0.1 + 0.3j, 1 - 1j], [0.2 + 0.2j, -3 + 0.5j]]
    p = torch.tensor(values, dtype=torch.complex64, requires_grad=True)
    opt = fs.Adam([p], lr=0.1, backend=backend)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.complex64)
        opt.step()
    want = torch.tensor([[0.788781464, 2.163235903], [-0.685020268, 0.347277731]])
    torch.testing.assert_close(torch.view_as_real(p.detach()), want, rtol=1e-6, atol=1e-7)
    assert opt.state[p]["exp_avg"].dtype == torch.complex64


@ALL
def test_c11_maximize_with_weight_decay(backend):
    def run(make, n):
        p = torch.ones(1, dtype=torch.float64, requires_grad=True)
        opt = make([p])
        out = []
        for _ in range(n):
            _step(opt, [p], [1.0])
            out.append(p.item())
        return out

    kw = dict(lr=0.1, weight_decay=0.1, maximize=True, backend=backend)
    assert run(lambda ps: fs.SGD(ps, **kw), 2) == pytest.approx([1.09, 1.1791], rel=1e-14)
    assert run(lambda ps: fs.SGD(ps, momentum=0.9, **kw), 2)[1] == pytest.approx(1.2601, rel=1e-14)
    kw["weight_decay"] = 0.5
    assert run(lambda ps: fs.Adam(ps, **kw), 1)[0] == pytest.approx(1.099999998, rel=1e-9)
    assert run(lambda ps: fs.AdamW(ps, **kw), 1)[0] == pytest.approx(1.049999999, rel=1e-9)


@ALL
def test_c12_grad_none_keeps_own_count(backend):
    a = torch.ones(1, dtype=torch.float64, requires_grad=True)
    b = torch.ones(1, dtype=torch.float64, requires_grad=True)
    never = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = fs.Adam([a, b, never], lr=0.01, backend=backend)
    _step(opt, [a, b, never], [0.5, None, None])
    _step(opt, [a, b, never], [0.5, 0.5, None])
    assert a.item() == pytest.approx(0.98, rel=1e-9)
    assert b.item() == pytest.approx(0.99, rel=1e-9)
    assert opt.state[b]["step"].item() == 1
    assert opt.state[a]["step"].item() == 2
    assert never not in opt.state


@ALL
def test_c13_found_inf_and_grad_scale(backend):
    p = torch.ones(4, requires_grad=True)
    opt = fs.Adam([p], lr=0.1, backend=backend)
    p.grad = torch.ones(4)
    opt.found_inf = torch.ones(1)
    opt.grad_scale = None
    opt.step()
    assert p.tolist() == [1.0] * 4
    assert "exp_avg" not in opt.state[p] or opt.state[p]["exp_avg"].eq(0).all()
    assert opt.state[p]["step"].item() == 0
    opt.found_inf = torch.zeros(1)
    opt.step()
    assert p.tolist() == [0.9000000357627869] * 4
    assert opt.state[p]["exp_avg"].tolist() == pytest.approx([0.1] * 4, rel=1e-7)
    # grad_scale 1024 with grad 1024 is the unscaled update
    q = torch.ones(4, requires_grad=True)
    opt2 = fs.Adam([q], lr=0.1, backend=backend)
    q.grad = torch.full((4,), 1024.0)
    opt2.grad_scale, opt2.found_inf = torch.full((1,), 1024.0), torch.zeros(1)
    opt2.step()
    assert q.tolist() == [0.9000000357627869] * 4
    assert q.grad.tolist() == [1.0] * 4


@ALL
@pytest.mark.parametrize("dampening", [0.0, 0.5])
def test_c13_skipped_first_step_leaves_no_momentum(backend, dampening):
    """A skipped first step of momentum SGD leaves no stale buffer: the next applied
    update initialises it from the gradient, as a first update does."""
    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = fs.SGD([p], lr=0.1, momentum=0.9, dampening=dampening, backend=backend)
    p.grad = torch.full((3,), 2.0, dtype=torch.float64)
    opt.found_inf = torch.ones(1)
    opt.step()
    assert p.tolist() == [1.0] * 3
    opt.found_inf = torch.zeros(1)
    opt.step()
    assert p.tolist() == pytest.approx([0.8] * 3, rel=1e-15)
    assert opt.state[p]["momentum_buffer"].tolist() == [2.0] * 3


@ALL
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make", [lambda ps, b: fs.Adam(ps, lr=1e-3, eps=1e-8, backend=b),
                                  lambda ps, b: fs.RMSprop(ps, lr=1e-3, eps=1e-8, backend=b),
                                  lambda ps, b: fs.RMSprop(ps, lr=1e-3, centered=True, backend=b)],
                         ids=["adam", "rmsprop", "rmsprop-centered"])
def test_c14_half_zero_grad_stays_finite(backend, dtype, make):
    p = torch.tensor([1.0, -2.0, 0.5], dtype=dtype, requires_grad=True)
    opt = make([p], backend)
    p.grad = torch.zeros(3, dtype=dtype)
    opt.step()
    assert p.tolist() == [1.0, -2.0, 0.5]


@ALL
@pytest.mark.parametrize("lr", [torch.tensor(0.1), torch.tensor([0.1])])
def test_c15_tensor_lr(backend, lr):
    p = torch.ones(3, requires_grad=True)
    opt = fs.Adam([p], lr=lr, backend=backend)
    p.grad = torch.ones(3)
    opt.step()
    assert p.tolist() == [0.9000000357627869] * 3


@ALL
def test_c15_tensor_lr_updated_in_place_by_torch_scheduler(backend):
    lr = torch.tensor(0.1, dtype=torch.float64)
    p = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = fs.SGD([p], lr=lr, backend=backend)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for want in [0.9, 0.85, 0.825]:
        p.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
        sched.step()
        assert p.item() == pytest.approx(want, rel=1e-15)
    assert opt.param_groups[0]["lr"] is lr


@ALL
def test_c16_nesterov_and_dampening(backend):
    def run(**kw):
        p = torch.ones(1, dtype=torch.float64, requires_grad=True)
        opt = fs.SGD([p], lr=0.1, backend=backend, **kw)
        out = []
        for _ in range(2):
            _step(opt, [p], [1.0])
            out.append(p.item())
        return out

    assert run(momentum=0.9, nesterov=True) == pytest.approx([0.81, 0.539], rel=1e-14)
    assert run(momentum=0.9, dampening=0.5) == pytest.approx([0.9, 0.76], rel=1e-14)
    p = torch.ones(1, requires_grad=True)
    with pytest.raises(ValueError, match="momentum"):
        fs.SGD([p], lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="dampening"):
        fs.SGD([p], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
