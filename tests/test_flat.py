"""Flat storage (``flat=True``) against ``flat=False`` twins, bit for bit: every way of
touching grads, parameters and state that torch allows, eager and under torch.compile.

Each test builds two identical models (or parameter lists), one optimizer with
``flat=True`` and one without, applies the same function to both sides and compares
parameters, the grads the step used, and the state (``state_dict()``) with zero tolerance,
as integer bit patterns (NaN and -0.0 included)."""

import copy
import inspect
import io

import pytest
import torch

import fusedsched as fs
from fusedsched import schedules as S
from fusedsched.cli.optim_db import OPTIMIZERS
from fusedsched.optim import _flat

from conftest import BACKENDS

torch._dynamo.config.cache_size_limit = 64

ALGOS = {
    "sgd": (fs.SGD, dict(lr=0.05, weight_decay=1e-2)),
    "momentum": (fs.Momentum, dict(lr=0.05, momentum=0.9, nesterov=True)),
    "rmsprop": (fs.RMSprop, dict(lr=1e-2, momentum=0.5, centered=True, weight_decay=1e-3)),
    "adam": (fs.Adam, dict(lr=1e-2, amsgrad=True, weight_decay=1e-2)),
    "adamw": (fs.AdamW, dict(lr=1e-2)),
}


def _bits(t):
    t = t.detach()
    if t.dtype == torch.float64:
        return t.view(torch.int64)
    if t.dtype == torch.float32:
        return t.view(torch.int32)
    return t.view(torch.int16)


def _same(a, b, what=""):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert torch.equal(_bits(a), _bits(b)), f"{what}: max diff {(a - b).abs().max()}"


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 5),
                               torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(dtype)


def _twins(algo="adam", backend="numba", seed=0, dtype=torch.float32, **kw):
    cls, base = ALGOS[algo]
    sched = S.warmup(S.cosine(total_steps=30, end_factor=0.1), warmup_steps=3)
    a, b = _model(seed, dtype), _model(seed, dtype)
    oa = cls(a.parameters(), **base, schedule=sched, backend=backend, flat=True, **kw)
    ob = cls(b.parameters(), **base, schedule=sched, backend=backend, **kw)
    return a, oa, b, ob


def _batch(k, dtype=torch.float32):
    g = torch.Generator().manual_seed(100 + k)
    return torch.randn(7, 6, generator=g, dtype=torch.float64).to(dtype)


def _loss(model, k):
    return model(_batch(k, next(model.parameters()).dtype)).pow(2).mean()


def _effective_grad(opt, p):
    """The grad a step would use (None where the parameter would not be stepped)."""
    for fg in opt.__dict__.get("_flat_groups", {}).values():
        for bank in fg.banks:
            for i, q in bank.members():
                if q is p and p.grad is bank.gviews[i] and not bank.touched[i]:
                    return None
    return p.grad


def _assert_twins(ma, oa, mb, ob, grads=True):
    pa, pb = list(ma.parameters()), list(mb.parameters())
    for i, (x, y) in enumerate(zip(pa, pb)):
        _same(x, y, f"param {i}")
        if grads:
            ga, gb = _effective_grad(oa, x), _effective_grad(ob, y)
            assert (ga is None) == (gb is None), f"grad presence of param {i}"
            if ga is not None:
                _same(ga, gb, f"grad {i}")
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for index in sb["state"]:
        assert sa["state"][index].keys() == sb["state"][index].keys(), index
        for key, value in sb["state"][index].items():
            _same(sa["state"][index][key], value, f"state {index} {key}")
    for ga, gb in zip(sa["param_groups"], sb["param_groups"]):
        assert ga["schedule_position"].item() == gb["schedule_position"].item()


def _both(ma, oa, mb, ob, fn, steps=5):
    for k in range(steps):
        fn(ma, oa, k)
        fn(mb, ob, k)
        _assert_twins(ma, oa, mb, ob)


def _plain_step(m, o, k):
    o.zero_grad(set_to_none=True)
    _loss(m, k).backward()
    o.step()


