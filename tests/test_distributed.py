"""Distributed training with fusedsched optimizers: DDP, ZeroRedundancyOptimizer and FSDP2
(fully_shard: DTensor parameters, each rank steps its local shards). Two gloo processes on
localhost; each run must equal a single-process run on the same (global) batch, in float64.

All scenarios run in one spawn of 2 processes (a module fixture), so the file pays process
start-up and kernel compilation once; each test then reads its scenario's result."""

import json
import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is unavailable")

WORLD = 2
STEPS = 5
TOL = 1e-12


def _model(seed=0):
    # Odd sizes: FSDP2 shards unevenly, and the last layer's (1, 7) weight leaves rank 1
    # an empty shard.
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.Tanh(),
                               torch.nn.Linear(7, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 1)).double()


def _batch(k):
    g = torch.Generator().manual_seed(1000 + k)
    return torch.randn(8, 6, generator=g, dtype=torch.float64)


def _loss(model, x):
    return model(x).pow(2).mean()


def _make_opt(name, params, backend="auto", flat=False):
    import fusedsched as fs
    from fusedsched import schedules as S
    if name == "adam":
        return fs.Adam(params, lr=0.02, weight_decay=0.01, schedule=S.warmup(S.cosine(8), 2),
                       backend=backend, flat=flat)
    if name == "sgd":
        return fs.SGD(params, lr=0.05, momentum=0.9, nesterov=True, schedule=S.one_cycle(8),
                      backend=backend, flat=flat)
    return fs.RMSprop(params, lr=0.01, momentum=0.5, centered=True, schedule=S.exponential(0.9),
                      backend=backend, flat=flat)


def _single_process(name, groups=None):
    """The reference: one process, the whole batch of each step."""
    model = _model()
    params = groups(model) if groups else model.parameters()
    opt = _make_opt(name, params)
    for k in range(STEPS):
        opt.zero_grad()
        _loss(model, _batch(k)).backward()
        opt.step()
    return [p.detach() for p in model.parameters()], opt


def _max_error(expected, got):
    return max(float(((a - b).abs() / a.abs().clamp_min(1e-8)).max()) if a.numel() else 0.0
               for a, b in zip(expected, got))


def _local_half(x, rank):
    n = x.shape[0] // WORLD
    return x[rank * n:(rank + 1) * n]


def _ddp(rank):
    from torch.nn.parallel import DistributedDataParallel as DDP
    out = {}
    for name in ("adam", "sgd", "rmsprop"):
        model = DDP(_model())
        opt = _make_opt(name, model.parameters())
        for k in range(STEPS):
            opt.zero_grad()
            _loss(model, _local_half(_batch(k), rank)).backward()
            opt.step()
        expected, ref_opt = _single_process(name)
        out[name] = _max_error(expected, [p.detach() for p in model.module.parameters()])
        assert opt.get_last_lr() == ref_opt.get_last_lr()
    return out


def _ddp_flat(rank):
    """flat=True under DDP, with and without gradient_as_bucket_view: DDP's bucket views
    (or its copies into the grad views) are the grads the banks step with."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    out = {}
    for as_view in (False, True):
        for set_to_none in (True, False):
            model = DDP(_model(), gradient_as_bucket_view=as_view)
            opt = _make_opt("adam", model.parameters(), flat=True)
            assert any(fg.banks for fg in opt._flat_groups.values())
            for k in range(STEPS):
                opt.zero_grad(set_to_none=set_to_none)
                _loss(model, _local_half(_batch(k), rank)).backward()
                opt.step()
            expected, _ = _single_process("adam")
            out[f"view={as_view},none={set_to_none}"] = _max_error(
                expected, [p.detach() for p in model.module.parameters()])
    return out


def _zero_flat(rank):
    """ZeroRedundancyOptimizer with optimizer_class=fusedsched.Adam and flat=True: each
    rank's local optimizer banks its share."""
    import fusedsched as fs
    from fusedsched import schedules as S
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = DDP(_model())
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=fs.Adam, lr=0.02,
                                  weight_decay=0.01, schedule=S.warmup(S.cosine(8), 2),
                                  flat=True)
    for k in range(STEPS):
        opt.zero_grad()
        _loss(model, _local_half(_batch(k), rank)).backward()
        opt.step()
    expected, _ = _single_process("adam")
    assert opt.optim.flat
    return {"params": _max_error(expected, [p.detach() for p in model.module.parameters()])}


