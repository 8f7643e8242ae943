"""Ahead-of-time compile check of every Triton kernel variant (no GPU needed).

``compile_variants(arch)`` compiles every variant the library can launch (optimizer x
compile-time flags x state format x dtype, in the ALIGNED form that the 16-byte-aligned
tensors of a normal allocation select) with ``triton.compile`` for a ``GPUTarget`` and
returns one row per variant: optimizer, variant, format, dtype, arch, n_regs, n_spills,
max_load_bits. State formats (``kernels/state_format.py``): "native" for every dtype,
"bfloat16" and "8bit" for the 32- and 16-bit ones (formats of float32 math: the launcher
refuses fp64 parameters with them). Registers and
spills come from ``cuobjdump -res-usage`` on the cubin (REG, and LOCAL = spilled bytes per
thread; ``CompiledKernel.n_regs`` is only filled in when a driver loads the binary);
max_load_bits is the widest ``ld.global`` in the PTX.

Under ``TRITON_INTERPRET=1`` ``@triton.jit`` yields interpreter functions that cannot be
compiled, so then the work runs in a subprocess without that variable.

Every launch uses ``_launch.LAUNCH_OPTIONS`` (4 warps, ``maxnreg`` 64), and so does this
compile. The schedule is not a compile-time parameter: every kernel evaluates the schedule
program (``kernels/schedule_encoding.py``) at run time, so one binary per variant serves every
schedule encoding ("schedule: program" in the rows).

Goals (``goals(rows)``): no spills, at most 64 registers, 128-bit global loads for fp32 (and
recorded for every dtype). Before the register cap (triton 3.8.0): Adam sm_90 fp32 62-66,
fp16/bf16 68-72, fp64 62-68 registers; sm_80 fp32 64, fp64 62-68, 16-bit 66-72. With it: 64
everywhere it was above, no spills, 128-bit loads kept. With the state formats and no
floating-point contraction (880 variants, sm_90): no spills, 128-bit loads everywhere;
registers SGD 58-62 (8bit 58-64), RMSprop 60-64 (8bit 62-64), Adam 62-64 (8bit 64).

Time: ~1-3 s of CPU per variant (LLVM + ptxas, much of it the fp64 evaluator's libdevice
cos/pow/log), spread over a process pool; Triton's cache (``TRITON_CACHE_DIR``, default
~/.triton/cache) makes a repeated run a few seconds.
"""

import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time

DTYPES = ("fp32", "fp16", "bf16", "fp64")
_COMMON = ("MAXIMIZE", "HAS_GRAD_SCALE", "HAS_FOUND_INF")
FLAGS = {
    "sgd": ("USE_MOMENTUM", "NESTEROV") + _COMMON,
    "rmsprop": ("CENTERED", "USE_MOMENTUM") + _COMMON,
    "adam": ("AMSGRAD", "DECOUPLED") + _COMMON,
}
_BLOCK = {"fp32": 512, "fp16": 1024, "bf16": 1024, "fp64": 256}  # = _launch.BLOCK
FORMATS = ("native", "bfloat16", "8bit")        # = state_format.FORMATS
FORMAT_DTYPES = {"native": DTYPES, "bfloat16": ("fp32", "fp16", "bf16"),
                 "8bit": ("fp32", "fp16", "bf16")}


def _valid(optimizer, flags):
    # sgd: NESTEROV only with momentum (the optimizer class rejects nesterov without it)
    return not (optimizer == "sgd" and flags["NESTEROV"] and not flags["USE_MOMENTUM"])


def variants(optimizer=None):
    """[(optimizer, {flag: bool})] for every launchable flag combination."""
    out = []
    for opt in ([optimizer] if optimizer else list(FLAGS)):
        for bits in itertools.product((False, True), repeat=len(FLAGS[opt])):
            flags = dict(zip(FLAGS[opt], bits))
            if _valid(opt, flags):
                out.append((opt, flags))
    return out


def _arch_number(arch):
    m = re.fullmatch(r"(?:sm_?)?(\d+)", str(arch))
    if not m:
        raise ValueError(f"arch must look like 'sm_90', got {arch!r}")
    return int(m.group(1))


def _res_usage(cubin):
    import triton
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        name = f.name
    try:
        out = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "-res-usage", name],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(name)
    regs = int(re.search(r"REG:(\d+)", out).group(1))
    local = int(re.search(r"LOCAL:(\d+)", out).group(1))
    return regs, local


def _load_bits(ptx):
    bits = 0
    for vec, width in re.findall(r"ld\.global(?:\.\w+)*?(?:\.v(\d))?\.[bufs](\d+)", ptx):
        bits = max(bits, int(vec or 1) * int(width))
    return bits


def _compile_one(job):
    arch, opt, flags, fmt, dt = job
    return _compile_rows(arch, [(opt, flags)], [dt], fmt)[0]


def jobs_for(arch, optimizers=None, dtypes=None, limit=None, formats=None):
    """The (arch, optimizer, flags, format, dtype) compile jobs, optionally filtered.
    ``limit`` (quick tests) keeps ``limit`` flag combinations per optimizer: the first
    ``limit - 1`` (plain first) and the last (every flag on)."""
    jobs = []
    for opt in optimizers or list(FLAGS):
        vs = variants(opt)
        if limit is not None and limit < len(vs):
            vs = vs[:max(limit - 1, 0)] + vs[-1:] if limit > 0 else []
        for fmt in formats or FORMATS:
            for _, flags in vs:
                for dt in dtypes or DTYPES:
                    if dt in FORMAT_DTYPES[fmt]:
                        jobs.append((arch, opt, flags, fmt, dt))
    return jobs


