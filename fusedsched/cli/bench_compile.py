"""``fusedsched bench`` rows for torch.compile (CPU), every ratio measured side by side in
one process, interleaved over rounds:

* ``opt.step()`` compiled (``torch.compile(opt.step, fullgraph=True)``) against the same
  optimizer class stepped eagerly: AdamW with a warmup + cosine schedule on a list of
  parameter tensors;
* a compiled train step (forward, backward, ``opt.step()``) of an MLP with
  ``fusedsched.AdamW`` + schedule against the same with ``torch.optim.AdamW(fused=True)``
  + ``LambdaLR`` of the same schedule (``scheduler.step()`` inside the compiled function,
  as users write it), and both eager.
"""

import statistics

from .bench import _time_once as _median_s   # median s per call over timeit blocks
from .bench import interleaved

WORKLOAD_TENSORS = (("10 x 64k", 10, 1 << 16), ("100 x 1k", 100, 1 << 10))


def _schedule(S):
    return S.warmup(S.cosine(total_steps=10**7), warmup_steps=100)


def measure(quick: bool, rounds: int, min_run_time: float) -> dict:
    """The compile rows: {"step": [...], "train": {...}}, times in ms."""
    import torch

    import fusedsched as fs
    from fusedsched import schedules as S

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    out = {"step": []}
    for label, count, numel in WORKLOAD_TENSORS[:1] if quick else WORKLOAD_TENSORS:
        twins = []
        for _ in range(2):
            gen = torch.Generator().manual_seed(0)
            params = [torch.nn.Parameter(torch.randn(numel, generator=gen) * 0.1)
                      for _ in range(count)]
            for p in params:
                p.grad = torch.randn(numel, generator=gen) * 1e-3
            twins.append((params, fs.AdamW(params, lr=1e-3, schedule=_schedule(S))))
        eager = twins[0][1].step
        compiled = torch.compile(twins[1][1].step, fullgraph=True)
        for _ in range(3):      # warm-up (compiles), and the same steps for the check
            eager()
            compiled()
        same = all(torch.equal(a, b) for a, b in zip(twins[0][0], twins[1][0]))
        times = interleaved({"eager": eager, "compiled": compiled}, rounds,
                            lambda step: _median_s(step, min_run_time))
        # (the timed calls differ in number between the two: compared before timing)
        e, c = (statistics.median(times[k]) * 1e3 for k in ("eager", "compiled"))
        out["step"].append({"workload": f"AdamW step, {label} fp32", "eager_ms": e,
                            "compiled_ms": c, "compiled_vs_eager": c / e,
                            "bit_identical": same})

    torch.manual_seed(0)
    x, y = torch.randn(256, 256), torch.randint(0, 10, (256,))

    def model():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(),
                                   torch.nn.Linear(512, 512), torch.nn.GELU(),
                                   torch.nn.Linear(512, 10))

    sched = _schedule(S)
    runs = {}
    for name in ("fusedsched", "torch fused"):
        for mode in ("eager", "compiled"):
            m = model()
            if name == "fusedsched":
                opt = fs.AdamW(m.parameters(), lr=1e-3, schedule=sched)
                lr_step = None
            else:
                opt = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True)
                lr_step = torch.optim.lr_scheduler.LambdaLR(opt, sched).step

            def train(m=m, opt=opt, lr_step=lr_step):
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(m(x), y).backward()
                opt.step()
                if lr_step is not None:
                    lr_step()

            runs[name, mode] = torch.compile(train) if mode == "compiled" else train
    for fn in runs.values():
        for _ in range(3):
            fn()
    times = interleaved(runs, rounds, lambda step: _median_s(step, min_run_time))
    ms = {f"{name}, {mode}": statistics.median(v) * 1e3 for (name, mode), v in times.items()}
    out["train"] = {"workload": "MLP 256-512-512-10, batch 256, train step", "ms": ms,
                    "torch_compiled_vs_fusedsched_compiled":
                        ms["torch fused, compiled"] / ms["fusedsched, compiled"]}
    return out


def print_rows(console, res: dict) -> None:
    from rich.table import Table

    t = Table(title="torch.compile (ms per call, same run)",
              caption="compiled / eager: the compiled step's time over the eager one's "
                      "(1.00x: same); torch fused / fusedsched: the compiled train step "
                      "with torch.optim.AdamW(fused=True) + LambdaLR over fusedsched's")
    for col in ("workload", "eager", "compiled", "compiled / eager", "bit-identical"):
        t.add_column(col, justify="left" if col == "workload" else "right")
    for r in res["step"]:
        t.add_row(r["workload"], f"{r['eager_ms']:.3g}", f"{r['compiled_ms']:.3g}",
                  f"{r['compiled_vs_eager']:.2f}x", "yes" if r["bit_identical"] else "NO")
    console.print(t)
    tr = res["train"]
    console.print(f"{tr['workload']}: " + ", ".join(f"{k} {v:.3g}" for k, v in tr["ms"].items())
                  + f"; torch fused / fusedsched, both compiled: "
                  f"{tr['torch_compiled_vs_fusedsched_compiled']:.2f}x")