def _fsdp2_flat(rank):
    """fully_shard with flat=True: DTensor parameters stay out of the banks and are
    stepped per tensor (their local shards), as flat=False steps them."""
    from torch.distributed.fsdp import fully_shard
    model = _model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = _make_opt("adam", model.parameters(), flat=True)
    assert not any(fg.banks for fg in opt._flat_groups.values())
    for k in range(STEPS):
        opt.zero_grad()
        _loss(model, _local_half(_batch(k), rank)).backward()
        opt.step()
    expected, _ = _single_process("adam")
    return {"adam": _max_error(expected, [p.full_tensor() for p in model.parameters()])}


def _zero(rank):
    """ZeroRedundancyOptimizer(params, optimizer_class=fusedsched.Adam, ...): each rank
    keeps its share of the state, steps it, and broadcasts; plus a param group added
    after construction (ZeRO rebuilds its local optimizer)."""
    import fusedsched as fs
    from fusedsched import schedules as S
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    def groups(model):
        return [{"params": list(model[0].parameters()) + list(model[2].parameters())}]

    def make(params):
        return fs.Adam(params, lr=0.02, schedule=S.warmup(S.cosine(8), 2))

    model = DDP(_model())
    opt = ZeroRedundancyOptimizer(groups(model.module), optimizer_class=fs.Adam, lr=0.02,
                                  schedule=S.warmup(S.cosine(8), 2))
    opt.add_param_group({"params": list(model.module[4].parameters()), "lr": 0.01})
    for k in range(STEPS):
        opt.zero_grad()
        _loss(model, _local_half(_batch(k), rank)).backward()
        opt.step()

    ref = _model()
    ref_opt = make(groups(ref))
    ref_opt.add_param_group({"params": list(ref[4].parameters()), "lr": 0.01})
    for k in range(STEPS):
        ref_opt.zero_grad()
        _loss(ref, _batch(k)).backward()
        ref_opt.step()
    out = {"params": _max_error([p.detach() for p in ref.parameters()],
                                [p.detach() for p in model.module.parameters()])}
    local = opt.optim
    assert isinstance(local, fs.Adam)
    owned = [p for g in local.param_groups for p in g["params"]]
    assert 0 < len(owned) < len(list(model.parameters()))
    assert all(local.state[p]["step"].item() == STEPS for p in owned)
    opt.consolidate_state_dict(to=0)
    if rank == 0:
        sd = opt.state_dict()
        assert len(sd["param_groups"]) == 2
        assert all(float(s["step"]) == STEPS for s in sd["state"].values())
    return out