def _holds(tensors, t):
    return any(x is t for x in tensors)


def _banks(opt):
    return [b for fg in opt._flat_groups.values() for b in fg.banks]


# ---------------------------------------------------------------------------- basics
@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_training_loop_is_bit_identical(algo):
    ma, oa, mb, ob = _twins(algo)
    _both(ma, oa, mb, ob, _plain_step, steps=6)
    (bank,) = _banks(oa)
    assert len(bank.runs[2][0]) == 1        # one run: one kernel row for the whole bank


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend(backend):
    ma, oa, mb, ob = _twins("adam", backend)
    _both(ma, oa, mb, ob, _plain_step, steps=4)


def test_parameters_become_views_with_values_unchanged():
    m = _model()
    before = [p.detach().clone() for p in m.parameters()]
    opt = fs.Adam(m.parameters(), flat=True)
    (bank,) = _banks(opt)
    for p, v, b in zip(m.parameters(), bank.views, before):
        _same(p, b)
        assert p.data_ptr() == v.data_ptr() and p.data_ptr() % 64 == 0
        assert p.grad is not None and p.grad._base is bank.gbuf
    assert all(o % _flat.ALIGN == 0 for o in bank.offsets)


def test_flat_must_be_a_bool():
    m = _model()
    before = [p.detach().clone() for p in m.parameters()]
    for cls in (info.cls for info in OPTIMIZERS.values()):
        with pytest.raises(TypeError, match="flat must be a bool, got flat='yes'"):
            cls(m.parameters(), lr=0.1, flat="yes")
    for p, b in zip(m.parameters(), before):
        assert p.grad is None
        _same(p, b)


# ------------------------------------------------------------------ gradient presence
def test_grads_left_none_for_some_parameters():
    """Parameters outside the loss of a step get no update and no count (as torch)."""
    ma, oa, mb, ob = _twins("adam")

    def fn(m, o, k):
        o.zero_grad(set_to_none=True)
        x = _batch(k)
        if k % 3 == 0:      # only the first layer
            m[0](x).pow(2).mean().backward()
        elif k % 3 == 1:    # nothing
            pass
        else:
            _loss(m, k).backward()
        o.step()
    _both(ma, oa, mb, ob, fn, steps=8)


def test_zero_grad_set_to_none_false():
    ma, oa, mb, ob = _twins("rmsprop")

    def fn(m, o, k):
        o.zero_grad(set_to_none=False)
        if k % 2:
            _loss(m, k).backward()
        o.step()
    _both(ma, oa, mb, ob, fn, steps=6)


def test_gradient_accumulation():
    ma, oa, mb, ob = _twins("adamw")

    def fn(m, o, k):
        o.zero_grad(set_to_none=True)
        for j in range(3):
            (_loss(m, 10 * k + j) / 3).backward()
        o.step()
    _both(ma, oa, mb, ob, fn, steps=4)


def test_grads_assigned_by_hand():
    ma, oa, mb, ob = _twins("adam")

    def fn(m, o, k):
        o.zero_grad(set_to_none=True)
        g = torch.Generator().manual_seed(k)
        for j, p in enumerate(m.parameters()):
            if (j + k) % 3:
                p.grad = torch.randn(p.shape, generator=g)
        if k == 3:      # a hand-set grad added to a backward's
            _loss(m, k).backward()
        o.step()
    _both(ma, oa, mb, ob, fn, steps=6)


def test_model_zero_grad_sets_none():
    ma, oa, mb, ob = _twins("adam")

    def fn(m, o, k):
        m.zero_grad()       # torch's Module.zero_grad: p.grad = None
        if k != 2:
            _loss(m, k).backward()
        o.step()
    _both(ma, oa, mb, ob, fn, steps=5)


def test_steps_without_zero_grad_reuse_grads():
    ma, oa, mb, ob = _twins("momentum")

    def fn(m, o, k):
        if k == 0:
            _loss(m, k).backward()
        o.step()
    _both(ma, oa, mb, ob, fn, steps=4)


