"""Ahead-of-time compile check of every Triton kernel variant (no GPU needed).

``compile_variants(arch)`` compiles every variant the library can launch (optimizer x
compile-time flags x dtype, in the ALIGNED form that the 16-byte-aligned tensors of a normal
allocation select) with ``triton.compile`` for a ``GPUTarget`` and returns one row per
variant: optimizer, variant, dtype, arch, n_regs, n_spills, max_load_bits. Registers and
spills come from ``cuobjdump -res-usage`` on the cubin (REG, and LOCAL = spilled bytes per
thread; ``CompiledKernel.n_regs`` is only filled in when a driver loads the binary);
max_load_bits is the widest ``ld.global`` in the PTX.

Under ``TRITON_INTERPRET=1`` ``@triton.jit`` yields interpreter functions that cannot be
compiled, so then the work runs in a subprocess without that variable.

Measured (triton 3.8.0, 352 variants per arch: sgd 24 + rmsprop 32 + adam 32 flag combos x
4 dtypes; cold cache, 2 shared cores): sm_80 503 s wall (~1 s CPU per variant, LLVM + ptxas,
much of it the fp64 evaluator's libdevice cos/pow/log, instantiated twice: full and tail
block). No spills anywhere; every variant has 128-bit global loads. Registers sm_80: sgd
52-56, rmsprop 54-64, adam fp32 64, adam fp64 62-68, adam fp16/bf16 66-72 (the 64 goal is
missed by Adam 16-bit, 8 elements/thread x 5 streams; BLOCK 512 for 16-bit would trade it
for 64-bit loads). sm_90 spot checks: adam fp32 66, fp16 72, bf16 70, fp64 68; sgd 56-58.
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
    arch, opt, flags, dt = job
    return _compile_rows(arch, [(opt, flags)], [dt])[0]


def _compile_here(arch):
    """All variants, spread over a process pool (each compile is ~1 s of CPU: LLVM + ptxas,
    most of it the fp64 schedule evaluator's libdevice cos/pow/log)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    jobs = [(arch, opt, flags, dt) for opt, flags in variants() for dt in DTYPES]
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        return _compile_rows(arch, variants(), DTYPES)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_compile_one, jobs, chunksize=4))


def _compile_rows(arch, var_list, dtypes):
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
                      "BLOCK": _BLOCK[dt], "ALIGNED": True, **flags}
            full_sig = dict(sig, **{k: "constexpr" for k in consts})
            src = triton.compiler.ASTSource(fn=kernels[opt], signature=full_sig,
                                            constexprs=consts, attrs=attrs)
            ck = triton.compile(src, target=target, options={"num_warps": L.NUM_WARPS})
            regs, spill = _res_usage(ck.asm["cubin"])
            rows.append({"optimizer": opt,
                         "variant": ",".join(k for k, v in flags.items() if v) or "plain",
                         "dtype": dt, "arch": f"sm_{cap}", "n_regs": regs, "n_spills": spill,
                         "max_load_bits": _load_bits(ck.asm["ptx"])})
    return rows


def compile_variants(arch: str) -> list:
    """Compile every kernel variant for ``arch`` ("sm_80", "sm_90"); one dict per variant."""
    from .schedule import INTERPRET
    if not INTERPRET:
        return _compile_here(arch)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json, sys; from fusedsched.kernels.triton.aot import compile_variants; "
            "json.dump(compile_variants(sys.argv[1]), sys.stdout)")
    out = subprocess.run([sys.executable, "-c", code, arch], env=env, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


if __name__ == "__main__":
    for a in sys.argv[1:] or ["sm_90"]:
        t0 = time.time()
        for r in compile_variants(a):
            print(r)
        print(f"{a}: {time.time() - t0:.1f} s", file=sys.stderr)
