"""The cases that every kernel suite steps through (tests/test_kernels.py on the CPU
backends, tests_gpu/ on CUDA): each algorithm's configurations, the schedules, the dtypes,
the tensors of one call (``Case``) and the bit-for-bit comparison of two calls' outputs
(``assert_same_bits``), and the steps of a backend and the reference side by side
(``compare_steps``).

``CONFIGS``: per algorithm, the kernels' hyperparameters (``_off``: the state lists that
are off). Between them they hold every flag set the kernels branch on -- SGD momentum
off, on, with Nesterov; RMSprop centered and momentum, each alone, both, neither; Adam
amsgrad and decoupled weight decay, each alone, both, neither -- with weight decay on and
off, ``maximize``, and ``lr`` (and Adam's ``beta1``) as a 0-dim tensor. ``MOST_STATE``:
per algorithm, the configuration with every state list on (and momentum to cycle)."""

import contextlib

import torch

from fusedsched import schedules as S
from fusedsched.kernels import ops
from fusedsched.kernels import state_format as F

FORMATS = list(F.FORMATS)
STORED_FORMATS = FORMATS[1:]          # "bfloat16", "8bit": not the params' dtype
# the dtypes of every format ("bfloat16" and "8bit" state is for float32 math only), and
# of native state
FORMAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPES = FORMAT_DTYPES + [torch.float64]

CONFIGS = {
    "sgd": [
        dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01, nesterov=False,
             maximize=True),
        dict(lr=torch.tensor(0.05), momentum=0.8, dampening=0.0, weight_decay=0.0,
             nesterov=True, maximize=False),
        dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
             maximize=False, _off=("momentum_buffers",)),
        dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.05, nesterov=True,
             maximize=False),
        dict(lr=0.1, momentum=0.0, dampening=0.1, weight_decay=0.1, nesterov=False,
             maximize=True, _off=("momentum_buffers",)),
    ],
    "rmsprop": [
        dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
             maximize=False, _off=("grad_avgs", "momentum_buffers")),
        dict(lr=0.01, alpha=0.99, eps=1e-6, weight_decay=0.1, momentum=0.9, centered=True,
             maximize=True),
        dict(lr=torch.tensor(0.02), alpha=0.3, eps=1e-8, weight_decay=0.0, momentum=0.5,
             centered=False, maximize=False, _off=("grad_avgs",)),
        dict(lr=torch.tensor(0.02), alpha=0.3, eps=1e-8, weight_decay=0.1, momentum=0.0,
             centered=True, maximize=True, _off=("momentum_buffers",)),
        dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.05, momentum=0.8, centered=False,
             maximize=False, _off=("grad_avgs",)),
    ],
    "adam": [
        dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
             decoupled_weight_decay=False, amsgrad=False, maximize=False,
             _off=("max_exp_avg_sqs",)),
        dict(lr=0.01, beta1=0.3, beta2=0.99, eps=1e-6, weight_decay=0.1,
             decoupled_weight_decay=False, amsgrad=True, maximize=True),
        dict(lr=torch.tensor(0.02), beta1=torch.tensor(0.8), beta2=0.95, eps=1e-8,
             weight_decay=0.05, decoupled_weight_decay=True, amsgrad=False, maximize=False,
             _off=("max_exp_avg_sqs",)),
        dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.05,
             decoupled_weight_decay=True, amsgrad=True, maximize=True),
    ],
}
MOST_STATE = {"sgd": 3, "rmsprop": 1, "adam": 3}

SCHEDULES = {
    "constant": S.constant(),
    "one_cycle": S.one_cycle(total_steps=6, pct_start=0.4),
    "warmup_cosine": S.warmup(S.cosine(4, end_factor=0.1), warmup_steps=2, start_factor=0.1),
    "nested": S.warmup(S.sequential([S.cosine(3, end_factor=0.1), S.exponential(0.9)],
                                    milestones=[3]), warmup_steps=2, start_factor=0.1),
    "cyclic2": S.cyclic(0.2, step_size_up=1, step_size_down=2, mode="triangular2"),
}
# the schedules whose leaves cycle momentum, the nested one behind a milestone
CYCLING = [S.one_cycle(6, pct_start=0.4), S.cyclic(0.2, 2, mode="triangular2"),
           S.sequential([S.constant(0.3), S.one_cycle(4, three_phase=True)], [2])]

# (configuration index, params dtype) of each algorithm that the stored formats step
# through: the first three configurations (between them each state list on and off) in
# float32, the first in 16-bit parameters too
FORMAT_CASES = [(k, dtype) for k in range(3)
                for dtype in (FORMAT_DTYPES if k == 0 else FORMAT_DTYPES[:1])]

ZERO_GRAD = 5         # the index of the tensor whose gradient (and 8-bit state) is zero


def schedule_of(k):
    """The name of the schedule that configuration ``k`` of an algorithm steps with."""
    return list(SCHEDULES)[k % len(SCHEDULES)]



