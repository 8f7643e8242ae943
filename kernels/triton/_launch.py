"""The host side of a Triton launch, shared by all algorithms: tensor tables, the fp64
hyperparameter buffer, the schedule program, counters, the variant choice and the launch
(``launch``). The device side is ``_kernel.py`` (the kernel skeleton and the table's row
layout), ``_elements.py`` (element access, correctly rounded math) and ``_state.py`` (the
state formats of ``kernels/state_format.py``).

One launch per step for the whole tensor list. The kernel reads an int64 *tensor table*
(one row per tensor: numel, then the data pointers of param, grad, state..., the address
of its 0-dim float64 step, and in the "8bit" format the states' scale pointers) and an
int64 *block table* (one row per program: tensor index, first element). Pointers are cast
in the kernel with ``.to(tl.pointer_type(DTYPE))``; this works under ``TRITON_INTERPRET=1``
too (checked).
Both tables live in one device buffer, cached across steps by the rule of
``kernels/address_table.py`` (the Numba backend's rule too): a step whose tensors did not
move uploads nothing, one whose gradients moved uploads the tensor table's rows again.

Hyperparameters reach the kernel in fp64 through a small float64 device buffer (Triton
passes Python floats as fp32), cached by their values; a 0-dim tensor hyperparameter
(lr, momentum, betas) is copied into its slot on the device (``copy_``, no host sync).
Nothing that changes between steps is a kernel integer argument, so Triton's integer
specialisation never recompiles: the schedule position and steps are read by pointer.

CUDA graphs. Once the tables and the hyperparameter buffer are cached (any step before the
capture: the usual side-stream warm-up), a step does on the host only dictionary look-ups
and one launch, and on the device: the launch, ``copy_`` of tensor hyperparameters into
their slots, ``torch._foreach_add_`` of the steps (by ``found_inf == 0``, a device
temporary from the caching allocator, which graphs allow) and ``position += 1``. No
``.item()``, no host-device copy, no synchronisation, no recompilation: ``step()`` captures
into a ``torch.cuda.CUDAGraph`` and each replay advances the schedule on the device
(tests_gpu/test_cuda_graphs.py). What a graph cannot see: a *float* hyperparameter changed
on the host after capture (e.g. a ``torch.optim.lr_scheduler`` writing ``group["lr"]``
between replays) -- the graph keeps the buffer of capture time, and outside a graph the new
value costs one small host-to-device copy the first time it is seen. To change lr, momentum
or betas under a graph, make them 0-dim device tensors and update them in place (or use a
fusedsched schedule, which the kernel evaluates on the device). A captured launch reads
the tables of capture time: a graph must be captured again if parameters, gradients or
state are reallocated.
"""

import numpy as np
import torch
import triton.language as tl

from .. import schedule_encoding as E
from .. import state_format as SF
from ..address_table import TableCache
from ..ops import SIGNATURES


# Per dtype: (Triton element type name, block size, math dtype is fp64).
# Block sizes give every thread (num_warps=4, 128 threads) 128 bits per tensor per access:
# fp32 512 -> 4 elements (ld.global.v4.b32), fp16/bf16 1024 -> 8, fp64 256 -> 2.
BLOCK = {torch.float32: 512, torch.float16: 1024, torch.bfloat16: 1024, torch.float64: 256}
NUM_WARPS = 4
# Register cap (ptxas .maxnreg, Triton's ``maxnreg`` option). Uncapped, ptxas gave Adam 62-72
# registers (sm_90: fp32 62-66, fp16/bf16 68-72, fp64 62-68; sm_80 similar): the fp64
# schedule evaluator's libdevice pow/cos/log run once per program and the 16-bit variants
# hold 8 elements x 5 streams per thread. Capped at 64, every variant of every kernel
# compiles with no spill (LOCAL 0) and keeps its 128-bit accesses (`fusedsched aot`), so
# 4 warps x 64 registers lets 8 blocks (1024 threads... 2048 on sm_90) stay resident.
MAXNREG = 64
# No floating-point contraction: by default Triton lets LLVM fuse a multiply into a
# following add (checked: ``x * y + w`` compiles to one fma.rn.f32), which rounds once where
# the reference, torch's separate CUDA kernels, rounds twice -- Adam's decoupled decay
# ``p * decay`` before the update's add, RMSprop's ``buf * momentum + g / avg``, an 8-bit
# state's ``magnitude * scale`` into lerp's subtraction. The kernels fuse only where the
# reference does, with ``_fma`` (tl.fma stays one fma.rn).
LAUNCH_OPTIONS = {"num_warps": NUM_WARPS, "maxnreg": MAXNREG,
                  "enable_fp_fusion": False}  # also what `aot` compiles
