"""The Triton evaluator of a schedule program (``kernels/schedule_encoding.py``).

``evaluate(program_ptr, n_nodes, t)`` is a ``@triton.jit`` device function shared by the SGD,
RMSprop and Adam kernels. Every program of a launch calls it once (a few fp64 scalar ops
and at most ``n_nodes`` row loads: nothing next to the streaming update).

All math is fp64. The correctly rounded operations (``+ - * /``, ``floor``, ``minimum``,
``where``) are Triton's own in both modes. The other functions, ``_pow``, ``_cos``,
``_log`` and ``_sqrt`` below, are, compiled (CUDA), ``libdevice.pow`` / ``tl.cos`` /
``tl.log`` (libdevice) and ``tl.sqrt`` (``sqrt.rn.f64``); under ``TRITON_INTERPRET=1`` they
are plain Python functions that call the very torch function the reference evaluator
(``kernels/reference/schedule.py``) and the reference Adam (``kernels/reference/adam.py``)
call, on 0-dim float64 CPU tensors as they do (``torch.pow``, ``torch.cos``, ``torch.log``,
``torch.sqrt``), one element at a time. Why not the interpreter's own ``tl.cos``/``tl.log``/
``tl.sqrt`` or ``numpy.power``: those are numpy's, whose SIMD paths (AVX-512 and others)
are not libm and not torch's (torch's CPU cos/log/sqrt are MKL's vector functions, its
0-dim pow is libm's), so interpreted Triton would equal the reference only where two
libraries happen to agree. With the same function on both sides, interpreted Triton equals
the reference bit for bit on every machine (tests/test_triton_kernels.py checks it with zero
tolerance, and checks that numpy's functions are not used). (The interpreter does not
implement libdevice calls at all: ``NotImplementedError: extern_elementwise``.)
(``exp(y*log(x))`` was rejected for ``pow``: ``2**3`` comes out as 7.999999999999998,
which moves cosine_restarts cycle boundaries.)
"""

import numpy as np
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .. import schedule_encoding as E


@triton.jit
def _probe():
    pass


# True when @triton.jit produced interpreter functions (TRITON_INTERPRET=1 was set when this
# module was imported); decided by what triton did, not by the environment now.
INTERPRET = type(_probe).__name__ == "InterpretedFunction"

_NODE: tl.constexpr = tl.constexpr(E.NODE_SIZE)
_SWITCH: tl.constexpr = tl.constexpr(E.SWITCH)
_CONSTANT: tl.constexpr = tl.constexpr(E.CONSTANT)
_LINEAR: tl.constexpr = tl.constexpr(E.LINEAR)
_STEP: tl.constexpr = tl.constexpr(E.STEP)
_EXPONENTIAL: tl.constexpr = tl.constexpr(E.EXPONENTIAL)
_POLYNOMIAL: tl.constexpr = tl.constexpr(E.POLYNOMIAL)
_COSINE: tl.constexpr = tl.constexpr(E.COSINE)
_COSINE_RESTARTS: tl.constexpr = tl.constexpr(E.COSINE_RESTARTS)
_ONE_CYCLE: tl.constexpr = tl.constexpr(E.ONE_CYCLE)
_CYCLIC: tl.constexpr = tl.constexpr(E.CYCLIC)
_INVERSE_SQRT: tl.constexpr = tl.constexpr(E.INVERSE_SQRT)
_WSD: tl.constexpr = tl.constexpr(E.WSD)
# pi is written as a literal: PTX keeps it exact (mul.f64 ..., 0d400921FB54442D18).

if INTERPRET:
    import torch
    from triton.runtime.interpreter import TensorHandle

    def _torch_fp64(fn, *args):
        """``fn`` (a torch function) of fp64 interpreter scalars or blocks, computed element
        by element on 0-dim float64 CPU tensors: the call the reference makes on its 0-dim
        scalars, so the same code path of the same function (a length-1 call takes torch's
        scalar loop, where a longer one may take a vectorised kernel, e.g. Sleef's pow)."""
        ref = args[0].to(tl.float64)
        for a in args[1:]:
            ref = ref + a.to(tl.float64)          # the result's type and broadcast shape
        shape = np.shape(ref.handle.data)
        data = [np.broadcast_to(np.asarray(a.handle.data, dtype=np.float64), shape)
                for a in args]
        out = np.empty(shape, dtype=np.float64)
        for i in np.ndindex(shape):
            out[i] = fn(*(torch.tensor(float(d[i]), dtype=torch.float64) for d in data)).item()
        return tl.tensor(TensorHandle(out, tl.float64), ref.type)

    def _pow(x, y):
        """fp64 ``x ** y``: torch.pow, as the reference's ``x ** y``."""
        return _torch_fp64(torch.pow, x, y)

    def _cos(x):
        """fp64 cos: torch.cos, as the reference."""
        return _torch_fp64(torch.cos, x)

    def _log(x):
        """fp64 natural log: torch.log, as the reference."""
        return _torch_fp64(torch.log, x)

    def _sqrt(x):
        """fp64 square root: torch.sqrt, as the reference (on the CPU not always
        correctly rounded: it is MKL's where torch has MKL)."""
        return _torch_fp64(torch.sqrt, x)