def test_signed_zero_and_nan_grads_kept():
    """-0.0 fills the grad buffer: a backward's -0.0, NaN and inf reach the kernel as
    they reach flat=False's (bitwise)."""
    ma, oa, mb, ob = _twins("sgd")

    def fn(m, o, k):
        o.zero_grad(set_to_none=True)
        out = m(_batch(k))
        (out * torch.tensor([-0.0, 1.0, float("nan") if k == 2 else 2.0])).sum().backward()
        o.step()
    _both(ma, oa, mb, ob, fn, steps=3)


# -------------------------------------------------------------- parameters and state
def test_p_data_rebound_same_shape():
    ma, oa, mb, ob = _twins("adam")
    _both(ma, oa, mb, ob, _plain_step, steps=2)
    for m in (ma, mb):
        w = m[0].weight
        old = w.data       # a view of the old storage kept alive
        w.data = torch.randn(w.shape, generator=torch.Generator().manual_seed(5))
        del old
    _both(ma, oa, mb, ob, _plain_step, steps=3)


def test_p_data_rebound_other_dtype_and_shape():
    """Another dtype, or another shape with its state reset: the parameter leaves the
    bank and is stepped as flat=False steps it; a mismatch with the state raises the
    same error on both sides."""
    ma, oa, mb, ob = _twins("adam", dtype=torch.float64)
    _both(ma, oa, mb, ob, _plain_step, steps=2)
    for m, o in ((ma, oa), (mb, ob)):
        m[2].bias.data = torch.zeros(7, dtype=torch.float64)
    errors = []
    for m, o in ((ma, oa), (mb, ob)):
        o.zero_grad(set_to_none=True)
        m[2].bias.grad = torch.ones(7, dtype=torch.float64)
        with pytest.raises(ValueError, match="state 'exp_avg' has shape") as e:
            o.step()
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    for m, o in ((ma, oa), (mb, ob)):
        del o.state[m[2].bias]
        m[2].bias.data = torch.zeros(5, dtype=torch.float64)
        m[0].bias.data = m[0].bias.data.float()       # other dtype: its state too
        del o.state[m[0].bias]
    ma[0].bias.grad = mb[0].bias.grad = None

    def fn(m, o, k):
        o.zero_grad(set_to_none=True)
        for p in m.parameters():
            p.grad = torch.full_like(p, 0.5 + k)
        o.step()
    _both(ma, oa, mb, ob, fn, steps=3)
    assert _holds(_flat.flat_group(oa, oa.param_groups[0]).rest, ma[0].bias)


@pytest.mark.parametrize("how", ["value", "dict", "del", "clear", "data", "step",
                                 "step_value", "step_number"])
def test_state_replaced_by_hand(how):
    ma, oa, mb, ob = _twins("adam")
    _both(ma, oa, mb, ob, _plain_step, steps=2)
    for m, o in ((ma, oa), (mb, ob)):
        p = m[2].weight
        if how == "value":
            held = [o.state[p]["exp_avg"]]      # the old view stays alive meanwhile
            o.state[p]["exp_avg"] = torch.full_like(p, 0.25)
            held.clear()
        elif how == "dict":
            o.state[p] = {}
        elif how == "del":
            del o.state[p]
        elif how == "clear":
            o.state[p].clear()
        elif how == "data":
            o.state[p]["exp_avg_sq"].data = torch.full_like(p, 0.5)
        elif how == "step":
            o.state[p]["step"].fill_(7.0)
        elif how == "step_value":
            o.state[p]["step"] = torch.tensor(5.0)      # float32, as torch keeps it
        else:
            o.state[p]["step"] = 9
    _both(ma, oa, mb, ob, _plain_step, steps=3)


def test_add_param_group():
    ma, oa, mb, ob = _twins("adam")
    _both(ma, oa, mb, ob, _plain_step, steps=2)
    extra = []
    for m, o in ((ma, oa), (mb, ob)):
        torch.manual_seed(3)
        head = torch.nn.Linear(3, 2)
        m.append(head)
        o.add_param_group({"params": head.parameters(), "lr": 0.03})
        extra.append(head)
    assert len(_banks(oa)) == 2
    _both(ma, oa, mb, ob, _plain_step, steps=3)


