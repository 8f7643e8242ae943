"""What the Triton kernels of all algorithms share on the host: tensor tables, the fp64
hyperparameter buffer, the schedule program, counters, and the variant choice.

One launch per step for the whole tensor list. The kernel reads an int64 *tensor table*
(one row per tensor: numel, then the data pointers of param, grad, state..., and the
address of its 0-dim float64 step) and an int64 *block table* (one row per program:
tensor index, first element). Pointers are cast in the kernel with
``.to(tl.pointer_type(DTYPE))``; this works under ``TRITON_INTERPRET=1`` too (checked).
Both tables live in one device buffer that is cached by the tuple of (data_ptr, numel):
a step whose tensors did not move uploads nothing.

Hyperparameters reach the kernel in fp64 through a small float64 device buffer (Triton
passes Python floats as fp32), cached by their values; a 0-dim tensor hyperparameter
(lr, momentum, betas) is copied into its slot on the device (``copy_``, no host sync).
Nothing that changes between steps is a kernel integer argument, so Triton's integer
specialisation never recompiles: the schedule position and steps are read by pointer.
"""

import torch
import triton
import triton.language as tl

from .. import schedule_encoding as E


# Device helpers shared by the kernels. fp32 division and sqrt are the correctly rounded
# div_rn / sqrt_rn (Triton's default fp32 `/` is div.full.f32, ~2 ulp; torch's are exact).
@triton.jit
def _div(a, b, FP64: tl.constexpr):
    if FP64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def _sqrt(a, FP64: tl.constexpr):
    if FP64:
        return tl.sqrt(a)
    else:
        return tl.sqrt_rn(a)


@triton.jit
def _lerp(a, b, w):
    return tl.where(w < 0.5, a + w * (b - a), b - (b - a) * (1.0 - w))

# Per dtype: (Triton element type name, block size, math dtype is fp64).
# Block sizes give every thread (num_warps=4, 128 threads) 128 bits per tensor per access:
# fp32 512 -> 4 elements (ld.global.v4.b32), fp16/bf16 1024 -> 8, fp64 256 -> 2.
BLOCK = {torch.float32: 512, torch.float16: 1024, torch.bfloat16: 1024, torch.float64: 256}
NUM_WARPS = 4
TL_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
            torch.float64: "fp64"}
ROW = 8  # int64 slots per tensor-table row: numel, p, g, s1, s2, s3, step, pad

_CACHE_MAX = 256
_tables = {}
_hps = {}
_constant_programs = {}


def _bounded_put(cache, key, value):
    if len(cache) >= _CACHE_MAX:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


def check_tensors(params, *lists):
    if not params:
        return None
    dtype, device = params[0].dtype, params[0].device
    if dtype not in BLOCK:
        raise TypeError(f"triton backend: unsupported dtype {dtype}")
    for lst in (params, *lists):
        if lst is None:
            continue
        for x in lst:
            if x.dtype != dtype or x.device != device or not x.is_contiguous():
                raise ValueError("triton backend: tensors must be contiguous, of one dtype and "
                                 f"device; got {x.dtype} {x.device} contiguous={x.is_contiguous()}")
    return dtype, device


def tables(params, grads, states, steps):
    """(tensor_table, block_table, n_blocks, aligned) on the params' device, cached.

    ``states``: list of up to 3 lists (or None). ``aligned``: every data pointer is 16-byte
    aligned, so the kernel may promise ``tl.multiple_of(ptr, 16)`` (128-bit accesses).
    """
    dtype, device = params[0].dtype, params[0].device
    lists = [params, grads] + [s for s in states] + [None] * (3 - len(states))
    key = (device, dtype,
           tuple((p.data_ptr(), p.numel()) for p in params),
           tuple(tuple(x.data_ptr() for x in lst) if lst is not None else None for lst in lists[1:]),
           tuple(s.data_ptr() for s in steps))
    hit = _tables.get(key)
    if hit is not None:
        return hit
    block = BLOCK[dtype]
    rows, blocks = [], []
    aligned = True
    for i, p in enumerate(params):
        n = p.numel()
        ptrs = [lst[i].data_ptr() if lst is not None else 0 for lst in lists]
        if n:
            aligned &= all(a % 16 == 0 for a in ptrs if a)
        rows.append([n, *ptrs, steps[i].data_ptr(), 0])
        blocks.extend([i, s] for s in range(0, n, block))
    flat = [v for r in rows for v in r] + [v for b in blocks for v in b]
    buf = torch.tensor(flat, dtype=torch.int64).to(device)
    n_rows = len(rows) * ROW
    value = (buf[:n_rows], buf[n_rows:], len(blocks), aligned)
    return _bounded_put(_tables, key, value)


def hyperparameters(device, values):
    """A float64 device buffer holding ``values`` (floats or 0-dim/1-element tensors)."""
    key = (device, tuple(("T", i) if isinstance(v, torch.Tensor) else float(v)
                         for i, v in enumerate(values)))
    buf = _hps.get(key)
    if buf is None:
        init = [0.0 if isinstance(v, torch.Tensor) else float(v) for v in values]
        buf = _bounded_put(_hps, key, torch.tensor(init, dtype=torch.float64).to(device))
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor):
            buf[i].copy_(v.detach().reshape(()))  # device copy, stream ordered, no sync
    return buf


def constant_program(device):
    prog = _constant_programs.get(device)
    if prog is None:
        rows = torch.zeros(1, E.NODE_SIZE, dtype=torch.float64)
        rows[0, 0] = E.CONSTANT
        rows[0, 1] = 1.0
        prog = _constant_programs[device] = rows.to(device)
    return prog


def schedule_args(schedule, position, device):
    """(program, n_nodes, position tensor) for the kernel; no schedule = constant 1."""
    prog = constant_program(device) if schedule is None else schedule
    if position is None:
        position = torch.zeros((), dtype=torch.float64, device=device)
    return prog, prog.shape[0], position


def advance(steps, position, found_inf, advance_position):
    """Counters after the launch, with device ops (the kernel's programs all read them, so
    they cannot be written in the kernel without a race): steps += 1 - (found_inf != 0);
    position += 1 (also on a skipped step)."""
    if steps:
        if found_inf is None:
            torch._foreach_add_(steps, 1.0)
        else:
            torch._foreach_add_(steps, (found_inf.reshape(()) == 0).to(torch.float64))
    if advance_position and position is not None:
        position.add_(1.0)


def tl_dtype(dtype):
    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
            torch.float64: tl.float64}[dtype]