TL_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
            torch.float64: "fp64"}

_CACHE_MAX = 256
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
            if (type(x) not in _PLAIN or x.dtype != dtype or x.device != device
                    or not x.is_contiguous()):
                raise ValueError("triton backend: tensors must be plain (not a subclass), "
                                 "contiguous, of one dtype and device; got "
                                 f"{type(x).__name__} {x.dtype} {x.device} "
                                 f"contiguous={x.is_contiguous()}")
    return dtype, device


_PLAIN = (torch.Tensor, torch.nn.Parameter)   # a wrapper subclass's data_ptr() is 0
# the element dtype of the state tensors of a format other than "native"
STATE_DTYPE = {"bfloat16": torch.bfloat16, "8bit": torch.uint8}


def _check_stored(fmt, params, states, scales):
    """ValueError unless every state tensor of ``states`` (lists, None where off) is plain,
    contiguous, of ``fmt``'s dtype, on the params' device with its parameter's numel, and,
    for "8bit", its ``scales`` tensor (same place in ``scales``) plain, contiguous, fp32,
    on that device with one element per 256-element block: the kernel writes every one.
    TypeError for fp64 parameters: the stored formats are formats of float32 math (the
    optimizers refuse them too; so does every backend)."""
    dtype, device = params[0].dtype, params[0].device
    if dtype == torch.float64:
        raise TypeError(f"triton backend: state_format={fmt!r} takes float32, float16 or "
                        "bfloat16 parameters, not float64")
    want = [(STATE_DTYPE[fmt], lambda n: n)]
    if fmt == "8bit":
        want.append((torch.float32, SF.n_blocks))
    for k, lst in enumerate(states):
        if lst is None:
            continue
        columns = [lst]
        if fmt == "8bit":
            if scales[k] is None:
                raise ValueError(f"triton backend: state list {k} has no 8-bit scales")
            columns.append(scales[k])
        for column, (kind, numel) in zip(columns, want):
            for p, x in zip(params, column):
                if (type(x) not in _PLAIN or x.dtype != kind or x.device != device
                        or not x.is_contiguous() or x.numel() != numel(p.numel())):
                    raise ValueError(
                        f"triton backend: state_format={fmt!r} needs plain, contiguous "
                        f"{kind} tensors of {numel(p.numel())} elements on {device}; got "
                        f"{type(x).__name__} {x.dtype} {x.device} numel={x.numel()} "
                        f"contiguous={x.is_contiguous()}")


def _upload(host, out=None):
    """The CPU tensor ``host`` copied to ``out`` (or a new tensor on the params' device,
    when ``out`` is a torch.device). While a CUDA graph is being captured, a copy from
    pageable memory is not allowed: the copy then reads a pinned copy of ``host``,
    non_blocking, which becomes a node of the graph that each replay runs again; the
    pinned buffer is kept with the device tensor (never written again, so every replay
    copies what capture saw)."""
    if isinstance(out, torch.device):
        out = torch.empty(host.shape, dtype=host.dtype, device=out)
    if out.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        pinned = host.pin_memory()
        out.copy_(pinned, non_blocking=True)
        out.__dict__.setdefault("_fusedsched_pinned", []).append(pinned)
    else:
        out.copy_(host)
    return out


