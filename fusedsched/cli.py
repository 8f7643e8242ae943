"""The ``fusedsched`` command line: ``fusedsched <command> [options]``.

Every subcommand is a module with two functions:

- ``add_arguments(parser)``: declare the subcommand's options on its argparse parser;
- ``run(args) -> int``: do the work and return the exit status.

They are registered in one place, :data:`COMMANDS` below. A subcommand module keeps its heavy
imports (torch, numba, matplotlib) inside ``run`` so that ``fusedsched --help`` stays fast.
A command writes files only under the folder it is given (``--out``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module implementing add_arguments/run, one-line help). Add new subcommands here.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "fusedsched.demo",
        "train a small MLP on sklearn's digits with fusedsched.AdamW and torch.optim.AdamW "
        "(warmup + cosine), compare them, and plot both runs",
    ),
    "bench": (
        "fusedsched.bench",
        "time fusedsched against torch.optim (for-loop, foreach, fused) and the memory roof, "
        "interleaved; table, JSON, CSV and a GB/s plot",
    ),
    "check": (
        "fusedsched.check",
        "verify this install: the parity matrix (optimizers x flags x schedules x dtypes, "
        "every available backend) against torch.optim; table of largest errors, exit 1 on "
        "a failure",
    ),
    "aot": (
        "fusedsched.aot",
        "compile every Triton kernel variant ahead of time for sm_80/sm_90 (no GPU needed) "
        "and check registers, spills and load widths; exit 1 if a goal is missed",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusedsched",
        description="Fused PyTorch optimizers with the learning-rate schedule computed "
        "inside the kernel.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fusedsched`` console script and of ``python -m fusedsched``."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