def test_load_state_dict_round_trip_and_torch_interop():
    ma, oa, mb, ob = _twins("adam")
    _both(ma, oa, mb, ob, _plain_step, steps=3)
    buffer = io.BytesIO()
    torch.save(oa.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    # into torch.optim.Adam (a copy of the model), and one step each
    mt = copy.deepcopy(mb)
    torch_opt = torch.optim.Adam(mt.parameters(), lr=1e-2, amsgrad=True, weight_decay=1e-2)
    torch_opt.load_state_dict(copy.deepcopy(saved))
    for index, st in torch_opt.state_dict()["state"].items():
        for key, value in ob.state_dict()["state"][index].items():
            _same(st[key].to(value.dtype), value, f"torch {index} {key}")
    # back: a fresh flat optimizer loads it and continues as the twin
    mc = copy.deepcopy(mb)
    oc = fs.Adam(mc.parameters(), lr=1e-2, amsgrad=True, weight_decay=1e-2, flat=True,
                 schedule=S.warmup(S.cosine(total_steps=30, end_factor=0.1), warmup_steps=3))
    oc.load_state_dict(saved)
    _both(mc, oc, mb, ob, _plain_step, steps=3)
    # and a state dict of torch.optim loads into flat=True
    md = copy.deepcopy(mt)
    od = fs.Adam(md.parameters(), lr=1e-2, amsgrad=True, weight_decay=1e-2, flat=True)
    oe = fs.Adam(copy.deepcopy(mt).parameters(), lr=1e-2, amsgrad=True, weight_decay=1e-2)
    od.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    oe.load_state_dict(copy.deepcopy(torch_opt.state_dict()))
    _twin_params_step(od, oe, steps=2)


def _twin_params_step(oa, ob, steps):
    pa = [p for g in oa.param_groups for p in g["params"]]
    pb = [p for g in ob.param_groups for p in g["params"]]
    for k in range(steps):
        for o, ps in ((oa, pa), (ob, pb)):
            o.zero_grad(set_to_none=True)
            g = torch.Generator().manual_seed(k)
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g)
            o.step()
        for x, y in zip(pa, pb):
            _same(x, y)
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        for i in sb:
            for key in sb[i]:
                _same(sa[i][key], sb[i][key], f"{i} {key}")


def test_state_dict_is_torch_format():
    ma, oa, mb, ob = _twins("adam")
    _both(ma, oa, mb, ob, _plain_step, steps=2)
    sd = oa.state_dict()
    for st in sd["state"].values():
        assert type(st) is dict
        assert st["step"].dtype == torch.float64 and st["step"].dim() == 0


def test_load_own_state_dict_without_copy():
    ma, oa, mb, ob = _twins("adamw")
    _both(ma, oa, mb, ob, _plain_step, steps=2)
    oa.load_state_dict(oa.state_dict())
    ob.load_state_dict(ob.state_dict())
    _both(ma, oa, mb, ob, _plain_step, steps=2)


# --------------------------------------------------------------------- training aids
def test_grad_scaler_skips_and_unscales():
    ma, oa, mb, ob = _twins("momentum")
    scalers = {id(oa): torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2),
               id(ob): torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)}

    def fn(m, o, k):
        scaler = scalers[id(o)]
        o.zero_grad(set_to_none=True)
        loss = _loss(m, k)
        if k in (0, 3):
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        if k == 4:      # a hand-set grad is unscaled in place too
            m[0].bias.grad = torch.full_like(m[0].bias, 1024.0)
        scaler.step(o)
        scaler.update()
    _both(ma, oa, mb, ob, fn, steps=6)


