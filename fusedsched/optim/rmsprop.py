"""RMSprop (Hinton, lecture 6e; centered form from Graves 2013) as torch.optim.RMSprop:
same arguments, defaults, param-group keys and state keys."""

from ._base import FusedOptimizer
from ._validate import drop_in, common, flag, in_range, nonnegative


class RMSprop(FusedOptimizer):
    """RMSprop with the learning-rate schedule fused into the kernel.

    Matches ``torch.optim.RMSprop`` (``_single_tensor_rmsprop``) with one deliberate
    deviation: with ``centered=True`` the variance ``square_avg - grad_avg**2`` is clamped
    at 0 before the square root; torch's rounding can make it negative and return NaN
    (reported in FastNN#12: grad 3.0 for 133 updates).

    Args:
        params: iterable of tensors or param-group dicts (float16, bfloat16, float32,
            float64 or complex); math in float32 (float64 for float64 parameters).
        lr (float or 1-element tensor): base learning rate, >= 0.
        alpha (float): smoothing constant, in [0, 1] (torch also accepts alpha > 1,
            which makes ``square_avg`` negative and the update NaN).
        eps (float): added to the denominator, >= 0.
        weight_decay (float): L2 penalty, >= 0.
        momentum (float): momentum factor, >= 0.
        centered (bool): normalise by the estimated variance of the gradient.
        maximize (bool): maximise the objective.
        schedule: a ``fusedsched.schedules`` schedule, a callable ``f(t) -> float``
            (host-evaluated) or None. ``one_cycle`` / ``cyclic`` with ``cycle_momentum``
            drive the momentum.
        {shared_args}

    State per parameter: ``step`` (0-dim float64 tensor), ``square_avg``, ``grad_avg``
    (centered) and ``momentum_buffer`` (momentum on).

    Raises:
        ValueError / TypeError: invalid hyperparameters, naming the argument and value.
    """

    algorithm = "rmsprop"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, capturable=False, foreach=None, maximize=False,
                 differentiable=False, schedule=None, backend="auto", master_weights=False,
                 stochastic_rounding=False, max_grad_norm=None, flat=False,
                 state_dtype=None):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered, maximize=maximize,
                        **drop_in(capturable=capturable, foreach=foreach,
                                  differentiable=differentiable),
                        schedule=schedule)
        super().__init__(params, defaults, backend, master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, max_grad_norm=max_grad_norm,
                         flat=flat, state_dtype=state_dtype)

    def _check_group(self, group):
        common(group)
        nonnegative("lr", group["lr"], "learning rate")
        nonnegative("eps", group["eps"], "epsilon value", allow_tensor=False)
        nonnegative("momentum", group["momentum"], "momentum value")
        nonnegative("weight_decay", group["weight_decay"], "weight_decay value",
                    allow_tensor=False)
        # torch accepts alpha > 1, where square_avg turns negative and sqrt gives NaN.
        in_range("alpha", group["alpha"], "alpha value", 0.0, 1.0, high_open=False,
                 allow_tensor=False)
        flag("centered", group["centered"])
        flag("maximize", group["maximize"])

    def _state_keys(self, group):
        momentum_on = group["momentum"] > 0 or getattr(group["schedule"], "cycles_momentum", False)
        return ["square_avg", "grad_avg" if group["centered"] else None,
                "momentum_buffer" if momentum_on else None]

    def _kernel_args(self, group, lr):
        return dict(lr=lr, alpha=group["alpha"], eps=group["eps"],
                    weight_decay=group["weight_decay"], momentum=group["momentum"],
                    centered=group["centered"], maximize=group["maximize"])
