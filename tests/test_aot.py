"""`fusedsched aot`: ahead-of-time compile of the Triton kernels for a GPU architecture, with
no GPU. A representative handful here (the full `fusedsched aot --arch sm_90` runs in CI)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def _env():
    # compiled mode: the interpreter's @triton.jit functions cannot be compiled
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_aot_cli_representative_sm90():
    # plain and all-flags Adam, fp32 and bf16; SGD all-flags fp64: the goals hold
    cmd = [sys.executable, "-m", "fusedsched", "aot", "--arch", "sm_90", "--json",
           "--optimizer", "adam", "--dtype", "fp32", "--dtype", "bf16", "--format", "native",
           "--limit", "2"]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    if out.returncode == 2 and "No such file" in out.stdout + out.stderr:
        pytest.skip("no ptxas/cuobjdump in this triton install")
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    report = json.loads(out.stdout)
    rows = report["rows"]
    assert len(rows) == 4 and report["ok"]
    assert {(r["variant"], r["dtype"]) for r in rows} == {
        ("plain", "fp32"), ("plain", "bf16"),
        ("AMSGRAD,DECOUPLED,MAXIMIZE,HAS_GRAD_SCALE,HAS_FOUND_INF", "fp32"),
        ("AMSGRAD,DECOUPLED,MAXIMIZE,HAS_GRAD_SCALE,HAS_FOUND_INF", "bf16")}
    for r in rows:
        assert r["arch"] == "sm_90" and r["optimizer"] == "adam"
        assert r["n_spills"] == 0 and r["n_regs"] <= 64 and r["max_load_bits"] == 128, r
    assert [g["ok"] for g in report["goals"]] == [True, True, True]


def test_aot_in_process_sgd_rmsprop_sm80():
    from fusedsched.kernels.triton import aot
    rows = aot.compile_variants("sm_80", ["sgd", "rmsprop"], ["fp64"], limit=1, workers=1)
    assert [(r["optimizer"], r["variant"], r["arch"]) for r in rows] == [
        ("sgd", "USE_MOMENTUM,NESTEROV,MAXIMIZE,HAS_GRAD_SCALE,HAS_FOUND_INF", "sm_80"),
        ("rmsprop", "CENTERED,USE_MOMENTUM,MAXIMIZE,HAS_GRAD_SCALE,HAS_FOUND_INF", "sm_80")]
    assert all(ok for _, ok, _ in aot.goals(rows)), aot.goals(rows)


def test_state_formats_compile_within_the_goals():
    # every flag on: Adam with 8-bit fp32 state, RMSprop with bfloat16 state of bf16 params
    from fusedsched.kernels.triton import aot
    rows = (aot.compile_variants("sm_90", ["adam"], ["fp32"], limit=1, workers=1,
                                 formats=["8bit"])
            + aot.compile_variants("sm_90", ["rmsprop"], ["bf16"], limit=1, workers=1,
                                   formats=["bfloat16"]))
    assert [(r["optimizer"], r["format"], r["dtype"]) for r in rows] == [
        ("adam", "8bit", "fp32"), ("rmsprop", "bfloat16", "bf16")]
    assert all(ok for _, ok, _ in aot.goals(rows)), aot.goals(rows)


def test_variant_space_and_goal_check():
    from fusedsched.cli import aot as cli
    from fusedsched.kernels.triton import aot
    # flag sets x dtypes: native every dtype, bfloat16 and 8bit all but fp64
    assert len(aot.jobs_for("sm_90")) == (24 + 32 + 32) * (4 + 3 + 3)
    assert {fmt for *_, fmt, dt in aot.jobs_for("sm_90") if dt == "fp64"} == {"native"}
    assert not any(f["NESTEROV"] and not f["USE_MOMENTUM"] for _, f in aot.variants("sgd"))
    rows = [dict(optimizer="adam", variant="plain", dtype="fp32", arch="sm_90", n_regs=64,
                 n_spills=0, max_load_bits=128),
            dict(optimizer="adam", variant="AMSGRAD", dtype="fp32", arch="sm_90", n_regs=72,
                 n_spills=8, max_load_bits=64)]
    ok = [g[1] for g in aot.goals(rows)]
    assert ok == [False, False, False]
    assert aot.goals(rows[:1])[0][1] and all(g[1] for g in aot.goals(rows[:1]))
    (s,) = cli.summarize(rows)
    assert s["format"] == "native"
    assert (s["variants"], s["regs_min"], s["regs_max"], s["spills_max"],
            s["load_bits_min"]) == (2, 64, 72, 8, 64)
    assert aot._load_bits("ld.global.v4.b32 {%r1,%r2,%r3,%r4}, [%rd1];\n"
                          "ld.global.b64 %rd2, [%rd3];") == 128
