"""Each compiled backend set up against the pure-torch reference, for tests/test_kernels.py
(its ``oracle`` fixture): ``ORACLES`` names a set-up function per backend and its
variants; adding a backend is an entry there and a function here.

A variant makes the reference compute what the backend computes where the two would
otherwise take a function from different libraries: the Numba kernels' square roots
(``_torch_oracle.numba_sqrt``: "ieee", or torch's own in the "torch" mode) and float64
step scalars (``_torch_oracle.reference_takes_numba_scalars``). The Triton kernels run
interpreted on CPU tensors (TRITON_INTERPRET=1, tests/conftest.py), where their fma, sqrt
and store conversions are torch's CPU ops (kernels/triton/_elements.py) and their float64
scalars torch's functions (kernels/triton/schedule.py): the reference as it is computes
what they compute. The schedule evaluators are the exception that the oracle states:
Numba's scalars are its own (``scalar_ulps``), compared with the reference's in ulps."""

import contextlib
import importlib
from typing import Callable, NamedTuple, Optional

import pytest
import torch

from fusedsched import schedules as S
from fusedsched.kernels import state_format as F
from fusedsched.kernels.reference.schedule import evaluate as _reference_evaluate

from _torch_oracle import numba_sqrt, reference_takes_numba_scalars
from _ulps import assert_close_ulps

# positions of huge t, past float32's integers and at the int32 boundary
BIG_T = [2**20 + 3, 10**7 + 1, 2**31 - 1, 2**31]


class Oracle(NamedTuple):
    """One backend set up against the reference.

    ``name``: its ``ops.kernel`` name. ``paths(k)``: a context for step ``k`` that sends it
    down one of its code paths (e.g. serial / parallel). ``chunkings``: (label, context)
    pairs that cut the work differently, all of which must give the same bits. ``shapes``:
    the tensor sizes of a call by name, each past the backend's path thresholds --
    "blocks" (every 8-bit block edge, a zero gradient at ``ZERO_GRAD`` and a tensor past
    Numba's serial walk or of several Triton programs; ``sizes``), "empty_first", "empty_middle", "empty_last" (an empty
    tensor there, the others across the backend's unit of work: a Numba chunk, a Triton
    program) and "many_small". ``chunk_sizes``: those of the chunking test.
    ``evaluate(schedule, ts)``: the backend's schedule evaluator, (factor, momentum,
    has_momentum) per position, at ``positions``. ``scalar_ulps``: None where its float64
    scalars are the reference's bit for bit, else (ulps, reason). ``launches(monkeypatch,
    algo)``: a list that gets an entry per kernel launch of ``algo``."""
    name: str
    paths: Callable
    chunkings: list
    shapes: dict
    chunk_sizes: list
    evaluate: Callable
    positions: list
    scalar_ulps: Optional[tuple]
    launches: Callable

    @property
    def sizes(self):
        return self.shapes["blocks"]


def _shapes(blocks, unit, many_small):
    return {"blocks": blocks, "empty_first": [0, 7, unit + 3],
            "empty_middle": [5, 0, 2 * unit + 1], "empty_last": [unit - 1, 1, 0],
            "many_small": many_small}


def numba_evaluate(schedule, ts):
    from fusedsched.kernels.numba.schedule import evaluate
    program = S.program(schedule, "cpu").numpy()
    return torch.tensor([evaluate(program, float(t)) for t in ts], dtype=torch.float64)


def reference_evaluate(schedule, ts):
    program = S.program(schedule, "cpu")
    return torch.tensor([[x.item() for x in
                          _reference_evaluate(program, torch.tensor(float(t), dtype=torch.float64))]
                         for t in ts], dtype=torch.float64)


def assert_like_reference_evaluator(got, want, what, scalar_ulps=None):
    """An evaluator's (factor, momentum, has_momentum) rows ``got`` against the reference
    evaluator's ``want``: the same has_momentum, and factor and momentum bit for bit, or
    within ``scalar_ulps`` = (ulps, reason) ulps of 1 (the peak factor). The momentum is
    compared where the leaf cycles it (an evaluator may leave the leaf's value in the slot
    otherwise, the reference 0; neither is read then)."""
    assert torch.equal(got[:, 2], want[:, 2]), what
    cycles = want[:, 2] != 0
    for a, e in ((got[:, 0], want[:, 0]), (got[cycles, 1], want[cycles, 1])):
        if scalar_ulps is None:
            assert torch.equal(a, e), (what, (a != e).nonzero().flatten())
        else:
            ulps, reason = scalar_ulps
            assert_close_ulps(a, e, ulps, f"{what}: {reason}", scale=1.0)


