"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019) as torch.optim.Adam /
torch.optim.AdamW: same arguments, defaults, param-group keys and state keys."""

from ._base import FusedOptimizer
from ._doc import derive
from ._validate import common, drop_in, flag, in_range, nonnegative


class Adam(FusedOptimizer):
    """Adam with the learning-rate schedule fused into the kernel.

    Matches ``torch.optim.Adam`` (``_single_tensor_adam``): the k-th ``step()`` uses
    ``lr * schedule(k - 1)``; bias corrections use the parameter's own ``state["step"]``.

    Args:
        params: iterable of tensors or of param-group dicts. float16, bfloat16, float32,
            float64 or complex (updated as ``view_as_real``, as torch does) tensors; math in
            float32 (float64 for float64 parameters), state in the parameter's dtype.
        lr (float or 1-element tensor): base learning rate (the schedule multiplies it).
        betas (tuple of 2 floats or tensors): coefficients of the running averages of the
            gradient and its square, each in [0, 1).
        eps (float): added to the denominator, >= 0.
        weight_decay (float): L2 penalty (coupled) or decoupled decay rate, >= 0.
        amsgrad (bool): keep the running maximum of ``exp_avg_sq`` (Reddi et al. 2018).
        maximize (bool): maximise the objective.
        decoupled_weight_decay (bool): AdamW's decay ``p *= 1 - lr_t * weight_decay``.
        schedule: a ``fusedsched.schedules`` schedule (evaluated in the kernel), a Python
            callable ``f(t) -> float`` (evaluated on the host), or None (constant).
            ``one_cycle`` / ``cyclic`` with ``cycle_momentum`` also drive beta1.
        {shared_args}

    State per parameter: ``step`` (0-dim float64 tensor on the parameter's device: exact
    past 2**24, unlike torch's float32 counter), ``exp_avg``, ``exp_avg_sq`` and, with
    amsgrad, ``max_exp_avg_sq``.

    Raises:
        ValueError / TypeError: invalid hyperparameters (at construction, and at
            ``step()`` if a group was changed to one), naming the argument and value.
    """

    algorithm = "adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 schedule=None, backend="auto", master_weights=False,
                 stochastic_rounding=False, max_grad_norm=None, flat=False,
                 state_dtype=None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize,
                        **drop_in(foreach=foreach, capturable=capturable,
                                  differentiable=differentiable, fused=fused),
                        decoupled_weight_decay=decoupled_weight_decay, schedule=schedule)
        super().__init__(params, defaults, backend, master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, max_grad_norm=max_grad_norm,
                         flat=flat, state_dtype=state_dtype)

    def _check_group(self, group):
        common(group)
        nonnegative("lr", group["lr"], "learning rate")
        nonnegative("eps", group["eps"], "epsilon value", allow_tensor=False)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Invalid betas: expected a pair (beta1, beta2), got betas={betas!r}")
        for i, beta in enumerate(betas):
            in_range(f"betas[{i}]", beta, f"beta parameter at index {i}", 0.0, 1.0)
        nonnegative("weight_decay", group["weight_decay"], "weight_decay value",
                    allow_tensor=False)
        for name in ("amsgrad", "maximize", "decoupled_weight_decay"):
            flag(name, group[name])

    def _state_keys(self, group):
        return ["exp_avg", "exp_avg_sq", "max_exp_avg_sq" if group["amsgrad"] else None]

    def _kernel_args(self, group, lr):
        beta1, beta2 = group["betas"]
        return dict(lr=lr, beta1=beta1, beta2=beta2, eps=group["eps"],
                    weight_decay=group["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"],
                    amsgrad=group["amsgrad"], maximize=group["maximize"])

    def _group_momentum(self, group):
        return group["betas"][0]


class AdamW(Adam):
    # docstring: Adam's, derived below the class

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, schedule=None, backend="auto",
                 master_weights=False, stochastic_rounding=False, max_grad_norm=None, flat=False,
                 state_dtype=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         foreach=foreach, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, schedule=schedule, backend=backend,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, max_grad_norm=max_grad_norm,
                         flat=flat, state_dtype=state_dtype)


AdamW.__doc__ = derive(
    Adam.__doc__, "AdamW (Adam with decoupled weight decay) with the learning-rate schedule\n"
    "    fused into the kernel.",
    replace=[("``torch.optim.Adam``", "``torch.optim.AdamW``")],
    drop=["decoupled_weight_decay"],
    args={"weight_decay": " (float): decoupled decay rate, >= 0 (default 1e-2): each\n"
                          "            update first scales ``p *= 1 - lr_t * weight_decay``."})
