"""Drive torch.optim (+ LambdaLR or the matching torch scheduler) and fusedsched side by
side on the same parameters and gradients: step 2 of the oracle chain in docs/design.md."""

import contextlib

import numpy as np
import torch

import fusedsched as fs
from fusedsched import schedules as S
from fusedsched.cli.optim_db import OPTIMIZERS, torch_scheduler  # noqa: F401 (re-exported)
from fusedsched.kernels.numba import adam as _numba_adam
from fusedsched.kernels.numba import set_sqrt_mode
from fusedsched.kernels.numba.schedule import evaluate as _numba_evaluate
from fusedsched.kernels.reference import _common as _ref_common
from fusedsched.kernels.reference import adam as _ref_adam
from fusedsched.kernels.reference import rmsprop as _ref_rmsprop

TORCH_CLASS = {name: info.torch_cls for name, info in OPTIMIZERS.items()}
OURS_CLASS = {name: info.cls for name, info in OPTIMIZERS.items()}

SHAPES = [(5, 3), (0,), (7,), (2, 1, 3)]


def ieee_sqrt(x):
    """Correctly rounded square root of a CPU tensor (numpy's), in its dtype."""
    with np.errstate(invalid="ignore"):
        return torch.from_numpy(np.asarray(np.sqrt(x.detach().numpy())))


@contextlib.contextmanager
def numba_sqrt(mode):
    """The Numba kernels' square-root mode ("ieee" or "torch") for a block. In "ieee" mode
    the reference backend's ``sqrt`` is swapped for a correctly rounded one meanwhile, so
    that Numba and the reference still agree bit for bit (the Triton interpreter keeps
    torch's sqrt: compare it in "torch" mode)."""
    previous = set_sqrt_mode(mode)
    saved = _ref_adam.sqrt, _ref_rmsprop.sqrt
    if mode == "ieee":
        _ref_adam.sqrt = _ref_rmsprop.sqrt = ieee_sqrt
    try:
        yield
    finally:
        set_sqrt_mode(previous)
        _ref_adam.sqrt, _ref_rmsprop.sqrt = saved


def _scalar_of(value, like):
    return torch.tensor(float(value), dtype=torch.float64, device=like.device)


def _evaluate_as_numba(program, position):
    factor, momentum, has_momentum = _numba_evaluate(program.cpu().numpy(), float(position))
    return tuple(_scalar_of(v, position) for v in (factor, momentum, has_momentum))


def _bias_corrections_as_numba(lr_t, beta1, beta2, step):
    size, root = _numba_adam.bias_corrections(float(lr_t), float(beta1), float(beta2),
                                              float(step))
    return _scalar_of(size, step), _scalar_of(root, step)


@contextlib.contextmanager
def reference_takes_numba_scalars():
    """For a block, the reference backend takes its float64 scalars of a step -- the
    schedule's (factor, momentum, has_momentum) and Adam's bias corrections -- from the very
    functions the Numba kernels call (``fusedsched.kernels.numba.schedule.evaluate``,
    ``fusedsched.kernels.numba.adam.bias_corrections``), instead of computing them itself.

    Why: those scalars go through pow, cos, log and sqrt, which Numba takes from LLVM and
    the C library (and IEEE sqrt) and the reference from torch (libm's pow, MKL's cos, log
    and sqrt on the CPU): two implementations, each correct to about an ulp, which may
    differ in the last bit on some machine and not on another (and Adam's ``1 - beta**step``
    magnifies such a difference). With one function on both sides, everything else of a
    step -- the same correctly rounded operations and fused multiply-adds in the same
    order -- is compared bit for bit on every machine; the two implementations of the
    scalars are compared with each other in ulps (tests/test_kernels.py: the
    schedule evaluators; tests/test_numba_machinery.py: Adam's bias corrections)."""
    saved = _ref_common.evaluate, _ref_adam.bias_corrections
    _ref_common.evaluate = _evaluate_as_numba
    _ref_adam.bias_corrections = _bias_corrections_as_numba
    try:
        yield
    finally:
        _ref_common.evaluate, _ref_adam.bias_corrections = saved


def make_params(dtype, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def grads_for(step, params, seed=1):
    g = torch.Generator().manual_seed(seed * 100003 + step)
    return [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) for p in params]


def run_pair(name, config, schedule, *, dtype=torch.float64, steps=35, backend="reference",
             shapes=SHAPES, torch_extra=None):
    """Run torch and fusedsched for ``steps`` updates; return (torch_opt, ours_opt,
    torch_params, our_params)."""
    config = dict(config)
    lr = config.pop("lr", 0.05)
    base = make_params(dtype, shapes)
    theirs = [p.clone().requires_grad_() for p in base]
    ours = [p.clone().requires_grad_() for p in base]
    torch_config = {**OPTIMIZERS[name].torch_kwargs(config), **(torch_extra or {})}
    t_opt = TORCH_CLASS[name](theirs, lr=lr, **torch_config)
    sched = torch_scheduler(t_opt, schedule, lr)
    o_opt = OURS_CLASS[name](ours, lr=lr, schedule=schedule, backend=backend, **config)
    for k in range(steps):
        for p, q, g in zip(theirs, ours, grads_for(k, base)):
            p.grad = g.clone()
            q.grad = g.clone()
        t_opt.step()
        sched.step()
        o_opt.step()
    return t_opt, o_opt, theirs, ours


def max_rel_error(a, b):
    """Largest |a - b| / max(|a|, 1e-8) over elements (0 for empty tensors); the floor
    keeps values that cancel to ~0 (a momentum buffer) from dividing by nothing."""
    a = a.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    if a.numel() == 0:
        return 0.0
    return float(((a - b).abs() / a.abs().clamp_min(1e-8)).max())


def compare_states(t_opt, o_opt, theirs, ours):
    """Largest relative error over parameters and every torch state key."""
    worst = 0.0
    for p, q in zip(theirs, ours):
        worst = max(worst, max_rel_error(p, q))
        t_state, o_state = t_opt.state[p], o_opt.state[q]
        for key, value in t_state.items():
            assert key in o_state, f"state key {key!r} missing"
            if key == "step":
                assert float(value) == float(o_state[key]), (key, value, o_state[key])
            else:
                assert value.shape == o_state[key].shape and value.dtype == o_state[key].dtype
                worst = max(worst, max_rel_error(value, o_state[key]))
    return worst