def _fsdp2(rank):
    """fully_shard: parameters are DTensors (Shard(0)); the optimizer steps the local
    shards, keeps DTensor state placed like its parameter, and calls the kernel once per
    group and step."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from fusedsched.kernels import ops as _backend  # the operators' kernel look-up

    calls = []
    real_kernel = _backend.kernel

    def counting_kernel(backend, algorithm):
        fn = real_kernel(backend, algorithm)

        def wrapped(*args, **kwargs):
            calls.append(args[0])
            return fn(*args, **kwargs)
        return wrapped
    _backend.kernel = counting_kernel
    out = {}
    try:
        # every backend's calls go through ops.kernel
        for name, backend in [("adam", "auto"), ("sgd", "auto"), ("rmsprop", "auto"),
                              ("adam", "reference")]:
            model = _model()
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            opt = _make_opt(name, model.parameters(), backend)
            calls.clear()
            for k in range(STEPS):
                opt.zero_grad()
                _loss(model, _local_half(_batch(k), rank)).backward()
                opt.step()
            if backend == "reference":
                assert len(calls) == STEPS, len(calls)      # one group, one dtype
                assert all(type(t) is torch.Tensor for t in calls[-1])
                name = "adam-reference"
            for p in model.parameters():
                assert isinstance(p, DTensor)
                for key, value in opt.state[p].items():
                    if key == "step":
                        assert type(value) is torch.Tensor and value.item() == STEPS
                    else:
                        assert isinstance(value, DTensor) and value.placements == p.placements
                        assert value.shape == p.shape
            full = [p.full_tensor() for p in model.parameters()]
            expected, ref_opt = _single_process(name.split("-")[0])
            out[name] = _max_error(expected, full)
            assert opt.get_last_lr() == ref_opt.get_last_lr()
    finally:
        _backend.kernel = real_kernel
    return out


def _state_dtype(rank):
    """Reduced-precision state (float32 model). The single process steps with the mean of
    the two half-batch gradients, which is what DDP, ZeRO and FSDP2 give each rank bit for
    bit (the sum of two values is commutative, the halving exact), so the stochastic
    rounding draws the same bits (they come from the values) and DDP, ZeRO and FSDP2 with
    bfloat16 state equal it exactly. FSDP2's 8-bit blocks start at each rank's shard, not
    at the tensor's start: those codes differ by the format's rounding from one process's,
    so that case is held to a bound (a third of the parameter change: far above that
    rounding, far below a wrong update). FSDP2 keeps the codes as DTensors placed like
    their parameter and the 8-bit scales as each rank's plain tensors; ZeRO consolidates a
    state_dict that a single process loads."""
    import fusedsched as fs
    from fusedsched import schedules as S
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.distributed.tensor import DTensor
    from torch.nn.parallel import DistributedDataParallel as DDP

    def make(params, state_dtype):
        return fs.AdamW(params, lr=0.02, schedule=S.warmup(S.cosine(8), 2),
                        state_dtype=state_dtype)

    def train(model, opt):
        for k in range(STEPS):
            opt.zero_grad()
            _loss(model, _local_half(_batch(k).float(), rank)).backward()
            opt.step()

    def single(state_dtype):
        model = _model().float()
        params = list(model.parameters())
        opt = make(params, state_dtype)
        for k in range(STEPS):
            halves = []
            for r in range(WORLD):
                model.zero_grad()
                _loss(model, _local_half(_batch(k).float(), r)).backward()
                halves.append([p.grad.clone() for p in params])
            for p, g0, g1 in zip(params, *halves):
                p.grad = (g0 + g1) / WORLD
            opt.step()
        return [p.detach() for p in params], [s.detach() for s in _model().float().parameters()]

    def error(expected, got):
        return float(max((a - b.detach()).abs().max() for a, b in zip(expected, got)))

    out = {}
    for state_dtype in (torch.bfloat16, "8bit"):
        tag = "bf16" if state_dtype is torch.bfloat16 else "8bit"
        expected, start = single(state_dtype)

        model = DDP(_model().float())
        train(model, make(model.parameters(), state_dtype))
        out[f"ddp-{tag}"] = error(expected, model.module.parameters())

        model = DDP(_model().float())
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=fs.AdamW, lr=0.02,
                                      schedule=S.warmup(S.cosine(8), 2),
                                      state_dtype=state_dtype)
        train(model, opt)
        out[f"zero-{tag}"] = error(expected, model.module.parameters())
        opt.consolidate_state_dict(to=0)
        if rank == 0:
            reloaded = make(_model().float().parameters(), state_dtype)
            reloaded.load_state_dict(opt.state_dict())
            assert all(float(s["step"]) == STEPS for s in reloaded.state.values())

        model = _model().float()
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        opt = make(model.parameters(), state_dtype)
        train(model, opt)
        for p in model.parameters():
            for key, value in opt.state[p].items():
                if key == "step" or key.endswith("_scale"):
                    assert type(value) is torch.Tensor, key
                else:
                    assert isinstance(value, DTensor) and value.placements == p.placements
        full = [p.full_tensor() for p in model.parameters()]
        if state_dtype == "8bit":
            for a, b, s in zip(expected, full, start):
                assert float((a - b.detach()).abs().max()) <= float((a - s).abs().max()) / 3
        else:
            out[f"fsdp2-{tag}"] = error(expected, full)
    return out


SCENARIOS = {"ddp": _ddp, "zero": _zero, "fsdp2": _fsdp2, "ddp_flat": _ddp_flat,
             "zero_flat": _zero_flat, "fsdp2_flat": _fsdp2_flat, "state_dtype": _state_dtype}


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    results = {}
    try:
        for name, scenario in SCENARIOS.items():
            try:
                results[name] = {"ok": True, "errors": scenario(rank)}
            except Exception:
                results[name] = {"ok": False, "error": traceback.format_exc()}
            dist.barrier()
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("dist"))
    ctx = mp.start_processes(_worker, args=(_free_port(), out_dir), nprocs=WORLD, join=False,
                             start_method="spawn")
    # bounded: a hung collective fails the tests instead of the session
    import time
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail("distributed workers did not finish within 240 s")
    per_rank = []
    for rank in range(WORLD):
        with open(os.path.join(out_dir, f"rank{rank}.json")) as f:
            per_rank.append(json.load(f))
    return per_rank


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_equals_single_process(results, scenario):
    for rank, result in enumerate(results):
        outcome = result[scenario]
        assert outcome["ok"], f"rank {rank}:\n{outcome.get('error')}"
        for what, error in outcome["errors"].items():
            assert error <= TOL, f"rank {rank}, {scenario}/{what}: relative error {error:.3g}"
