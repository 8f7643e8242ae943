"""Every compiled backend's kernels against the pure-torch reference (``kernels/reference/``,
the specification), in one suite parametrized by backend.

Each test takes the ``oracle`` fixture (tests/_oracles.py): one backend, in each of its
variants (the Numba sqrt modes), set up against a reference that computes what it computes,
with the backend's code paths (serial / parallel), ways of cutting the work and tensor
sizes; ``backend_oracle`` is each backend once, for the schedule evaluators, which no
variant changes. The cases -- configurations that hold every flag set, schedules, dtypes,
the tensors of a call -- are tests/_kernel_cases.py's, which tests_gpu/ steps on CUDA.
What one backend alone has (its own conversions and sqrt mode, host tables, the functions
its interpreter must not rest on) is tests/test_numba_machinery.py and
tests/test_triton_machinery.py.

Held here, on every backend: every configuration in every dtype (float64 too with native
state) and in the state formats of ``kernels/state_format.py`` ("bfloat16", "8bit": float32
and 16-bit parameters), over several steps with grad_scale, on empty tensors first, in the
middle and last, many small ones, every 8-bit block edge, a zero gradient and tensors past
the backends' units of work, under every schedule used; every way of cutting the work;
found_inf and GradScaler's skips; momentum-cycling schedules; a long ragged list in one
launch; tensor hyperparameters; the optimizer's cached tables and mixed dtypes; the public
cases (``C<n>``); the schedule evaluators against the Python schedules and the reference's.

Zero tolerance. Every output -- params, states (or their codes and bits), 8-bit scales,
steps, the unscaled gradients written back, the position -- must equal the reference's bit
for bit, over steps run independently on both sides (no resynchronisation): both sides run
the same functions. The update is exact operations in the same order: the reference's
fused multiply-adds, correctly rounded ``+ - * /``, 16-bit storage computed in float32 and
rounded once. The formats are exact operations too: the random bits of the stochastic
roundings are a function of the new value's own bits, the step and the state's index
(integer arithmetic, no generator, no dependence on chunk or position); a block's absmax,
its scale ``absmax / 1.875`` and ``1.875 / absmax`` are correctly rounded float32
operations; the codes are integer arithmetic on float32 bits. What is not exact by nature
is one function on both sides: the square roots (Numba: IEEE against a correctly rounded
one, or torch's in the "torch" mode; interpreted Triton: torch's CPU sqrt, which rounds each
element alone) and the float64 step scalars (the reference takes the Numba kernels' own;
interpreted Triton calls torch's functions, as the reference does). A tolerance would hide
a wrong rounding of one element in a block, a code off by one or a flag's path that
computes in another order, which is what these tests are for. Two things are not
compared to the bit, each for its stated reason: a NaN that an overflow makes in native
state is compared by position (its sign and payload are those of the instructions that
made it: ``compare_steps``), and the Numba schedule evaluator against the reference's is
compared in ulps (two implementations of pow, cos, log: ``scalar_ulps`` in
tests/_oracles.py; the Numba bias corrections likewise in tests/test_numba_machinery.py).

Run time: the Numba kernels take the flags at run time, so a first run compiles once per
algorithm, dtype and state format (reused from Numba's on-disk cache later); the Triton
interpreter takes a fraction of a second per program, so Triton's sizes stop at a few
programs.
"""

import math

import pytest
import torch

import fusedsched
from fusedsched import schedules as S
from fusedsched.kernels import ops

from _kernel_cases import (CONFIGS, CYCLING, DTYPES, FORMAT_CASES, FORMATS, MOST_STATE,
                           SCHEDULES, STORED_FORMATS, ZERO_GRAD, Case, assert_same_bits,
                           compare_steps, extremes, schedule_of)
from _oracles import (BACKEND_PARAMS, PARAMS, assert_like_reference_evaluator, oracle_of,
                      reference_evaluate)

F64 = torch.float64
SHAPES = ["blocks", "empty_first", "empty_middle", "empty_last", "many_small"]


@pytest.fixture(params=PARAMS)
def oracle(request, monkeypatch):
    with oracle_of(request.param, monkeypatch) as made:
        yield made


@pytest.fixture(params=BACKEND_PARAMS)
def backend_oracle(request, monkeypatch):
    with oracle_of(request.param, monkeypatch) as made:
        yield made


def _position(t=0.0):
    return torch.tensor(float(t), dtype=F64)


