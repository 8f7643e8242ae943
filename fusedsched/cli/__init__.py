"""The ``fusedsched`` command line: ``fusedsched <command> [options]``.

Every subcommand is a module with two functions:

- ``add_arguments(parser)``: declare the subcommand's options on its argparse parser;
- ``run(args) -> int``: do the work and return the exit status.

They are registered in one place, :data:`COMMANDS` below. Only the module of the command
being run is imported (none for ``fusedsched --help`` and ``--version``), and a subcommand
module keeps its heavy imports (torch, numba, matplotlib) inside ``run``, so help, argument
errors and ``--version`` never import torch (``import fusedsched`` itself is lazy).

Files: a command writes its results only under the folder it is given (``--out``);
compiled kernels go to the Numba and Triton caches (README, "Command line").
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module implementing add_arguments/run, one-line help). Add new subcommands here.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "fusedsched.cli.demo",
        "train a small MLP on sklearn's digits with fusedsched.AdamW and torch.optim.AdamW "
        "(warmup + cosine), compare them, and plot both runs",
    ),
    "bench": (
        "fusedsched.cli.bench",
        "time fusedsched against torch.optim (for-loop, foreach, fused) and the memory roof, "
        "interleaved; table, JSON, CSV and a GB/s plot",
    ),
    "check": (
        "fusedsched.cli.check",
        "verify this install: the parity matrix (optimizers x flags x schedules x dtypes, "
        "every available backend) against torch.optim; table of largest errors, exit 1 on "
        "a failure",
    ),
    "aot": (
        "fusedsched.cli.aot",
        "compile every Triton kernel variant ahead of time for sm_80/sm_90 (no GPU needed) "
        "and check registers, spills and load widths; exit 1 if a variant spills, takes more "
        "than 64 registers or loads fp32 in less than 128 bits",
    ),
}


def _command_of(argv: list[str]) -> str:
    """The subcommand named in ``argv`` ("" if none): the first argument that is not an
    option (the top-level options, ``-h`` and ``--version``, take no value)."""
    return next((a for a in argv if not a.startswith("-")), "")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser. With ``argv``, only the options of the subcommand that it names
    are declared (so only that command's module is imported); without, every command's."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="fusedsched",
        description="Fused PyTorch optimizers with the learning-rate schedule computed "
        "inside the kernel.",
    )
    parser.add_argument("--version", action="version", version=f"fusedsched {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = None if argv is None else _command_of(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if wanted is None or wanted == name:
            importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fusedsched`` console script and of ``python -m fusedsched``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
