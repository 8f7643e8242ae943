"""The precision of optimizer state (``state_dtype=``): which storage format the kernels
get, the state tensors of each format, their checks, and the conversions of a loaded
state_dict.

``state_dtype`` is one of

* ``None``: torch.optim's rule, the moments in the parameter's dtype (float32 with
  ``master_weights``);
* ``torch.bfloat16``: bfloat16 moments, rounded stochastically (``kernels/state_format.py``
  says why: a bfloat16 ``exp_avg_sq`` rounded to nearest stalls);
* ``"8bit"``: blockwise 8-bit moments: ``state[key]`` is a uint8 tensor of the parameter's
  shape (one code per element) and ``state[key + "_scale"]`` a float32 tensor of
  ``ceil(numel / 256)`` block scales.

The moments are the algorithm's state tensors (``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, ``momentum_buffer``, ``square_avg``, ``grad_avg``); ``step`` and
``master_param`` keep their dtype. Reduced-precision state is for float32, float16 and
bfloat16 parameters (float64 and complex parameters raise ValueError at the step).

Conversions (``load_state_dict``): a loaded moment in another format than this
optimizer's is converted on load: floating-point moments (torch.optim's, or ours with
``state_dtype=None``) are rounded into this optimizer's format with the kernels' own
rounding (stochastic, with the parameter's loaded ``step``: the same bits on every
backend), and 8-bit or bfloat16 moments are decoded (exactly) to float32 first.
``float32_state_dict`` turns a state_dict of ours into one with float32 moments, which
``torch.optim`` loads.
"""

import torch

from ..kernels import state_format as F
from ..kernels.ops import SIGNATURES
from ..kernels.reference import _state as R

FORMATS = {None: "native", torch.bfloat16: "bfloat16", "8bit": "8bit"}
SCALE = "_scale"        # the 8-bit scales of state[key] are state[key + SCALE]
_STORED = {"bfloat16": torch.bfloat16, "8bit": torch.uint8}
_REDUCED_PARAMS = (torch.float32, torch.float16, torch.bfloat16)


def check(state_dtype):
    """``state_dtype`` itself: ValueError naming it unless None, torch.bfloat16 or
    "8bit"."""
    if not any(state_dtype is k or (isinstance(k, str) and state_dtype == k)
               for k in FORMATS):
        raise ValueError(f"Invalid state_dtype: state_dtype={state_dtype!r} (expected None, "
                         f"torch.bfloat16 or '8bit')")
    return state_dtype


def format_of(opt):
    """The kernels' ``state_format`` of ``opt``'s moments."""
    return FORMATS[getattr(opt, "state_dtype", None)]


def check_param(p, fmt):
    """ValueError for a parameter that reduced-precision state cannot serve."""
    if fmt != "native" and p.dtype not in _REDUCED_PARAMS:
        raise ValueError(f"state_dtype={_name(fmt)} stores the moments of float32, float16 "
                         f"and bfloat16 parameters; got a parameter of dtype {p.dtype} "
                         f"(shape {tuple(p.shape)}): use state_dtype=None, or a separate "
                         f"optimizer for it")


def _name(fmt):
    return "torch.bfloat16" if fmt == "bfloat16" else repr(fmt)


def create(state, key, p, fmt):
    """Add the zero moment ``key`` of parameter ``p`` to its ``state`` in format ``fmt``
    (and its scales for "8bit")."""
    if fmt == "native":
        state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return
    state[key] = torch.zeros(p.shape, dtype=_STORED[fmt], device=p.device)
    if fmt == "8bit":
        state[key + SCALE] = torch.zeros(F.n_blocks(p.numel()), dtype=torch.float32,
                                         device=p.device)


def scales(states, keys, fmt):
    """The scale lists of a call's state lists (``keys`` in kernel order, ``states`` the
    per-parameter state dicts), None unless "8bit"."""
    if fmt != "8bit":
        return None
    return [None if k is None else [s[k + SCALE] for s in states] for k in keys]


def check_value(p, key, value, fmt):
    """The dtype and shape a moment or a scale must have in format ``fmt``: None when it
    does, else the message of the TypeError/ValueError to raise. ``key`` is a moment key
    or a scale key."""
    if fmt == "8bit" and key.endswith(SCALE):
        # a DTensor parameter's scales are those of this rank's shard
        local = p.to_local() if hasattr(p, "to_local") else p
        want = (F.n_blocks(local.numel()),)
        if value.dtype != torch.float32 or tuple(value.shape) != want:
            return (f"state {key!r} must be a float32 tensor of shape {want} (the 8-bit "
                    f"block scales of a parameter of shape {tuple(p.shape)}), got "
                    f"{value.dtype} of shape {tuple(value.shape)}")
        return None
    stored = _STORED.get(fmt)
    if stored is not None and value.dtype != stored:
        return (f"state {key!r} has dtype {value.dtype}; state_dtype={_name(fmt)} stores "
                f"{stored} (reset its state: del optimizer.state[p], or load a state_dict: "
                f"load_state_dict converts)")
    return None