def _cases():
    """Native state: every configuration in every dtype, the n-th of these runs on shape
    ``SHAPES[n % 5]`` (so every shape in every dtype) under schedule ``n // 5 % 5`` (so
    every shape under every schedule). The stored formats: ``FORMAT_CASES``, on the
    "blocks" sizes, under the configuration's schedule."""
    out = []
    n = 0
    for algo, configs in CONFIGS.items():
        for k in range(len(configs)):
            for dtype in DTYPES:
                shape, sched = SHAPES[n % len(SHAPES)], list(SCHEDULES)[n // 5 % len(SCHEDULES)]
                out.append(pytest.param(algo, k, "native", dtype, shape, sched,
                                        id=f"{algo}{k}-native-{str(dtype)[6:]}-{shape}-{sched}"))
                n += 1
        for fmt in STORED_FORMATS:
            for k, dtype in FORMAT_CASES:
                out.append(pytest.param(algo, k, fmt, dtype, "blocks", schedule_of(k),
                                        id=f"{algo}{k}-{fmt}-{str(dtype)[6:]}"))
    return out


# ------------------------------------------------------------------ steps vs reference

@pytest.mark.parametrize("algo,k,fmt,dtype,shape,sched", _cases())
def test_steps_match_reference_bit_for_bit(oracle, algo, k, fmt, dtype, shape, sched):
    mine = Case(algo, CONFIGS[algo][k], fmt, dtype, oracle.shapes[shape])
    compare_steps(mine, oracle.name, SCHEDULES[sched], 4, paths=oracle.paths)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("algo", list(CONFIGS))
def test_every_chunking_gives_the_same_bits(oracle, algo, fmt):
    """The backend's ways of cutting the work (Numba: the serial walk, chunks of any size,
    which never split an 8-bit block of a tensor, and equal shares of the thread count;
    Triton: programs of any multiple of the 8-bit block) compute every element alike."""
    start = Case(algo, CONFIGS[algo][1], fmt, torch.float32, oracle.chunk_sizes)
    schedule = S.program(SCHEDULES["warmup_cosine"], "cpu")
    results = []
    for label, chunking in oracle.chunkings:
        case = start.clone()
        position = _position(2)
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
    position = _position(3)
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
        position = _position()
        for step in range(2):
            case.step(oracle.name, schedule, position, plain=plain)
    assert_same_bits(explicit, default, "native")


def test_8bit_zeros_stay_zero_and_scales_follow_absmax(oracle):
    """A zero gradient on zero 8-bit state leaves codes and scale 0; elsewhere each block's
    scale is its largest new magnitude over 1.875, so the block's top code decodes to it."""
    case = Case("sgd", CONFIGS["sgd"][1], "8bit", torch.float32, oracle.sizes)
    case.step(oracle.name, S.program(S.constant(), "cpu"), _position())
    codes, scales = case.lists[2][ZERO_GRAD], case.scales[0][ZERO_GRAD]
    assert not codes.any() and not scales.any()
    codes, scales = case.lists[2][-1], case.scales[0][-1]
    assert ((codes & 127) == 127).sum() >= len(scales) - 1 and (scales > 0).all()


@pytest.mark.parametrize("algo", list(CONFIGS))
def test_bad_format_arguments_raise(oracle, algo):
    case = Case(algo, CONFIGS[algo][1], "8bit", torch.float32, sizes=[4])
    kw = dict(schedule=S.program(S.constant(), "cpu"), position=_position())
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
    for fmt in STORED_FORMATS:       # the formats of float32 math only
        wide = Case(algo, CONFIGS[algo][1], fmt, F64, sizes=[4])
        with pytest.raises(TypeError, match="float64"):
            fn(*wide.lists, **wide.hyper, state_format=fmt, scales=wide.scales, **kw)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("algo", list(CONFIGS))
def test_amp_skips_and_unscales_over_steps(oracle, algo, fmt):
    """GradScaler's pattern: scaled gradients every step, found_inf on steps 0 and 2; a
    skipped step writes nothing (the steps stay), the next one reads the state untouched;
    the position advances on every step."""
    mine = Case(algo, CONFIGS[algo][1], fmt, torch.float32, oracle.sizes)
    compare_steps(mine, oracle.name, SCHEDULES["one_cycle"], 4, paths=oracle.paths,
                  amp=[1.0, 0.0, 1.0, 0.0], start=1.0)
    assert [s.item() for s in mine.lists[-1]] == [i % 3 + 2.0 for i in range(len(oracle.sizes))]


@pytest.mark.parametrize("fmt", STORED_FORMATS)
@pytest.mark.parametrize("algo", list(CONFIGS))
def test_zero_nonfinite_and_extreme_values(oracle, algo, fmt):
    mine = Case(algo, CONFIGS[algo][1], fmt, torch.float32, oracle.sizes)
    extremes(mine)
    compare_steps(mine, oracle.name, S.constant(), 2, paths=oracle.paths, scaled=False,
                  nan_as_nan=True)
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
    r = R.random_bits(nans, _position(1), 0)
    rounded = R.round_bfloat16(nans, r)
    assert torch.isnan(rounded).all()
    assert (rounded.view(torch.int16) == 0x7FC0).all()      # the quiet NaN


@pytest.mark.parametrize("sched", CYCLING, ids=repr)
@pytest.mark.parametrize("algo", list(CONFIGS))
def test_cycling_schedules_drive_momentum(oracle, algo, sched):
    """Schedules whose leaves cycle momentum (SGD's and RMSprop's momentum, Adam's beta1),
    with every state list on, in float64, over six steps."""
    mine = Case(algo, CONFIGS[algo][MOST_STATE[algo]], "native", F64, [5, 0, 300])
    compare_steps(mine, oracle.name, sched, 6, paths=oracle.paths, scaled=False)


@pytest.mark.parametrize("algo", list(CONFIGS))
def test_long_ragged_list_one_launch(oracle, algo, monkeypatch):
    # 300 tensors of ragged sizes (empty ones among them), one launch per step
    launches = oracle.launches(monkeypatch, algo)
    mine = Case(algo, CONFIGS[algo][MOST_STATE[algo]], "native", torch.float32,
                [(k * 37) % 131 for k in range(300)])
    compare_steps(mine, oracle.name, S.one_cycle(4), 2, scaled=False)
    assert len(launches) == 2


# -------------------------------------------------------------------------- public cases

def test_first_step_skipped_leaves_no_momentum_buffer(oracle):
    # C13: a skipped first step leaves the buffer untouched, and the next one initialises it
    sgd = ops.kernel(oracle.name, "sgd")
    p = [torch.ones(4)]
    buf = [torch.full((4,), float("nan"))]
    steps = [_position()]
    pos = _position()
    kw = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
              maximize=False, schedule=S.program(S.constant(), "cpu"), position=pos)
    sgd(p, [torch.ones(4)], buf, steps, found_inf=torch.tensor(1.0), **kw)
    assert torch.isnan(buf[0]).all() and steps[0].item() == 0 and pos.item() == 1
    assert torch.equal(p[0], torch.ones(4))
    sgd(p, [torch.ones(4)], buf, steps, found_inf=torch.tensor(0.0), **kw)
    assert torch.equal(buf[0], torch.ones(4)) and steps[0].item() == 1
    torch.testing.assert_close(p[0], torch.full((4,), 0.9))