def test_clipping():
    ma, oa, mb, ob = _twins("adam", max_grad_norm=0.05)

    def fn(m, o, k):
        o.zero_grad(set_to_none=True)
        if k == 2:
            m[0](_batch(k)).sum().backward()
        else:
            (_loss(m, k) * 10).backward()
        o.step()
    for k in range(4):
        fn(ma, oa, k)
        fn(mb, ob, k)
        _assert_twins(ma, oa, mb, ob)
        _same(oa.last_grad_norm, ob.last_grad_norm)


def test_master_weights_keep_bf16_out_of_the_bank():
    """A bf16 layer with master_weights: its parameters are lifted to fp32 copies and
    stepped per tensor; the fp32 layers are banked."""
    ma2, mb2 = _model(), _model()
    for m in (ma2, mb2):
        m[2].to(torch.bfloat16)
    oa = fs.AdamW(ma2.parameters(), lr=1e-2, master_weights=True, flat=True)
    ob = fs.AdamW(mb2.parameters(), lr=1e-2, master_weights=True)

    def fn(m, o, k):
        o.zero_grad(set_to_none=True)
        x = m[1](m[0](_batch(k)))
        x = m[3](m[2](x.bfloat16())).float()
        m[4](x).pow(2).mean().backward()
        o.step()
    _both(ma2, oa, mb2, ob, fn, steps=3)
    assert all(b.dtype == torch.float32 for b in _banks(oa))


# ------------------------------------------------------------------- sharing storage
def test_tied_and_shared_storage_parameters_stay_out():
    base_a = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    base_b = base_a.clone()

    def make(base, flat):
        tied = torch.nn.Parameter(torch.randn(3, generator=torch.Generator().manual_seed(1)))
        first, second = torch.nn.Parameter(base[0]), torch.nn.Parameter(base[1])
        own = torch.nn.Parameter(torch.ones(5))
        # tied: the same tensor twice in the module list; torch keeps it once in the group
        params = [tied, first, own, second]
        return params, fs.Adam(params, lr=0.1, flat=flat)
    pa, oa = make(base_a, True)
    pb, ob = make(base_b, False)
    (bank,) = _banks(oa)
    members = [p for _, p in bank.members()]       # the two views of base stay out
    assert len(members) == 2 and members[0] is pa[0] and members[1] is pa[2]
    for k in range(3):
        for ps, o in ((pa, oa), (pb, ob)):
            o.zero_grad(set_to_none=True)
            for j, p in enumerate(ps):
                p.grad = torch.full_like(p, 0.1 * (j + k + 1))
            o.step()
        for x, y in zip(pa, pb):
            _same(x, y)
    _same(base_a, base_b)       # the sharing held: the base sees the updates
    assert pa[1].data_ptr() == base_a.data_ptr()


# ------------------------------------------------------------------------ compile
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_step_matches_eager(backend):
    """A compiled ``opt.step()`` with flat=True steps eagerly (a graph break), the same
    kernel calls as the eager twin's."""
    ma, oa, mb, ob = _twins("adam", backend)
    step = torch.compile(oa.step)

    def fn(m, o, k):
        o.zero_grad(set_to_none=True)
        if k != 2:
            _loss(m, k).backward()
        step() if o is oa else o.step()
    _both(ma, oa, mb, ob, fn, steps=4)
    # eager after compiled: the counts are read back, the runs rebuilt
    _both(ma, oa, mb, ob, _plain_step, steps=2)


def test_compiled_train_step():
    ma, oa, mb, ob = _twins("adamw")

    def train(m, o, k):
        o.zero_grad(set_to_none=True)
        _loss(m, k).backward()
        o.step()
    compiled = torch.compile(train)
    for k in range(3):
        compiled(ma, oa, k)
        train(mb, ob, k)
    for x, y in zip(ma.parameters(), mb.parameters()):
        # the forward and backward ran through Inductor: close, not bit-identical
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    assert oa.param_groups[0]["schedule_position"].item() == 3


# ------------------------------------------------------------------------- pickling
def test_deepcopy_steps_like_the_original():
    ma, oa, mb, ob = _twins("adam")
    _both(ma, oa, mb, ob, _plain_step, steps=2)
    clone = copy.deepcopy({"m": ma, "o": oa})
    _both(clone["m"], clone["o"], mb, ob, _plain_step, steps=2)


