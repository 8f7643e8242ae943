"""The command line's edges: --version, a fast help that never imports torch (and a lazy
``import fusedsched``), bench's argument and validity errors, demo's dependency check, aot's
progress and cache folder, and the FUSEDSCHED_BACKEND error."""

from __future__ import annotations

import builtins
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap

import pytest

import fusedsched
from fusedsched.cli import bench as B
from fusedsched.cli import COMMANDS, main


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=env)


# ------------------------------------------------------------------------------ --version

def test_version_flag_and_attribute():
    r = subprocess.run([sys.executable, "-m", "fusedsched", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"fusedsched {fusedsched.__version__}"
    assert fusedsched.__version__ == importlib.metadata.version("fusedsched")


def test_version_falls_back_when_not_installed():
    r = _python("""
        import importlib.metadata as m
        def missing(name):
            raise m.PackageNotFoundError(name)
        m.version = missing
        import fusedsched
        print(fusedsched.__version__)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0.1.0"


# --------------------------------------------------------------- no torch for help/errors

def test_help_and_argument_errors_do_not_import_torch():
    """Help, --version and argument errors are answered without importing torch (or numpy,
    numba, triton): ``sys.modules`` after each, in a fresh interpreter."""
    r = _python("""
        import json, sys
        from fusedsched.cli import main
        heavy = ("torch", "numpy", "numba", "triton", "sklearn", "matplotlib")
        out = {}
        for argv in (["--help"], ["--version"], [], ["nosuch"], ["demo", "--help"],
                     ["bench", "--help"], ["check", "--help"], ["aot", "--help"],
                     ["bench", "--rounds", "x"], ["aot", "--arch", "sm_1"],
                     ["bench", "--only", "nosuch"], ["bench", "--remeasure", "-1"],
                     ["demo", "--steps", "1"], ["demo", "--steps", "5", "--warmup", "9"]):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
            loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
            out[" ".join(argv)] = [code, loaded[:5]]
        print("RESULT " + json.dumps(out))
    """)
    assert r.returncode == 0, r.stderr
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line[len("RESULT "):])
    for argv, (code, loaded) in out.items():
        assert loaded == [], (argv, loaded)
        want = 0 if argv in ("--help", "--version") or argv.endswith("--help") else 2
        assert code == want, (argv, code)


def test_python_m_help_importtime_has_no_torch():
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "fusedsched", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    modules = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
               if line.startswith("import time:")}
    assert "fusedsched.cli" in modules
    assert not {m for m in modules if m.split(".")[0] in ("torch", "numpy", "numba")}
    for name in COMMANDS:
        assert name in r.stdout


def test_import_fusedsched_is_lazy_and_complete():
    r = _python("""
        import sys
        import fusedsched
        assert "torch" not in sys.modules, "import fusedsched imported torch"
        assert set(fusedsched.__all__) <= set(dir(fusedsched))
        assert {"kernels", "optim", "__version__"} <= set(dir(fusedsched))
        import fusedsched.optim as optim
        for name in ("SGD", "Momentum", "RMSprop", "Adam", "AdamW"):
            assert getattr(fusedsched, name) is getattr(optim, name)
        from fusedsched import schedules as S
        assert fusedsched.schedules is S and S.cosine(10)(0) == 1.0
        from fusedsched import AdamW
        assert AdamW is optim.AdamW
        assert fusedsched.kernels.schedule_encoding.NODE_SIZE > 0
        import fusedsched.kernels.numba as kn
        assert kn.sqrt_mode() in ("ieee", "torch")
        ns = {}
        exec("from fusedsched import *", ns)
        assert set(fusedsched.__all__) <= set(ns)
        try:
            fusedsched.no_such_thing
        except AttributeError as e:
            assert "no_such_thing" in str(e)
        else:
            raise AssertionError("no AttributeError")
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


# -------------------------------------------------------------------------------- bench

@pytest.mark.parametrize("extra", [[], ["--quick"], ["--device", "cuda"]])
def test_bench_only_unknown_is_an_error_listing_valid_names(extra, capsys, tmp_path):
    rc = main(["bench", "--only", "nosuch", "--only", "1000x1k", "--out",
               str(tmp_path / "b"), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert "'nosuch'" in err and "'1000x1k'" not in err
    names = (B.cuda_workloads if "cuda" in extra else B.make_workloads)("--quick" in extra)
    for w in names:
        assert w.name in err
    assert not (tmp_path / "b").exists()


def _record(roof_ms: float, fs_ms: float = 1.0) -> dict:
    wl = B.Workload("adam float32 host 1x1k", "adam", "float32", [(1024,)], "host")
    times = {"roof": [roof_ms * 1e-3], "loop": [5e-3], "foreach": [4e-3], "fused": [3e-3],
             "fusedsched": [fs_ms * 1e-3]}
    return B.summarize(wl, times, {}, {n: True for n in times if n != "roof"}, False)


def test_roof_violations():
    assert B.roof_violations(_record(0.5)) == []
    assert B.roof_violations(_record(1.0 * (1 + B.ROOF_TOLERANCE) * 0.999)) == []
    assert B.roof_violations(_record(2.0)) == ["fusedsched"]
    assert B.roof_violations(_record(6.0)) == ["loop", "foreach", "fused", "fusedsched"]


@pytest.mark.parametrize("remeasure, roofs, rc, calls", [
    (2, [2.0, 2.0, 2.0, 0.5], 1, 3),     # still slower after 2 re-measurements: not valid
    (0, [2.0, 0.5], 1, 1),               # no re-measurement asked for
    (2, [2.0, 0.5], 0, 2),               # the second measurement is valid
])
def test_bench_roof_slower_than_a_provider_is_not_valid(monkeypatch, tmp_path, capsys,
                                                        remeasure, roofs, rc, calls):
    seen = []

    def fake_measure(wl, *a, **k):
        seen.append(wl.name)
        return _record(roofs[len(seen) - 1])

    monkeypatch.setattr(B, "measure_workload", fake_measure)
    got = main(["bench", "--only", "host", "--no-startup", "--remeasure", str(remeasure),
                "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert got == rc and len(seen) == calls
    result = json.loads((tmp_path / "bench.json").read_text())
    (rec,) = result["results"]
    assert rec["measurements"] == calls
    assert result["valid"] is rec["valid"] is (rc == 0)
    if rc:
        assert "NOT VALID" in captured.err and "not valid" in captured.err
        assert "roof measured 2 ms per step, slower than fusedsched (1 ms)" in captured.err
        assert "(not valid)" in captured.out
    else:
        assert "not valid" not in captured.err.lower()


def test_bench_table_shows_ratios_and_the_roof_not_goals():
    from rich.console import Console

    console = Console(record=True, width=250)
    B.print_table(console, [_record(0.5)], {})
    text = console.export_text()
    for col in ("roof", "vs roof", "vs loop", "vs foreach", "vs torch fused"):
        assert col in text
    assert "2.00x" in text            # fusedsched 1 ms over the roof's 0.5 ms
    assert "3.00x" in text            # torch fused 3 ms over fusedsched's 1 ms
    for word in ("MISS", "goal", "target"):
        assert word not in text


# --------------------------------------------------------------------------------- demo

@pytest.mark.parametrize("blocked, dist", [("matplotlib", "matplotlib"),
                                           ("sklearn", "scikit-learn")])
def test_demo_without_dev_extra_says_what_to_install(monkeypatch, tmp_path, capsys,
                                                     blocked, dist):
    from fusedsched.cli import demo

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == blocked or name.startswith(blocked + "."):
            raise ModuleNotFoundError(f"No module named {blocked!r}", name=blocked)
        return real_import(name, *args, **kwargs)

    def no_training(*a, **k):
        raise AssertionError("the demo trained before checking its dependencies")

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(demo, "load_data", no_training)
    monkeypatch.setattr(demo, "run_fusedsched", no_training)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert dist in err and 'pip install "fusedsched[dev]"' in err
    assert not out.exists()


def test_demo_missing_module_in_sys_modules(monkeypatch):
    from fusedsched.cli import demo

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "matplotlib.figure", raising=False)
    assert demo.missing_requirements() == ["matplotlib"]


# ---------------------------------------------------------------------------------- aot

def test_aot_reports_progress_and_where_it_writes(monkeypatch, tmp_path, capsys):
    """Progress per variant with an estimate of the time left, and the cache folder, on
    stderr (the compile itself is faked: ``test_aot.py`` compiles for real)."""
    from fusedsched.cli import aot as cli
    from fusedsched.kernels.triton import aot

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)   # restored after the test
    before = os.environ.get("TRITON_CACHE_DIR")
    seen = {}

    def fake_compile(arch, optimizers, dtypes, limit, workers, progress, formats):
        seen["cache"] = os.environ.get("TRITON_CACHE_DIR")
        rows = []
        for _, opt, flags, fmt, dt in aot.jobs_for(arch, optimizers, dtypes, limit, formats):
            row = dict(optimizer=opt, variant=",".join(k for k, v in flags.items() if v)
                       or "plain", format=fmt, dtype=dt, arch=arch, n_regs=60, n_spills=0,
                       max_load_bits=128)
            rows.append(row)
            progress(row)
        return rows

    monkeypatch.setattr(aot, "compile_variants", fake_compile)
    cache = tmp_path / "triton-cache"
    rc = main(["aot", "--arch", "sm_90", "--optimizer", "sgd", "--dtype", "fp32",
               "--format", "8bit", "--limit", "2", "--cache-dir", str(cache), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert seen["cache"] == str(cache)
    assert os.environ.get("TRITON_CACHE_DIR") == before      # the caller's setting is kept
    assert f"Writes only Triton's cache: {cache}" in captured.err
    lines = [x for x in captured.err.splitlines() if x.startswith("[aot] ")]
    assert len(lines) == 2 and lines[0].startswith("[aot] 1/2 sgd/plain/8bit/fp32 sm_90")
    assert all("left)" in x and "elapsed" in x for x in lines)
    report = json.loads(captured.out)
    assert report["ok"] and report["triton_cache_dir"] == str(cache)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cli.triton_cache_dir() == str(tmp_path / "elsewhere")


def test_aot_cache_dir_receives_the_compiled_kernels(tmp_path):
    """A real compile of one variant writes Triton's cache under --cache-dir only."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cache = tmp_path / "cache"
    r = subprocess.run([sys.executable, "-m", "fusedsched", "aot", "--arch", "sm_80",
                        "--optimizer", "sgd", "--dtype", "fp32", "--format", "native",
                        "--limit", "1", "--cache-dir", str(cache)], env=env,
                       capture_output=True, text=True,
                       timeout=600)
    if r.returncode == 2 and "No such file" in r.stdout + r.stderr:
        pytest.skip("no ptxas/cuobjdump in this triton install")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Writes only Triton's cache: {cache}" in r.stderr
    assert "[aot] 1/1 sgd/" in r.stderr
    assert any(cache.rglob("*.cubin")), sorted(str(p) for p in cache.rglob("*"))[:20]


# ------------------------------------------------------------------- FUSEDSCHED_BACKEND

def test_backend_env_error_names_the_variable(monkeypatch):
    import torch

    from fusedsched.optim import _backend

    monkeypatch.setenv("FUSEDSCHED_BACKEND", "bogus")
    with pytest.raises(ValueError, match=r"environment variable FUSEDSCHED_BACKEND='bogus'"):
        _backend.resolve("auto", torch.device("cpu"))
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    opt = fusedsched.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="FUSEDSCHED_BACKEND='bogus'"):
        opt.step()
    assert p.tolist() == [1.0, 1.0]
    # a valid name that cannot serve the device: the message says it came from the variable
    monkeypatch.setenv("FUSEDSCHED_BACKEND", "numba")
    with pytest.raises(ValueError, match="FUSEDSCHED_BACKEND='numba'.*cannot serve"):
        _backend.resolve("auto", torch.device("meta"))
    monkeypatch.setenv("FUSEDSCHED_BACKEND", "auto")
    assert _backend.resolve("auto", torch.device("cpu")) == "numba"


def test_bench_sweep_rows_targets_and_plot(tmp_path):
    """The full run's size sweep (one fp32 tensor of each SWEEP_SIZES size per optimizer,
    ``--only sweep``), the issue-15 targets on its cache-resident and mid-size rows, and
    the time-per-element plot."""
    full = B.make_workloads(False)
    sweep = [w for w in full if B.selects(B.SWEEP, w)]
    assert {(w.optimizer, w.numel) for w in sweep} == {
        (o, n) for o in B.BENCH for n in B.SWEEP_SIZES}
    assert B.check_only([B.SWEEP], full, False) is None
    assert not B.selects(B.SWEEP, next(w for w in full if w.dtype == "bfloat16"))
    by_name = {w.name: w for w in sweep}
    labels = lambda name: [t[0] for t in B.targets_for(by_name[name])]  # noqa: E731
    assert ">= 2x torch fused" in labels("adam float32 1x10k")
    assert ">= 2x torch best" in labels("rmsprop float32 1x1M")
    assert not any("2x" in t for t in labels("adam float32 1x1k"))
    records = []
    for n in (10**3, 10**4):
        wl = B.Workload(f"adam float32 1x{n}", "adam", "float32", [(n,)])
        times = {k: [n * 1e-9 * f] for k, f in (("roof", 1), ("fused", 4), ("fusedsched", 2),
                                               ("flat", 2))}   # a row marked flat
        records.append(B.summarize(wl, times, {}, {}, False))
    machine = {"cpu": "cpu", "torch_threads": 2, "torch": "x"}
    assert all("flat" in r["providers"] for r in records)
    assert B.write_sweep_png(tmp_path / "s.png", records, machine)
    assert B.write_png(tmp_path / "g.png", records, machine)
    assert (tmp_path / "s.png").stat().st_size > 0
    assert not B.write_sweep_png(tmp_path / "t.png", records[:1], machine)


def test_bench_state_format_rows(monkeypatch):
    """``--only state_dtype``: the Adam state format rows, one per size, each with every
    provider's time, its ratio to torch fused and its state bytes per element."""
    from rich.console import Console

    from fusedsched.cli import bench_state

    full = B.make_workloads(False)
    assert B.check_only(["state_dtype"], full, False) is None
    assert B.check_only(["state_dtype"], full, True) is None
    monkeypatch.setattr(bench_state, "SIZES", (1000,))
    (row,) = bench_state.measure(True, rounds=1, min_run_time=0.01)
    assert set(row["ms"]) == {"torch fused", "roof", "native", "bfloat16", "8bit"}
    assert row["vs_torch_fused"]["torch fused"] == 1.0
    assert row["state_bytes_per_element"]["native"] == 8.0
    assert row["state_vs_fp32"]["bfloat16"] == 0.5
    assert row["state_vs_fp32"]["8bit"] == pytest.approx((2 + 2 * 4 * 4 / 1000) / 8)
    bench_state.print_rows(Console(file=open(os.devnull, "w")), [row])


def test_bench_state_format_rows_parameter_list(monkeypatch):
    """The full ``state_dtype`` rows end with the ResNet-50 parameter list: one kernel call
    per provider for all its tensors, each tensor with its own 8-bit block scales."""
    from fusedsched.cli import bench_state

    shapes = [(3, 5), (7,), (300,)]
    monkeypatch.setattr(bench_state, "SIZES", (1000,))
    monkeypatch.setattr(B, "resnet50_shapes", lambda: shapes)
    one, listed = bench_state.measure(False, rounds=1, min_run_time=0.01)
    assert (one["workload"], one["tensors"]) == ("1e+03", 1)
    assert (listed["workload"], listed["tensors"], listed["numel"]) == ("resnet50", 3, 322)
    assert listed["state_bytes_per_element"]["native"] == 8.0
    # codes: 2 B per element; scales: 1 + 1 + 2 blocks per state, 2 states of fp32
    assert listed["state_bytes_per_element"]["8bit"] == pytest.approx((2 * 322 + 8 * 4) / 322)


def test_bench_compile_rows():
    """``--only compile``: the compiled ``opt.step()`` against its eager twin (bit-identical
    after the same steps) beside torch's AdamW eager and compiled, torch.compile's own cost
    per call, and the compiled train steps of fusedsched and torch fused, every
    time measured in one interleaved loop."""
    from fusedsched.cli import bench_compile

    res = bench_compile.measure(True, rounds=1, min_run_time=0.01)
    (row,) = res["step"]
    assert row["bit_identical"] and row["eager_ms"] > 0 and row["compiled_ms"] > 0
    assert row["compiled_vs_eager"] == row["compiled_ms"] / row["eager_ms"]
    assert row["torch_compiled_vs_eager"] == row["torch_compiled_ms"] / row["torch_eager_ms"]
    floor = res["floor"]
    assert floor["eager_us"] > 0 and floor["compiled_us"] > 0
    assert floor["added_us"] == floor["compiled_us"] - floor["eager_us"]
    assert set(res["train"]["ms"]) == {f"{name}, {mode}" for name in ("fusedsched", "torch fused")
                                       for mode in ("eager", "compiled")}