def test_public_cases_adam(oracle):
    # C5 warmup from zero; C7 amsgrad; C8 an empty parameter anywhere in the group; C13
    # grad_scale 1024 with grad 1024 equals the unscaled update
    adam_step = ops.kernel(oracle.name, "adam")

    def adam(params, grads, n, lr, amsgrad=False, sched=None, grad_scale=None):
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        x = [torch.zeros_like(p) for p in params] if amsgrad else None
        steps = [_position() for _ in params]
        pos = _position()
        prog = S.program(sched or S.constant(), "cpu")
        for k in range(n):
            adam_step(params, [g(k).to(p.dtype) for g, p in zip(grads, params)], m, v, x,
                      steps, lr=lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                      decoupled_weight_decay=False, amsgrad=amsgrad, maximize=False,
                      schedule=prog, position=pos, grad_scale=grad_scale)
        return m, v, x
    p = [torch.ones(1)]
    m, *_ = adam(p, [lambda k: torch.ones(1)], 1, 0.1, sched=S.warmup(S.constant(), 4))
    assert p[0].item() == 1.0 and m[0].item() == pytest.approx(0.1)
    p = [torch.zeros(1, dtype=F64)]
    seq = [1.0, 0, 0, 0, 0]
    _, _, x = adam(p, [lambda k: torch.tensor([seq[k]], dtype=F64)], 5, 0.1, amsgrad=True)
    assert p[0].item() == pytest.approx(-0.2968700184778925, rel=1e-13)
    assert x[0].item() == pytest.approx(0.0010000000000000009, rel=1e-13)
    for order in ([0, 1], [1, 0], [0, 1, 2]):
        ts = [torch.ones(4), torch.empty(0), torch.ones(4)]
        params = [ts[i] for i in order]
        adam(params, [lambda k, n=p.numel(): torch.ones(n) for p in params], 1, 0.1)
        for q in params:
            if q.numel():
                assert q.tolist() == [0.9000000357627869] * 4
    p, g = [torch.ones(4)], torch.full((4,), 1024.0)
    m, *_ = adam(p, [lambda k: g], 1, 0.1, grad_scale=torch.tensor(1024.0))
    assert torch.all(p[0] == 0.90000004) and torch.all(g == 1.0)
    assert torch.allclose(m[0], torch.full((4,), 0.1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("algo", ["adam", "rmsprop"])
def test_zero_grad_16bit_stays_finite(oracle, algo, dtype):
    """C14: eps is added in float32, so a zero gradient leaves 16-bit parameters unchanged."""
    p = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    g, s1, s2 = torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p)
    kw = dict(schedule=S.program(S.constant(), "cpu"), position=_position())
    step = ops.kernel(oracle.name, algo)
    if algo == "adam":
        step([p], [g], [s1], [s2], None, [_position()], lr=1e-3, beta1=0.9, beta2=0.999,
             eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, amsgrad=False,
             maximize=False, **kw)
    else:
        step([p], [g], [s1], None, None, [_position()], lr=1e-3, alpha=0.99, eps=1e-8,
             weight_decay=0.0, momentum=0.0, centered=False, maximize=False, **kw)
    assert torch.equal(p, torch.tensor([1.0, -2.0, 0.5], dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_rmsprop_centered_clamps_variance(oracle, dtype):
    """C9: centered RMSprop, grad 3.0 for 133 updates: float32 stays finite (torch: NaN at
    update 133); float64 gives the exact-arithmetic value."""
    p, g = torch.zeros(1, dtype=dtype), torch.full((1,), 3.0, dtype=dtype)
    sq, ga = torch.zeros(1, dtype=dtype), torch.zeros(1, dtype=dtype)
    steps = [_position()]
    pos = _position()
    prog = S.program(S.constant(), "cpu")
    rmsprop = ops.kernel(oracle.name, "rmsprop")
    for k in range(133):
        rmsprop([p], [g], [sq], [ga], None, steps, lr=0.01, alpha=0.9, eps=1e-8,
                weight_decay=0.0, momentum=0.0, centered=True, maximize=False,
                schedule=prog, position=pos)
        assert torch.isfinite(p).all(), k
        if dtype == F64 and k in (0, 9):
            assert p.item() == pytest.approx({0: -0.0333333330, 9: -0.224476379}[k], abs=1e-9)
    if dtype == F64:
        assert p.item() == pytest.approx(-215.041122, abs=1e-6)


def test_tensor_hyperparameters_read_on_device(oracle):
    # C15: lr as a 0-dim or 1-element tensor; changing it in place is seen by the next step
    adam = ops.kernel(oracle.name, "adam")
    for lr in (torch.tensor(0.1), torch.tensor([0.1])):
        p = [torch.ones(3)]
        kw = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                  decoupled_weight_decay=False, amsgrad=False, maximize=False,
                  schedule=S.program(S.constant(), "cpu"), position=_position())
        st = [[torch.zeros(3)], [torch.zeros(3)], None, [_position()]]
        adam(p, [torch.ones(3)], *st, lr=lr, **kw)
        assert p[0].tolist() == [0.9000000357627869] * 3
        lr.mul_(0.0)
        adam(p, [torch.ones(3)], *st, lr=lr, **kw)
        assert p[0].tolist() == [0.9000000357627869] * 3


def test_schedule_advances_without_host_input(oracle):
    # SGD, lr 1, grad 1: each step moves p by exactly -f(t), t advancing on the device
    sched = S.sequential([S.constant(0.5), S.exponential(0.5)], [2])
    prog = S.program(sched, "cpu")
    sgd = ops.kernel(oracle.name, "sgd")
    kw = dict(lr=1.0, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
              maximize=False, schedule=prog)
    p, steps, pos = [torch.zeros(3, dtype=F64)], [_position()], _position()
    want = 0.0
    for t in range(6):
        sgd(p, [torch.ones(3, dtype=F64)], None, steps, position=pos, **kw)
        want -= sched(t)
        assert p[0].tolist() == [want] * 3
    assert pos.item() == 6 and steps[0].item() == 6
    # advance_position=False leaves the position alone
    sgd(p, [torch.ones(3, dtype=F64)], None, steps, position=pos, advance_position=False, **kw)
    assert pos.item() == 6 and steps[0].item() == 7


# ---------------------------------------------------------------------- the optimizers

@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adam"])
def test_optimizer_mixed_dtypes_one_launch_per_dtype(oracle, name, monkeypatch):
    # A group with fp32, fp16, bf16 and fp64 parameters: one launch per dtype, and the same
    # parameters and state as the reference backend, bit for bit; the schedule position
    # advances once per step().
    gen = torch.Generator().manual_seed(5)
    dts = [torch.float32, torch.float16, torch.float32, torch.bfloat16, F64, torch.float16]
    base = [torch.randn(n, generator=gen, dtype=F64).to(dt)
            for n, dt in zip([5, 0, 600, 7, 3, 1030], dts)]
    grads = [[torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype) for p in base]
             for _ in range(3)]
    out = {}
    calls = []
    real = ops.kernel

    def counting(backend, algorithm):
        fn = real(backend, algorithm)

        def wrapped(*a, **k):
            calls.append((backend, a[0][0].dtype if a[0] else None))
            return fn(*a, **k)
        return wrapped
    monkeypatch.setattr(ops, "kernel", counting)
    for backend in (oracle.name, "reference"):
        params = [torch.nn.Parameter(p.clone()) for p in base]
        kw = dict(momentum=0.9) if name != "Adam" else dict(amsgrad=True)
        opt = getattr(fusedsched, name)(params, lr=0.01, schedule=S.warmup(S.cosine(5), 1),
                                        backend=backend, **kw)
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()
        out[backend] = (params, opt)
    assert sum(1 for b, _ in calls if b == oracle.name) == 3 * 4
    (pt, ot), (pr, orf) = out[oracle.name], out["reference"]
    for a, b in zip(pt, pr):
        assert torch.equal(a, b)
        for key, va in ot.state[a].items():
            torch.testing.assert_close(va, orf.state[b][key], rtol=0, atol=0)
    assert ot.param_groups[0]["schedule_position"].item() == 3.0


def test_cached_tables_follow_new_grads_and_loaded_state(oracle):
    """The optimizer keeps each group's address table between steps: reallocated
    gradients (zero_grad(set_to_none=True)), a moved parameter (p.data = ...) and state
    replaced by load_state_dict must all be picked up (same results as the reference)."""
    def run(backend):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(n)) for n in (1000, 3, 300)]
        opt = fusedsched.Adam(ps, lr=0.1, backend=backend, weight_decay=0.1)
        saved = None
        for k in range(6):
            opt.zero_grad(set_to_none=True)
            for p in ps:
                p.grad = torch.randn_like(p)
            if k == 2:
                saved = {"state": opt.state_dict()}
            if k == 4:
                opt.load_state_dict(saved["state"])
            if k == 3:
                ps[1].data = ps[1].data.clone()
            opt.step()
        return ps

    for a, b in zip(run(oracle.name), run("reference")):
        assert torch.equal(a, b)


