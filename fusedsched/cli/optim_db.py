"""The optimizer database: what the tests, ``fusedsched check`` and ``fusedsched bench``
step and compare against torch, written once (as torch's ``common_optimizers.optim_db``).

* ``OPTIMIZERS``: per optimizer name its fusedsched class, the torch.optim class it
  matches, its kernel algorithm, and its flag configurations (hyperparameters besides lr;
  the first ``QUICK_CONFIGS`` are the quick subset).
* ``schedules(steps)``: one schedule of every kind (and the composites), each with the
  torch.optim.lr_scheduler that expresses it natively, where one does.
* ``torch_scheduler(opt, schedule, lr)``: the torch scheduler that reproduces a fusedsched
  schedule on a torch optimizer: the native OneCycleLR / CyclicLR for the momentum-cycling
  kinds (LambdaLR cannot cycle momentum), LambdaLR for the others.
* ``DTYPES``: the parameter dtypes, widest first.

Importing this module imports torch (it holds classes); the command modules import it
inside ``run``.
"""

from typing import NamedTuple

import torch

import fusedsched as fs
from fusedsched import schedules as S

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
QUICK_CONFIGS = 2


class OptimInfo(NamedTuple):
    cls: type               # the fusedsched optimizer
    torch_cls: type         # the torch.optim optimizer it matches
    algorithm: str          # its kernel module (``ops.SIGNATURES``)
    configs: tuple          # flag configurations, quick ones first
    torch_defaults: dict = {}   # what torch_cls needs besides a config to match cls's defaults


OPTIMIZERS = {
    "sgd": OptimInfo(fs.SGD, torch.optim.SGD, "sgd", (
        {}, {"momentum": 0.9, "nesterov": True},
        {"momentum": 0.9, "dampening": 0.5, "weight_decay": 0.1},
        {"maximize": True, "momentum": 0.9, "weight_decay": 0.1},
        {"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.5},
        {"momentum": 0.5, "weight_decay": 0.1})),
    "momentum": OptimInfo(fs.Momentum, torch.optim.SGD, "sgd", (
        {}, {"nesterov": True, "weight_decay": 0.01}), {"momentum": 0.9}),
    "rmsprop": OptimInfo(fs.RMSprop, torch.optim.RMSprop, "rmsprop", (
        {}, {"centered": True, "momentum": 0.5, "weight_decay": 0.1}, {"momentum": 0.9},
        {"maximize": True, "alpha": 0.9, "eps": 1e-6}, {"centered": True},
        {"alpha": 0.9, "eps": 1e-6}, {"maximize": True, "weight_decay": 0.05})),
    "adam": OptimInfo(fs.Adam, torch.optim.Adam, "adam", (
        {}, {"amsgrad": True, "weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
        {"maximize": True, "amsgrad": True, "weight_decay": 0.05},
        {"betas": (0.8, 0.99), "eps": 1e-6}, {"amsgrad": True}, {"weight_decay": 0.1})),
    "adamw": OptimInfo(fs.AdamW, torch.optim.AdamW, "adam", (
        {}, {"amsgrad": True, "weight_decay": 0.5}, {"maximize": True})),
}


def schedules(steps, lr):
    """[(name, fusedsched schedule, factory(torch_opt) of the native torch scheduler, or
    None where only LambdaLR(f) expresses it)] for a run of ``steps`` updates at base
    learning rate ``lr``; lengths are chosen so that every phase is crossed."""
    L = torch.optim.lr_scheduler
    half = max(steps // 2, 2)
    return [
        ("constant", S.constant(0.7), None),
        ("linear", S.linear(0.25, 1.0, half),
         lambda o: L.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=half)),
        ("step_decay", S.step_decay(3, gamma=0.5), lambda o: L.StepLR(o, 3, gamma=0.5)),
        ("multistep", S.multistep([2, 5, 5], gamma=0.5),
         lambda o: L.MultiStepLR(o, [2, 5, 5], gamma=0.5)),
        ("exponential", S.exponential(0.9), lambda o: L.ExponentialLR(o, 0.9)),
        ("polynomial", S.polynomial(total_steps=half, power=2.0),
         lambda o: L.PolynomialLR(o, total_iters=half, power=2.0)),
        ("cosine", S.cosine(steps, end_factor=0.1),
         lambda o: L.CosineAnnealingLR(o, T_max=steps, eta_min=0.1 * lr)),
        ("cosine_restarts", S.cosine_restarts(2, cycle_mult=2, end_factor=0.05),
         lambda o: L.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2, eta_min=0.05 * lr)),
        ("inverse_sqrt", S.inverse_sqrt(3), None),
        ("warmup_stable_decay", S.warmup_stable_decay(2, 2, half, decay="cosine",
                                                      end_factor=0.1), None),
        ("warmup_cosine", S.warmup(S.cosine(steps), 3), None),
        ("sequential", S.sequential([S.linear(0.1, 1.0, 2), S.exponential(0.9),
                                     S.constant(0.5)], milestones=[2, half]), None),
        ("one_cycle", S.one_cycle(total_steps=steps, three_phase=True),
         lambda o: L.OneCycleLR(o, max_lr=lr, total_steps=steps, three_phase=True)),
        ("cyclic_triangular2", S.cyclic(0.2, step_size_up=2, step_size_down=3,
                                        mode="triangular2"),
         lambda o: L.CyclicLR(o, base_lr=0.2 * lr, max_lr=lr, step_size_up=2,
                              step_size_down=3, mode="triangular2",
                              base_momentum=0.8, max_momentum=0.9)),
        ("cyclic_exp_range", S.cyclic(0.3, step_size_up=3, mode="exp_range", gamma=0.9,
                                      cycle_momentum=False),
         lambda o: L.CyclicLR(o, base_lr=0.3 * lr, max_lr=lr, step_size_up=3,
                              mode="exp_range", gamma=0.9, cycle_momentum=False)),
    ]


def torch_scheduler(opt, schedule, lr):
    """The torch scheduler that reproduces ``schedule`` (a fusedsched schedule or a
    callable) on the torch optimizer ``opt`` whose lr is ``lr``: OneCycleLR / CyclicLR for
    the kinds that cycle momentum, LambdaLR(f) for everything else (the same f(t) as the
    kernel: exact where torch's chainable schedulers accumulate rounding)."""
    if isinstance(schedule, S.Schedule) and schedule.cycles_momentum:
        spec = schedule.to_spec()
        kind = spec["kind"]
        if kind == "one_cycle":
            return torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=lr, total_steps=spec["total_steps"], pct_start=spec["pct_start"],
                anneal_strategy=spec["anneal"], div_factor=spec["div_factor"],
                final_div_factor=spec["final_div_factor"], three_phase=spec["three_phase"],
                cycle_momentum=True, base_momentum=spec["base_momentum"],
                max_momentum=spec["max_momentum"])
        if kind == "cyclic":
            return torch.optim.lr_scheduler.CyclicLR(
                opt, base_lr=spec["base_factor"] * lr, max_lr=lr,
                step_size_up=spec["step_size_up"], step_size_down=spec["step_size_down"],
                mode=spec["mode"], gamma=spec["gamma"], cycle_momentum=True,
                base_momentum=spec["base_momentum"], max_momentum=spec["max_momentum"])
        raise ValueError(f"no torch scheduler cycles momentum as {schedule!r} does")
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: schedule(t))