class _DeviceTable:
    """A launch's tables on the params' device (``buf``: the tensor table's rows, then the
    block table) and the host copy of the tensor table's rows (``rows``, for ``_regrad``).
    ``aligned``: every data pointer is 16-byte aligned, so the kernel may promise
    ``tl.multiple_of(ptr, 16)`` (128-bit accesses)."""
    __slots__ = ("buf", "rows", "tab", "blk", "n_blocks", "aligned")


def _build(params, grads, columns, steps, fmt):
    """The table of one launch in format ``fmt``: ``columns`` the state lists (None where
    off), then for "8bit" their scale lists in the same order."""
    n_states = len(columns) // 2 if fmt == "8bit" else len(columns)
    states, scales = list(columns[:n_states]), list(columns[n_states:])
    if fmt == "native":
        check_tensors(params, grads, *states)
    else:
        check_tensors(params, grads)
        _check_stored(fmt, params, states, scales)
    dtype, device = params[0].dtype, params[0].device
    pad = [None] * (3 - n_states)
    lists = [params, grads] + states + pad
    scale_lists = scales + pad if fmt == "8bit" else []
    block = BLOCK[dtype]
    rows, blocks = [], []
    aligned = True
    for i, p in enumerate(params):
        n = p.numel()
        ptrs = [lst[i].data_ptr() if lst is not None else 0 for lst in lists]
        scale_ptrs = [lst[i].data_ptr() if lst is not None else 0 for lst in scale_lists]
        if n:
            aligned &= all(a % 16 == 0 for a in ptrs if a)
        rows.append([n, *ptrs, steps[i].data_ptr(), 0, *scale_ptrs])
        blocks.extend([i, s] for s in range(0, n, block))
    table = _DeviceTable()
    table.rows = np.array(rows, dtype=np.int64).reshape(len(rows), len(rows[0]))
    flat = np.concatenate([table.rows.reshape(-1),
                           np.array(blocks, dtype=np.int64).reshape(-1)])
    table.buf = _upload(torch.from_numpy(flat), device)
    n_rows = table.rows.size
    table.tab, table.blk = table.buf[:n_rows], table.buf[n_rows:]
    table.n_blocks, table.aligned = len(blocks), aligned
    return table


def _regrad(table, grad_ptrs):
    """New gradient addresses into the grad column, uploaded (stream ordered: a kernel
    still reading the old table runs before the copy)."""
    table.rows[:, 2] = grad_ptrs
    table.aligned = table.aligned and all(a % 16 == 0 for a in grad_ptrs if a)
    _upload(torch.from_numpy(table.rows.reshape(-1)), table.tab)


# a table is checked for the format it is built for (a state tensor's dtype decides how
# many bytes the kernel reads and writes) and serves no other (``lookup``'s checks)
_TABLES = TableCache(_build, _regrad)
# What launches captured into CUDA graphs read (tables, hyperparameter buffers): kept alive
# here, since a graph replays its kernels on these addresses after the caches have moved
# on. Grows only with captures.
_HELD_BY_GRAPHS = []


def tables(params, grads, states, steps, state_format="native", scales=None):
    """The ``_DeviceTable`` of ``params`` (non-empty), ``grads``, ``states`` (up to 3 lists,
    None where the kernel has none) and ``steps``, cached (``address_table``); for "8bit",
    ``scales`` the states' scale lists in the same order (``ops.SIGNATURES``), their
    pointers in the rows' last three slots (``ROW_8BIT``)."""
    columns = list(states)
    if state_format == "8bit":
        if scales is None:
            raise ValueError("triton backend: state_format='8bit' needs scales")
        columns += [None if lst is None else scales[k] for k, lst in enumerate(states)]
    return _TABLES.lookup(params, grads, columns, steps, fmt=state_format)