# ------------------------------------------------------------------- schedule evaluators

EVALUATED = [
    S.constant(0.7), S.constant(0.5),
    S.linear(0.25, 1.0, 10), S.linear(0.25, 1.0, 7), S.linear(0.5, 0.2, 0),
    S.linear(0.5, 0.1, 0),
    S.step_decay(3, 0.5),
    S.multistep([2, 5, 9], 0.3),
    S.exponential(0.97),
    S.polynomial(12, 2.0, 0.1), S.polynomial(10, 2.0, 0.1), S.polynomial(0, 2.0, 0.1),
    S.cosine(20, 0.05), S.cosine(12, 0.05), S.cosine(0, 0.05),
    S.cosine_restarts(10), S.cosine_restarts(7, 2, 0.1), S.cosine_restarts(3, 3),
    S.cosine_restarts(3, 1, 0.1), S.cosine_restarts(2, 2, 0.0), S.cosine_restarts(1, 3, 0.2),
    S.one_cycle(50),
    S.one_cycle(37, pct_start=0.25, anneal="linear", three_phase=True),
    S.one_cycle(20, pct_start=0.25, anneal="linear", three_phase=True),
    S.one_cycle(10, three_phase=True),
    S.one_cycle(10, pct_start=0.5, cycle_momentum=False),
    S.cyclic(0.1, step_size_up=5), S.cyclic(0.1, 4, mode="triangular"),
    S.cyclic(0.5, step_size_up=5, mode="triangular2", cycle_momentum=False),
    S.cyclic(0.3, step_size_up=4, step_size_down=7, mode="exp_range", gamma=0.999),
    S.cyclic(0.2, 3, step_size_down=5, mode="exp_range", gamma=0.99),
    S.inverse_sqrt(10), S.inverse_sqrt(4), S.inverse_sqrt(0, timescale=100),
    S.inverse_sqrt(0, 10),
    S.warmup_stable_decay(4, 2, 4), S.warmup_stable_decay(5, 5, 0),
    S.warmup_stable_decay(100, 0, 0),
    S.warmup_stable_decay(3, 4, 8, decay="cosine", end_factor=0.1, start_factor=0.2),
    S.warmup_stable_decay(3, 2, 5, decay="cosine", end_factor=0.1, start_factor=0.2),
    S.warmup_stable_decay(3, 4, 8, decay="1-sqrt"), S.warmup_stable_decay(2, 1, 4, decay="1-sqrt"),
    S.warmup(S.cosine(10), 5, 0.1), S.warmup(S.cosine(10), 3, start_factor=0.1),
    S.sequential([S.constant(0.1), S.exponential(0.5)], milestones=[0]),
    S.sequential([S.constant(0.5), S.constant(0.3), S.constant(1.0)], [3, 7]),
    S.sequential([S.constant(0.5), S.constant(0.3), S.warmup(S.one_cycle(20), 3)],
                 milestones=[3, 7]),
    S.sequential([S.warmup(S.one_cycle(12), 2),
                  S.sequential([S.cyclic(0.3, 2), S.step_decay(2)], [5])], [6]),
]