# ------------------------------------------------------------- every backend, more cases
@pytest.mark.parametrize("backend", BACKENDS)
def test_presence_rebinding_and_state_on_every_backend(backend):
    """Grads left None, assigned by hand, accumulated; a parameter rebound; a state value
    replaced: on each backend (Triton interpreted on CPU here)."""
    ma, oa, mb, ob = _twins("adam", backend)

    def fn(m, o, k):
        o.zero_grad(set_to_none=True)
        if k == 1:
            m[0](_batch(k)).pow(2).mean().backward()
        elif k == 2:
            for p in m[2].parameters():
                p.grad = torch.full_like(p, 0.125)
        else:
            _loss(m, k).backward()
            _loss(m, k + 50).backward()
        if k == 3:
            m[4].weight.data = torch.full_like(m[4].weight, 0.5)
            o.state[m[0].weight]["exp_avg"] = torch.full_like(m[0].weight, 0.01)
        o.step()
    _both(ma, oa, mb, ob, fn, steps=5)


def test_frozen_and_non_contiguous_parameters_stay_out():
    def make(flat):
        torch.manual_seed(0)
        frozen = torch.nn.Parameter(torch.randn(4), requires_grad=False)
        strided = torch.nn.Parameter(torch.randn(5, 3).t())
        plain = torch.nn.Parameter(torch.randn(6))
        params = [frozen, strided, plain]
        return params, fs.Adam(params, lr=0.1, flat=flat)
    pa, oa = make(True)
    pb, ob = make(False)
    (bank,) = _banks(oa)
    assert bank.params == [pa[2]] and not pa[1].is_contiguous()
    for k in range(3):
        for ps, o in ((pa, oa), (pb, ob)):
            o.zero_grad(set_to_none=True)
            for p in ps[1:]:
                p.grad = torch.full_like(p, 0.3 * (k + 1))
            o.step()
        for x, y in zip(pa, pb):
            _same(x, y)


def test_module_cast_after_construction():
    """``model.double()`` before the first step rebinds every p.data (and grad.data): the
    parameters leave the float32 bank and step per tensor, as flat=False steps them."""
    ma, oa, mb, ob = _twins("adam")
    for m in (ma, mb):
        m.double()
    _both(ma, oa, mb, ob, _plain_step, steps=3)
    assert not any(b.members() for b in _banks(oa))


def test_grad_data_rebound():
    ma, oa, mb, ob = _twins("rmsprop")
    _both(ma, oa, mb, ob, _plain_step, steps=1)

    def fn(m, o, k):
        _loss(m, k).backward()          # accumulate into the grads of the last step
        m[0].weight.grad.data = torch.full_like(m[0].weight, 0.5 * (k + 1))
        o.step()
    _both(ma, oa, mb, ob, fn, steps=3)


def test_rebound_tensor_held_elsewhere_is_stepped_in_place():
    """p.data = t while the caller keeps t: re-adopting would break the sharing, so the
    parameter leaves the bank and t is updated in place, as flat=False updates it; a
    tensor nothing else holds is copied into the bank instead."""
    ma, oa, mb, ob = _twins("sgd")
    _both(ma, oa, mb, ob, _plain_step, steps=1)
    ta, tb = torch.full_like(ma[0].bias, 2.0), torch.full_like(mb[0].bias, 2.0)
    ma[0].bias.data, mb[0].bias.data = ta, tb
    ma[2].bias.data = torch.full_like(ma[2].bias, 3.0)
    mb[2].bias.data = torch.full_like(mb[2].bias, 3.0)
    _both(ma, oa, mb, ob, _plain_step, steps=2)
    _same(ta, tb)
    assert ma[0].bias.data_ptr() == ta.data_ptr() and not torch.equal(ta, torch.full_like(ta, 2))
    rest = _flat.flat_group(oa, oa.param_groups[0]).rest
    assert _holds(rest, ma[0].bias) and not _holds(rest, ma[2].bias)


