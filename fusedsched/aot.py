"""``fusedsched aot``: compile every Triton kernel variant ahead of time for a GPU
architecture (no GPU needed) and check the register / spill / load-width goals.

Each variant the library can launch (optimizer x compile-time flags x dtype; the schedule is
a run-time program, so one binary serves every schedule encoding) is compiled with
``triton.compile`` for a ``GPUTarget`` with the launch options the library uses
(``kernels/triton/_launch.py``: 4 warps, ``maxnreg`` 64). Per variant: optimizer, variant,
dtype, arch, n_regs, n_spills (local bytes per thread), max_load_bits. Goals: no spills, at
most 64 registers, 128-bit loads for fp32. The exit status is 1 when a goal is missed.

The work is in ``fusedsched.kernels.triton.aot``; compiles run in a process pool
(``--jobs``), and Triton's cache (``--cache-dir`` or ``TRITON_CACHE_DIR``) makes a repeated
run take seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", required=True, choices=["sm_80", "sm_90"],
                        help="GPU architecture to compile for")
    parser.add_argument("--json", action="store_true",
                        help="print the rows, goals and wall time as JSON on stdout")
    parser.add_argument("--optimizer", action="append", choices=["sgd", "rmsprop", "adam"],
                        help="only this optimizer (repeatable; default all)")
    parser.add_argument("--dtype", action="append", choices=["fp32", "fp16", "bf16", "fp64"],
                        help="only this dtype (repeatable; default all)")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most this many flag combinations per optimizer (quick checks)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="compile processes (default: the number of CPUs)")
    parser.add_argument("--cache-dir", default=None,
                        help="Triton cache directory to use and keep (sets TRITON_CACHE_DIR)")


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (optimizer, dtype, arch): variant count and register / spill / load
    ranges."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["optimizer"], r["dtype"], r["arch"]), []).append(r)
    out = []
    for (opt, dt, arch), rs in groups.items():
        out.append({"optimizer": opt, "dtype": dt, "arch": arch, "variants": len(rs),
                    "regs_min": min(r["n_regs"] for r in rs),
                    "regs_max": max(r["n_regs"] for r in rs),
                    "spills_max": max(r["n_spills"] for r in rs),
                    "load_bits_min": min(r["max_load_bits"] for r in rs),
                    "load_bits_max": max(r["max_load_bits"] for r in rs)})
    return out


def print_report(console, rows, goal_list, wall_s) -> None:
    from rich.table import Table
    table = Table(title=f"Triton kernels compiled ahead of time ({len(rows)} variants, "
                        f"{wall_s:.0f} s)")
    for col in ("optimizer", "dtype", "arch", "variants", "registers", "spills (B)",
                "max load bits"):
        table.add_column(col, justify="left" if col in ("optimizer", "dtype", "arch")
                         else "right")
    for s in summarize(rows):
        regs = (f"{s['regs_min']}" if s["regs_min"] == s["regs_max"]
                else f"{s['regs_min']}-{s['regs_max']}")
        bits = (f"{s['load_bits_min']}" if s["load_bits_min"] == s["load_bits_max"]
                else f"{s['load_bits_min']}-{s['load_bits_max']}")
        table.add_row(s["optimizer"], s["dtype"], s["arch"], str(s["variants"]), regs,
                      str(s["spills_max"]), bits)
    console.print(table)
    for name, ok, detail in goal_list:
        mark = "[green]ok[/green]" if ok else "[red]MISSED[/red]"
        console.print(f"  {mark}  {name}: {detail}")


def run(args: argparse.Namespace) -> int:
    if args.cache_dir:
        os.environ["TRITON_CACHE_DIR"] = os.path.abspath(args.cache_dir)
    from rich.console import Console

    from .kernels.triton import aot

    console = Console(stderr=args.json)
    t0 = time.perf_counter()
    done = [0]
    n_jobs = len(aot.jobs_for(args.arch, args.optimizer, args.dtype, args.limit))

    def progress(row):
        done[0] += 1
        if not args.json and sys.stderr.isatty():
            print(f"\r{done[0]}/{n_jobs} compiled", end="", file=sys.stderr, flush=True)

    try:
        rows = aot.compile_variants(args.arch, args.optimizer, args.dtype, args.limit,
                                    args.jobs, progress)
    except FileNotFoundError as e:   # no ptxas / cuobjdump in this triton install
        console.print(f"[red]aot: {e}[/red]")
        return 2
    if done[0] and not args.json and sys.stderr.isatty():
        print(file=sys.stderr)
    wall_s = time.perf_counter() - t0
    goal_list = aot.goals(rows)
    ok = all(g[1] for g in goal_list)
    if args.json:
        json.dump({"arch": args.arch, "wall_s": round(wall_s, 1), "ok": ok,
                   "goals": [{"goal": n, "ok": o, "detail": d} for n, o, d in goal_list],
                   "summary": summarize(rows), "rows": rows}, sys.stdout, indent=1)
        print()
    else:
        print_report(console, rows, goal_list, wall_s)
    return 0 if ok else 1
