"""Opt-in training aids shared by every optimizer: fp32 master weights, stochastic
rounding of bf16 parameters, and fused gradient clipping by the global L2 norm.

None of them touches a kernel: each is a change of what ``FusedOptimizer._launch`` is
given.

Clipping (``max_grad_norm``). Before any update, the total L2 norm of all gradients of the
optimizer (every group) is computed on the device as ``torch.nn.utils.clip_grad_norm_`` does
(``torch._foreach_norm`` per device/dtype, then the norm of those norms; one
deviation: fp16/bf16 grads are reduced to a float32 norm, not rounded to their dtype),
without a host sync. With AMP the grads
are scaled, so the norm is divided by ``grad_scale``: the norm of the unscaled grads.
``clip_coef = clamp(max_grad_norm / (norm + 1e-6), max=1)`` as torch computes it, and the
kernels get ``grad_scale / clip_coef`` (float64) as their ``grad_scale``: they divide each
gradient by it in the same pass as the update (and write the clipped, unscaled gradient
back, as ``clip_grad_norm_`` leaves it). ``opt.last_grad_norm`` is the norm, a 0-dim tensor
on the first gradient's device. On ``found_inf`` the norm is inf/NaN and the kernels write
nothing, as without clipping.

Master weights (``master_weights=True``, float16/bfloat16 parameters; others unchanged).
``state["master_param"]`` is a float32 copy of the parameter, made from it on its first
update, and every state tensor of the parameter (``exp_avg``, ...) is float32. Each step:
the fp16/bf16 grad is copied into a float32 buffer kept as ``master_param.grad`` (kernels
take one dtype per call), the kernel updates the master and its fp32 state, and the master
is rounded (to nearest) into the parameter. Cost per element, beyond a plain bf16 step: memory
+8 B (master and grad buffer) + 2 B per state tensor; traffic +6 B (grad copy) + 4 B (master
read/write is 8 B instead of the parameter's 4) + 4 B per state tensor + 6 B (write-back).
The master is the source of truth: a parameter changed by hand is overwritten at the next
step (load the optimizer's state_dict with the model's).

Stochastic rounding (``stochastic_rounding=True``, bfloat16 parameters; float32/float64 are
unchanged, float16 raises ValueError). The state tensors of a bf16 parameter are float32;
each step the kernel updates a transient float32 copy of the parameter with a float32 copy
of its grad, and the result is rounded to bf16 stochastically: its float32 bits plus a
uniform random integer in [0, 2**16), low 16 bits cleared (rounds away from zero with
probability equal to the dropped fraction: unbiased). The random integers come from a
``torch.Generator`` per device owned by the optimizer, seeded with ``torch.initial_seed()``
at construction (or ``opt.rounding_seed``); its state is in the state_dict, so a resumed
run is bit-identical. Cost: memory +2 B per state tensor element (fp32 state) and, during
the step, 12 B transient (fp32 parameter and grad copies); the Numba backend rebuilds its
address table every step for such a group (the copies are new tensors).

In both aids, the fp16/bf16 ``p.grad`` is left as backward wrote it (the kernels unscale
and clip the float32 copy).
"""

import contextlib
import math
import numbers

import torch

_LOW = (torch.float16, torch.bfloat16)
MASTER = "master_param"


def check(master_weights, stochastic_rounding, max_grad_norm):
    """Validate the three arguments; ValueError/TypeError naming the argument."""
    for name, value in (("master_weights", master_weights),
                        ("stochastic_rounding", stochastic_rounding)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {name}={value!r}")
    if master_weights and stochastic_rounding:
        raise ValueError("master_weights=True and stochastic_rounding=True are alternatives "
                         "(the master copy makes rounding noise irrelevant): choose one")
    if max_grad_norm is not None:
        if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, numbers.Real):
            raise TypeError(f"max_grad_norm must be None or a real number, got "
                            f"max_grad_norm={max_grad_norm!r}")
        if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ValueError(f"Invalid max_grad_norm: max_grad_norm={max_grad_norm!r} (must be "
                             f"None or finite and > 0)")
        max_grad_norm = float(max_grad_norm)
    return max_grad_norm


def check_params(opt, plans):
    """Checks of the parameters that reach an update (no writes): at every step, since a
    parameter's dtype can change after construction (``model.half()``)."""
    for plan in plans:
        check_group_params(opt, plan.params)


def check_group_params(opt, params):
    """ValueError for a parameter an aid refuses (float16 with stochastic rounding); also
    run by ``add_param_group``, so that the constructor refuses it."""
    if opt.stochastic_rounding:
        for p in params:
            if p.dtype == torch.float16:
                raise ValueError(
                    f"stochastic_rounding=True rounds bfloat16 parameters; got a float16 "
                    f"parameter (shape {tuple(p.shape)}): use master_weights=True")


