"""The host-side caches of step() (``_base._Memo``, ``GroupTable.matches``, the state
snapshot): every change they could miss is caught, and a cached step computes what an
uncached one does (torch's for-loop optimizers as the oracle, with torch's square roots)."""

import copy

import pytest
import torch

import fusedsched as fs
from fusedsched import schedules as S
from fusedsched.optim._base import SparseGradientError

BACKENDS = ["numba", "reference"]
SHAPES = [(7, 5), (33,), (4, 4)]


def _params(dtype=torch.float32, seed=0):
    """Plain tensors and an ``nn.Parameter`` (models hand Parameters: the cached path must
    take both)."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]
    params[0] = torch.nn.Parameter(params[0], requires_grad=False)
    return params


def _grads(k, params):
    g = torch.Generator().manual_seed(100 + k)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


def _clone(params):
    return [p.detach().clone() for p in params]


def _snapshot(opt):
    params = [p for g in opt.param_groups for p in g["params"]]
    return ([p.detach().clone() for p in params],
            [{k: v.clone() for k, v in opt.state[p].items()} for p in params],
            [g["schedule_position"].clone() for g in opt.param_groups])


def _assert_unchanged(opt, snap):
    values, states, positions = snap
    params = [p for g in opt.param_groups for p in g["params"]]
    for p, v, s in zip(params, values, states):
        assert torch.equal(p.detach(), v)
        assert opt.state[p].keys() == s.keys()
        for k, t in s.items():
            assert torch.equal(opt.state[p][k], t), k
    for g, t in zip(opt.param_groups, positions):
        assert torch.equal(g["schedule_position"], t)


def _stepped(backend, steps=3, **kw):
    params = _params()
    opt = fs.Adam(params, lr=0.01, backend=backend, **kw)
    for k in range(steps):
        for p, g in zip(params, _grads(k, params)):
            p.grad = g
        opt.step()
    for p, g in zip(params, _grads(steps, params)):
        p.grad = g
    return opt, params


def _raises(opt, error, word):
    snap = _snapshot(opt)
    with pytest.raises(error) as info:
        opt.step()
    assert word in str(info.value), str(info.value)
    _assert_unchanged(opt, snap)


# -- hyperparameters changed between steps: checked again before anything is written ------

@pytest.mark.parametrize("backend", BACKENDS)
def test_lr_set_invalid(backend):
    opt, _ = _stepped(backend)
    opt.param_groups[0]["lr"] = -1.0
    _raises(opt, ValueError, "lr")


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_lr_written_in_place(backend):
    params = _params()
    lr = torch.tensor(0.01)
    opt = fs.Adam(params, lr=lr, backend=backend)
    for k in range(3):
        for p, g in zip(params, _grads(k, params)):
            p.grad = g
        opt.step()
    lr.fill_(float("nan"))      # same object, in place: its _version moves
    _raises(opt, ValueError, "lr")


@pytest.mark.parametrize("backend", BACKENDS)
def test_betas_list_mutated_in_place(backend):
    params = _params()
    opt = fs.Adam(params, lr=0.01, betas=[0.9, 0.999], backend=backend)
    for k in range(2):
        for p, g in zip(params, _grads(k, params)):
            p.grad = g
        opt.step()
    opt.param_groups[0]["betas"][1] = 1.0
    _raises(opt, ValueError, "betas[1]")


@pytest.mark.parametrize("backend", BACKENDS)
def test_flag_set_to_equal_int(backend):
    """1 == True, but a flag must be a bool: the cache compares types too."""
    opt, _ = _stepped(backend)
    opt.param_groups[0]["amsgrad"] = 0
    _raises(opt, TypeError, "amsgrad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_key_deleted(backend):
    opt, _ = _stepped(backend)
    del opt.param_groups[0]["eps"]
    snap = _snapshot(opt)
    with pytest.raises(KeyError):
        opt.step()
    _assert_unchanged(opt, snap)


@pytest.mark.parametrize("backend", BACKENDS)
def test_position_written_in_place(backend):
    opt, _ = _stepped(backend)
    opt.param_groups[0]["schedule_position"].fill_(-3.0)
    _raises(opt, ValueError, "schedule_position")


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_after_load_state_dict(backend):
    opt, _ = _stepped(backend)
    opt.load_state_dict(opt.state_dict())
    opt.step()
    opt.param_groups[0]["weight_decay"] = float("inf")
    _raises(opt, ValueError, "weight_decay")


# -- parameters and grads changed between steps -------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_param_data_to_float64(backend):
    opt, params = _stepped(backend)
    params[1].data = params[1].data.double()     # the float32 grad stays
    _raises(opt, TypeError, "float64")


@pytest.mark.parametrize("backend", BACKENDS)
def test_param_data_same_storage_other_dtype(backend):
    """``p.data = p.data.view(torch.int32)``: same address and shape, another dtype."""
    opt, params = _stepped(backend)
    params[1].data = params[1].data.view(torch.int32)
    _raises(opt, TypeError, "int32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_param_data_same_storage_other_shape(backend):
    """``p.data = p.data[:10]``: same address, another shape than its grad's."""
    opt, params = _stepped(backend)
    params[1].data = params[1].data[:10]
    _raises(opt, ValueError, "shape")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_grad_appears(backend):
    opt, params = _stepped(backend)
    params[0].grad = torch.ones_like(params[0]).to_sparse()
    _raises(opt, SparseGradientError, "sparse")


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_of_other_dtype_appears(backend):
    opt, params = _stepped(backend)
    params[2].grad_dtype = None     # torch's setter allows any dtype then
    params[2].grad = torch.ones(params[2].shape, dtype=torch.float64)
    _raises(opt, TypeError, "float64")


