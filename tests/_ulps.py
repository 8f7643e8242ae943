"""Tolerances in units in the last place (ulps), for the comparisons whose two sides compute
a transcendental function (pow, exp, log, cos, sqrt) with two different implementations:
e.g. Numba's compiled ``math.pow`` / ``math.cos`` (LLVM, the C library) and IEEE sqrt
against torch's (libm's pow, MKL's cos / log / sqrt on the CPU). Each is correct to about an
ulp, so their results may differ in the last bit, and where a difference is more than
that, the formula around the function magnifies it: the tolerance says by how much.

Where both sides call the very same function, or only correctly rounded operations
(+ - * /, sqrt where both are IEEE, fma), the tests compare bit for bit instead.
"""

import torch

_MANTISSA_BITS = {torch.float64: 52, torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}


def ulp(x, dtype=None):
    """The spacing of ``dtype``'s numbers (default: ``x``'s dtype) at ``|x|``, elementwise, as
    a float64 tensor: ``2**(exponent(x) - mantissa bits)``, and the smallest subnormal at
    and below the smallest normal number."""
    x = torch.as_tensor(x, dtype=torch.float64 if not isinstance(x, torch.Tensor) else None)
    dtype = dtype or x.dtype
    info = torch.finfo(dtype)
    a = x.detach().to(torch.float64).abs()
    _, exponent = torch.frexp(a)                 # a = m * 2**exponent, 0.5 <= m < 1
    spacing = torch.ldexp(torch.ones_like(a), exponent - 1 - _MANTISSA_BITS[dtype])
    smallest = info.tiny * info.eps             # the subnormal spacing
    return torch.where(a < info.tiny, torch.full_like(a, smallest), spacing)


def assert_close_ulps(actual, expected, ulps, reason, scale=None):
    """Assert ``|actual - expected| <= ulps * ulp(max(|actual|, |expected|, |scale|))``
    elementwise, the ulp in ``expected``'s dtype; NaN exactly where ``expected`` is NaN and
    infinities equal.

    ``ulps``: a number, or a tensor broadcast against the values (a tolerance that depends
    on the element's conditioning). ``reason``: why the two sides may differ at all (which
    two implementations of which function), shown on failure. ``scale``: where the error is
    relative to a larger quantity than the result (a difference of cosines near -1 added to
    1), that quantity (a number or a tensor).
    """
    assert reason, "say why the two sides may differ"
    expected = torch.as_tensor(expected, dtype=torch.float64
                               if not isinstance(expected, torch.Tensor) else None)
    actual = torch.as_tensor(actual, dtype=expected.dtype)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
        actual.shape, expected.shape, actual.dtype, expected.dtype)
    a, e = actual.detach().to(torch.float64), expected.detach().to(torch.float64)
    nan = torch.isnan(e)
    assert torch.equal(torch.isnan(a), nan), f"NaN positions differ ({reason})"
    inf = torch.isinf(e) | torch.isinf(a)
    assert torch.equal(a[inf], e[inf]), f"infinities differ ({reason})"
    finite = ~nan & ~inf
    a, e = a[finite], e[finite]
    magnitude = torch.maximum(a.abs(), e.abs())
    if scale is not None:
        s = torch.as_tensor(scale, dtype=torch.float64).abs()
        s = s.expand(finite.shape)[finite] if s.dim() else s
        magnitude = torch.maximum(magnitude, s)
    limit = torch.as_tensor(ulps, dtype=torch.float64)
    limit = limit.expand(finite.shape)[finite] if limit.dim() else limit
    allowed = limit * ulp(magnitude, expected.dtype)
    diff = (a - e).abs()
    bad = diff > allowed
    if bad.any():
        i = int(bad.nonzero()[0])
        got = float(diff[i] / ulp(magnitude, expected.dtype)[i])
        raise AssertionError(
            f"{int(bad.sum())} of {bad.numel()} elements differ by more than the tolerance "
            f"({reason}); first: {a[i].item()!r} vs {e[i].item()!r}, {got:.3g} ulps, allowed "
            f"{float(limit if limit.dim() == 0 else limit[i]):.3g}")


def fp32_rounding_margin(x):
    """How far float64 ``x`` lies from the nearest float32 rounding boundary (the midpoint
    between two neighbouring float32 numbers), relative to ``|x|``: a float64 value computed
    otherwise, with a relative error below this, rounds to the same float32 number."""
    x = float(x)
    if x == 0.0:
        return float("inf")
    f = torch.tensor(x, dtype=torch.float32)
    down = torch.nextafter(f, torch.tensor(-float("inf"))).item()
    up = torch.nextafter(f, torch.tensor(float("inf"))).item()
    f = f.item()
    return min(x - (f + down) / 2, (f + up) / 2 - x) / abs(x)


def assert_round_alike_in_fp32(values, reason, rel=1e-11):
    """Assert that each float64 value lies more than ``rel`` (relative) from a float32
    rounding boundary: then a value computed with another implementation of the same
    functions (pow, cos, sqrt: off by far less than ``rel``) rounds to the same float32
    number, and a float32 computation that uses it only rounded to float32 may be compared
    bit for bit with one that uses the other value. ``reason``: which values these are."""
    close = [(i, v, m) for i, v in enumerate(values) if (m := fp32_rounding_margin(v)) <= rel]
    assert not close, (f"{reason}: float64 values within {rel:g} of a float32 rounding "
                       f"boundary (index, value, margin): {close[:5]}")
