"""Reduced-precision optimizer state (``state_dtype=``) at the optimizer level: what the
user sees in ``opt.state`` and the state_dict, memory, resume, the conversions to and from
torch.optim's float32 state, errors, AMP, clipping, master weights, flat storage and
torch.compile. The kernels' bits against the reference are tests/test_kernels.py.

Zero tolerance is used where both sides run the same functions: a backend against the
reference with the reference taking the backend's square roots and float64 scalars
(``same_functions``), an eager step against a compiled one, a resumed run against the
uninterrupted one, a decoded state against the kernels' own decoding.
"""

import io

import pytest
import torch

import fusedsched as fs
from fusedsched import schedules as S
from fusedsched.cli.optim_db import STATE_DTYPES
from fusedsched.kernels.reference import _state as R

from conftest import BACKENDS
from _torch_oracle import numba_sqrt, reference_takes_numba_scalars

FORMATS = list(STATE_DTYPES)
CLASSES = {
    "adamw": (fs.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    "adam_amsgrad": (fs.Adam, dict(lr=1e-2, amsgrad=True)),
    "sgd_nesterov": (fs.SGD, dict(lr=1e-2, momentum=0.9, nesterov=True)),
    "rmsprop_centered": (fs.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True)),
}
SCHEDULE = S.warmup(S.cosine(total_steps=8), warmup_steps=2)
SHAPES = [(300, 7), (7,), (1,), (2, 256)]


def _model(dtype=torch.float32, seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]