else:
    _pow = libdevice.pow

    @triton.jit
    def _cos(x):
        return tl.cos(x)

    @triton.jit
    def _log(x):
        return tl.log(x)

    @triton.jit
    def _sqrt(x):
        return tl.sqrt(x)


@triton.jit
def _anneal(linear, start, end, pct):
    """torch OneCycleLR's anneal laws (fp64)."""
    cos_v = end + (start - end) / 2.0 * (1.0 + _cos(3.141592653589793 * pct))
    lin_v = (end - start) * pct + start
    return tl.where(linear != 0, lin_v, cos_v)


@triton.jit
def _pct(t, start, end):
    """Fraction of a phase done; a phase of length 0 is done (pct = 1)."""
    length = end - start
    return tl.where(length > 0, (t - start) / tl.where(length > 0, length, 1.0), 1.0)


@triton.jit
def evaluate(program_ptr, n_nodes, t):
    """(factor, momentum, has_momentum) of the schedule at position ``t`` (fp64 scalars;
    ``has_momentum`` is 1.0 when the leaf cycles momentum, else 0.0)."""
    t = t.to(tl.float64)
    node = n_nodes * 0
    # 1. Descent through SWITCH rows, branchless; at most n_nodes rows are visited.
    for _ in range(n_nodes):
        row = program_ptr + node * _NODE
        kind = tl.load(row)
        m = tl.load(row + 1)
        is_switch = kind == _SWITCH
        right = t >= m
        nxt = tl.where(right, tl.load(row + 3), tl.load(row + 2)).to(tl.int32)
        t = tl.where(is_switch & right, t - m, t)
        node = tl.where(is_switch, nxt, node)
    row = program_ptr + node * _NODE
    kind = tl.load(row)
    a1 = tl.load(row + 1)
    a2 = tl.load(row + 2)
    a3 = tl.load(row + 3)
    a4 = tl.load(row + 4)
    a5 = tl.load(row + 5)
    a6 = tl.load(row + 6)
    a7 = tl.load(row + 7)
    a8 = tl.load(row + 8)
    a9 = tl.load(row + 9)
    a10 = tl.load(row + 10)
    one = tl.full((), 1.0, tl.float64)
    factor = one
    mom = one * 0.0
    has_m = one * 0.0
    # 2. The leaf: a scalar if-chain, so only the taken kind runs.
    if kind == _CONSTANT:
        factor = a1
    elif kind == _LINEAR:
        # start a1, end a2, T a3; start + (end - start) * progress, progress = min(t, T) / T
        # (1 when T == 0), in the reference's order of operations
        progress = tl.where(a3 > 0, tl.minimum(t, a3) / tl.where(a3 > 0, a3, 1.0), 1.0)
        factor = a1 + (a2 - a1) * progress
    elif kind == _STEP:
        factor = _pow(a2, tl.floor(t / a1))
    elif kind == _EXPONENTIAL:
        factor = _pow(a1, t)
    elif kind == _POLYNOMIAL:
        # T a1, power a2, end a3
        tt = tl.minimum(t, a1)
        # a phase of length 0 is finished (progress 1): 0 ** power, which is 1 for power 0
        base = tl.where(a1 > 0, 1.0 - tt / tl.where(a1 > 0, a1, 1.0), 0.0)
        factor = _pow(base, a2) * (1.0 - a3) + a3
    elif kind == _COSINE:
        # T a1, end a2
        tt = tl.minimum(t, a1)
        c = (1.0 + _cos(3.141592653589793 * tt / tl.where(a1 > 0, a1, 1.0))) / 2.0
        factor = tl.where(a1 > 0, a2 + (1.0 - a2) * c, a2)
    elif kind == _COSINE_RESTARTS:
        # T0 a1, mult a2, end a3. Cycle i starts at T0*(mult**i - 1)/(mult - 1) (i*T0 when
        # mult == 1); the index from floor(log) is corrected by one step each way, so it is
        # exact at every boundary.
        mult1 = a2 == 1.0
        msafe = tl.where(mult1, 2.0, a2)
        n_log = tl.floor(_log(t / a1 * (msafe - 1.0) + 1.0) / _log(msafe))
        n = tl.where(mult1, tl.floor(t / a1), n_log)
        n = tl.maximum(n, 0.0)
        start = tl.where(mult1, n * a1, a1 * (_pow(msafe, n) - 1.0) / (msafe - 1.0))
        n = tl.where(start > t, n - 1.0, n)
        start = tl.where(mult1, n * a1, a1 * (_pow(msafe, n) - 1.0) / (msafe - 1.0))
        nxt = tl.where(mult1, (n + 1.0) * a1, a1 * (_pow(msafe, n + 1.0) - 1.0) / (msafe - 1.0))
        n = tl.where(nxt <= t, n + 1.0, n)
        start = tl.where(nxt <= t, nxt, start)
        t_i = tl.where(mult1, a1, a1 * _pow(msafe, n))
        factor = a3 + (1.0 - a3) * (1.0 + _cos(3.141592653589793 * (t - start) / t_i)) / 2.0
    elif kind == _ONE_CYCLE:
        # e1 a1, e2 a2, e3 a3, initial a4, min a5, anneal a6, three_phase a7,
        # cycle_momentum a8, base_momentum a9, max_momentum a10; t held at e3.
        tt = tl.minimum(t, a3)
        three = a7 != 0
        in1 = tt <= a1
        in2 = three & (tt <= a2)
        p_start = tl.where(in1, 0.0, tl.where(three & (tt > a2), a2, a1))
        p_end = tl.where(in1, a1, tl.where(in2, a2, a3))
        lr_s = tl.where(in1, a4, tl.where(three & (tt > a2), a4, one))
        lr_e = tl.where(in1, one, tl.where(in2, a4, a5))
        m_s = tl.where(in1, a10, tl.where(in2, a9, tl.where(three, a10, a9)))
        m_e = tl.where(in1, a9, a10)
        pct = _pct(tt, p_start, p_end)
        factor = _anneal(a6, lr_s, lr_e, pct)
        mom = _anneal(a6, m_s, m_e, pct)
        has_m = tl.where(a8 != 0, one, 0.0)
    elif kind == _CYCLIC:
        # total_size a1, step_ratio a2, base a3, mode a4, gamma a5, cycle_momentum a6,
        # base_momentum a7, max_momentum a8 (torch CyclicLR, in factors of max_lr)
        cycle = tl.floor(1.0 + t / a1)
        x = 1.0 + t / a1 - cycle
        # a rising phase of length 0 (step_ratio 0) is finished: scale 1, never 0 / 0
        rise = tl.where(a2 > 0, x / tl.where(a2 > 0, a2, 1.0), one)
        scale = tl.where(x <= a2, rise, (x - 1.0) / tl.where(a2 < 1.0, a2 - 1.0, -1.0))
        # triangular2: 0.5**(cycle-1) underflows to 0 where torch's 1/2.0**(cycle-1)
        # overflows (pytorch/pytorch#52989).
        sf = tl.where(a4 == 0, one, tl.where(a4 == 1, _pow(one * 0.5, cycle - 1.0), _pow(a5, t)))
        scale = scale * sf
        factor = a3 + (1.0 - a3) * scale
        mom = a8 - (a8 - a7) * scale
        has_m = tl.where(a6 != 0, one, 0.0)
    elif kind == _INVERSE_SQRT:
        # W a1, timescale a2
        warm = t / tl.where(a1 > 0, a1, 1.0)
        factor = tl.where(t < a1, warm, 1.0 / _sqrt((t + (a2 - a1)) / a2))
    elif kind == _WSD:
        # W a1, S a2, D a3, decay a4, end a5, start a6
        d0 = a1 + a2
        p = (t - d0) / tl.where(a3 > 0, a3, 1.0)
        law = tl.where(a4 == 0, 1.0 - p,
                       tl.where(a4 == 1, 0.5 * (1.0 + _cos(3.141592653589793 * p)), 1.0 - _sqrt(tl.maximum(p, 0.0))))
        decay = a5 + (1.0 - a5) * law
        warm = a6 + (1.0 - a6) * (t / tl.where(a1 > 0, a1, 1.0))
        # t == W+S gives 1 also when D == 0 (1 is reached before the drop, torchtitan#1010)
        factor = tl.where(t < a1, warm, tl.where(t <= d0, one, tl.where(t < d0 + a3, decay, a5)))
    return factor, mom, has_m
