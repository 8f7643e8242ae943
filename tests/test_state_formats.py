"""The state formats of ``kernels/state_format.py`` ("native", "bfloat16", "8bit") in every
compiled backend, against the pure-torch reference (``kernels/reference/_state.py``).

One suite, parametrized by ``backend``: each test takes the ``oracle`` fixture, which sets
up one backend (and variant, e.g. the Numba sqrt mode) with a reference that computes what
it computes, and says how to run the backend's paths (serial / parallel, chunkings) and on
which tensor sizes. Adding a backend is an entry in ``BACKENDS`` and a function in
``_ORACLES``. The Triton kernels run interpreted on CPU tensors (TRITON_INTERPRET=1,
tests/conftest.py), where their fma, sqrt and store conversions are torch's CPU ops
(kernels/triton/_launch.py) and their float64 scalars torch's functions
(kernels/triton/schedule.py): the reference as it is computes what they compute.

Zero tolerance. Every output (params, state codes or bits, 8-bit scales, steps, the
unscaled gradients written back) must equal the reference's bit for bit, over several
steps run independently on both sides (no resynchronisation): the formats are defined by
exact operations, and both sides run the same ones. The random bits of the stochastic
roundings are a function of the new value's own bits, the step and the state's index
(integer arithmetic, no generator, no dependence on chunk or position); a block's absmax,
its scale ``absmax / 1.875`` and ``1.875 / absmax`` are correctly rounded float32
operations; the codes are integer arithmetic on float32 bits; the update math is the one
the native comparison (``tests/test_numba_kernels.py``) already holds bit for bit, with
the same fixtures for what is not exact by nature: the square roots
(``_torch_oracle.numba_sqrt``) and the float64 step scalars
(``_torch_oracle.reference_takes_numba_scalars``). A tolerance would hide a wrong rounding
of one element in a block, or a code off by one, which is exactly what these tests are
for: the values differ from the exact ones by up to a code's spacing by design.
"""

import contextlib
from typing import Callable, NamedTuple

import pytest
import torch

from fusedsched import schedules as S
from fusedsched.kernels import ops
from fusedsched.kernels import state_format as F

from _torch_oracle import numba_sqrt, reference_takes_numba_scalars

BACKENDS = ["numba", "triton"]
FORMATS = list(F.FORMATS)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# ------------------------------------------------------------------------------ oracles

class Oracle(NamedTuple):
    """One backend set up against the reference: ``name`` (its ``ops.kernel`` name),
    ``paths(k)`` a context for step ``k`` that sends it down one of the backend's code
    paths (e.g. serial / parallel), ``chunkings`` (label, context) pairs that cut the work
    differently, all of which must give the same bits; ``sizes`` the tensor sizes of a
    call (``SIZES`` or the backend's own, each past the backend's path thresholds) and
    ``chunk_sizes`` those of the chunking test."""
    name: str
    paths: Callable
    chunkings: list
    sizes: list
    chunk_sizes: list


def _numba_oracle(variant, monkeypatch):
    from fusedsched.kernels.numba import adam, rmsprop, sgd
    from fusedsched.kernels.numba._common import ALIGN, CHUNK, chunk_size
    modules = (adam, rmsprop, sgd)

    @contextlib.contextmanager
    def path(k):
        # even steps in the calling thread (the serial walk), odd ones on the thread pool
        with monkeypatch.context() as m:
            for module in modules:
                m.setattr(module, "SERIAL_MAX", 1 << 40 if k % 2 == 0 else 0)
            yield

    def chunking(chunk):
        @contextlib.contextmanager
        def use():
            with monkeypatch.context() as m:
                for module in modules:
                    m.setattr(module, "use_pool", lambda offsets, serial_max: chunk)
                yield
        return use

    chunks = [0, ALIGN, 3 * ALIGN, 5 * F.BLOCK_SIZE + ALIGN, chunk_size(250_000, 2), CHUNK]
    stack = contextlib.ExitStack()
    stack.enter_context(numba_sqrt(variant))
    stack.enter_context(reference_takes_numba_scalars())
    return stack, Oracle("numba", path, [(f"chunk {c}", chunking(c)) for c in chunks],
                         SIZES, CHUNK_SIZES)


