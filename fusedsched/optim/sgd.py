"""SGD, with momentum, dampening and Nesterov, as torch.optim.SGD: same arguments,
defaults, param-group keys and state keys (``momentum_buffer``)."""

from ._base import FusedOptimizer
from ._doc import derive
from ._validate import common, drop_in, flag, in_range, nonnegative, value_of


class SGD(FusedOptimizer):
    """Stochastic gradient descent with the learning-rate schedule fused into the kernel.

    Matches ``torch.optim.SGD`` (``_single_tensor_sgd``; Nesterov as Sutskever et al.
    2013): the k-th ``step()`` uses ``lr * schedule(k - 1)``; the momentum buffer takes
    the gradient itself on a parameter's first applied update.

    Args:
        params: iterable of tensors or param-group dicts (float16, bfloat16, float32,
            float64 or complex); math in float32 (float64 for float64 parameters).
        lr (float or 1-element tensor): base learning rate, >= 0.
        momentum (float): momentum factor, >= 0.
        dampening (float): dampening for momentum.
        weight_decay (float): L2 penalty, >= 0.
        nesterov (bool): Nesterov momentum; needs momentum > 0 and dampening 0.
        maximize (bool): maximise the objective.
        schedule: a ``fusedsched.schedules`` schedule, a callable ``f(t) -> float``
            (host-evaluated) or None. ``one_cycle`` / ``cyclic`` with ``cycle_momentum``
            drive the momentum, as torch's OneCycleLR / CyclicLR do.
        {shared_args}

    State per parameter: ``step`` (0-dim float64 tensor, applied updates since the momentum
    buffer was made; torch's SGD ignores this key) and ``momentum_buffer`` when momentum is
    on. Momentum turned on mid-run starts its buffer from the gradient, as torch's does.

    Raises:
        ValueError / TypeError: invalid hyperparameters, naming the argument and value.
    """

    algorithm = "sgd"
    # the kernel's buffer takes the gradient itself at step 0: a new buffer restarts it
    _count_restarted_by = ("momentum_buffer",)
    # torch's SGD initialises the buffer from the first applied update's gradient
    _dropped_on_skip = "momentum_buffer"

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, schedule=None, backend="auto", master_weights=False,
                 stochastic_rounding=False, max_grad_norm=None, flat=False,
                 state_dtype=None):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        **drop_in(foreach=foreach, differentiable=differentiable, fused=fused),
                        schedule=schedule)
        super().__init__(params, defaults, backend, master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, max_grad_norm=max_grad_norm,
                         flat=flat, state_dtype=state_dtype)

    def _check_group(self, group):
        common(group)
        nonnegative("lr", group["lr"], "learning rate")
        nonnegative("momentum", group["momentum"], "momentum value")
        in_range("dampening", group["dampening"], "dampening value", 0.0, 1.0, high_open=False,
                 allow_tensor=False)
        nonnegative("weight_decay", group["weight_decay"], "weight_decay value",
                    allow_tensor=False)
        flag("nesterov", group["nesterov"])
        flag("maximize", group["maximize"])
        if group["nesterov"]:
            momentum = value_of(group["momentum"])
            if (momentum is not None and momentum <= 0) or group["dampening"] != 0:
                raise ValueError(
                    "Nesterov momentum requires a momentum and zero dampening: nesterov=True "
                    f"with momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    def _momentum_on(self, group):
        return group["momentum"] != 0 or getattr(group["schedule"], "cycles_momentum", False)

    def _state_keys(self, group):
        return ["momentum_buffer" if self._momentum_on(group) else None]

    def _kernel_args(self, group, lr):
        return dict(lr=lr, momentum=group["momentum"], dampening=group["dampening"],
                    weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                    maximize=group["maximize"])


class Momentum(SGD):
    # docstring: SGD's, derived below the class

    def __init__(self, params, lr=1e-3, momentum=0.9, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, schedule=None, backend="auto", master_weights=False,
                 stochastic_rounding=False, max_grad_norm=None, flat=False,
                 state_dtype=None):
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov,
                         maximize=maximize, foreach=foreach, differentiable=differentiable,
                         fused=fused, schedule=schedule, backend=backend,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, max_grad_norm=max_grad_norm,
                         flat=flat, state_dtype=state_dtype)

    def _check_group(self, group):
        super()._check_group(group)
        momentum = value_of(group["momentum"])
        if momentum is not None and not momentum > 0:
            raise ValueError(f"Invalid momentum value: Momentum requires momentum > 0, "
                             f"got momentum={group['momentum']!r}")


Momentum.__doc__ = derive(
    SGD.__doc__, "SGD with momentum (``SGD`` with ``momentum > 0`` required) and the\n"
    "    learning-rate schedule fused into the kernel.",
    args={"momentum": " (float): momentum factor, > 0 (default 0.9; ``momentum <= 0``\n"
                      "            raises ValueError)."})
