"""GPU-only tests (run by bench/gpu.sh, not by the default `pytest`, whose testpaths are
tests/ and bench/). The Triton kernels must be compiled, not interpreted."""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET"):
    raise pytest.UsageError("tests_gpu/ needs compiled Triton kernels: unset TRITON_INTERPRET")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device")
        for item in items:
            item.add_marker(skip)
