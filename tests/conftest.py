"""Test setup: Triton kernels run on CPU tensors through the interpreter when no GPU is
present (TRITON_INTERPRET must be set before triton is first imported)."""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))

# Every backend that can run on this machine; the Triton kernels run interpreted on CPU.
BACKENDS = ["reference", "numba", "triton"]


@pytest.fixture
def torch_sqrt():
    """The Numba kernels take torch's own (MKL) square roots for the test: bit-identical to
    torch's for-loop optimizers and to the reference backend (their default, IEEE sqrt, is
    held to the fp32 yardstick instead: tests/test_optim_vs_torch.py)."""
    from _torch_oracle import numba_sqrt
    with numba_sqrt("torch"):
        yield


@pytest.fixture(autouse=True)
def _fresh_pool_choice():
    """Each test starts with no measured pool-or-thread choice (``numba._host.use_pool``):
    a test that sends a step down the thread pool (SERIAL_MAX patched to 0) gets the pool,
    not a choice that other tests' timings made."""
    host = sys.modules.get("fusedsched.kernels.numba._host")
    if host is not None:
        host._choices.clear()
    yield
