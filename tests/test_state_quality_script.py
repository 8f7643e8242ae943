"""The state-precision quality scripts run end to end and write what they promise: a tiny
configuration (a few steps of a minute model, seconds), checked for the structure of its
outputs only; the quality numbers and the timings are the committed full run's business."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ["fp32", "bf16", "8bit", "bf16_nearest", "torch_fp32", "fp32_reshuffled"]


def _run(script, *args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def quality(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    _run("bench_state_quality.py", "--steps", "4", "--out", str(out), "--d-model", "16",
         "--heads", "2", "--context", "16", "--batch", "4", "--eval-every", "2",
         "--eval-windows", "4", "--threads", "1",
         "--corpus-files", "textwrap.py,heapq.py")
    with open(out / "quality.json") as f:
        return out, json.load(f)


def test_json_structure(quality):
    _, result = quality
    assert list(result["modes"]) == MODES
    for name, m in result["modes"].items():
        assert m["steps"] == 4
        assert [c[0] for c in m["curve"]] == [0, 2, 4]
        assert all(isinstance(c[1], float) for c in m["curve"])
        for key in ("final_heldout_loss", "wall_s", "state_bytes_per_element",
                    "rel_diff_vs_fp32"):
            assert isinstance(m[key], float), (name, key)
    assert result["modes"]["fp32"]["rel_diff_vs_fp32"] == 0.0
    assert set(result["target_met"]) == {"bf16", "8bit"}
    assert isinstance(result["cross_check_max_abs_diff"], float)
    assert result["corpus"]["files"] == ["textwrap.py", "heapq.py"]
    assert len(result["corpus"]["sha256"]) == 64
    assert result["model"]["tensors_below_one_block"] > 0
    assert result["command"].startswith("python bench/bench_state_quality.py --steps 4")


def test_state_bytes(quality):
    # Exact by construction: 2 moments of 4 / 2 bytes; 8-bit: 1 byte + a float32 scale per
    # started block of each tensor.
    _, result = quality
    modes, sizes = result["modes"], result["model"]["sizes"]
    assert modes["fp32"]["state_bytes_per_element"] == 8.0
    assert modes["torch_fp32"]["state_bytes_per_element"] == 8.0
    assert modes["fp32_reshuffled"]["state_bytes_per_element"] == 8.0
    assert modes["bf16"]["state_bytes_per_element"] == 4.0
    assert modes["bf16_nearest"]["state_bytes_per_element"] == 4.0
    scales = sum(-(-n // 256) for n in sizes)
    assert modes["8bit"]["state_bytes_per_element"] == pytest.approx(
        2 * (sum(sizes) + 4 * scales) / sum(sizes))


def test_markdown_and_plot(quality):
    out, result = quality
    text = (out / "quality.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(MODES)          # the header and one row per mode
    for name in MODES:
        assert any(row.startswith(f"| {name} |") for row in rows)
    assert result["command"] in text
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_corpus_file(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_state_quality.py"),
                           "--steps", "1", "--out", str(tmp_path),
                           "--corpus-files", "textwrap.py,no_such_module.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "no_such_module.py" in proc.stderr and "missing" in proc.stderr
    assert not (tmp_path / "quality.json").exists()


def test_stall_script(tmp_path):
    proc = _run("bench_bf16_stall.py", "--steps", "20", "--elements", "512", "--threads", "1",
                "--out", str(tmp_path))
    text = (tmp_path / "bf16_stall.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 4           # header; 2 scenarios x 2 roundings
    assert "python bench/bench_bf16_stall.py --steps 20" in text
    assert proc.stdout.strip()
