"""Loading and storing optimizer state in each format of ``kernels/state_format.py``, pure
torch: the specification of the Numba and Triton kernels' state loads and stores.

Integer work is done in int64 with explicit masks to 32 bits (torch has no unsigned 32-bit
arithmetic on every device); every product fits (the multipliers are below 2**31).
"""

import torch

from .. import state_format as F
from ._common import store as _store

_M32 = F.MASK32


def _bits(x):
    """The float32 bits of ``x`` (float32) as int64 values in [0, 2**32)."""
    return x.contiguous().view(torch.int32).to(torch.int64) & _M32


def _float(bits):
    """float32 values from their bits (int64 in [0, 2**32))."""
    bits = torch.where(bits >= 1 << 31, bits - (1 << 32), bits)
    return bits.to(torch.int32).view(torch.float32)


def random_bits(x, step, salt):
    """The random integers (int64 in [0, 2**32)) of the elements of float32 ``x``: a mix
    of their own bits with the parameter's ``step`` (0-dim float64, after this update) and
    the state's ``salt``."""
    mix = ((step.to(torch.int64) & _M32) * F.STEP_MULTIPLIER + salt * F.SALT_MULTIPLIER) & _M32
    h = _bits(x) ^ mix
    h = h ^ (h >> 16)
    h = (h * F.MIX_MULTIPLIER_1) & _M32
    h = h ^ (h >> 15)
    h = (h * F.MIX_MULTIPLIER_2) & _M32
    return h ^ (h >> 16)


def round_bfloat16(x, r):
    """float32 ``x`` rounded stochastically to bfloat16 with random integers ``r``; a NaN
    is bfloat16's quiet NaN (``BF16_NAN``), whatever its payload."""
    b = ((_bits(x) + (r & F.BF16_RANDOM_MASK)) & _M32) >> 16
    b = torch.where(torch.isnan(x), F.BF16_NAN, b)
    b = torch.where(b >= 1 << 15, b - (1 << 16), b)
    return b.to(torch.int16).view(torch.bfloat16)


def _blocks(x):
    """``x`` (1-D) padded with zeros to whole blocks, as (n_blocks, BLOCK_SIZE)."""
    n = x.numel()
    padded = x.new_zeros(F.n_blocks(n) * F.BLOCK_SIZE)
    padded[:n] = x
    return padded.view(-1, F.BLOCK_SIZE)


def _per_element(block_values, n):
    return block_values.repeat_interleave(F.BLOCK_SIZE)[:n]


def quantize(x, r, signed):
    """(codes uint8, scales float32) of float32 ``x`` (1-D) with random integers ``r``."""
    n = x.numel()
    absmax = _blocks(x.abs()).amax(dim=1)
    top = torch.full_like(absmax, F.MAX_MAGNITUDE)
    scales = torch.div(absmax, top)
    inv = torch.where(absmax > 0, torch.div(top, absmax), torch.zeros_like(absmax))
    y = (x.abs() * _per_element(inv, n)).clamp_max(F.MAX_MAGNITUDE)
    t = F.smallest_normal(signed)
    small = y < t
    y = torch.where(small, y + t, y)
    code = ((_bits(y) + (r & F.CODE_RANDOM_MASK)) >> (23 - F.MANTISSA_BITS)) - F.rebase(signed)
    code = torch.where(small, code - (1 << F.MANTISSA_BITS), code)
    code = code.clamp_max(F.top_code(signed))
    if signed:
        code = torch.where(x < 0, code | 128, code)
    else:
        code = torch.where(x > 0, code.clamp_min(1), code)
    return code.to(torch.uint8), scales


def magnitude(code, signed):
    """float32 magnitudes of codes (int64, sign bit cleared)."""
    m = F.MANTISSA_BITS
    e = code >> m
    f = code & ((1 << m) - 1)
    normal = _float(((e + 127 - F.bias(signed)) << 23) | (f << (23 - m)))
    subnormal = f.to(torch.float32) * (F.smallest_normal(signed) / (1 << m))
    return torch.where(e > 0, normal, subnormal)


def dequantize(codes, scales, signed):
    """float32 values (1-D) of 8-bit ``codes`` (uint8, any shape) with their ``scales``."""
    c = codes.reshape(-1).to(torch.int64)
    mag = magnitude(c & 127 if signed else c, signed)
    value = mag * _per_element(scales, c.numel())
    return torch.where(c >= 128, -value, value) if signed else value


def state_io(algorithm, lists, scales, fmt):
    """One ``StateIO`` per state list of ``algorithm`` (kernel order; None for a list that
    is off), ``scales`` the 8-bit scale lists in the same order (None unless "8bit")."""
    from ..ops import SIGNATURES
    signature = SIGNATURES[algorithm]
    if fmt not in F.FORMATS:
        raise ValueError(f"reference {algorithm}_step: state_format={fmt!r}; expected one of "
                         f"{F.FORMATS}")
    if fmt == "8bit" and scales is None:
        raise ValueError(f"reference {algorithm}_step: state_format='8bit' needs scales")
    return [None if lst is None else
            StateIO(lst, None if scales is None else scales[k], fmt, k,
                    name not in signature.nonnegative)
            for k, (name, lst) in enumerate(zip(signature.states, lists))]


class StateIO:
    """The loads and stores of one state list (kernel order index ``salt``) in format
    ``fmt``: ``load(i, dtype)`` the value of tensor ``i`` in the math dtype,
    ``store(i, value, step, skip)`` its new value (the parameter's ``step`` after this
    update, 0-dim float64) unless ``skip``."""

    def __init__(self, tensors, scales, fmt, salt, signed):
        self.tensors, self.scales, self.fmt = tensors, scales, fmt
        self.salt, self.signed = salt, signed

    def load(self, i, dtype):
        t = self.tensors[i]
        if self.fmt == "8bit":
            return dequantize(t, self.scales[i], self.signed).view(t.shape).to(dtype)
        return t.to(dtype)

    def store(self, i, value, step, skip):
        t = self.tensors[i]
        if self.fmt == "native":
            return _store(t, value, skip)
        x = value.to(torch.float32).reshape(-1)
        r = random_bits(x, step, self.salt)
        if self.fmt == "bfloat16":
            return _store(t, round_bfloat16(x, r).view(t.shape), skip)
        codes, scales = quantize(x, r, self.signed)
        _store(t, codes.view(t.shape), skip)
        _store(self.scales[i], scales, skip)