def hyperparameters(device, values):
    """A float64 device buffer holding ``values`` (floats or 0-dim/1-element tensors)."""
    key = (device, tuple(("T", i) if isinstance(v, torch.Tensor) else float(v)
                         for i, v in enumerate(values)))
    buf = _hps.get(key)
    if buf is None:
        init = [0.0 if isinstance(v, torch.Tensor) else float(v) for v in values]
        buf = _bounded_put(_hps, key, _upload(torch.tensor(init, dtype=torch.float64), device))
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
        prog = _constant_programs[device] = _upload(rows, device)
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


def slots(algorithm, *names):
    """The slots of hyperparameters ``names`` in ``algorithm``'s hyperparameter buffer, as
    ``tl.constexpr`` (a kernel module binds them to its ``HP_*`` globals), from the
    declaration (``ops.SIGNATURES``); the name ``"momentum"`` stands for the hyperparameter
    that a schedule's momentum replaces (momentum, or Adam's beta1)."""
    signature = SIGNATURES[algorithm]
    return tuple(tl.constexpr(signature.slot(signature.momentum if name == "momentum"
                                             else name)) for name in names)


def streams(algorithm):
    """Per state of ``algorithm`` in kernel order (``ops.SIGNATURES``): (SALT, SIGNED) as
    ``tl.constexpr``, the arguments of ``_load_state``/``_store_state`` (a kernel module
    binds them to its ``*_SALT``/``*_SIGNED`` globals)."""
    signature = SIGNATURES[algorithm]
    return tuple((tl.constexpr(k), tl.constexpr(name not in signature.nonnegative))
                 for k, name in enumerate(signature.states))


def launch(kernel, algorithm, params, grads, states, steps, hyper, *, schedule, position,
           grad_scale, found_inf, advance_position, state_format, scales, **flags):
    """One update of every tensor in ``params`` by ``kernel``: a single launch over the
    tensor list, then the counters advance with device ops (``advance``).

    ``states``: the kernel's state lists (up to 3 in ``ops.SIGNATURES`` order, None where
    a variant has none), stored in ``state_format`` (``kernels/state_format.py``; the
    kernel's FORMAT), ``scales`` their 8-bit scale lists (for "8bit"); ``hyper``: the
    declared hyperparameters of ``algorithm``, whose numeric ones fill the hyperparameter
    buffer in declaration order; ``flags``: the kernel's own compile-time flags.
    """
    if state_format not in SF.FORMATS:
        raise ValueError(f"triton {algorithm}_step: state_format={state_format!r}; expected "
                         f"one of {SF.FORMATS}")
    hps = SIGNATURES[algorithm].pack(hyper)
    if params:
        table = tables(params, grads, states, steps, state_format, scales)
        if table.n_blocks:
            dtype, device = params[0].dtype, params[0].device
            hp = hyperparameters(device, hps)
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                # One table serves every graph of these tensors; each replay first writes
                # the pointers of its own capture (another graph's gradients may sit
                # elsewhere in its pool).
                _upload(torch.from_numpy(table.rows.reshape(-1)), table.tab)
                _HELD_BY_GRAPHS.append((table, hp))
            prog, n_nodes, pos = schedule_args(schedule, position, device)
            kernel[(table.n_blocks,)](
                table.tab, table.blk, hp, prog, n_nodes, pos,
                grad_scale if grad_scale is not None else hp,
                found_inf if found_inf is not None else hp,
                DTYPE=tl_dtype(dtype), BLOCK=BLOCK[dtype], ALIGNED=table.aligned,
                FORMAT=state_format,
                HAS_GRAD_SCALE=grad_scale is not None, HAS_FOUND_INF=found_inf is not None,
                **flags, **LAUNCH_OPTIONS)
    advance(steps, position, found_inf, advance_position)
