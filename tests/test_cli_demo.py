"""The command line: ``python -m fusedsched --help`` and ``fusedsched demo`` end to end."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import pytest

from fusedsched.cli import COMMANDS, main



def test_python_m_help_lists_demo():
    r = subprocess.run([sys.executable, "-m", "fusedsched", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: fusedsched" in r.stdout
    for name in COMMANDS:
        assert name in r.stdout


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def _png_size(data: bytes) -> tuple[int, int]:
    """Check the PNG signature and every chunk's CRC; return (width, height)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    return struct.unpack(">II", data[16:24])


def test_demo_runs_agrees_and_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--steps", "60", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text

    # The CLI writes only under --out.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    assert sorted(p.name for p in out.iterdir()) == ["demo.json", "demo.png"]

    png = (out / "demo.png").read_bytes()
    w, h = _png_size(png)
    assert w >= 600 and h >= 300 and len(png) > 20_000  # two panels with curves, not blank

    # The table has both rows, and the agreement lines are printed.
    assert "fusedsched.AdamW" in text
    assert "torch.optim.AdamW" in text
    assert "PASS" in text and "per-step lrs agree" in text

    s = json.loads((out / "demo.json").read_text())
    assert s["agree"] is True
    assert s["max_abs_lr_diff"] <= 1e-12
    assert s["max_abs_param_diff"] <= s["tolerances"]["param"]
    fs_run, torch_run = s["runs"]["fusedsched"], s["runs"]["torch"]
    assert fs_run["final_loss"] == pytest.approx(torch_run["final_loss"], rel=1e-3)
    assert fs_run["test_acc"] > 0.85 and torch_run["test_acc"] > 0.85  # it learned


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--steps", "1", "--out", str(tmp_path / "x")]) == 2
    assert main(["demo", "--steps", "10", "--warmup", "10", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