def _numba_oracle(variant, monkeypatch):
    from fusedsched.kernels.numba import adam, rmsprop, sgd
    from fusedsched.kernels.numba._common import ALIGN, CHUNK, chunk_size
    modules = (adam, rmsprop, sgd)

    @contextlib.contextmanager
    def path(k):
        # even steps in the calling thread (the serial walk), odd ones on the thread pool
        with monkeypatch.context() as m:
            for module in modules:
                m.setattr(module, "SERIAL_MAX", 1 << 40 if k % 2 == 0 else 0)
            yield

    def chunking(chunk):
        @contextlib.contextmanager
        def use():
            with monkeypatch.context() as m:
                for module in modules:
                    m.setattr(module, "use_pool", lambda offsets, serial_max: chunk)
                yield
        return use

    def launches(mp, algo):
        module = importlib.import_module(f"fusedsched.kernels.numba.{algo}")
        walk, calls = getattr(module, f"_{algo}"), []

        def counting(*args):
            calls.append(args[1])      # the offsets of the launch's tensors
            return walk(*args)
        mp.setattr(module, f"_{algo}", counting)
        return calls

    chunk_sizes = [CHUNK | 3, 0, 100_003, 5, 2 * ALIGN + 1, F.BLOCK_SIZE * 3 + 7]
    # the serial walk (0), chunks of any size (which never split an 8-bit block of a
    # tensor), and the equal shares of the thread count (``chunk_size``)
    chunks = [0, ALIGN, 3 * ALIGN, 5 * F.BLOCK_SIZE + ALIGN, chunk_size(250_000, 2),
              chunk_size(sum(chunk_sizes), 2), CHUNK]
    # "blocks": a tensor past the serial walk's SERIAL_MAX (the parallel path takes any
    # step when forced); the others across chunk boundaries
    shapes = _shapes([0, 1, F.BLOCK_SIZE - 1, F.BLOCK_SIZE, F.BLOCK_SIZE + 1, 300, 40_003],
                     CHUNK, [1 + (37 * i) % 300 for i in range(60)])
    positions = sorted(set(list(range(0, 130)) + [10240] + BIG_T
                           + [2 ** k + d for k in range(7, 32) for d in (-1, 0, 1)]))
    # Numba's pow, cos, log (LLVM / the C library) and IEEE sqrt against torch's (libm's
    # pow, MKL's cos / log / sqrt): each correct to about an ulp, in the same formulas and
    # order of operations. Ulps of 1, the peak factor: an ulp of cos moves ``end + (1 -
    # end) * (1 + cos) / 2`` by about an ulp of 1 also where the factor is small
    # (measured: at most half an ulp of 1).
    scalar_ulps = (4, "Numba's libm / LLVM pow, cos, log and IEEE sqrt vs torch's (MKL) ones")
    stack = contextlib.ExitStack()
    stack.enter_context(numba_sqrt(variant))
    stack.enter_context(reference_takes_numba_scalars())
    return stack, Oracle("numba", path, [(f"chunk {c}", chunking(c)) for c in chunks],
                         shapes, chunk_sizes, numba_evaluate, positions, scalar_ulps,
                         launches)


def triton_evaluate(schedule, ts):
    from _triton_evaluator import evaluator     # triton imported on first use
    program = S.program(schedule, "cpu")
    t = torch.tensor([float(x) for x in ts], dtype=torch.float64)
    out = torch.zeros(len(ts), 3, dtype=torch.float64)
    evaluator[(len(ts),)](program, program.shape[0], t, out)
    return out


def _triton_oracle(variant, monkeypatch):
    pytest.importorskip("triton")
    from fusedsched.kernels.triton import _launch as L
    from fusedsched.kernels.triton.schedule import INTERPRET
    if not INTERPRET:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set")

    def blocks(size):
        # a program's elements (a multiple of the 8-bit block); every size the same bits
        @contextlib.contextmanager
        def use():
            with monkeypatch.context() as m:
                m.setitem(L.BLOCK, torch.float32, size)
                yield
        return use

    def launches(mp, algo):
        module = importlib.import_module(f"fusedsched.kernels.triton.{algo}")
        kernel, calls = getattr(module, f"{algo}_kernel"), []

        class Counting:
            def __getitem__(self, grid):
                calls.append(grid)
                return kernel[grid]
        mp.setattr(module, f"{algo}_kernel", Counting())
        return calls

    # one kernel path (masked programs at every tensor's end); the interpreter takes ~0.1 s
    # per program, so the sizes stop at a few programs
    program = L.BLOCK[torch.float32]
    shapes = _shapes([0, 1, F.BLOCK_SIZE - 1, F.BLOCK_SIZE, F.BLOCK_SIZE + 1, 300, 5000],
                     program, [k % 5 + 1 for k in range(23)])
    return contextlib.ExitStack(), Oracle(
        "triton", lambda k: contextlib.nullcontext(),
        [(f"BLOCK {b}", blocks(b)) for b in (512, 256, 1024, 2048)], shapes,
        [1 << 12 | 3, 0, 2000, 5, 2 * 64 + 1, F.BLOCK_SIZE * 3 + 7], triton_evaluate,
        list(range(0, 40)) + BIG_T, None, launches)


ORACLES = {"numba": (_numba_oracle, ["ieee", "torch"]),
           "triton": (_triton_oracle, ["interpreted"])}
PARAMS = [pytest.param((b, v), id=f"{b}-{v}") for b, (_, vs) in ORACLES.items() for v in vs]
# each backend once (its first variant), for what no variant changes: the schedule evaluators
BACKEND_PARAMS = [pytest.param((b, vs[0]), id=b) for b, (_, vs) in ORACLES.items()]


@contextlib.contextmanager
def oracle_of(param, monkeypatch):
    """The Oracle of a ``PARAMS`` (or ``BACKEND_PARAMS``) entry, its reference set up for
    the block."""
    backend, variant = param
    stack, made = ORACLES[backend][0](variant, monkeypatch)
    with stack:
        yield made