def _grads(params, step, seed=1):
    g = torch.Generator().manual_seed(seed * 1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def _run(name, state_dtype, steps, *, backend="reference", dtype=torch.float32, params=None,
         opt=None, first=0, **extra):
    cls, kw = CLASSES[name]
    params = params if params is not None else _model(dtype)
    opt = opt or cls(params, **kw, schedule=SCHEDULE, state_dtype=state_dtype,
                     backend=backend, **extra)
    for i in range(first, first + steps):
        _grads(params, i)
        opt.step()
    return params, opt


def _assert_same(a_params, a_opt, b_params, b_opt):
    for p, q in zip(a_params, b_params):
        assert torch.equal(p, q)
        sa, sb = a_opt.state[p], b_opt.state[q]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, key
            assert torch.equal(sa[key], sb[key]), key


@pytest.fixture
def same_functions(backend):
    """The Numba kernels take torch's square roots and the reference the kernels' float64
    scalars (tests/_torch_oracle.py says why): the two then run the same functions. The
    interpreted Triton kernels already take torch's (kernels/triton/_elements.py)."""
    if backend != "numba":
        yield
        return
    with numba_sqrt("torch"), reference_takes_numba_scalars():
        yield


# ------------------------------------------------------------------------ the state

@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("state_dtype", FORMATS)
def test_state_layout(name, state_dtype):
    params, opt = _run(name, state_dtype, 2)
    moments = [k for k in opt.state[params[0]] if k != "step" and not k.endswith("_scale")]
    assert moments
    for p in params:
        state = opt.state[p]
        assert state["step"].dtype == torch.float64
        for key in moments:
            value = state[key]
            assert value.shape == p.shape
            if state_dtype == "8bit":
                assert value.dtype == torch.uint8
                scale = state[key + "_scale"]
                assert scale.dtype == torch.float32
                assert scale.shape == (-(-p.numel() // 256),)
            else:
                assert value.dtype == torch.bfloat16
                assert key + "_scale" not in state


@pytest.mark.parametrize("state_dtype,bound", [(torch.bfloat16, 0.52), ("8bit", 0.30)])
def test_state_memory(state_dtype, bound):
    """State bytes of a large parameter relative to float32 state (fp32 Adam: 8 B/element)."""
    def state_bytes(sd):
        params, opt = _run("adamw", sd, 1, params=[torch.nn.Parameter(torch.zeros(1 << 20))])
        return sum(v.numel() * v.element_size() for v in opt.state[params[0]].values()
                   if v.dim() > 0)
    assert state_bytes(state_dtype) <= bound * state_bytes(None)


def test_first_moment_is_the_decoded_state():
    """What float32_state_dict decodes is the kernels' own decoding (``R.dequantize``)."""
    params, opt = _run("adamw", "8bit", 3)
    sd = fs.float32_state_dict(opt.state_dict())
    for i, p in enumerate(params):
        state = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            want = R.dequantize(state[key], state[key + "_scale"],
                                key == "exp_avg").view(p.shape)
            assert sd["state"][i][key].dtype == torch.float32
            assert torch.equal(sd["state"][i][key], want)
        assert not any(k.endswith("_scale") for k in sd["state"][i])


# ------------------------------------------------------------------ resume and convert

@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("state_dtype", FORMATS)
def test_resume_is_bit_identical(name, state_dtype):
    straight_params, straight = _run(name, state_dtype, 6)
    params, opt = _run(name, state_dtype, 3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    cls, kw = CLASSES[name]
    resumed = cls(resumed_params, **kw, schedule=SCHEDULE, state_dtype=state_dtype,
                  backend="reference")
    resumed.load_state_dict(saved)
    _run(name, state_dtype, 3, params=resumed_params, opt=resumed, first=3)
    _assert_same(straight_params, straight, resumed_params, resumed)


def test_torch_state_loads_into_8bit_and_back():
    """torch.optim.AdamW's float32 state -> fusedsched 8-bit (quantized on load) -> float32
    for torch.optim again: within the 8-bit format's precision, and torch steps with it."""
    params = _model()
    ref = torch.optim.AdamW(params, lr=1e-2)
    for i in range(3):
        _grads(params, i)
        ref.step()
    ours = fs.AdamW(params, lr=1e-2, state_dtype="8bit", backend="reference")
    ours.load_state_dict(ref.state_dict())
    for p in params:
        state = ours.state[p]
        assert state["exp_avg"].dtype == torch.uint8
        for key in ("exp_avg", "exp_avg_sq"):
            decoded = R.dequantize(state[key], state[key + "_scale"], key == "exp_avg")
            exact = ref.state[p][key].reshape(-1)
            scale = state[key + "_scale"].repeat_interleave(256)[:exact.numel()]
            # stochastic rounding moves a value at most one code: <= 1/8 of its binade
            # below the top binade, and subnormal codes are spaced 2**-17 or 2**-33 * scale
            tol = exact.abs() / 4 + scale * 2.0 ** -14
            assert ((decoded - exact).abs() <= tol).all(), key
    back = torch.optim.AdamW(params, lr=1e-2)
    back.load_state_dict(fs.float32_state_dict(ours.state_dict()))
    _grads(params, 3)
    back.step()
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("source,target", [(None, "8bit"), ("8bit", None),
                                           (torch.bfloat16, "8bit"), ("8bit", torch.bfloat16),
                                           (None, torch.bfloat16), (torch.bfloat16, None)])
def test_state_converts_between_formats(source, target):
    params, opt = _run("adamw", source, 2)
    other = fs.AdamW(params, lr=1e-2, weight_decay=0.1, schedule=SCHEDULE, state_dtype=target,
                     backend="reference")
    other.load_state_dict(opt.state_dict())
    stored = {None: torch.float32, torch.bfloat16: torch.bfloat16, "8bit": torch.uint8}
    for p in params:
        state = other.state[p]
        assert state["exp_avg"].dtype == stored[target]
        assert ("exp_avg_scale" in state) == (target == "8bit")
    loaded = fs.float32_state_dict(other.state_dict())
    exact = fs.float32_state_dict(opt.state_dict())
    for i in loaded["state"]:
        a, b = loaded["state"][i]["exp_avg"], exact["state"][i]["exp_avg"]
        # at most two stochastic roundings between the two (source format, then target):
        # each moves a value by less than one code, 1/8 of its binade (< 12.5%) in 8 bits;
        # atol: values below the 8-bit codes' normal range (2**-14 of a block's absmax ~
        # 1e-1 here) move by up to their subnormal spacing
        assert torch.allclose(a, b, rtol=0.25, atol=1e-6)
    _run("adamw", target, 2, params=params, opt=other, first=2)       # it steps


def test_same_format_loads_bit_for_bit_with_bfloat16_params():
    """torch casts floating state to the parameter's dtype on load; the 8-bit scales of a
    bfloat16 parameter are kept as saved (float32), not rounded to bfloat16."""
    params, opt = _run("adamw", "8bit", 2, dtype=torch.bfloat16)
    other = fs.AdamW(params, lr=1e-2, state_dtype="8bit", backend="reference")
    other.load_state_dict(opt.state_dict())
    for p in params:
        for key, value in opt.state[p].items():
            assert other.state[p][key].dtype == value.dtype
            assert torch.equal(other.state[p][key], value)


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("bad", [torch.float16, torch.float32, "4bit", "bf16", 8, True])
def test_bad_state_dtype_names_itself(bad):
    with pytest.raises(ValueError, match="state_dtype"):
        fs.AdamW(_model(), state_dtype=bad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex64])
@pytest.mark.parametrize("state_dtype", FORMATS)
def test_float64_and_complex_parameters_raise_and_nothing_changes(dtype, state_dtype):
    good, bad = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(5, dtype=dtype))
    opt = fs.AdamW([good, bad], state_dtype=state_dtype, backend="reference")
    good.grad, bad.grad = torch.randn(5), torch.randn(5, dtype=dtype)
    before = good.detach().clone(), bad.detach().clone()
    with pytest.raises(ValueError, match=str(dtype)):
        opt.step()
    assert torch.equal(good, before[0]) and torch.equal(bad, before[1])
    assert not opt.state[good] and not opt.state[bad]


def test_state_of_the_wrong_dtype_raises_before_any_write():
    params, opt = _run("adamw", "8bit", 1)
    opt.state[params[0]]["exp_avg"] = torch.zeros(params[0].shape)
    before = [p.detach().clone() for p in params]
    _grads(params, 1)
    with pytest.raises(TypeError, match="exp_avg"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))


# -------------------------------------------------------------- AMP, aids, flat, compile

@pytest.mark.parametrize("state_dtype", FORMATS)
def test_found_inf_writes_nothing(state_dtype):
    params, opt = _run("adamw", state_dtype, 2)
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    p_before = params[0].detach().clone()
    _grads(params, 2)
    params[0].grad[0, 0] = float("inf")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    scaler.scale(torch.zeros(()))       # the scaler's scale exists from here
    scaler.step(opt)
    scaler.update()
    assert torch.equal(params[0], p_before)
    for key, value in before.items():
        assert torch.equal(opt.state[params[0]][key], value), key


@pytest.mark.parametrize("state_dtype", FORMATS)
def test_clipping_and_master_weights(state_dtype):
    """max_grad_norm and master_weights compose with reduced-precision state. Clipping
    does not depend on the state: the norm and the clipped grads written back equal those
    of float32 state bit for bit (the first step, from the same parameters). bfloat16
    parameters keep a float32 master and the format's moments."""
    params, opt = _run("adamw", state_dtype, 1, max_grad_norm=0.5)
    twin, twin_opt = _run("adamw", None, 1, max_grad_norm=0.5)
    assert torch.equal(opt.last_grad_norm, twin_opt.last_grad_norm)
    for p, q in zip(params, twin):
        assert torch.equal(p.grad, q.grad)
    assert float(opt.last_grad_norm) > 0.5      # the grads were clipped
    low, low_opt = _run("adamw", state_dtype, 2, dtype=torch.bfloat16, master_weights=True)
    state = low_opt.state[low[0]]
    assert state["master_param"].dtype == torch.float32
    assert state["exp_avg"].dtype == (torch.uint8 if state_dtype == "8bit" else torch.bfloat16)
    assert torch.equal(low[0], state["master_param"].to(torch.bfloat16))


@pytest.mark.parametrize("state_dtype", FORMATS)
def test_flat_equals_per_tensor(state_dtype):
    a_params, a = _run("adamw", state_dtype, 3)
    b_params, b = _run("adamw", state_dtype, 3, flat=True)
    _assert_same(a_params, a, b_params, b)


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("state_dtype", FORMATS)
def test_compiled_step_equals_eager(state_dtype, backend):
    """opt.step() inside torch.compile (fullgraph, grads reallocated every step) against an
    eager twin on the same backend, bit for bit (the same kernel runs in both)."""
    torch._dynamo.reset()
    eager_params, eager = _run("adamw", state_dtype, 4, backend=backend)
    params = _model()
    cls, kw = CLASSES["adamw"]
    opt = cls(params, **kw, schedule=SCHEDULE, state_dtype=state_dtype, backend=backend)
    step = torch.compile(opt.step, fullgraph=True)
    for i in range(4):
        _grads(params, i)
        step()
    _assert_same(eager_params, eager, params, opt)


# ----------------------------------------------------------------- backends agree

@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("state_dtype", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backend_equals_reference(backend, name, state_dtype, dtype, same_functions):
    ref_params, ref = _run(name, state_dtype, 4, dtype=dtype)
    params, opt = _run(name, state_dtype, 4, dtype=dtype, backend=backend)
    _assert_same(ref_params, ref, params, opt)