@pytest.mark.parametrize("schedule", EVALUATED, ids=repr)
def test_evaluator_matches_python_and_reference(backend_oracle, schedule):
    """The in-kernel evaluator at the backend's positions (small ones, huge ones up to
    2**31) against the Python schedule to 1e-12 relative, and against the reference
    evaluator (bit for bit, or in ulps with the reason: ``scalar_ulps``)."""
    ts = backend_oracle.positions
    out = backend_oracle.evaluate(schedule, ts)
    assert_like_reference_evaluator(out, reference_evaluate(schedule, ts), repr(schedule),
                                    backend_oracle.scalar_ulps)
    for i, t in enumerate(ts):
        want = schedule(t)
        got = out[i, 0].item()
        assert math.isfinite(got), (t, got)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (t, got, want)
        m = schedule.momentum(t)
        if m is None:
            assert out[i, 2].item() == 0.0, t
        else:
            assert out[i, 2].item() == 1.0, t
            assert out[i, 1].item() == pytest.approx(m, rel=1e-12, abs=1e-15), t


def test_evaluator_public_cases(backend_oracle):
    evaluate = backend_oracle.evaluate
    # C1: one_cycle holds its final value for t >= e3
    out = evaluate(S.one_cycle(50), [0, 14, 49, 50, 51, 10**6])[:, 0].tolist()
    assert out[0] == pytest.approx(0.04, rel=1e-12) and out[1] == pytest.approx(1.0, rel=1e-12)
    assert out[2] == pytest.approx(4e-6, rel=1e-9) and out[3:] == [out[2]] * 3
    # C4: triangular2 5e-5 / 1e-4 = 0.5 exactly at t = 10240; no overflow up to 2**31.
    # Exact on every machine: 0.5 ** (cycle - 1) is a power of two (or 0), which a pow
    # correct to within an ulp returns exactly, and base + (1 - base) * scale rounds to
    # base for such a scale.
    out = evaluate(S.cyclic(0.5, 5, mode="triangular2", cycle_momentum=False),
                   [10240, 2**31, 2**31 + 3])
    assert out[:, 0].tolist() == [0.5] * 3
    # C6
    out = evaluate(S.warmup_stable_decay(4, 2, 4), range(11))[:, 0].tolist()
    assert out == pytest.approx([0, .25, .5, .75, 1, 1, 1, .75, .5, .25, 0], abs=1e-15)