def test_errors_are_those_of_flat_false_and_nothing_changes():
    ma, oa, mb, ob = _twins("adam")
    _both(ma, oa, mb, ob, _plain_step, steps=1)
    messages = []
    for m, o in ((ma, oa), (mb, ob)):
        before = [p.detach().clone() for p in m.parameters()]
        _loss(m, 5).backward()
        w = m[2].weight
        w.grad = torch.sparse_coo_tensor(torch.zeros(2, 1, dtype=torch.long),
                                         torch.ones(1), w.shape, check_invariants=True)
        with pytest.raises(fs.optim._base.SparseGradientError) as e:
            o.step()
        messages.append(str(e.value))
        for p, b in zip(m.parameters(), before):
            _same(p, b)
        w.grad = None
    assert messages[0] == messages[1]
    _both(ma, oa, mb, ob, _plain_step, steps=2)


def test_sgd_momentum_first_update_skipped_by_amp():
    """A GradScaler-skipped first update leaves no momentum buffer (and no count)."""
    ma, oa, mb, ob = _twins("momentum")
    for m, o in ((ma, oa), (mb, ob)):
        o.zero_grad(set_to_none=True)
        _loss(m, 0).backward()
        o.grad_scale = torch.tensor(1.0)
        o.found_inf = torch.tensor(1.0)
        o.step()
        del o.grad_scale, o.found_inf
    _assert_twins(ma, oa, mb, ob)
    assert all("momentum_buffer" not in s for s in ob.state.values())
    _both(ma, oa, mb, ob, _plain_step, steps=3)


def test_many_runs_when_counts_differ():
    """Parameters live in different steps get different counts: the bank steps them as
    several runs (one row each), and the counts stay each parameter's own."""
    torch.manual_seed(0)
    n = 12
    pa = [torch.nn.Parameter(torch.randn(5)) for _ in range(n)]
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    oa, ob = fs.Adam(pa, lr=0.1, flat=True), fs.Adam(pb, lr=0.1)
    for k in range(8):
        for ps, o in ((pa, oa), (pb, ob)):
            o.zero_grad(set_to_none=True)
            for j, p in enumerate(ps):
                if (j * 7 + k) % (k % 3 + 2):
                    p.grad = torch.full_like(p, 0.1 * (j - k))
            o.step()
        for x, y in zip(pa, pb):
            _same(x, y)
        for x, y in zip(pa, pb):
            _same(oa.state[x]["step"], ob.state[y]["step"]) if y in ob.state else None
    (bank,) = _banks(oa)
    assert len(bank.runs[2][0]) > 1


def test_a_new_optimizer_adopts_the_parameters_of_one_that_is_gone():
    ma, oa, mb, ob = _twins("adam")
    _both(ma, oa, mb, ob, _plain_step, steps=2)
    sd_a, sd_b = copy.deepcopy(oa.state_dict()), copy.deepcopy(ob.state_dict())
    del oa
    import gc
    gc.collect()
    oa = fs.Adam(ma.parameters(), lr=1e-2, amsgrad=True, weight_decay=1e-2, flat=True,
                 schedule=S.warmup(S.cosine(total_steps=30, end_factor=0.1), warmup_steps=3))
    oa.load_state_dict(sd_a)
    ob.load_state_dict(sd_b)
    assert len(_banks(oa)[0].members()) == len(list(ma.parameters()))
    _both(ma, oa, mb, ob, _plain_step, steps=2)


def test_overlapping_views_stay_out():
    base = torch.randn(10, generator=torch.Generator().manual_seed(0))
    a, b = torch.nn.Parameter(base[0:6]), torch.nn.Parameter(base[4:10])
    del base
    opt = fs.SGD([a, b], lr=0.1, flat=True)
    assert not _banks(opt)
    a.grad, b.grad = torch.ones(6), torch.ones(6)
    opt.step()
    assert a.data_ptr() + 4 * 4 == b.data_ptr() and a[4] == b[0]


