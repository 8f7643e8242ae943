"""The optimizer database: what the tests, ``fusedsched check`` and ``fusedsched bench``
step and compare against torch, written once (as torch's ``common_optimizers.optim_db``).

* ``OPTIMIZERS``: per optimizer name an ``OptimInfo``: its fusedsched class, the
  torch.optim class it matches, its kernel algorithm, whether torch steps it fused on the
  CPU, and its flag configurations (hyperparameters besides lr; the first
  ``QUICK_CONFIGS`` are the quick subset).
* ``state_keys(name, config)``: the state tensors that optimizer keeps with ``config``.
* ``BENCH``: the optimizers of ``fusedsched bench`` (its workloads' ``optimizer``), each an
  ``OPTIMIZERS`` entry with the bench's hyperparameters and the roof's columns.
* ``schedules(steps, lr)``: one schedule of every kind (and the composites), each with the
  torch.optim.lr_scheduler that expresses it natively, where one does.
* ``torch_scheduler(opt, schedule, lr)``: the torch scheduler that reproduces a fusedsched
  schedule on a torch optimizer: the native OneCycleLR / CyclicLR for the momentum-cycling
  kinds (LambdaLR cannot cycle momentum), LambdaLR for the others.
* ``DTYPE_NAMES`` / ``DTYPES``: the parameter dtypes, widest first (names, torch dtypes).
* ``STATE_DTYPES``: the reduced-precision ``state_dtype`` values every optimizer takes.

Who reads what:

* ``fusedsched check``: ``OPTIMIZERS`` (classes, ``torch_kwargs``, configs),
  ``QUICK_CONFIGS``, ``schedules``, ``DTYPE_NAMES``.
* ``fusedsched bench`` (and ``bench_state``, ``bench/bench_optimizers.py``): ``BENCH``.
* the tests: ``OPTIMIZERS`` (the optimizers every test runs each of, their classes and
  torch twins, ``torch_kwargs``; the configs in ``tests/_torch_oracle.py``,
  ``test_optim_vs_torch.py``, ``test_reliability.py``), ``schedules``, ``torch_scheduler``,
  ``DTYPES``, ``STATE_DTYPES``.

Importing this module imports neither torch nor the optimizers (it holds their names;
``OptimInfo.cls`` and ``torch_cls``, ``DTYPES``, ``STATE_DTYPES`` and the functions import
them on first use): ``fusedsched bench`` names its workloads from ``BENCH`` when it
answers ``--help`` and argument errors, before torch is imported.
"""

import functools
from typing import NamedTuple

DTYPE_NAMES = ("float64", "float32", "bfloat16", "float16")
QUICK_CONFIGS = 2


class OptimInfo(NamedTuple):
    """One optimizer of the database.

    ``cls_name``: the fusedsched class, ``fusedsched.<cls_name>`` (``cls``).
    ``torch_name``: the torch.optim class it matches, ``torch.optim.<torch_name>``
    (``torch_cls``).
    ``algorithm``: its kernel, a key of ``fusedsched.kernels.ops.SIGNATURES``.
    ``torch_fused_cpu``: whether ``torch_cls(fused=True)`` steps CPU tensors (the bench's
    "fused" provider, and which speed target a bench row has).
    ``configs``: flag configurations (hyperparameters besides lr), the ``QUICK_CONFIGS``
    quick ones first.
    ``torch_defaults``: what ``torch_cls`` needs besides a config to match ``cls``'s
    defaults (``torch_kwargs``)."""
    cls_name: str
    torch_name: str
    algorithm: str
    torch_fused_cpu: bool
    configs: tuple
    torch_defaults: dict = {}

    @property
    def cls(self):
        """The fusedsched optimizer class."""
        import fusedsched
        return getattr(fusedsched, self.cls_name)

    @property
    def torch_cls(self):
        """The torch.optim optimizer class it matches."""
        import torch
        return getattr(torch.optim, self.torch_name)

    def torch_kwargs(self, config):
        """The keyword arguments for ``torch_cls`` that match ``cls(**config)``."""
        return {**self.torch_defaults, **config}


