"""Compiled Triton kernels on CUDA against the reference backend on CUDA (torch's CUDA ops:
fma, sqrt and division correctly rounded, as the kernels' fma.rn / sqrt.rn / div.rn):
every optimizer, flag set and dtype, ragged lists with empty tensors, bit for bit."""

import os
import sys
from pathlib import Path

import pytest
import torch

import fusedsched.kernels.triton.adam  # noqa: E402,F401  compiled-mode @triton.jit first
import fusedsched.kernels.triton.rmsprop  # noqa: E402,F401
import fusedsched.kernels.triton.sgd  # noqa: E402,F401

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
_had = "TRITON_INTERPRET" in os.environ
import test_triton_kernels as T  # noqa: E402  (its helpers; its own tests need the interpreter)
if not _had:       # it setdefault()s TRITON_INTERPRET=1; triton was imported before, undo
    os.environ.pop("TRITON_INTERPRET", None)



def _cuda_run(algo, dtype, shapes, flags, schedule, n_steps=3, amp=None):
    from fusedsched import schedules as S
    gen = torch.Generator().manual_seed(7)
    base = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).cuda() for s in shapes]
    results = []
    for impl in ("triton", "reference"):
        params = [p.clone() for p in base]
        z = lambda: [torch.zeros_like(p) for p in params]  # noqa: E731
        steps = [torch.zeros((), dtype=torch.float64, device="cuda") for _ in params]
        pos = torch.zeros((), dtype=torch.float64, device="cuda")
        prog = S.program(schedule, "cuda")
        mods = {"adam": (T.tri_adam, T.ref_adam), "sgd": (T.tri_sgd, T.ref_sgd),
                "rmsprop": (T.tri_rmsprop, T.ref_rmsprop)}[algo]
        mod = mods[0] if impl == "triton" else mods[1]
        if algo == "adam":
            fn, st = mod.adam_step, [z(), z(), z() if flags["amsgrad"] else None]
            kw = dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=flags["wd"],
                      decoupled_weight_decay=flags["decoupled"], amsgrad=flags["amsgrad"])
        elif algo == "sgd":
            fn, st = mod.sgd_step, [z() if flags["momentum"] else None]
            kw = dict(lr=0.1, momentum=0.9 if flags["momentum"] else 0.0,
                      dampening=0.1 if not flags["nesterov"] else 0.0,
                      weight_decay=flags["wd"], nesterov=flags["nesterov"])
        else:
            fn = mod.rmsprop_step
            st = [z(), z() if flags["centered"] else None, z() if flags["momentum"] else None]
            kw = dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=flags["wd"],
                      momentum=0.8 if flags["momentum"] else 0.0, centered=flags["centered"])
        grads_seen = []
        for k in range(n_steps):
            grads = [g.cuda() for g in T._grads([p.cpu() for p in params], k)]
            gs = fi = None
            if amp is not None:
                gs = torch.tensor(amp[0], dtype=torch.float32, device="cuda")
                grads = [(g.double() * amp[0]).to(dtype) for g in grads]
                fi = torch.tensor(float(amp[1][k]), dtype=torch.float32, device="cuda")
            fn(params, grads, *st, steps, maximize=flags["maximize"], schedule=prog,
               position=pos, grad_scale=gs, found_inf=fi, **kw)
            grads_seen.append(grads)
        results.append((params, st, steps, pos, grads_seen))
    return results


@pytest.mark.parametrize("dtype", T.DTYPES, ids=str)
@pytest.mark.parametrize("algo,flag_list", T.ALGOS, ids=[a for a, _ in T.ALGOS])
def test_compiled_matches_reference_on_cuda(algo, flag_list, dtype):
    from fusedsched import schedules as S
    sched = S.warmup(S.one_cycle(8), 2)
    for i, flags in enumerate(flag_list):
        shapes = T.SHAPE_SETS[list(T.SHAPE_SETS)[i % len(T.SHAPE_SETS)]] + [(70001,)]
        T._compare(_cuda_run(algo, dtype, shapes, flags, sched), dtype)


@pytest.mark.parametrize("algo,flag_list", T.ALGOS, ids=[a for a, _ in T.ALGOS])
def test_compiled_amp_on_cuda(algo, flag_list):
    from fusedsched import schedules as S
    res = _cuda_run(algo, torch.float32, [(3,), (0,), (4099,)], flag_list[1],
                    S.exponential(0.9), n_steps=4, amp=(1024.0, [1, 0, 1, 0]))
    T._compare(res, torch.float32)
    assert [s.item() for s in res[0][2]] == [2.0, 2.0, 2.0] and res[0][3].item() == 4.0


def _n_binaries(jit_fn):
    caches = getattr(jit_fn, "device_caches", {})
    return sum(len(v[0]) for v in caches.values())


def test_one_launch_no_recompile_across_steps():
    # the position and steps are read by pointer: stepping compiles nothing new
    import fusedsched as fs
    from fusedsched import schedules as S
    from fusedsched.kernels.triton.adam import adam_kernel
    p = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in (10, 0, 5000)]
    opt = fs.Adam(p, lr=1e-3, schedule=S.cosine(100), backend="triton")
    for q in p:
        q.grad = torch.randn_like(q)
    opt.step()
    n0 = _n_binaries(adam_kernel)
    for _ in range(20):
        opt.step()
    assert _n_binaries(adam_kernel) == n0