def test_tied_weights_in_two_modules():
    """One tensor used by two modules (weight tying): one parameter of the group, in the
    bank; both uses accumulate into its grad view."""
    def make(flat):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(11, 6)
        head = torch.nn.Linear(6, 11, bias=False)
        head.weight = emb.weight
        model = torch.nn.ModuleDict({"emb": emb, "head": head})
        return model, fs.AdamW(model.parameters(), lr=1e-2, flat=flat)
    ma, oa = make(True)
    mb, ob = make(False)
    assert len(list(ma.parameters())) == 1 and len(_banks(oa)[0].members()) == 1

    def fn(m, o, k):
        o.zero_grad(set_to_none=True)
        ids = torch.arange(k, k + 5) % 11
        m["head"](m["emb"](ids)).logsumexp(-1).mean().backward()
        o.step()
    _both(ma, oa, mb, ob, fn, steps=4)


def test_a_rebound_buffer_raises_before_any_write():
    ma, oa, mb, ob = _twins("adam")
    _both(ma, oa, mb, ob, _plain_step, steps=1)
    (bank,) = _banks(oa)
    before = [p.detach().clone() for p in ma.parameters()]
    bank.buf.data = torch.zeros_like(bank.buf)
    _loss(ma, 1).backward()
    with pytest.raises(RuntimeError, match="flat storage was rebound"):
        oa.step()
    for p, b in zip(ma.parameters(), before):
        _same(p, b)


def test_mixed_dtypes_and_groups_and_closure():
    """Two dtypes in one group (two banks), a second group with its own lr, and
    ``step(closure)``."""
    def make(flat):
        torch.manual_seed(0)
        a = torch.nn.Linear(4, 3)
        b = torch.nn.Linear(3, 2).double()
        c = torch.nn.Linear(2, 2).double()
        opt = fs.RMSprop([{"params": list(a.parameters()) + list(b.parameters())},
                          {"params": c.parameters(), "lr": 0.003}], lr=0.01, momentum=0.3,
                         flat=flat)
        return (a, b, c), opt
    (a1, b1, c1), oa = make(True)
    (a2, b2, c2), ob = make(False)
    assert len(_banks(oa)) == 3
    for k in range(4):
        for (a, b, c), o in (((a1, b1, c1), oa), ((a2, b2, c2), ob)):
            def closure(a=a, b=b, c=c, o=o, k=k):
                o.zero_grad()
                x = _batch(k)[:, :4]
                loss = c(b(a(x).double())).pow(2).sum()
                loss.backward()
                return loss
            o.step(closure)
        for x, y in zip([*a1.parameters(), *b1.parameters(), *c1.parameters()],
                        [*a2.parameters(), *b2.parameters(), *c2.parameters()]):
            _same(x, y)


def test_fullgraph_names_the_graph_break():
    """flat=True steps outside the graph: fullgraph=True refuses the step, naming the
    eager step and, where torch prints a reason (2.7 and later), flat storage (README:
    torch.compile)."""
    p = torch.nn.Parameter(torch.randn(5))
    opt = fs.Adam([p], lr=0.1, flat=True)
    p.grad = torch.ones(5)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="_eager_step") as raised:
        torch.compile(opt.step, fullgraph=True)()
    if "reason" in inspect.signature(torch.compiler.disable).parameters:
        assert "flat=True storage" in str(raised.value)


def test_momentum_turned_on_mid_run_restarts_counts():
    """SGD's momentum buffer made mid-run restarts its parameter's count (the kernel's
    first-step rule): new labels, the same counts as flat=False."""
    ma, oa, mb, ob = _twins("sgd")
    _both(ma, oa, mb, ob, _plain_step, steps=2)
    for o in (oa, ob):
        o.param_groups[0]["momentum"] = 0.9

    def fn(m, o, k):
        o.zero_grad(set_to_none=True)
        (m[0](_batch(k)).pow(2).mean() if k == 0 else _loss(m, k)).backward()
        o.step()
    _both(ma, oa, mb, ob, fn, steps=3)
