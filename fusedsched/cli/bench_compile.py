"""``fusedsched bench`` rows for torch.compile (CPU), every ratio measured side by side in
one process, interleaved over rounds:

* ``opt.step()`` compiled (``torch.compile(opt.step, fullgraph=True)``) against the same
  optimizer class stepped eagerly: AdamW with a warmup + cosine schedule on a list of
  parameter tensors. Beside it, torch's own AdamW on the same tensors: eager with
  ``fused=True`` (its fastest eager CPU path) and compiled (its default, the path torch
  recommends under compile; constant lr, no scheduler; without fullgraph, which its
  first step, the one that makes the state, does not allow), so that "compiled / eager" of
  fusedsched reads against torch's own;
* the floor: what torch.compile adds to any call on this machine, a compiled in-place add
  on one 1-element tensor against the same eager (dynamo's frame evaluation and guards,
  AOT autograd's runtime wrapper, Inductor's call): a compiled step cannot cost less than
  its eager twin plus this;
* a compiled train step (forward, backward, ``opt.step()``) of an MLP with
  ``fusedsched.AdamW`` + schedule against the same with ``torch.optim.AdamW(fused=True)``
  + ``LambdaLR`` of the same schedule (``scheduler.step()`` inside the compiled function,
  as users write it), and both eager.
"""

import statistics

from .bench import _time_once as _median_s   # median s per call over timeit blocks
from .bench import interleaved

# (label, tensors, elements each): per-call costs dominate the second, the kernel the third
WORKLOAD_TENSORS = (("10 x 64k", 10, 1 << 16), ("100 x 1k", 100, 1 << 10),
                    ("4 x 1M", 4, 1 << 20))


def _schedule(S):
    return S.warmup(S.cosine(total_steps=10**7), warmup_steps=100)


def _floor(rounds: int, min_run_time: float) -> dict:
    """torch.compile's own cost per call: ``x.add_(1)`` on a 1-element tensor, compiled
    (fullgraph) and eager, times in us."""
    import torch

    x = torch.zeros(1)

    def add():
        x.add_(1)

    steps = {"eager": add, "compiled": torch.compile(add, fullgraph=True)}
    for _ in range(3):
        for step in steps.values():
            step()
    times = interleaved(steps, rounds, lambda step: _median_s(step, min_run_time))
    us = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    return {"eager_us": us["eager"], "compiled_us": us["compiled"],
            "added_us": us["compiled"] - us["eager"]}


def measure(quick: bool, rounds: int, min_run_time: float) -> dict:
    """The compile rows: {"step": [...], "train": {...}}, times in ms."""
    import torch

    import fusedsched as fs
    from fusedsched import schedules as S

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    out = {"step": [], "floor": _floor(rounds, min_run_time)}
    for label, count, numel in WORKLOAD_TENSORS[:1] if quick else WORKLOAD_TENSORS:
        def tensors():
            gen = torch.Generator().manual_seed(0)
            params = [torch.nn.Parameter(torch.randn(numel, generator=gen) * 0.1)
                      for _ in range(count)]
            for p in params:
                p.grad = torch.randn(numel, generator=gen) * 1e-3
            return params

        twins = [tensors() for _ in range(2)]
        ours = [fs.AdamW(ps, lr=1e-3, schedule=_schedule(S)) for ps in twins]
        theirs = [torch.optim.AdamW(tensors(), lr=1e-3, fused=True),
                  torch.optim.AdamW(tensors(), lr=1e-3)]
        steps = {"eager": ours[0].step,
                 "compiled": torch.compile(ours[1].step, fullgraph=True),
                 "torch eager": theirs[0].step,
                 # (fullgraph=False: torch's first step breaks the graph where it makes state)
                 "torch compiled": torch.compile(theirs[1].step)}
        for _ in range(3):      # warm-up (compiles), and the same steps for the check
            for step in steps.values():
                step()
        same = all(torch.equal(a, b) for a, b in zip(*twins))
        times = interleaved(steps, rounds, lambda step: _median_s(step, min_run_time))
        # (the timed calls differ in number between the twins: compared before timing)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        out["step"].append({"workload": f"AdamW step, {label} fp32", "eager_ms": ms["eager"],
                            "compiled_ms": ms["compiled"],
                            "compiled_vs_eager": ms["compiled"] / ms["eager"],
                            "torch_eager_ms": ms["torch eager"],
                            "torch_compiled_ms": ms["torch compiled"],
                            "torch_compiled_vs_eager": ms["torch compiled"] / ms["torch eager"],
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
              caption="compiled / eager: a step compiled with fullgraph=True over the same "
                      "step eager (1.00x: same); torch: torch.optim.AdamW, eager fused=True, "
                      "compiled its default; torch fused / fusedsched: the compiled train "
                      "step with torch.optim.AdamW(fused=True) + LambdaLR over fusedsched's")
    for col in ("workload", "eager", "compiled", "compiled / eager", "bit-identical",
                "torch eager", "torch compiled", "torch compiled / eager"):
        t.add_column(col, justify="left" if col == "workload" else "right")
    for r in res["step"]:
        t.add_row(r["workload"], f"{r['eager_ms']:.3g}", f"{r['compiled_ms']:.3g}",
                  f"{r['compiled_vs_eager']:.2f}x", "yes" if r["bit_identical"] else "NO",
                  f"{r['torch_eager_ms']:.3g}", f"{r['torch_compiled_ms']:.3g}",
                  f"{r['torch_compiled_vs_eager']:.2f}x")
    console.print(t)
    fl = res["floor"]
    console.print(f"torch.compile's own cost per call (x.add_(1), one element): eager "
                  f"{fl['eager_us']:.3g} us, compiled {fl['compiled_us']:.3g} us, "
                  f"+{fl['added_us']:.3g} us")
    tr = res["train"]
    console.print(f"{tr['workload']}: " + ", ".join(f"{k} {v:.3g}" for k, v in tr["ms"].items())
                  + f"; torch fused / fusedsched, both compiled: "
                  f"{tr['torch_compiled_vs_fusedsched_compiled']:.2f}x")
