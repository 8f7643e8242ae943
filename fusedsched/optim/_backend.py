"""Backend resolution: which kernel package serves a device.

``"auto"`` (or ``FUSEDSCHED_BACKEND`` when set) picks Triton for CUDA tensors, Numba for
CPU tensors and the pure-torch reference otherwise, falling back to the reference (with a
one-time warning) when the preferred backend cannot be imported. An explicit backend that
cannot serve the tensors raises ``ValueError``.
"""

import importlib
import importlib.util
import os
import warnings

import torch

BACKENDS = ("auto", "triton", "numba", "reference")
_warned = set()


def check_name(backend):
    if backend not in BACKENDS:
        raise ValueError(f"Invalid backend: backend={backend!r}; expected one of {BACKENDS}")
    return backend


def _triton_interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _can_serve(name, device_type):
    if name == "reference":
        return True, ""
    if name == "numba":
        return device_type == "cpu", "the numba backend serves CPU tensors only"
    if device_type == "cuda" or (device_type == "cpu" and _triton_interpreted()):
        return True, ""
    return False, ("the triton backend serves CUDA tensors (CPU tensors only under "
                   "TRITON_INTERPRET=1)")


def resolve(requested, device):
    """The backend name that serves tensors on ``device`` for the ``requested`` name
    (a constant for torch.compile: resolved once per device and setting, outside the
    trace)."""
    key = (requested, device.type, os.environ.get("FUSEDSCHED_BACKEND"),
           _triton_interpreted())
    name = _resolved.get(key)
    if name is None:
        name = _resolved[key] = _resolve(requested, device)
    return name


_resolved = {}


@torch.compiler.assume_constant_result
def _resolve(requested, device):
    source = f"backend={requested!r}"
    if requested == "auto":
        env = os.environ.get("FUSEDSCHED_BACKEND", "")
        if env not in ("", "auto"):
            if env not in BACKENDS:
                raise ValueError(f"Invalid environment variable FUSEDSCHED_BACKEND={env!r}; "
                                 f"expected one of {BACKENDS} (or unset it)")
            requested, source = env, f"FUSEDSCHED_BACKEND={env!r} (environment variable)"
    if requested != "auto":
        ok, why = _can_serve(requested, device.type)
        if not ok:
            raise ValueError(f"{source} cannot serve tensors on device {device}: {why}")
        return requested
    preferred = {"cuda": "triton", "cpu": "numba"}.get(device.type, "reference")
    if preferred != "reference":
        try:
            importlib.import_module("numba" if preferred == "numba" else "triton")
            return preferred
        except ImportError as exc:
            if preferred not in _warned:
                _warned.add(preferred)
                warnings.warn(f"fusedsched: the {preferred} backend is unavailable ({exc}); "
                              f"using the reference backend for {device.type} tensors",
                              RuntimeWarning, stacklevel=4)
    elif device.type not in _warned:
        _warned.add(device.type)
        warnings.warn(f"fusedsched: no compiled backend for {device.type} tensors; using the "
                      "reference backend", RuntimeWarning, stacklevel=4)
    return "reference"


def preview(requested, device_type):
    """The backend ``resolve`` would pick for tensors of ``device_type``, worked out without
    importing a backend or warning (for ``repr``); None where none can serve them."""
    if requested == "auto":
        requested = os.environ.get("FUSEDSCHED_BACKEND", "auto") or "auto"
        if requested not in BACKENDS:
            return None
    if requested != "auto":
        return requested if _can_serve(requested, device_type)[0] else None
    preferred = {"cuda": "triton", "cpu": "numba"}.get(device_type, "reference")
    if preferred != "reference" and importlib.util.find_spec(preferred) is None:
        return "reference"
    return preferred
