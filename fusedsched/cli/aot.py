"""``fusedsched aot``: compile every Triton kernel variant ahead of time for a GPU
architecture (no GPU needed) and check the register / spill / load-width goals.

Each variant the library can launch (optimizer x compile-time flags x state format x
dtype; the schedule is a run-time program, so one binary serves every schedule encoding) is
compiled with ``triton.compile`` for a ``GPUTarget`` with the launch options the library
uses (``kernels/triton/_launch.py``: 4 warps, ``maxnreg`` 64). Per variant: optimizer,
variant, format, dtype, arch, n_regs, n_spills (local bytes per thread), max_load_bits. Goals: no spills, at
most 64 registers, 128-bit loads for fp32. The exit status is 1 when a goal is missed.

The work is in ``fusedsched.kernels.triton.aot``; compiles run in a process pool
(``--jobs``), and Triton's cache makes a repeated run take seconds. Progress (one step per
variant, with an estimate of the time left) goes to stderr: a rich progress bar on a
terminal, one line per variant otherwise.

What it writes: only Triton's cache, in ``--cache-dir DIR`` when given (it sets
``TRITON_CACHE_DIR``), else ``$TRITON_CACHE_DIR``, else Triton's default
``~/.triton/cache``; the command prints the folder before it starts. (Each cubin is also
written to a temporary file for ``cuobjdump`` and removed at once.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
    parser.add_argument("--format", action="append", choices=["native", "bfloat16", "8bit"],
                        help="only this state format (repeatable; default all)")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most this many flag combinations per optimizer (quick checks)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="compile processes (default: the number of CPUs)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="Triton cache folder to write and keep (sets TRITON_CACHE_DIR; "
                        "default: $TRITON_CACHE_DIR, else ~/.triton/cache)")


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (optimizer, format, dtype, arch): variant count and register / spill /
    load ranges."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["optimizer"], r.get("format", "native"), r["dtype"], r["arch"])
        groups.setdefault(key, []).append(r)
    out = []
    for (opt, fmt, dt, arch), rs in groups.items():
        out.append({"optimizer": opt, "format": fmt, "dtype": dt, "arch": arch,
                    "variants": len(rs),
                    "regs_min": min(r["n_regs"] for r in rs),
                    "regs_max": max(r["n_regs"] for r in rs),
                    "spills_max": max(r["n_spills"] for r in rs),
                    "load_bits_min": min(r["max_load_bits"] for r in rs),
                    "load_bits_max": max(r["max_load_bits"] for r in rs)})
    return out


def triton_cache_dir() -> str:
    """The folder Triton's compiler cache writes to in this process."""
    if os.environ.get("TRITON_CACHE_DIR"):
        return os.environ["TRITON_CACHE_DIR"]
    try:
        from triton import knobs
        return str(knobs.cache.dir)
    except (ImportError, AttributeError):     # older triton: its documented default
        return os.path.join(os.path.expanduser("~"), ".triton", "cache")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _variant_name(row: dict) -> str:
    return f"{row['optimizer']}/{row['variant']}/{row.get('format', 'native')}/{row['dtype']}"


class _Progress:
    """Per-variant progress on stderr, with an estimate of the time left: a rich progress
    bar on a terminal, else one line per variant."""

    def __init__(self, total: int, console):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.bar = self.task = None
        if console is not None and console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self.bar = Progress(TextColumn("{task.description:<38.38}"), BarColumn(20),
                                MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("left"), TimeRemainingColumn(), console=console)

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task("compiling", total=self.total)
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False

    def __call__(self, row: dict) -> None:
        self.done += 1
        what = (f"{_variant_name(row)} {row['arch']}: {row['n_regs']} registers, "
                f"{row['n_spills']} B spilled")
        if self.bar is not None:
            self.bar.update(self.task, advance=1,
                            description=f"{row['optimizer']} {row.get('format', 'native')} "
                                        f"{row['dtype']} {row['variant']}")
            return
        elapsed = time.perf_counter() - self.t0
        left = elapsed / self.done * (self.total - self.done)
        print(f"[aot] {self.done}/{self.total} {what} ({_duration(elapsed)} elapsed, about "
              f"{_duration(left)} left)", file=sys.stderr, flush=True)


