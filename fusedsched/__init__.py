"""fusedsched: fused optimizers for PyTorch with the learning-rate schedule computed inside
the kernel (Triton on GPUs, Numba on CPUs, pure torch elsewhere).

>>> import fusedsched as fs
>>> from fusedsched import schedules as S
>>> opt = fs.AdamW(model.parameters(), lr=3e-4,
...                schedule=S.warmup(S.cosine(total_steps=9000), warmup_steps=1000))

``import fusedsched`` itself is cheap (it does not import torch): the optimizers and the
submodules (``schedules``, ``optim``, ``kernels``) are loaded on first access (PEP 562), so
the ``fusedsched`` command line starts fast.
"""

import importlib as _importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING as _TYPE_CHECKING

try:
    __version__ = _metadata.version("fusedsched")
except _metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.1.0"

__all__ = ["SGD", "Momentum", "RMSprop", "Adam", "AdamW", "float32_state_dict", "schedules"]

_OPTIMIZERS = ("SGD", "Momentum", "RMSprop", "Adam", "AdamW", "float32_state_dict")
_SUBMODULES = ("schedules", "optim", "kernels")

if _TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from . import kernels, optim, schedules
    from .optim import SGD, Adam, AdamW, Momentum, RMSprop, float32_state_dict


def __getattr__(name):
    if name in _OPTIMIZERS:
        value = getattr(_importlib.import_module(".optim", __name__), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value     # later accesses skip this function
    return value


def __dir__():
    names = {k for k in globals() if not k.startswith("_") or k.endswith("__")}
    return sorted(names | set(__all__) | set(_SUBMODULES))
