"""What users do to parameters and state between steps, on every backend: never a write to
memory a tensor no longer owns, nothing kept alive after the optimizer, and errors raised
before any write. Each case was found breaking an earlier version (a tester's reports)."""

import gc
import weakref

import pytest
import torch

import fusedsched as fs

from conftest import BACKENDS


def _twin(backend, n=8, dtype=torch.float32):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(n, dtype=dtype))
    q = torch.nn.Parameter(p.detach().clone())
    return p, fs.AdamW([p], lr=0.1, backend=backend), q, torch.optim.AdamW([q], lr=0.1)


# fusedsched fp32 against torch's for-loop AdamW: not the same functions (IEEE square root
# in the Numba kernels vs torch's MKL one, float64 step scalars vs torch's), so a tolerance:
# 1e-6 relative is about 8 fp32 ulps over these 4 steps.
RTOL, ATOL = 1e-6, 1e-7


def _grads(p, q, seed):
    g = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed), dtype=p.dtype)
    p.grad, q.grad = g.clone(), g.clone()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", ["exp_avg_sq", "step"])
def test_state_storage_replaced_through_data(backend, key):
    """``state.data = ...`` keeps the tensor object and moves its storage: the next step
    writes the new storage (the old one is freed)."""
    p, o, q, t = _twin(backend)
    for k in range(4):
        _grads(p, q, k)
        if k == 2:
            s = o.state[p][key]
            s.data = s.data.clone()
            gc.collect()
        o.step()
        t.step()
    torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL)
    assert o.state[p]["step"].item() == 4


def test_deleted_optimizer_releases_its_state():
    p = torch.nn.Parameter(torch.randn(1000))
    o = fs.AdamW([p], lr=0.1, backend="numba")
    p.grad = torch.randn(1000)
    o.step()
    ref = weakref.ref(o.state[p]["exp_avg"])
    del o
    gc.collect()
    assert ref() is None


def test_tensor_subclass_parameters():
    """A wrapper subclass (its data_ptr() is 0) is stepped in torch ops under "auto", as
    torch.optim steps it; an explicit compiled backend refuses it before any write."""
    from torch.testing._internal.two_tensor import TwoTensor
    a = torch.randn(8)
    p = torch.nn.Parameter(TwoTensor(a.clone(), a.clone()))
    q = torch.nn.Parameter(a.clone())
    o, t = fs.AdamW([p], lr=0.1), torch.optim.AdamW([q], lr=0.1)
    for k in range(3):
        g = torch.randn(8)
        p.grad, q.grad = TwoTensor(g.clone(), g.clone()), g.clone()
        o.step()
        t.step()
    # the reference backend runs torch's own ops in torch's for-loop order: exact
    torch.testing.assert_close(p.a, q, rtol=0, atol=0)
    before = p.a.clone()
    with pytest.raises(ValueError, match="TwoTensor"):
        fs.AdamW([p], lr=0.1, backend="numba").step()
    assert torch.equal(p.a, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_step_set_by_hand(backend):
    """torch keeps ``step`` as a float32 tensor; one written by hand is taken as a count."""
    p, o, q, t = _twin(backend)
    for k in range(4):
        _grads(p, q, k)
        if k == 2:
            o.state[p]["step"] = torch.tensor(0.0)
            t.state[q]["step"] = torch.tensor(0.0)
        o.step()
        t.step()
    torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL)
    assert o.state[p]["step"].dtype == torch.float64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [torch.zeros(8, 1), torch.zeros(8, dtype=torch.float64),
                                 torch.zeros(1)], ids=["shape", "dtype", "size"])
def test_state_replaced_by_a_misfit_raises_before_any_write(backend, bad):
    p = torch.nn.Parameter(torch.randn(8))
    r = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))   # another dtype, first
    o = fs.AdamW([r, p], lr=0.1, backend=backend)
    for x in (r, p):
        x.grad = torch.randn_like(x)
    o.step()
    o.state[p]["exp_avg"] = bad
    before = [r.detach().clone(), p.detach().clone(), o.state[r]["exp_avg"].clone()]
    with pytest.raises((ValueError, TypeError), match="exp_avg"):
        o.step()
    after = [r, p, o.state[r]["exp_avg"]]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("backend", BACKENDS)
def test_expanded_gradient(backend):
    """A gradient whose elements overlap (expand) is read, never written back."""
    p, o, q, t = _twin(backend)
    for _ in range(3):
        p.grad = torch.full((1,), 0.5).expand(8)
        q.grad = torch.full((1,), 0.5).expand(8)
        o.step()
        t.step()
    torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_complex_parameters_in_a_compiled_step(backend):
    a = [torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64)),
         torch.nn.Parameter(torch.randn(5))]
    b = [torch.nn.Parameter(x.detach().clone()) for x in a]
    oa, ob = fs.AdamW(a, lr=0.1, backend=backend), fs.AdamW(b, lr=0.1, backend=backend)
    step = torch.compile(oa.step)
    for k in range(3):
        for x, y in zip(a, b):
            g = torch.randn_like(x)
            x.grad, y.grad = g.clone(), g.clone()
        step()
        ob.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_step_under_fake_tensor_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        p = torch.nn.Parameter(torch.randn(8))
        o = fs.AdamW([p], lr=0.1)
        p.grad = torch.randn(8)
        o.step()
        o.step()
        assert sorted(o.state[p]) == ["exp_avg", "exp_avg_sq", "step"]
