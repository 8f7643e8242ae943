"""The fused updates as torch operators: ``torch.ops.fusedsched.sgd_step``,
``rmsprop_step`` and ``adam_step``.

Both eager ``step()`` and a ``torch.compile``'d one reach the kernels through these
operators, so there is one path. Dynamo and Inductor see an operator that mutates its
tensor-list arguments in place (the schema's ``(a!)`` annotations) and has a fake
implementation that does nothing (it returns nothing and changes no metadata): raw
pointers, numpy and Numba dispatchers are never traced, and the schedule position is a
tensor argument, so the schedule advancing recompiles nothing.

Each algorithm's call is declared once, in ``SIGNATURES``: its state lists (kernel order)
and its hyperparameters (name and kind). The operator schema, the packing of a call
(``call``) and the unpacking inside the operator (``_implementation``) all come from that
declaration. A hyperparameter of kind ``"scalar"`` may be a Python float or a 0-dim tensor
(``lr``, momentum, betas): the schema carries it as a float and an optional tensor, the
tensor winning when given.

Schema (``adam_step``; the others differ in states and hyperparameters)::

    adam_step(Tensor(a0!)[] params, Tensor(a1!)[] grads, Tensor(a2!)[] exp_avgs,
              Tensor(a3!)[] exp_avg_sqs, Tensor(a4!)[] max_exp_avg_sqs,
              Tensor(a5!)[] steps, Tensor(a6!)[] exp_avgs_scales, ...,
              Tensor(a9!) position, Tensor schedule,
              float lr, Tensor? lr_tensor, float beta1, Tensor? beta1_tensor, ...,
              float eps, float weight_decay, bool decoupled_weight_decay, bool amsgrad,
              bool maximize, Tensor? grad_scale, Tensor? found_inf,
              bool advance_position, str state_format, str backend) -> ()

Eager calls skip the dispatcher when nothing could observe the call: not while tracing, no
dispatch mode active (FakeTensorMode, a TorchDispatchMode) and no profiler. The dispatcher
converts every tensor of every list argument, a cost per tensor that for a thousand small
parameters exceeds the kernel's time (bench/results/compile); the kernel call is the same
either way (``call``).

An empty state list stands for ``None`` (the list is off: no momentum, not centered, no
amsgrad). ``state_format`` is how the states are stored (``kernels/state_format.py``); the
``*_scales`` lists hold the 8-bit states' block scales and are empty otherwise. ``backend`` names the kernel package that runs the update (``"numba"``: CPU
tensors, ``"triton"``: CUDA tensors, ``"reference"``: any device); the calling convention
of those packages is in ``fusedsched.kernels``.
"""

import importlib
from typing import NamedTuple

import torch


class Signature(NamedTuple):
    """One algorithm's kernel call: ``states`` in kernel order, ``hyper`` as (name, kind),
    kind one of ``"scalar"`` (float or 0-dim tensor), ``"float"``, ``"bool"``;
    ``momentum`` the hyperparameter that a schedule's momentum (one_cycle / cyclic with
    cycle_momentum) replaces; ``nonnegative`` the states that are never negative (their
    8-bit code has no sign bit: ``kernels/state_format.py``)."""
    states: tuple
    hyper: tuple
    momentum: str
    nonnegative: tuple = ()

    @property
    def values(self):
        """The numeric hyperparameters (kinds "scalar" and "float"), in declaration order:
        the layout of the kernels' float64 hyperparameter buffer."""
        return tuple(name for name, kind in self.hyper if kind != "bool")

    def slot(self, name):
        """The index of hyperparameter ``name`` in the buffer (``values``)."""
        return self.values.index(name)

    def pack(self, hyper):
        """The buffer's values from a dict of the declared hyperparameters (floats, or
        0-dim tensors for kind "scalar"), in ``values`` order. TypeError naming the
        difference when ``hyper`` does not hold exactly the declared names."""
        # every eager step packs: the names and the order come from a per-declaration
        # table (one key-set comparison in C), not rebuilt on each call
        layout = _LAYOUTS.get(id(self))
        if layout is None or layout[0] is not self:
            layout = _LAYOUTS[id(self)] = (self, frozenset(name for name, _ in self.hyper),
                                           self.values)
        _, names, values = layout
        if hyper.keys() != names:
            declared = [name for name, _ in self.hyper]
            raise TypeError(f"hyperparameters {sorted(hyper)} differ from the declared "
                            f"{declared}: missing {sorted(names - set(hyper))}, unknown "
                            f"{sorted(set(hyper) - names)}")
        return [hyper[name] for name in values]


_LAYOUTS = {}      # id(signature) -> (the signature, its names, Signature.values)