def print_report(console, rows, goal_list, wall_s) -> None:
    if console is None:               # without rich: the same numbers as plain lines
        print(f"Triton kernels compiled ahead of time ({len(rows)} variants, {wall_s:.0f} s)")
        for s in summarize(rows):
            print(f"  {s['optimizer']:<8} {s['format']:<8} {s['dtype']:<5} {s['arch']}: "
                  f"{s['variants']} "
                  f"variants, registers {s['regs_min']}-{s['regs_max']}, spills "
                  f"{s['spills_max']} B, max load bits {s['load_bits_min']}-"
                  f"{s['load_bits_max']}")
        for name, ok, detail in goal_list:
            print(f"  {'ok' if ok else 'MISSED'}  {name}: {detail}")
        return
    from rich.table import Table
    table = Table(title=f"Triton kernels compiled ahead of time ({len(rows)} variants, "
                        f"{wall_s:.0f} s)")
    for col in ("optimizer", "format", "dtype", "arch", "variants", "registers",
                "spills (B)", "max load bits"):
        table.add_column(col, justify="left" if col in ("optimizer", "format", "dtype", "arch")
                         else "right")
    for s in summarize(rows):
        regs = (f"{s['regs_min']}" if s["regs_min"] == s["regs_max"]
                else f"{s['regs_min']}-{s['regs_max']}")
        bits = (f"{s['load_bits_min']}" if s["load_bits_min"] == s["load_bits_max"]
                else f"{s['load_bits_min']}-{s['load_bits_max']}")
        table.add_row(s["optimizer"], s["format"], s["dtype"], s["arch"], str(s["variants"]),
                      regs,
                      str(s["spills_max"]), bits)
    console.print(table)
    for name, ok, detail in goal_list:
        mark = "[green]ok[/green]" if ok else "[red]MISSED[/red]"
        console.print(f"  {mark}  {name}: {detail}")


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line that repeats ``args``."""
    argv = ["--arch", args.arch] + (["--json"] if args.json else [])
    for opt in args.optimizer or []:
        argv += ["--optimizer", opt]
    for dt in args.dtype or []:
        argv += ["--dtype", dt]
    for fmt in args.format or []:
        argv += ["--format", fmt]
    for flag, value in (("--limit", args.limit), ("--jobs", args.jobs),
                        ("--cache-dir", args.cache_dir)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def run(args: argparse.Namespace) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        # Compiling needs Triton's compiled mode, fixed when triton is imported: run this
        # command in a child without the variable (its progress and report pass through),
        # leaving this process as it is.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.run([sys.executable, "-m", "fusedsched", "aot", *_argv(args)],
                              env=env).returncode
    saved = os.environ.get("TRITON_CACHE_DIR")
    if args.cache_dir:
        os.environ["TRITON_CACHE_DIR"] = os.path.abspath(args.cache_dir)
    try:
        return _run(args)
    finally:        # an in-process caller keeps its own setting
        if saved is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = saved


def _run(args: argparse.Namespace) -> int:
    try:
        from rich.console import Console
    except ImportError:          # rich is in the dev extra: plain lines instead
        Console = None

    from fusedsched.kernels.triton import aot

    console = Console() if Console else None             # the report (stdout)
    err = Console(stderr=True) if Console else None       # where it writes, progress
    jobs = aot.jobs_for(args.arch, args.optimizer, args.dtype, args.limit, args.format)
    workers = max(1, min(len(jobs), args.jobs or os.cpu_count() or 1))
    cache = triton_cache_dir()
    print(f"fusedsched aot: compiling {len(jobs)} Triton kernel variant(s) for {args.arch} "
          f"in {workers} process(es). Writes only Triton's cache: {cache}", file=sys.stderr,
          flush=True)
    t0 = time.perf_counter()
    try:
        with _Progress(len(jobs), err) as progress:
            rows = aot.compile_variants(args.arch, args.optimizer, args.dtype, args.limit,
                                        args.jobs, progress, args.format)
    except FileNotFoundError as e:   # no ptxas / cuobjdump in this triton install
        print(f"fusedsched aot: {e}", file=sys.stderr)
        return 2
    wall_s = time.perf_counter() - t0
    goal_list = aot.goals(rows)
    ok = all(g[1] for g in goal_list)
    if args.json:
        json.dump({"arch": args.arch, "wall_s": round(wall_s, 1), "ok": ok,
                   "triton_cache_dir": cache,
                   "goals": [{"goal": n, "ok": o, "detail": d} for n, o, d in goal_list],
                   "summary": summarize(rows), "rows": rows}, sys.stdout, indent=1)
        print()
    else:
        print_report(console, rows, goal_list, wall_s)
    return 0 if ok else 1