def _triton_oracle(variant, monkeypatch):
    pytest.importorskip("triton")
    from fusedsched.kernels.triton import _launch as L
    from fusedsched.kernels.triton.schedule import INTERPRET
    if not INTERPRET:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set")

    def blocks(size):
        # a program's elements (a multiple of the 8-bit block); every size the same bits
        @contextlib.contextmanager
        def use():
            with monkeypatch.context() as m:
                m.setitem(L.BLOCK, torch.float32, size)
                yield
        return use

    sizes = [0, 1, F.BLOCK_SIZE - 1, F.BLOCK_SIZE, F.BLOCK_SIZE + 1, 300, 5000]
    # one kernel path (masked programs at every tensor's end); the interpreter takes ~0.1 s
    # per program, so the sizes stop at a few programs
    return contextlib.ExitStack(), Oracle(
        "triton", lambda k: contextlib.nullcontext(),
        [(f"BLOCK {b}", blocks(b)) for b in (512, 256, 1024, 2048)], sizes,
        [1 << 12 | 3, 0, 2000, 5, 2 * 64 + 1, F.BLOCK_SIZE * 3 + 7])


_ORACLES = {"numba": (_numba_oracle, ["ieee", "torch"]),
            "triton": (_triton_oracle, ["interpreted"])}


@pytest.fixture(params=[pytest.param((b, v), id=f"{b}-{v}")
                        for b in BACKENDS for v in _ORACLES[b][1]])
def oracle(request, monkeypatch):
    backend, variant = request.param
    stack, made = _ORACLES[backend][0](variant, monkeypatch)
    with stack:
        yield made


# ------------------------------------------------------------------------------- cases

CONFIGS = {
    "sgd": [
        dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01, nesterov=False,
             maximize=True),
        dict(lr=torch.tensor(0.05), momentum=0.8, dampening=0.0, weight_decay=0.0,
             nesterov=True, maximize=False),
        dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
             maximize=False, _off=("momentum_buffers",)),
    ],
    "rmsprop": [
        dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
             maximize=False, _off=("grad_avgs", "momentum_buffers")),
        dict(lr=0.01, alpha=0.99, eps=1e-6, weight_decay=0.1, momentum=0.9, centered=True,
             maximize=True),
        dict(lr=torch.tensor(0.02), alpha=0.3, eps=1e-8, weight_decay=0.0, momentum=0.5,
             centered=False, maximize=False, _off=("grad_avgs",)),
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
    ],
}

SCHEDULES = [S.constant(), S.one_cycle(total_steps=6, pct_start=0.4),
             S.warmup(S.cosine(4, end_factor=0.1), warmup_steps=2, start_factor=0.1)]

# numel 0, 1, a block less one, a block, a block and one, a zero gradient, and a tensor
# past the Numba walk's SERIAL_MAX (the parallel path takes any step when forced)
SIZES = [0, 1, F.BLOCK_SIZE - 1, F.BLOCK_SIZE, F.BLOCK_SIZE + 1, 300, 40_003]
ZERO_GRAD = 5         # the index of the tensor whose gradient (and 8-bit state) is zero
CHUNK_SIZES = [1 << 16 | 3, 0, 100_003, 5, 2 * 64 + 1, F.BLOCK_SIZE * 3 + 7]