OPTIMIZERS = {
    "sgd": OptimInfo("SGD", "SGD", "sgd", torch_fused_cpu=True, configs=(
        {}, {"momentum": 0.9, "nesterov": True},
        {"momentum": 0.9, "dampening": 0.5, "weight_decay": 0.1},
        {"maximize": True, "momentum": 0.9, "weight_decay": 0.1},
        {"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.5},
        {"momentum": 0.5, "weight_decay": 0.1})),
    "momentum": OptimInfo("Momentum", "SGD", "sgd", torch_fused_cpu=True, configs=(
        {}, {"nesterov": True, "weight_decay": 0.01}), torch_defaults={"momentum": 0.9}),
    "rmsprop": OptimInfo("RMSprop", "RMSprop", "rmsprop", torch_fused_cpu=False, configs=(
        {}, {"centered": True, "momentum": 0.5, "weight_decay": 0.1}, {"momentum": 0.9},
        {"maximize": True, "alpha": 0.9, "eps": 1e-6}, {"centered": True},
        {"alpha": 0.9, "eps": 1e-6}, {"maximize": True, "weight_decay": 0.05})),
    "adam": OptimInfo("Adam", "Adam", "adam", torch_fused_cpu=True, configs=(
        {}, {"amsgrad": True, "weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
        {"maximize": True, "amsgrad": True, "weight_decay": 0.05},
        {"betas": (0.8, 0.99), "eps": 1e-6}, {"amsgrad": True}, {"weight_decay": 0.1})),
    "adamw": OptimInfo("AdamW", "AdamW", "adam", torch_fused_cpu=True, configs=(
        {}, {"amsgrad": True, "weight_decay": 0.5}, {"maximize": True})),
}


def state_keys(name, config=None):
    """The state tensors besides ``step`` that optimizer ``name`` keeps per parameter with
    the hyperparameters ``config``, in kernel order (those of
    ``ops.SIGNATURES[algorithm].states`` that ``config`` turns on): the optimizer's own
    answer, from a group built with ``config``. E.g. ``("exp_avg", "exp_avg_sq")`` for
    Adam, ``("square_avg", "grad_avg")`` for centered RMSprop."""
    import torch
    opt = OPTIMIZERS[name].cls([torch.zeros(1, requires_grad=True)], **(config or {}))
    return tuple(key for key in opt._state_keys(opt.param_groups[0]) if key)


@functools.cache
def _columns(name, items):
    return 2 + len(state_keys(name, dict(items)))


class BenchInfo(NamedTuple):
    """One optimizer of ``fusedsched bench``.

    ``optimizer``: the ``OPTIMIZERS`` entry it steps (``info``: the fusedsched and torch
    classes, whether torch has a fused CPU path).
    ``kwargs``: its hyperparameters, the same on the fusedsched and the torch side."""
    optimizer: str
    kwargs: dict

    @property
    def info(self):
        """Its ``OptimInfo``."""
        return OPTIMIZERS[self.optimizer]

    @property
    def columns(self):
        """The roof's columns: the tensors per parameter element the step reads (p, g and
        the ``state_keys`` of ``kwargs``); it writes all of them but g. Adam: p, g, m, v =
        4 (7 x 4 bytes per float32 element moved)."""
        return _columns(self.optimizer, tuple(sorted(self.kwargs.items())))

    def make(self, params, **extra):
        """The fusedsched optimizer over ``params`` (``extra``: schedule, backend, flat)."""
        return self.info.cls(params, **self.kwargs, **extra)

    def make_torch(self, params, **flags):
        """The torch optimizer over ``params`` (``flags``: foreach, fused)."""
        return self.info.torch_cls(params, **self.info.torch_kwargs(self.kwargs), **flags)


BENCH = {
    "adam": BenchInfo("adam", dict(lr=1e-3)),
    "adamw": BenchInfo("adamw", dict(lr=1e-3, weight_decay=1e-2)),
    "sgd_momentum": BenchInfo("sgd", dict(lr=1e-2, momentum=0.9)),
    "rmsprop": BenchInfo("rmsprop", dict(lr=1e-2)),
    "rmsprop_centered": BenchInfo("rmsprop", dict(lr=1e-2, centered=True)),
}


def __getattr__(name):
    """``DTYPES`` (the torch dtypes of ``DTYPE_NAMES``) and ``STATE_DTYPES`` (the
    ``state_dtype`` values besides None, from the optimizers' own table), made on first
    use: they need torch."""
    if name == "DTYPES":
        import torch
        value = tuple(getattr(torch, n) for n in DTYPE_NAMES)
    elif name == "STATE_DTYPES":
        from fusedsched.optim import _precision
        value = tuple(k for k in _precision.FORMATS if k is not None)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def schedules(steps, lr):
    """[(name, fusedsched schedule, factory(torch_opt) of the native torch scheduler, or
    None where only LambdaLR(f) expresses it)] for a run of ``steps`` updates at base
    learning rate ``lr``; lengths are chosen so that every phase is crossed."""
    import torch

    from fusedsched import schedules as S

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
    import torch

    from fusedsched import schedules as S

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
