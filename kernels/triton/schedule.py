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
the reference bit for bit on every machine (tests/test_kernels.py checks it with zero
tolerance, tests/test_triton_machinery.py that numpy's functions are not used). (The interpreter does not
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

# Kind codes and slots are read as ``E.<NAME>`` (module attributes: Triton takes their int
# values as constants); the row length as a constexpr.
_NODE: tl.constexpr = tl.constexpr(E.NODE_SIZE)
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
        m = tl.load(row + E.SWITCH_MILESTONE)
        is_switch = kind == E.SWITCH
        right = t >= m
        nxt = tl.where(right, tl.load(row + E.SWITCH_RIGHT),
                       tl.load(row + E.SWITCH_LEFT)).to(tl.int32)
        t = tl.where(is_switch & right, t - m, t)
        node = tl.where(is_switch, nxt, node)
    row = program_ptr + node * _NODE
    kind = tl.load(row)
    one = tl.full((), 1.0, tl.float64)
    factor = one
    mom = one * 0.0
    has_m = one * 0.0
    # 2. The leaf: a scalar if-chain, so only the taken kind runs (and loads its slots).
    if kind == E.CONSTANT:
        factor = tl.load(row + E.CONSTANT_FACTOR)
    elif kind == E.LINEAR:
        start = tl.load(row + E.LINEAR_START)
        end = tl.load(row + E.LINEAR_END)
        total = tl.load(row + E.LINEAR_TOTAL)
        # start + (end - start) * progress, progress = min(t, T) / T (1 when T == 0), in the
        # reference's order of operations
        progress = tl.where(total > 0, tl.minimum(t, total) / tl.where(total > 0, total, 1.0),
                            1.0)
        factor = start + (end - start) * progress
    elif kind == E.STEP:
        factor = _pow(tl.load(row + E.STEP_GAMMA), tl.floor(t / tl.load(row + E.STEP_SIZE)))
    elif kind == E.EXPONENTIAL:
        factor = _pow(tl.load(row + E.EXPONENTIAL_GAMMA), t)
    elif kind == E.POLYNOMIAL:
        total = tl.load(row + E.POLYNOMIAL_TOTAL)
        power = tl.load(row + E.POLYNOMIAL_POWER)
        end = tl.load(row + E.POLYNOMIAL_END)
        tt = tl.minimum(t, total)
        # a phase of length 0 is finished (progress 1): 0 ** power, which is 1 for power 0
        base = tl.where(total > 0, 1.0 - tt / tl.where(total > 0, total, 1.0), 0.0)
        factor = _pow(base, power) * (1.0 - end) + end
    elif kind == E.COSINE:
        total = tl.load(row + E.COSINE_TOTAL)
        end = tl.load(row + E.COSINE_END)
        tt = tl.minimum(t, total)
        c = (1.0 + _cos(3.141592653589793 * tt / tl.where(total > 0, total, 1.0))) / 2.0
        factor = tl.where(total > 0, end + (1.0 - end) * c, end)
    elif kind == E.COSINE_RESTARTS:
        t0 = tl.load(row + E.RESTARTS_FIRST_CYCLE)
        mult = tl.load(row + E.RESTARTS_MULT)
        end = tl.load(row + E.RESTARTS_END)
        # Cycle i starts at T0*(mult**i - 1)/(mult - 1) (i*T0 when mult == 1); the index from
        # floor(log) is corrected by one step each way, so it is exact at every boundary.
        mult1 = mult == 1.0
        msafe = tl.where(mult1, 2.0, mult)
        n_log = tl.floor(_log(t / t0 * (msafe - 1.0) + 1.0) / _log(msafe))
        n = tl.where(mult1, tl.floor(t / t0), n_log)
        n = tl.maximum(n, 0.0)
        start = tl.where(mult1, n * t0, t0 * (_pow(msafe, n) - 1.0) / (msafe - 1.0))
        n = tl.where(start > t, n - 1.0, n)
        start = tl.where(mult1, n * t0, t0 * (_pow(msafe, n) - 1.0) / (msafe - 1.0))
        nxt = tl.where(mult1, (n + 1.0) * t0,
                       t0 * (_pow(msafe, n + 1.0) - 1.0) / (msafe - 1.0))
        n = tl.where(nxt <= t, n + 1.0, n)
        start = tl.where(nxt <= t, nxt, start)
        t_i = tl.where(mult1, t0, t0 * _pow(msafe, n))
        factor = end + (1.0 - end) * (1.0 + _cos(3.141592653589793 * (t - start) / t_i)) / 2.0
    elif kind == E.ONE_CYCLE:
        e1 = tl.load(row + E.ONE_CYCLE_END1)
        e2 = tl.load(row + E.ONE_CYCLE_END2)
        e3 = tl.load(row + E.ONE_CYCLE_END3)
        initial = tl.load(row + E.ONE_CYCLE_INITIAL)
        minimum = tl.load(row + E.ONE_CYCLE_MINIMUM)
        anneal = tl.load(row + E.ONE_CYCLE_ANNEAL)
        base_m = tl.load(row + E.ONE_CYCLE_BASE_MOMENTUM)
        max_m = tl.load(row + E.ONE_CYCLE_MAX_MOMENTUM)
        tt = tl.minimum(t, e3)                       # held at the last phase end
        three = tl.load(row + E.ONE_CYCLE_THREE_PHASE) != 0
        in1 = tt <= e1
        in2 = three & (tt <= e2)
        p_start = tl.where(in1, 0.0, tl.where(three & (tt > e2), e2, e1))
        p_end = tl.where(in1, e1, tl.where(in2, e2, e3))
        lr_s = tl.where(in1, initial, tl.where(three & (tt > e2), initial, one))
        lr_e = tl.where(in1, one, tl.where(in2, initial, minimum))
        m_s = tl.where(in1, max_m, tl.where(in2, base_m, tl.where(three, max_m, base_m)))
        m_e = tl.where(in1, base_m, max_m)
        pct = _pct(tt, p_start, p_end)
        factor = _anneal(anneal, lr_s, lr_e, pct)
        mom = _anneal(anneal, m_s, m_e, pct)
        has_m = tl.where(tl.load(row + E.ONE_CYCLE_CYCLE_MOMENTUM) != 0, one, 0.0)
    elif kind == E.CYCLIC:
        # torch CyclicLR, in factors of max_lr
        total_size = tl.load(row + E.CYCLIC_TOTAL_SIZE)
        step_ratio = tl.load(row + E.CYCLIC_STEP_RATIO)
        base = tl.load(row + E.CYCLIC_BASE)
        mode = tl.load(row + E.CYCLIC_MODE)
        base_m = tl.load(row + E.CYCLIC_BASE_MOMENTUM)
        max_m = tl.load(row + E.CYCLIC_MAX_MOMENTUM)
        cycle = tl.floor(1.0 + t / total_size)
        x = 1.0 + t / total_size - cycle
        # a rising phase of length 0 (step_ratio 0) is finished: scale 1, never 0 / 0
        rise = tl.where(step_ratio > 0, x / tl.where(step_ratio > 0, step_ratio, 1.0), one)
        scale = tl.where(x <= step_ratio, rise,
                         (x - 1.0) / tl.where(step_ratio < 1.0, step_ratio - 1.0, -1.0))
        # triangular2: 0.5**(cycle-1) underflows to 0 where torch's 1/2.0**(cycle-1)
        # overflows (pytorch/pytorch#52989).
        sf = tl.where(mode == E.CYCLIC_TRIANGULAR, one,
                      tl.where(mode == E.CYCLIC_TRIANGULAR2, _pow(one * 0.5, cycle - 1.0),
                               _pow(tl.load(row + E.CYCLIC_GAMMA), t)))
        scale = scale * sf
        factor = base + (1.0 - base) * scale
        mom = max_m - (max_m - base_m) * scale
        has_m = tl.where(tl.load(row + E.CYCLIC_CYCLE_MOMENTUM) != 0, one, 0.0)
    elif kind == E.INVERSE_SQRT:
        w = tl.load(row + E.INVERSE_SQRT_WARMUP)
        timescale = tl.load(row + E.INVERSE_SQRT_TIMESCALE)
        warm = t / tl.where(w > 0, w, 1.0)
        factor = tl.where(t < w, warm, 1.0 / _sqrt((t + (timescale - w)) / timescale))
    elif kind == E.WSD:
        w = tl.load(row + E.WSD_WARMUP)
        d = tl.load(row + E.WSD_DECAY_STEPS)
        decay = tl.load(row + E.WSD_DECAY)
        end = tl.load(row + E.WSD_END)
        start = tl.load(row + E.WSD_START)
        d0 = w + tl.load(row + E.WSD_STABLE)
        p = (t - d0) / tl.where(d > 0, d, 1.0)
        law = tl.where(decay == E.DECAY_LINEAR, 1.0 - p,
                       tl.where(decay == E.DECAY_COSINE,
                                0.5 * (1.0 + _cos(3.141592653589793 * p)),
                                1.0 - _sqrt(tl.maximum(p, 0.0))))
        decayed = end + (1.0 - end) * law
        warm = start + (1.0 - start) * (t / tl.where(w > 0, w, 1.0))
        # t == W+S gives 1 also when D == 0 (1 is reached before the drop, torchtitan#1010)
        factor = tl.where(t < w, warm, tl.where(t <= d0, one, tl.where(t < d0 + d, decayed, end)))
    return factor, mom, has_m