def is_moment(key, fmt):
    """Whether state ``key`` is stored in the format (moments; not step, master_param,
    nor the scales)."""
    return fmt != "native" and key not in ("step", "master_param") and not key.endswith(SCALE)


# ----------------------------------------------------------------- loaded state dicts

_NONNEGATIVE = {name[:-1] for sig in SIGNATURES.values() for name in sig.nonnegative}
MOMENTS = {name[:-1] for sig in SIGNATURES.values() for name in sig.states}


def _signed(key):
    return key not in _NONNEGATIVE


def _salt(algorithm, key):
    return SIGNATURES[algorithm].states.index(f"{key}s")


def decode(key, state):
    """float32 values of moment ``state[key]`` (any format), shaped like the moment."""
    value = state[key]
    if value.dtype == torch.uint8:
        scale = state.get(key + SCALE)
        if scale is None:
            raise ValueError(f"8-bit state {key!r} has no {key + SCALE!r}")
        return R.dequantize(value, scale.to(value.device), _signed(key)).view(
            value.shape)
    return value.float()


def encode(algorithm, key, value, step, fmt):
    """``{key: ..., [key + SCALE: ...]}``: float32 ``value`` stored in format ``fmt``
    (not "native"), rounded stochastically with the kernels' bits for ``step``."""
    x = value.detach().float().reshape(-1)
    step = torch.as_tensor(step, dtype=torch.float64).reshape(()).to(x.device)
    r = R.random_bits(x, step, _salt(algorithm, key))
    if fmt == "bfloat16":
        return {key: R.round_bfloat16(x, r).view(value.shape)}
    codes, scales_ = R.quantize(x, r, _signed(key))
    return {key: codes.view(value.shape), key + SCALE: scales_}


def convert_loaded(opt, p, state, saved, keys, native_dtype):
    """``state``, a parameter's state after torch's load_state_dict, with its moments
    ``keys`` taken from ``saved`` (the state_dict's own tensors: torch casts floating
    state to the parameter's dtype, which would round 8-bit scales) in ``opt``'s format:
    kept bit for bit when stored as this optimizer stores them, else decoded to float32
    and encoded (``encode``; ``native_dtype`` for "native"). A new dict."""
    fmt = format_of(opt)
    stored = _STORED.get(fmt)
    out = dict(state)
    for key in keys:
        value = saved.get(key) if key is not None else None
        if not isinstance(value, torch.Tensor):
            continue
        out.pop(key + SCALE, None)
        scale = saved.get(key + SCALE)
        if fmt == "native":
            if value.dtype == torch.uint8:
                out[key] = decode(key, saved).to(p.device, native_dtype)
        elif value.dtype == stored and (fmt != "8bit" or isinstance(scale, torch.Tensor)):
            out[key] = value.to(p.device, copy=True)
            if fmt == "8bit":
                out[key + SCALE] = scale.to(p.device, copy=True)
        else:
            encoded = encode(opt.algorithm, key, decode(key, saved),
                             saved.get("step", 0), fmt)
            out.update({k: v.to(p.device) for k, v in encoded.items()})
    return out


def float32_state_dict(state_dict):
    """A copy of a fusedsched optimizer's ``state_dict()`` whose moments are float32
    tensors: 8-bit codes decoded with their scales (exactly: every code's value is a
    float32) and the ``*_scale`` entries dropped, bfloat16 moments widened. This is what
    ``torch.optim``'s ``load_state_dict`` takes (it then casts the moments to each
    parameter's dtype); other entries are shared with ``state_dict``. ValueError for an
    8-bit moment without its scales."""
    out = dict(state_dict)
    out["state"] = {}
    for index, state in state_dict["state"].items():
        new = {k: v for k, v in state.items()
               if not (k.endswith(SCALE) and k[:-len(SCALE)] in MOMENTS)}
        for key in MOMENTS:
            if isinstance(state.get(key), torch.Tensor) and (
                    state[key].dtype in (torch.uint8, torch.bfloat16)):
                new[key] = decode(key, state)
        out["state"][index] = new
    return out