class Case:
    """The tensors of one call: ``lists`` (params, grads, states in kernel order or None,
    steps), ``scales`` (8-bit: per state list, or None) and the hyperparameters."""

    def __init__(self, algo, config, fmt, dtype, sizes=SIZES, seed=0):
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
    for (label, a), (_, e) in zip(mine.tensors(), theirs.tensors(), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape, f"{what}: {label}"
        bad = _bits(a, nan_as_nan) != _bits(e, nan_as_nan)
        assert not bad.any(), (f"{what}: {label}: {int(bad.sum())} of {a.numel()} elements "
                               f"differ, first at {bad.nonzero()[0].tolist()}")


def _configs():
    out = []
    for algo, configs in CONFIGS.items():
        for k, config in enumerate(configs):
            for fmt in FORMATS:
                # every config in float32, the 16-bit params with the first config
                for dtype in DTYPES if k == 0 else DTYPES[:1]:
                    out.append(pytest.param(algo, k, fmt, dtype,
                                            id=f"{algo}{k}-{fmt}-{str(dtype)[6:]}"))
    return out


# --------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("algo,k,fmt,dtype", _configs())
def test_steps_match_reference_bit_for_bit(oracle, algo, k, fmt, dtype):
    mine = Case(algo, CONFIGS[algo][k], fmt, dtype, oracle.sizes)
    ref = mine.clone()
    schedule = S.program(SCHEDULES[k % len(SCHEDULES)], "cpu")
    pos_mine = torch.tensor(0.0, dtype=torch.float64)
    pos_ref = pos_mine.clone()
    for step in range(4):
        gs = torch.tensor(4.0) if step % 2 else None
        with oracle.paths(step):
            mine.step(oracle.name, schedule, pos_mine, grad_scale=gs)
        ref.step("reference", schedule, pos_ref, grad_scale=None if gs is None else gs.clone())
        assert_same_bits(mine, ref, f"step {step}")
        assert pos_mine.item() == pos_ref.item() == step + 1


@pytest.mark.parametrize("fmt", ["bfloat16", "8bit"])
@pytest.mark.parametrize("algo", list(CONFIGS))
def test_every_chunking_gives_the_same_bits(oracle, algo, fmt):
    """The backend's ways of cutting the work (Numba: the serial walk, chunks of any size,
    which never split an 8-bit block of a tensor) compute every element alike."""
    start = Case(algo, CONFIGS[algo][1], fmt, torch.float32, oracle.chunk_sizes)
    schedule = S.program(SCHEDULES[2], "cpu")
    results = []
    for label, chunking in oracle.chunkings:
        case = start.clone()
        position = torch.tensor(2.0, dtype=torch.float64)
        with chunking():
            for step in range(2):
                case.step(oracle.name, schedule, position,
                          grad_scale=torch.tensor(2.0) if step else None)
        results.append((label, case))
    for label, case in results[1:]:
        assert_same_bits(case, results[0][1], f"{label} against {results[0][0]}")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("algo", list(CONFIGS))
def test_found_inf_writes_nothing_but_position(oracle, algo, fmt):
    case = Case(algo, CONFIGS[algo][1], fmt, torch.float32, oracle.sizes)
    before = case.clone()
    position = torch.tensor(3.0, dtype=torch.float64)
    case.step(oracle.name, S.program(S.constant(), "cpu"), position,
              grad_scale=torch.tensor(8.0), found_inf=torch.tensor(1.0))
    assert position.item() == 4.0
    assert_same_bits(case, before, "found_inf")


@pytest.mark.parametrize("algo", list(CONFIGS))
def test_native_is_the_default(oracle, algo):
    """``state_format="native"`` is the call without the format arguments."""
    explicit = Case(algo, CONFIGS[algo][1], "native", torch.float32, oracle.sizes)
    default = explicit.clone()
    schedule = S.program(S.constant(), "cpu")
    for case, plain in ((explicit, False), (default, True)):
        position = torch.tensor(0.0, dtype=torch.float64)
        for step in range(2):
            case.step(oracle.name, schedule, position, plain=plain)
    assert_same_bits(explicit, default, "native")


def test_8bit_zeros_stay_zero_and_scales_follow_absmax(oracle):
    """A zero gradient on zero 8-bit state leaves codes and scale 0; elsewhere each block's
    scale is its largest new magnitude over 1.875, so the block's top code decodes to it."""
    case = Case("sgd", CONFIGS["sgd"][1], "8bit", torch.float32, oracle.sizes)
    case.step(oracle.name, S.program(S.constant(), "cpu"), torch.tensor(0.0, dtype=torch.float64))
    codes, scales = case.lists[2][ZERO_GRAD], case.scales[0][ZERO_GRAD]
    assert not codes.any() and not scales.any()
    codes, scales = case.lists[2][-1], case.scales[0][-1]
    assert ((codes & 127) == 127).sum() >= len(scales) - 1 and (scales > 0).all()


@pytest.mark.parametrize("algo", list(CONFIGS))
def test_bad_format_arguments_raise(oracle, algo):
    case = Case(algo, CONFIGS[algo][1], "8bit", torch.float32, sizes=[4])
    kw = dict(schedule=S.program(S.constant(), "cpu"), position=torch.tensor(0.0, dtype=torch.float64))
    fn = ops.kernel(oracle.name, algo)
    with pytest.raises(ValueError, match="state_format"):
        fn(*case.lists, **case.hyper, state_format="4bit", **kw)
    with pytest.raises(ValueError, match="scales"):
        fn(*case.lists, **case.hyper, state_format="8bit", scales=None, **kw)
    with pytest.raises(ValueError, match="scale"):
        fn(*case.lists, **case.hyper, state_format="8bit", scales=[None] * len(case.scales),
           **kw)
    short = [[s[:0] for s in lst] if lst else lst for lst in case.scales]
    with pytest.raises(ValueError, match=r"float32.*numel"):   # the scales' size
        fn(*case.lists, **case.hyper, state_format="8bit", scales=short, **kw)
    with pytest.raises(ValueError):          # uint8 states are not bfloat16 ones
        fn(*case.lists, **case.hyper, state_format="bfloat16", **kw)
    for fmt in ("bfloat16", "8bit"):       # the formats of float32 math only
        wide = Case(algo, CONFIGS[algo][1], fmt, torch.float64, sizes=[4])
        with pytest.raises(TypeError, match="float64"):
            fn(*wide.lists, **wide.hyper, state_format=fmt, scales=wide.scales, **kw)


@pytest.mark.parametrize("fmt", ["bfloat16", "8bit"])
@pytest.mark.parametrize("algo", list(CONFIGS))
def test_amp_skips_and_unscales_over_steps(oracle, algo, fmt):
    """GradScaler's pattern: scaled gradients every step, found_inf on steps 0 and 2; a
    skipped step writes nothing (the steps stay), the next one reads the state untouched."""
    mine = Case(algo, CONFIGS[algo][1], fmt, torch.float32, oracle.sizes)
    ref = mine.clone()
    schedule = S.program(SCHEDULES[1], "cpu")
    positions = [torch.tensor(1.0, dtype=torch.float64) for _ in range(2)]
    for step, inf in enumerate([1.0, 0.0, 1.0, 0.0]):
        for case, backend, position in ((mine, oracle.name, positions[0]),
                                        (ref, "reference", positions[1])):
            for g in case.lists[1]:
                g.mul_(1024.0)
            with oracle.paths(step):
                case.step(backend, schedule, position, grad_scale=torch.tensor(1024.0),
                          found_inf=torch.tensor(inf))
        assert_same_bits(mine, ref, f"step {step}")
    assert [s.item() for s in mine.lists[-1]] == [i % 3 + 2.0 for i in range(len(oracle.sizes))]


def _extremes(case):
    """Gradients with a NaN and an infinity in the second 8-bit block of the last tensor,
    huge ones in its first block, tiny ones after the second."""
    g = case.lists[1][-1]
    g[260], g[300] = float("nan"), float("inf")
    g[:256] *= 1e30
    g[512:] *= 1e-30


@pytest.mark.parametrize("fmt", ["bfloat16", "8bit"])
@pytest.mark.parametrize("algo", list(CONFIGS))
def test_zero_nonfinite_and_extreme_values(oracle, algo, fmt):
    config = CONFIGS[algo][1]
    mine = Case(algo, config, fmt, torch.float32, oracle.sizes)
    _extremes(mine)
    ref = mine.clone()
    schedule = S.program(S.constant(), "cpu")
    positions = [torch.tensor(0.0, dtype=torch.float64) for _ in range(2)]
    for step in range(2):
        with oracle.paths(step):
            mine.step(oracle.name, schedule, positions[0])
        ref.step("reference", schedule, positions[1])
        assert_same_bits(mine, ref, f"step {step}", nan_as_nan=True)
    if fmt == "8bit":       # a NaN's or an infinity's block: a non-finite scale
        for scales in mine.scales:
            if scales is not None:
                assert not torch.isfinite(scales[-1][1]) and torch.isfinite(scales[-1][2:]).all()


def test_reference_bfloat16_rounding_keeps_every_nan():
    # kernels/state_format.py: "Values exactly representable in bfloat16 are stored
    # unchanged; a NaN stays NaN"
    from fusedsched.kernels.reference import _state as R
    nans = torch.tensor([0x7FC00000, 0xFFC00000, 0x7FFFFFFF, 0xFFFFFFFF],
                        dtype=torch.int64).to(torch.int32).view(torch.float32)
    r = R.random_bits(nans, torch.tensor(1.0, dtype=torch.float64), 0)
    rounded = R.round_bfloat16(nans, r)
    assert torch.isnan(rounded).all()
    assert (rounded.view(torch.int16) == 0x7FC0).all()      # the quiet NaN