@pytest.mark.parametrize("backend", BACKENDS)
def test_param_added_to_group_list(backend):
    opt, params = _stepped(backend)
    p = torch.ones(3, dtype=torch.int32)
    p.grad = torch.ones(3, dtype=torch.int32)
    opt.param_groups[0]["params"].append(p)
    _raises(opt, TypeError, "int32")


# -- a cached step computes what torch's for-loop does ------------------------------------

def _run_both(backend, steps, grads_for, change=None, **kw):
    """Our Adam and torch's (foreach=False) on equal parameters; ``grads_for(k, params)``
    sets the grads of step k (new objects, in place, None...); ``change(k, opt, params)``
    edits both optimizers/params before step k."""
    ours, theirs = _params(), _params()
    o = fs.Adam(ours, lr=0.01, backend=backend, **kw)
    t = torch.optim.Adam(theirs, lr=0.01, foreach=False, **kw)
    for k in range(steps):
        if change is not None:
            change(k, o, ours)
            change(k, t, theirs)
        grads_for(k, ours)
        grads_for(k, theirs)
        o.step()
        t.step()
    return ours, theirs


def _assert_equal(ours, theirs):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def _new_grads(k, params):
    for p, g in zip(params, _grads(k, params)):
        p.grad = None       # zero_grad(set_to_none=True)
        p.grad = g


def _same_grads(k, params):
    for p, g in zip(params, _grads(k, params)):
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grads_for", [_new_grads, _same_grads])
def test_equals_torch(backend, grads_for, torch_sqrt):
    _assert_equal(*_run_both(backend, 6, grads_for))


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_set_to_none_and_back(backend, torch_sqrt):
    def grads_for(k, params):
        _new_grads(k, params)
        if k in (2, 3):
            params[1].grad = None
    _assert_equal(*_run_both(backend, 6, grads_for))


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_grad_at_any_address(backend, torch_sqrt):
    """A transposed grad (non-contiguous) replacing a contiguous one."""
    def grads_for(k, params):
        _new_grads(k, params)
        if k >= 3:
            params[2].grad = params[2].grad.t().contiguous().t()
    _assert_equal(*_run_both(backend, 6, grads_for))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lr_and_betas_changed(backend, torch_sqrt):
    def change(k, opt, params):
        if k == 2:
            opt.param_groups[0]["lr"] = 0.05
        if k == 4:
            opt.param_groups[0]["betas"] = (0.5, 0.9)
    _assert_equal(*_run_both(backend, 6, _new_grads, change))