def clipped_grad_scale(opt, plans, grad_scale, grads=None):
    """Set ``opt.last_grad_norm`` and return the grad_scale that also clips (float64).
    ``grads``: the grads of the step (default: those of the plans' parameters)."""
    if grads is None:
        grads = [p.grad for plan in plans for p in plan.params]
    if not grads:
        opt._results["grad_norm"] = torch.zeros(())
        return grad_scale
    norm = total_norm(grads)
    if grad_scale is not None:      # the norm of the unscaled gradients
        norm = norm / grad_scale.reshape(()).to(norm.device, norm.dtype)
    opt._results["grad_norm"] = norm
    clip_coef = torch.clamp(opt.max_grad_norm / (norm + 1e-6), max=1.0)
    scale = (1.0 if grad_scale is None
             else grad_scale.reshape(()).to(norm.device, torch.float64))
    return scale / clip_coef.to(torch.float64)


def total_norm(grads):
    """The L2 norm of all ``grads``, as ``torch.nn.utils.get_total_norm`` computes it
    (``_foreach_norm`` per device and dtype, then the norm of those norms on the first
    grad's device), except that float16/bfloat16 grads are reduced in float32: torch returns
    their norm rounded to the grad dtype (bf16: 8 bits), which would make the clip
    coefficient of a bf16 model off by up to 0.4%.

    The norm of the norms is a ``_foreach_norm`` too, not torch's ``vector_norm``: Inductor
    calls ``_foreach_norm`` as the eager kernel, but lowers ``vector_norm`` to its own sum of
    squares (another order), so a compiled step's clip coefficient would differ from the
    eager one in the last bit. On the CPU both are the same kernel (the eager value is
    unchanged); on CUDA the foreach kernel's order differs from ``vector_norm``'s by ulps."""
    groups = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    norms = []
    for (_, dtype), gs in groups.items():
        norms += (torch._foreach_norm(gs, 2.0, dtype=torch.float32) if dtype in _LOW
                  else torch._foreach_norm(gs, 2.0))
    first = grads[0].device
    return torch._foreach_norm([torch.stack([n.to(first) for n in norms])], 2.0)[0]


def stochastic_round_(dst, src, generator):
    """Round float32 ``src`` into bfloat16 ``dst`` stochastically (unbiased)."""
    noise = torch.randint(0, 1 << 16, src.shape, generator=generator, device=src.device,
                          dtype=torch.int32)
    bits = src.contiguous().view(torch.int32) + noise
    dst.copy_(bits.bitwise_and_(-65536).view(torch.float32))


def generator(opt, device):
    gens = opt._rounding_generators
    key = str(device)
    if key not in gens:
        gen = gens[key] = torch.Generator(device=device)
        gen.manual_seed(opt.rounding_seed)
    return gens[key]


def lifted_dtypes(opt):
    if opt.master_weights:
        return _LOW
    if opt.stochastic_rounding:
        return (torch.bfloat16,)
    return ()


def _fp32_state(state, p):
    """``state`` with every parameter-shaped low-precision tensor as float32 (a new dict when
    one changes: launch caches hold the old one)."""
    if not any(isinstance(v, torch.Tensor) and v.dtype in _LOW for v in state.values()):
        return state
    return {k: v.float() if isinstance(v, torch.Tensor) and v.dtype in _LOW else v
            for k, v in state.items()}


@contextlib.contextmanager
def lifted(opt, params):
    """Give ``_launch`` float32 tensors in place of the fp16/bf16 parameters an aid covers.

    Yields the list to launch with: each covered ``p`` replaced by a float32 tensor (the
    master, or a transient copy) whose ``grad`` is a float32 copy of ``p.grad``; ``opt.state``
    is swapped meanwhile for a dict from those tensors to ``p``'s state dict (one dict kept
    across steps, so the Numba launch cache still hits). After the launch each ``p`` gets
    its new value (rounded to nearest, or stochastically)."""
    dtypes = lifted_dtypes(opt)
    if not any(p.dtype in dtypes for p in params):
        yield params
        return
    real = opt.state
    if opt._lift_view[0] is not real:       # load_state_dict replaced the state
        opt._lift_view = (real, {})
    view = opt._lift_view[1]
    out, pairs = [], []
    for p in params:
        if p.dtype not in dtypes:
            view[p] = real[p]
            out.append(p)
            continue
        if getattr(opt, "state_dtype", None) is None:  # else the moments keep their format
            state = real[p] = _fp32_state(real[p], p)
        else:
            state = real[p]
        if opt.master_weights:
            work = state.get(MASTER)
            if work is None:
                work = state[MASTER] = p.detach().to(torch.float32, copy=True)
            if work.grad is None:
                work.grad = torch.empty_like(work)
            work.grad.copy_(p.grad)
        else:
            work = p.detach().float()
            work.grad = p.grad.float()
        view[work] = state
        out.append(work)
        pairs.append((p, work))
    opt.state = view
    try:
        yield out
    finally:
        opt.state = real
        if not opt.master_weights:
            for _, work in pairs:
                del view[work]
    for p, work in pairs:
        if opt.master_weights:
            p.copy_(work)
        else:
            stochastic_round_(p, work, generator(opt, work.device))
