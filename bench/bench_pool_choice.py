"""The Numba backend's measured choice between the thread pool and the calling thread
(``kernels/numba/_host.py``: ``use_pool`` / ``timed``), on a quiet machine and on one whose
cores other processes hold.

Workload: ``fusedsched.Adam`` stepping ``--tensors`` float32 tensors of ``--numel``
elements (above SERIAL_MAX in all, so the pool is the rule). Three ways, timed side by side
in one process, interleaved over rounds (median ms per ``step()`` of the median round):

* ``pool``: the thread pool on every step (the rule without the measured choice);
* ``serial``: the calling thread on every step;
* ``measured``: the shipped rule (pool or calling thread by the measured wall time, with
  probes).

Each way gets its own optimizer and tensors (the same values). Then ``--busy`` processes
that spin on the CPU are started (the load of data-loader workers or a second job) and the
three are timed again. Writes ``pool_choice.md`` (and ``.json``) to ``--out``::

    python bench/bench_pool_choice.py [--tensors 100] [--numel 1024] [--busy 2] [--out DIR]
"""

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time


def _spin(stop):
    while not stop.is_set():
        for _ in range(10_000):
            pass


def _ways(tensors, numel):
    import torch

    import fusedsched as fs
    from fusedsched.kernels.numba import _host, adam

    real, real_timed = adam.use_pool, adam.timed

    def forced(pool):
        def use_pool(offsets, serial_max):
            chunk = _host.chunk_size(int(offsets[-1]), _host.setup_threads())
            return chunk if pool else 0
        return use_pool

    ways = {}
    def untimed(offsets, serial_max, chunk, ns):
        pass        # the forced ways' times stay out of the measured rule's record

    for name, rule, record in (("pool", forced(True), untimed),
                               ("serial", forced(False), untimed),
                               ("measured", real, real_timed)):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(numel, generator=gen)) for _ in range(tensors)]
        for p in params:
            p.grad = torch.randn(numel, generator=gen) * 1e-3
        opt = fs.Adam(params, lr=1e-3, backend="numba")

        def step(opt=opt, rule=rule, record=record):
            adam.use_pool, adam.timed = rule, record
            try:
                opt.step()
            finally:
                adam.use_pool, adam.timed = real, real_timed
        ways[name] = step
    return ways


def _measure(ways, rounds, calls):
    from fusedsched.cli.bench import interleaved

    for step in ways.values():      # warm-up: compiles, and the measured rule's probes
        for _ in range(200):
            step()

    def ms_per_call(step):
        t0 = time.perf_counter()
        for _ in range(calls):
            step()
        return (time.perf_counter() - t0) / calls * 1e3

    return {name: statistics.median(v)
            for name, v in interleaved(ways, rounds, ms_per_call).items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensors", type=int, default=100)
    ap.add_argument("--numel", type=int, default=1024)
    ap.add_argument("--busy", type=int, default=2, help="spinning processes of the loaded run")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=100, help="step() calls per round and way")
    ap.add_argument("--out", default="bench/results/cpu_sweep")
    args = ap.parse_args()

    import torch

    ways = _ways(args.tensors, args.numel)
    result = {"tensors": args.tensors, "numel": args.numel, "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    result["quiet"] = _measure(ways, args.rounds, args.calls)
    stop = mp.Event()
    busy = [mp.Process(target=_spin, args=(stop,)) for _ in range(args.busy)]
    for p in busy:
        p.start()
    try:
        time.sleep(1.0)
        result["loaded"] = _measure(ways, args.rounds, args.calls)
    finally:
        stop.set()
        for p in busy:
            p.join()
    result["busy"] = args.busy

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pool_choice.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = [
        "# Thread pool or calling thread: the measured choice",
        "",
        f"Adam, {args.tensors} float32 tensors of {args.numel} elements, "
        f"{result['threads']} threads on {result['cpus']} CPUs (load average before: "
        + ", ".join(f"{x:.2f}" for x in result["loadavg_before"]) + "); ms per `step()`, "
        "median of interleaved rounds, one process. Reproduce with:",
        "",
        "```bash",
        f"python bench/bench_pool_choice.py --tensors {args.tensors} --numel {args.numel} "
        f"--busy {args.busy}",
        "```",
        "",
        "| machine | pool always | calling thread always | measured choice | "
        "measured / best of the two |",
        "|---|---|---|---|---|",
    ]
    for label, key in (("quiet", "quiet"), (f"{args.busy} spinning processes", "loaded")):
        r = result[key]
        lines.append(f"| {label} | {r['pool']:.3f} | {r['serial']:.3f} | {r['measured']:.3f} "
                     f"| {r['measured'] / min(r['pool'], r['serial']):.2f}x |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "pool_choice.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