class Case:
    """The tensors of one call: ``lists`` (params, grads, states in kernel order or None,
    steps), ``scales`` (8-bit: per state list, or None) and the hyperparameters; random
    values (states of a plausible size, the nonnegative ones nonnegative), the steps
    ``i % 3`` (a first step among them) and a zero gradient at ``ZERO_GRAD``."""

    def __init__(self, algo, config, fmt, dtype, sizes, seed=0):
        self.algo, self.fmt = algo, fmt
        self.hyper = {k: v for k, v in config.items() if not k.startswith("_")}
        signature = ops.SIGNATURES[algo]
        gen = torch.Generator().manual_seed(seed)

        def randn(n, scale=1.0):
            return (torch.randn(n, generator=gen, dtype=torch.float64) * scale).to(dtype)

        params = [randn(n) for n in sizes]
        grads = [randn(n) for n in sizes]
        if len(sizes) > ZERO_GRAD:
            grads[ZERO_GRAD].zero_()
        states, scales = [], []
        for name in signature.states:
            if name in config.get("_off", ()):
                states.append(None)
                scales.append(None)
                continue
            nonneg = name in signature.nonnegative
            lst, sc = [], []
            for i, n in enumerate(sizes):
                zero = i == ZERO_GRAD
                x = torch.randn(n, generator=gen, dtype=torch.float64) * 0.1
                x = x.abs() if nonneg else x
                if fmt == "8bit":
                    codes = torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8)
                    scale = torch.rand(F.n_blocks(n), generator=gen) * 0.1
                    lst.append(codes.zero_() if zero else codes)
                    sc.append(scale.zero_() if zero else scale)
                else:
                    lst.append(x.to(torch.bfloat16 if fmt == "bfloat16" else dtype))
            states.append(lst)
            scales.append(sc)
        steps = [torch.tensor(float(i % 3), dtype=torch.float64) for i in range(len(sizes))]
        self.lists = [params, grads, *states, steps]
        self.scales = scales if fmt == "8bit" else None

    def clone(self):
        c = Case.__new__(Case)
        c.algo, c.fmt, c.hyper = self.algo, self.fmt, self.hyper
        c.lists = [None if lst is None else [t.clone() for t in lst] for lst in self.lists]
        c.scales = None if self.scales is None else [
            None if lst is None else [t.clone() for t in lst] for lst in self.scales]
        return c

    def to(self, device):
        """A copy with every tensor on ``device`` (tests_gpu/ runs these cases on CUDA)."""
        c = self.clone()
        c.lists = [None if lst is None else [t.to(device) for t in lst] for lst in c.lists]
        c.scales = None if c.scales is None else [
            None if lst is None else [t.to(device) for t in lst] for lst in c.scales]
        return c

    def step(self, backend, schedule, position, *, plain=False, **kw):
        fn = ops.kernel(backend, self.algo)
        fmt = {} if plain else dict(state_format=self.fmt, scales=self.scales)
        fn(*self.lists, schedule=schedule, position=position, **self.hyper, **fmt, **kw)

    def tensors(self):
        """(label, tensor) of every output."""
        out = []
        for k, lst in enumerate(self.lists + (self.scales or [])):
            for i, t in enumerate(lst or []):
                out.append((f"list {k} tensor {i}", t))
        return out


def _bits(t, nan_as_nan=False):
    """``t``'s bits as integers; with ``nan_as_nan`` every NaN as one value (where a NaN's
    sign and payload are the operand order of the machine's instructions: torch's vector
    loops and another implementation need not pick the same NaN of two)."""
    if t.dtype.is_floating_point:
        bits = t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])
        return torch.where(torch.isnan(t), -1, bits) if nan_as_nan else bits
    return t


def assert_same_bits(mine, theirs, what, nan_as_nan=False):
    """Every output of Case ``mine`` has the bits of the same output of ``theirs``."""
    for (label, a), (_, e) in zip(mine.tensors(), theirs.tensors(), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape, f"{what}: {label}"
        bad = _bits(a, nan_as_nan) != _bits(e, nan_as_nan)
        assert not bad.any(), (f"{what}: {label}: {int(bad.sum())} of {a.numel()} elements "
                               f"differ, first at {bad.nonzero()[0].tolist()}")


def extremes(case):
    """Gradients with a NaN and an infinity in the second 8-bit block of the last tensor,
    huge ones in its first block, tiny ones after the second."""
    g = case.lists[1][-1]
    g[260], g[300] = float("nan"), float("inf")
    g[:256] *= 1e30
    g[512:] *= 1e-30


def compare_steps(mine, backend, schedule, n_steps, *, paths=None, scaled=True, amp=None,
                  start=0.0, nan_as_nan=None):
    """``n_steps`` steps of Case ``mine`` on ``backend`` and of a clone of it on the
    reference, on the tensors' device, run independently (no resynchronisation): after
    each, every output and the position (from ``start``) the same, bit for bit.
    ``scaled``: grad_scale 4 on odd steps. ``amp``: GradScaler's pattern instead, the
    gradients scaled by 1024 before each step and found_inf ``amp[step]``. ``paths(step)``:
    a context for the backend's step (``Oracle.paths``). ``nan_as_nan`` (``_bits``): by
    default in native state, where the sign and payload of a NaN that an overflow makes
    (inf - inf) are those of the instructions that made it, which another implementation
    need not share (a 16-bit one seen: Numba's negative, the reference's positive); the
    stored formats are compared bit for bit, NaNs too ("bfloat16" state stores every NaN
    as the one quiet NaN)."""
    if nan_as_nan is None:
        nan_as_nan = mine.fmt == "native"
    ref = mine.clone()
    device = mine.lists[-1][0].device
    program = S.program(schedule, device.type)
    positions = [torch.tensor(float(start), dtype=torch.float64, device=device)
                 for _ in range(2)]
    for step in range(n_steps):
        kw = {}
        if amp is not None:
            kw = dict(grad_scale=torch.tensor(1024.0, device=device),
                      found_inf=torch.tensor(float(amp[step]), device=device))
            for case in (mine, ref):
                for g in case.lists[1]:
                    g.mul_(1024.0)
        elif scaled and step % 2:
            kw = dict(grad_scale=torch.tensor(4.0, device=device))
        with paths(step) if paths else contextlib.nullcontext():
            mine.step(backend, program, positions[0], **kw)
        ref.step("reference", program, positions[1], **{k: v.clone() for k, v in kw.items()})
        assert_same_bits(mine, ref, f"step {step}", nan_as_nan=nan_as_nan)
        assert positions[0].item() == positions[1].item() == start + step + 1
