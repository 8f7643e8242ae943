"""Test setup: Triton kernels run on CPU tensors through the interpreter when no GPU is
present (TRITON_INTERPRET must be set before triton is first imported)."""

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))

# Every backend that can run on this machine; the Triton kernels run interpreted on CPU.
BACKENDS = ["reference", "numba", "triton"]
