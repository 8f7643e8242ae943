"""``fusedsched check``: the parity matrix against torch.optim as a command."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fusedsched.cli import check as C
from fusedsched.cli import optim_db as DB
from fusedsched.cli import COMMANDS, main


def _only(monkeypatch, *names):
    """The check matrix over the defaults of ``names`` only (the database patched)."""
    monkeypatch.setattr(DB, "OPTIMIZERS", {n: DB.OPTIMIZERS[n]._replace(configs=({},))
                                          for n in names})


def test_registered():
    assert COMMANDS["check"][0] == "fusedsched.cli.check"


def test_quick_passes_prints_table_and_writes_only_under_out(tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["check", "--device", "cpu", "--quick", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "all within tolerance" in text
    for word in ("backend", "dtype", "optimizer", "max error", "tolerance", "reference",
                 "numba", "float32", "float64", "adamw", "rmsprop"):
        assert word in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    assert sorted(p.name for p in out.iterdir()) == ["check.json"]
    result = json.loads((out / "check.json").read_text())
    assert result["ok"] and result["quick"]
    backends = {r["backend"] for r in result["rows"]}
    assert {"reference", "numba"} <= backends
    optimizers = {r["optimizer"] for r in result["rows"]}
    assert optimizers == set(DB.OPTIMIZERS)
    assert all(r["max_error"] <= r["tolerance"] for r in result["rows"])


def test_without_out_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(C, "QUICK_DTYPES", ("float64",))
    _only(monkeypatch, "adam")
    monkeypatch.setattr(C, "SCHEDULE_OPTIMIZERS", ())
    monkeypatch.setattr(C, "QUICK_SCHEDULE_OPTIMIZERS", ())
    assert main(["check", "--device", "cpu", "--quick"]) == 0
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_result_fails_with_nonzero_exit(monkeypatch, capsys):
    """A kernel that computes a wrong value (here: an lr 1e-6 too large relative) makes the
    check fail, name the case and exit 1."""
    import fusedsched as fs

    real = fs.Adam._kernel_args

    def wrong(self, group, lr):
        args = real(self, group, lr)
        args["lr"] = float(args["lr"]) * (1 + 1e-6)
        return args

    monkeypatch.setattr(fs.Adam, "_kernel_args", wrong)
    monkeypatch.setattr(C, "QUICK_DTYPES", ("float64",))
    _only(monkeypatch, "adam", "sgd")
    monkeypatch.setattr(C, "QUICK_SCHEDULE_OPTIMIZERS", ())
    monkeypatch.setattr(C, "_backends", lambda device: ["reference"])
    rc = main(["check", "--device", "cpu", "--quick"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "FAIL cpu reference float64: adam(defaults) warmup_cosine" in text
    lines = [l for l in text.splitlines() if l.startswith("cpu")]
    assert any(" sgd " in l and " ok " in l for l in lines)


def test_a_crash_is_a_failure(monkeypatch, capsys):
    import fusedsched as fs

    def boom(self, *a, **k):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(fs.RMSprop, "step", boom)
    monkeypatch.setattr(C, "QUICK_DTYPES", ("float32",))
    _only(monkeypatch, "rmsprop")
    monkeypatch.setattr(C, "QUICK_SCHEDULE_OPTIMIZERS", ())
    monkeypatch.setattr(C, "_backends", lambda device: ["reference"])
    assert main(["check", "--device", "cpu", "--quick"]) == 1
    assert "RuntimeError: kernel exploded" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_exits_2(capsys):
    assert main(["check", "--device", "cuda", "--quick"]) == 2
    assert "no CUDA device" in capsys.readouterr().out


def test_error_measure():
    t = torch.tensor
    assert C._error(torch, t([1.0, 2.0]), t([1.0, 2.0])) == 0.0
    assert C._error(torch, t([1.0, 2.5]), t([1.0, 2.0])) == pytest.approx(0.25)
    assert C._error(torch, t([float("nan")]), t([1.0])) == math.inf
    assert C._error(torch, t([1.0]), t([float("nan")])) == math.inf
    assert C._error(torch, t([]), t([])) == 0.0
    assert C._error(torch, t([1e-9]), t([0.0])) == pytest.approx(1e-3)


def test_half_dtypes_in_full_matrix_have_scaled_tolerance():
    assert C._tolerance(torch, "bfloat16", 30) == pytest.approx((4 + 15) * 2 ** -7)
    assert C._tolerance(torch, "float64", 30) == 1e-10
    assert set(C.DTYPE_NAMES) == {"float64", "float32", "bfloat16", "float16"}