@pytest.mark.parametrize("backend", BACKENDS)
def test_param_data_replaced(backend, torch_sqrt):
    def change(k, opt, params):
        if k == 3:
            params[0].data = params[0].data.clone()     # moves it
    _assert_equal(*_run_both(backend, 6, _new_grads, change))


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_reset_by_hand(backend, torch_sqrt):
    """``del opt.state[p]`` / ``opt.state[p] = {}``: the next step starts that state anew."""
    def change(k, opt, params):
        if k == 2:
            del opt.state[params[0]]
        if k == 4:
            opt.state[params[1]] = {}
    _assert_equal(*_run_both(backend, 6, _new_grads, change))


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_param_group(backend, torch_sqrt):
    extra = {}

    def change(k, opt, params):
        if k == 3:
            p = torch.linspace(-1, 1, 9)
            extra[opt] = p
            opt.add_param_group({"params": [p], "lr": 0.02})
            params.append(p)
    ours, theirs = _run_both(backend, 6, _new_grads, change)
    assert len(ours) == 4
    _assert_equal(ours, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_state_dict_mid_run(backend, torch_sqrt):
    """Ours loads torch's state (new state dict, new group dicts) and keeps matching."""
    ours, theirs = _params(), _params()
    o = fs.Adam(ours, lr=0.01, backend=backend)
    t = torch.optim.Adam(theirs, lr=0.01, foreach=False)
    for k in range(6):
        _new_grads(k, ours)
        _new_grads(k, theirs)
        if k == 3:
            o.step()        # an extra step, then overwritten by torch's state
            for a, b in zip(ours, theirs):
                a.data.copy_(b)
            o.load_state_dict(copy.deepcopy(t.state_dict()))   # torch's shares tensors
        o.step()
        t.step()
    _assert_equal(ours, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_schedule_replaced(backend):
    params = _params()
    opt = fs.SGD(params, lr=0.5, backend=backend)
    for k in range(2):
        _new_grads(k, params)
        opt.step()
    opt.param_groups[0]["schedule"] = S.constant(0.0)    # lr 0 from now on
    before = _clone(params)
    _new_grads(5, params)
    opt.step()
    _assert_equal(params, before)
    opt.param_groups[0]["schedule_position"] = torch.tensor(0.0, dtype=torch.float64)
    opt.param_groups[0]["schedule"] = S.constant(1.0)
    opt.step()
    _assert_equal(params, [b - 0.5 * p.grad for b, p in zip(before, params)])


# -- the aids: a cached step equals one that cannot use the caches ------------------------

AIDS = [dict(master_weights=True), dict(stochastic_rounding=True), dict(max_grad_norm=0.5)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aid", AIDS, ids=lambda a: next(iter(a)))
def test_aids_new_and_same_grads_agree(backend, aid):
    dtype = torch.float32 if "max_grad_norm" in aid else torch.bfloat16
    runs = []
    for grads_for in (_new_grads, _same_grads):
        torch.manual_seed(0)
        params = _params(dtype)
        opt = fs.Adam(params, lr=0.01, backend=backend, **aid)
        for k in range(5):
            grads_for(k, params)
            opt.step()
        runs.append(params)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], _params(dtype)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_grad_norm_equals_torch_clip(backend, torch_sqrt):
    ours, theirs = _params(), _params()
    o = fs.Adam(ours, lr=0.01, backend=backend, max_grad_norm=0.5)
    t = torch.optim.Adam(theirs, lr=0.01, foreach=False)
    for k in range(5):
        _new_grads(k, ours)
        _new_grads(k, theirs)
        o.step()
        torch.nn.utils.clip_grad_norm_(theirs, 0.5, foreach=False)
        t.step()
    _assert_equal(ours, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_attributes(backend, torch_sqrt):
    """``found_inf`` set: nothing written (but the position); then ``grad_scale`` 4 on
    grads scaled by 4 equals the unscaled step of torch."""
    ours, theirs = _params(), _params()
    o = fs.Adam(ours, lr=0.01, backend=backend)
    t = torch.optim.Adam(theirs, lr=0.01, foreach=False)
    for k in range(2):
        _new_grads(k, ours)
        _new_grads(k, theirs)
        o.step()
        t.step()
    before = _clone(ours)
    o.grad_scale, o.found_inf = torch.tensor([4.0]), torch.tensor([1.0])
    _new_grads(2, ours)
    o.step()
    _assert_equal(ours, before)
    o.found_inf = torch.tensor([0.0])
    for k in range(3, 5):
        _new_grads(k, ours)
        for p in ours:
            p.grad.mul_(4.0)
        _new_grads(k, theirs)
        o.step()
        t.step()
    # torch's schedule saw 4 steps, ours 5 positions (the skipped one counts): constant
    # lr makes them equal; its bias correction counts applied updates only, as ours
    _assert_equal(ours, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_skipped_first_update_then_resumed(backend):
    """found_inf on an SGD step that created momentum buffers drops them (new state dicts
    after the launch): the next steps start the buffers anew, as torch's SGD that never
    saw the skipped step."""
    ours, theirs = _params(), _params()
    o = fs.SGD(ours, lr=0.1, momentum=0.9, backend=backend)
    t = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, foreach=False)
    o.grad_scale, o.found_inf = torch.tensor([1.0]), torch.tensor([1.0])
    _new_grads(0, ours)
    o.step()
    assert all("momentum_buffer" not in o.state[p] for p in ours)
    o.found_inf = torch.tensor([0.0])
    for k in range(1, 5):
        _new_grads(k, ours)
        _new_grads(k, theirs)
        o.step()
        t.step()
    _assert_equal(ours, theirs)
    _assert_equal([o.state[p]["momentum_buffer"] for p in ours],
                  [t.state[p]["momentum_buffer"] for p in theirs])


@pytest.mark.parametrize("make", [torch.nn.Parameter, lambda t: t],
                         ids=["Parameter", "Tensor"])
def test_steady_state_takes_the_cached_path(make, monkeypatch):
    """With the same parameters step after step, step() makes no full scan and enters no
    context manager (measured: the full scan is ~1.5 us per tensor; a regression that
    sent nn.Parameter groups through it every step cost 2x at 1000 tensors)."""
    params = [make(torch.randn(5)) for _ in range(3)]
    opt = fs.Adam(params, lr=0.01, backend="numba")
    for p in params:
        p.grad = torch.randn(5)
    opt.step()

    def fail(*args, **kwargs):
        raise AssertionError("full scan in a steady state")
    monkeypatch.setattr(type(opt), "_scan", fail)
    for p in params:
        p.grad = torch.randn(5)          # new grads, as zero_grad(set_to_none=True) gives
    before = [p.detach().clone() for p in params]
    opt.step()
    assert all(not torch.equal(p, b) for p, b in zip(params, before))


# -- found by a tester after the caches landed ------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_param_made_non_contiguous_in_place(backend, torch_sqrt):
    """``p.data = p.data.t()`` on a square parameter keeps its pointer, shape and dtype:
    the cached table must still notice the layout (it wrote in the old one)."""
    def change(k, opt, params):
        if k == 2:
            params[2].data = params[2].data.t()      # (4, 4)
    ours, theirs = _run_both(backend, 5, _new_grads, change)
    assert not ours[2].is_contiguous()
    _assert_equal(ours, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("edit", ["clear", "replace"])
def test_state_dict_edited_in_place(backend, edit, torch_sqrt):
    """``opt.state[p].clear()`` or a state tensor replaced in the same dict: the next step
    uses the new state, as torch's does (the table used to keep writing through the old
    addresses: freed memory after ``clear()``)."""
    def change(k, opt, params):
        if k == 3:
            for p in params:
                if edit == "clear":
                    opt.state[p].clear()
                else:
                    opt.state[p]["exp_avg"] = torch.zeros_like(p)
    ours, theirs = _run_both(backend, 6, _new_grads, change)
    _assert_equal(ours, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["shape", "dtype"])
def test_state_that_no_longer_fits_raises_before_any_write(backend, how):
    """A parameter replaced under its state (``p.data = ...``) raises, naming the state
    key, before any group is updated."""
    x, y, z = torch.zeros(4), torch.zeros(4), torch.zeros(5)
    opt = fs.Adam([{"params": [x]}, {"params": [y, z]}], lr=0.1, backend=backend)
    for p in (x, y, z):
        p.grad = torch.ones_like(p)
    opt.step()
    new = torch.zeros(50) if how == "shape" else torch.zeros(5, dtype=torch.float64)
    z.data = new
    z.grad = torch.ones_like(new)
    snap = _snapshot(opt)
    error = ValueError if how == "shape" else TypeError
    with pytest.raises(error, match="state 'exp_avg'"):
        opt.step()
    _assert_unchanged(opt, snap)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_momentum_turned_on_mid_run(backend):
    """A momentum buffer made mid-run starts from the gradient, as torch's does (with
    dampening the two used to differ)."""
    ours, theirs = _params(), _params()
    o = fs.SGD(ours, lr=0.1, backend=backend)
    t = torch.optim.SGD(theirs, lr=0.1, foreach=False)
    for k in range(5):
        if k == 2:
            for opt in (o, t):
                opt.param_groups[0].update(momentum=0.9, dampening=0.5)
        _new_grads(k, ours)
        _new_grads(k, theirs)
        o.step()
        t.step()
    _assert_equal(ours, theirs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_lr_written_through_data(backend):
    """A CPU tensor lr written without a version bump (``lr.data.fill_``) is still
    validated: an invalid value raises and nothing changes."""
    params = _params()
    lr = torch.tensor(0.1)
    opt = fs.SGD(params, lr=lr, backend=backend)
    _new_grads(0, params)
    opt.step()
    lr.data.fill_(-1.0)
    snap = _snapshot(opt)
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    _assert_unchanged(opt, snap)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deepcopy_keeps_settings_and_steps_alike(backend):
    """``copy.deepcopy`` (and pickling) keeps backend, aids and rounding state: the copy
    steps exactly as the original."""
    params = [p.bfloat16() for p in _params()]
    opt = fs.Adam(params, lr=0.01, backend=backend, stochastic_rounding=True, max_grad_norm=1.0)
    _new_grads(0, params)
    opt.step()
    twin = copy.deepcopy(opt)
    assert (twin.backend, twin.max_grad_norm, twin.stochastic_rounding) == (backend, 1.0, True)
    copies = [p for g in twin.param_groups for p in g["params"]]
    for a, b in ((opt, params), (twin, copies)):
        _new_grads(1, b)
        a.step()
    for p, q in zip(params, copies):
        assert torch.equal(p, q)