SIGNATURES = {
    "sgd": Signature(
        states=("momentum_buffers",),
        hyper=(("lr", "scalar"), ("momentum", "scalar"), ("dampening", "float"),
               ("weight_decay", "float"), ("nesterov", "bool"), ("maximize", "bool")),
        momentum="momentum"),
    "rmsprop": Signature(
        states=("square_avgs", "grad_avgs", "momentum_buffers"),
        hyper=(("lr", "scalar"), ("alpha", "float"), ("eps", "float"),
               ("weight_decay", "float"), ("momentum", "scalar"), ("centered", "bool"),
               ("maximize", "bool")),
        momentum="momentum", nonnegative=("square_avgs",)),
    "adam": Signature(
        states=("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
        hyper=(("lr", "scalar"), ("beta1", "scalar"), ("beta2", "scalar"), ("eps", "float"),
               ("weight_decay", "float"), ("decoupled_weight_decay", "bool"),
               ("amsgrad", "bool"), ("maximize", "bool")),
        momentum="beta1", nonnegative=("exp_avg_sqs", "max_exp_avg_sqs")),
}

BACKENDS = ("reference", "numba", "triton")
_LIBRARY = torch.library.Library("fusedsched", "DEF")


def _schema(algorithm, signature):
    lists = (("params", "grads") + signature.states + ("steps",)
             + tuple(f"{name}_scales" for name in signature.states))
    args = [f"Tensor(a{i}!)[] {name}" for i, name in enumerate(lists)]
    args += [f"Tensor(a{len(lists)}!) position", "Tensor schedule"]
    for name, kind in signature.hyper:
        if kind == "scalar":
            args += [f"float {name}", f"Tensor? {name}_tensor"]
        else:
            args.append(f"{kind} {name}")
    args += ["Tensor? grad_scale", "Tensor? found_inf", "bool advance_position",
             "str state_format", "str backend"]
    return f"{algorithm}_step({', '.join(args)}) -> ()"


def kernel(backend, algorithm):
    """The ``<algorithm>_step`` function of a backend package, e.g.
    ``kernel("numba", "adam")`` (imported on first use)."""
    fn = _KERNELS.get((backend, algorithm))
    if fn is None:
        if backend not in BACKENDS:
            raise ValueError(f"fusedsched::{algorithm}_step: backend={backend!r}; expected "
                             f"one of {BACKENDS}")
        module = importlib.import_module(f"fusedsched.kernels.{backend}.{algorithm}")
        fn = _KERNELS[backend, algorithm] = getattr(module, f"{algorithm}_step")
    return fn


_KERNELS = {}


def _implementation(algorithm, signature):
    n_states = len(signature.states)

    def run(params, grads, *args):
        states = [lst if lst or not params else None for lst in args[:n_states]]
        steps = args[n_states]
        scales = [lst if lst or not params else None
                  for lst in args[n_states + 1:2 * n_states + 1]]
        position, schedule = args[2 * n_states + 1:2 * n_states + 3]
        values = iter(args[2 * n_states + 3:])
        hyper = {}
        for name, kind in signature.hyper:
            value = next(values)
            if kind == "scalar":
                tensor = next(values)
                value = value if tensor is None else tensor
            hyper[name] = value
        grad_scale, found_inf, advance_position, state_format, backend = values
        kernel(backend, algorithm)(
            params, grads, *states, steps, **hyper, schedule=schedule, position=position,
            grad_scale=grad_scale, found_inf=found_inf, advance_position=advance_position,
            state_format=state_format, scales=scales if state_format == "8bit" else None)

    run.__name__ = f"{algorithm}_step"
    return run


def _fake(*args):
    """Shapes, dtypes and strides are unchanged: every output is an input, written in
    place."""
    return None


for _algorithm, _signature in SIGNATURES.items():
    _LIBRARY.define(_schema(_algorithm, _signature))
    # One Python implementation for every device: it dispatches on ``backend``, which the
    # optimizer resolved for the tensors' device. CompositeExplicitAutograd: the optimizer
    # steps under no_grad, and the dispatcher then goes straight to it.
    _LIBRARY.impl(f"{_algorithm}_step", _implementation(_algorithm, _signature),
                  "CompositeExplicitAutograd")
    torch.library.register_fake(f"fusedsched::{_algorithm}_step", _fake, lib=_LIBRARY)


def call(algorithm, backend, params, grads, states, steps, hyper, *, schedule, position,
         grad_scale=None, found_inf=None, advance_position=True, state_format="native",
         scales=None):
    """Run ``torch.ops.fusedsched.<algorithm>_step`` with its arguments packed from the
    declaration: ``states`` a list in ``SIGNATURES[algorithm].states`` order (None for a
    list that is off), ``hyper`` a dict of the declared hyperparameters, ``state_format``
    one of ``kernels/state_format.FORMATS`` and, for "8bit", ``scales`` the states' scale
    lists in the same order.

    Eager, with nothing observing the call, the operator's implementation runs without the
    dispatcher and without the packing that its schema needs: the same kernel call, with
    the same arguments, as the operator makes."""
    if not (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._autograd._profiler_enabled()):
        return kernel(backend, algorithm)(
            params, grads, *states, steps, **hyper, schedule=schedule, position=position,
            grad_scale=grad_scale, found_inf=found_inf, advance_position=advance_position,
            state_format=state_format, scales=scales)
    args = [params, grads, *[[] if s is None else s for s in states], steps,
            *[[] if s is None else s for s in (scales or [None] * len(states))], position,
            schedule]
    for name, kind in SIGNATURES[algorithm].hyper:
        value = hyper[name]
        if kind == "scalar":
            if isinstance(value, torch.Tensor):
                args += [0.0, value]
            else:   # not float(value): under torch.compile it may be a symbolic float
                args += [value, None]
        else:
            args.append(value)
    args += [grad_scale, found_inf, advance_position, state_format, backend]
    return OPS[algorithm](*args)


OPS = {name: getattr(torch.ops.fusedsched, f"{name}_step").default for name in SIGNATURES}
