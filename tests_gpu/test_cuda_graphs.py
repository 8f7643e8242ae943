"""CUDA graphs: ``optimizer.step()`` of every optimizer with every built-in schedule kind is
captured once and replayed; each replay equals an eager step bit for bit, the schedule
position advances on the device with each replay, and AMP's found_inf skips all writes."""

import pytest
import torch

import fusedsched as fs
from fusedsched import schedules as S

DEV = "cuda"
SCHEDULES = [
    S.constant(0.5), S.linear(0.25, 1.0, 7), S.step_decay(3, 0.5), S.multistep([2, 5], 0.3),
    S.exponential(0.97), S.polynomial(10, 2.0, 0.1), S.cosine(12, 0.05),
    S.cosine_restarts(2, 2, 0.0), S.one_cycle(20), S.cyclic(0.2, 3, mode="triangular2"),
    S.inverse_sqrt(4), S.warmup_stable_decay(3, 2, 5, decay="cosine"),
    S.warmup(S.cosine(10), 3), S.sequential([S.constant(0.3), S.exponential(0.5)], [4]),
]
OPTIMIZERS = {
    "SGD": dict(lr=0.1),
    "Momentum": dict(lr=0.1, momentum=0.9, nesterov=True),
    "RMSprop": dict(lr=0.01, momentum=0.5, centered=True),
    "Adam": dict(lr=0.01, amsgrad=True),
    "AdamW": dict(lr=0.01),
}
SHAPES = [(33, 7), (0,), (1000,), (5,), (4, 513)]
N_REPLAYS = 12


def _params(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(DEV, dtype)) for s in SHAPES]


def _grads(k, params):
    gen = torch.Generator().manual_seed(100 + k)
    return [torch.randn(p.shape, generator=gen).to(DEV, p.dtype) for p in params]


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)      # in place: the graph reads these very tensors


def _warmup(opt, params, k0, n=3):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for k in range(k0, k0 + n):
            _set_grads(params, _grads(k, params))
            opt.step()
    torch.cuda.current_stream().wait_stream(s)
    return k0 + n


def _assert_same(opt_a, pa, opt_b, pb):
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
        for key, va in opt_a.state[a].items():
            vb = opt_b.state[b][key]
            assert torch.equal(va, vb), key
    for ga, gb in zip(opt_a.param_groups, opt_b.param_groups):
        assert torch.equal(ga["schedule_position"], gb["schedule_position"])


@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_graph_replay_matches_eager(name, sched):
    eager_p, graph_p = _params(), _params()
    eager = getattr(fs, name)(eager_p, schedule=sched, backend="triton", **OPTIMIZERS[name])
    graphed = getattr(fs, name)(graph_p, schedule=sched, backend="triton", **OPTIMIZERS[name])
    k = _warmup(graphed, graph_p, 0)
    for j in range(k):
        _set_grads(eager_p, _grads(j, eager_p))
        eager.step()
    _assert_same(eager, eager_p, graphed, graph_p)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        graphed.step()
    # capture does not run the step; the position is where warm-up left it
    assert graphed.param_groups[0]["schedule_position"].item() == k
    for j in range(k, k + N_REPLAYS):
        grads = _grads(j, graph_p)
        _set_grads(graph_p, grads)
        g.replay()
        _set_grads(eager_p, grads)
        eager.step()
        torch.cuda.synchronize()
        _assert_same(eager, eager_p, graphed, graph_p)
        # the schedule advanced on the device: the next update's lr is lr * f(j + 1)
        assert graphed.get_last_lr()[0] == pytest.approx(OPTIMIZERS[name]["lr"] * sched(j + 1),
                                                         rel=1e-12, abs=1e-300)
    assert graphed.param_groups[0]["schedule_position"].item() == k + N_REPLAYS


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_graph_replay_amp_found_inf(name):
    # grad_scale and found_inf are device tensors read by the kernel at each replay
    sched = S.warmup(S.cosine(10), 2)
    eager_p, graph_p = _params(), _params()
    eager = getattr(fs, name)(eager_p, schedule=sched, backend="triton", **OPTIMIZERS[name])
    graphed = getattr(fs, name)(graph_p, schedule=sched, backend="triton", **OPTIMIZERS[name])
    scale = torch.tensor(1024.0, device=DEV)
    found = torch.zeros((), device=DEV)
    for opt in (eager, graphed):
        opt.grad_scale, opt.found_inf = scale, found
    k = _warmup(graphed, graph_p, 0)
    for j in range(k):
        _set_grads(eager_p, _grads(j, eager_p))
        eager.step()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        graphed.step()
    for j, inf in zip(range(k, k + 6), [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]):
        found.fill_(inf)
        grads = [x * 1024.0 for x in _grads(j, graph_p)]
        _set_grads(graph_p, grads)
        before = [p.detach().clone() for p in graph_p]
        g.replay()
        _set_grads(eager_p, grads)
        eager.step()
        torch.cuda.synchronize()
        _assert_same(eager, eager_p, graphed, graph_p)
        if inf:
            assert all(torch.equal(a, b) for a, b in zip(before, graph_p))
    assert graphed.param_groups[0]["schedule_position"].item() == k + 6


def test_tensor_lr_changed_between_replays():
    # A float lr is baked into the graph's hyperparameter buffer at capture; a tensor lr is
    # read on the device at each replay, so changing it in place is seen.
    lr = torch.tensor(0.1, device=DEV)
    p = [torch.nn.Parameter(torch.zeros(8, device=DEV))]
    opt = fs.SGD(p, lr=lr, backend="triton")
    p[0].grad = torch.ones(8, device=DEV)
    _warmup_steps = _warmup(opt, p, 0, n=1)
    p[0].grad.fill_(1.0)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        opt.step()
    before = p[0].detach().clone()
    lr.fill_(0.5)
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(p[0], before - 0.5, rtol=0, atol=0)
    assert _warmup_steps == 1


def test_two_graphs_over_different_grads_each_read_their_own():
    # Two graphs of one optimizer, captured with the gradients at different addresses (as
    # torch.compile's CUDA graph trees record them): one table serves both, and each
    # replay writes its capture's pointers before its launch.
    eager_p, graph_p = _params(), _params()
    eager = fs.Adam(eager_p, lr=0.01, backend="triton")
    graphed = fs.Adam(graph_p, lr=0.01, backend="triton")
    k = _warmup(graphed, graph_p, 0)
    for j in range(k):
        _set_grads(eager_p, _grads(j, eager_p))
        eager.step()
    grads_a = [torch.zeros_like(p) for p in graph_p]
    grads_b = [torch.zeros_like(p) for p in graph_p]
    graphs = []
    for grads in (grads_a, grads_b):
        for p, g in zip(graph_p, grads):
            p.grad = g
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            graphed.step()
        graphs.append(graph)
    for j, which in zip(range(k, k + 6), [0, 1, 1, 0, 1, 0]):
        values = _grads(j, graph_p)
        for g, v in zip((grads_a, grads_b)[which], values):
            g.copy_(v)
        graphs[which].replay()
        _set_grads(eager_p, values)
        eager.step()
        torch.cuda.synchronize()
        _assert_same(eager, eager_p, graphed, graph_p)