def _compile_here(jobs, workers=None, progress=None):
    """Compile ``jobs`` over a process pool (spawned workers: each compile is 1-3 s of CPU);
    rows come back in job order. ``progress(row)`` is called as each finishes."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    rows = [None] * len(jobs)
    if workers == 1:
        for i, job in enumerate(jobs):
            rows[i] = _compile_one(job)
            if progress:
                progress(rows[i])
        return rows
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_compile_one, job): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            rows[futures[fut]] = fut.result()
            if progress:
                progress(rows[futures[fut]])
    return rows


def _compile_rows(arch, var_list, dtypes, fmt="native"):
    import triton
    from triton.backends.compiler import GPUTarget

    from . import _launch as L
    from .adam import adam_kernel
    from .rmsprop import rmsprop_kernel
    from .sgd import sgd_kernel
    kernels = {"sgd": sgd_kernel, "rmsprop": rmsprop_kernel, "adam": adam_kernel}
    cap = _arch_number(arch)
    target = GPUTarget("cuda", cap, 32)
    sig = {"tab_ptr": "*i64", "blk_ptr": "*i64", "hp_ptr": "*fp64", "prog_ptr": "*fp64",
           "n_nodes": "i32", "pos_ptr": "*fp64", "gs_ptr": "*fp32", "fi_ptr": "*fp32"}
    # the launcher's specialisation: every pointer argument is 16-byte aligned
    attrs = {(i,): [["tt.divisibility", 16]] for i, k in enumerate(sig) if k.endswith("_ptr")}
    rows = []
    for opt, flags in var_list:
        for dt in dtypes:
            import triton.language as tl
            consts = {"DTYPE": getattr(tl, {"fp32": "float32", "fp16": "float16",
                                            "bf16": "bfloat16", "fp64": "float64"}[dt]),
                      "BLOCK": _BLOCK[dt], "ALIGNED": True, "FORMAT": fmt, **flags}
            full_sig = dict(sig, **{k: "constexpr" for k in consts})
            src = triton.compiler.ASTSource(fn=kernels[opt], signature=full_sig,
                                            constexprs=consts, attrs=attrs)
            t0 = time.perf_counter()
            ck = triton.compile(src, target=target, options=dict(L.LAUNCH_OPTIONS))
            compile_s = time.perf_counter() - t0
            regs, spill = _res_usage(ck.asm["cubin"])
            rows.append({"optimizer": opt,
                         "variant": ",".join(k for k, v in flags.items() if v) or "plain",
                         "format": fmt, "dtype": dt, "arch": f"sm_{cap}", "n_regs": regs,
                         "n_spills": spill,
                         "max_load_bits": _load_bits(ck.asm["ptx"]), "schedule": "program",
                         "compile_s": round(compile_s, 2)})
    return rows


def compile_variants(arch: str, optimizers=None, dtypes=None, limit=None, workers=None,
                     progress=None, formats=None) -> list:
    """Compile every kernel variant for ``arch`` ("sm_80", "sm_90"); one dict per variant
    (filters as in ``jobs_for``)."""
    from .schedule import INTERPRET
    if not INTERPRET:
        return _compile_here(jobs_for(arch, optimizers, dtypes, limit, formats), workers,
                             progress)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json, sys; from fusedsched.kernels.triton.aot import compile_variants; "
            "a = json.loads(sys.argv[1]); "
            "json.dump(compile_variants(*a[:5], formats=a[5]), sys.stdout)")
    args = json.dumps([arch, optimizers, dtypes, limit, workers, formats])
    out = subprocess.run([sys.executable, "-c", code, args], env=env, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


MAX_REGS = 64


def goals(rows) -> list:
    """[(goal, ok, detail)]: no spills, <= 64 registers, 128-bit loads for fp32."""
    spills = [r for r in rows if r["n_spills"] > 0]
    regs = [r for r in rows if r["n_regs"] > MAX_REGS]
    narrow = [r for r in rows if r["dtype"] == "fp32" and r["max_load_bits"] < 128]

    def names(rs):
        return ", ".join(f"{r['optimizer']}/{r['variant']}/{r.get('format', 'native')}/"
                         f"{r['dtype']}/{r['arch']}"
                         f"({r['n_regs']}r,{r['n_spills']}B,{r['max_load_bits']}b)"
                         for r in rs[:5]) + (f" and {len(rs) - 5} more" if len(rs) > 5 else "")
    return [("no spills", not spills, names(spills) or f"{len(rows)} variants"),
            (f"<= {MAX_REGS} registers", not regs,
             names(regs) or f"max {max((r['n_regs'] for r in rows), default=0)}"),
            ("128-bit fp32 loads", not narrow,
             names(narrow) or f"{sum(r['dtype'] == 'fp32' for r in rows)} fp32 variants")]


if __name__ == "__main__":
    for a in sys.argv[1:] or ["sm_90"]:
        t0 = time.time()
        for r in compile_variants(a):
            print(r)
        print(f"{a}: {time.time() - t0:.1f} s", file=sys.stderr)
