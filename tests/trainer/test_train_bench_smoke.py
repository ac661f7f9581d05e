"""The training benchmark's --smoke mode (tiny model, both trainers when TRL is installed)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_train_bench_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_bench.py"), "--smoke", "--examples", "12"],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| brandbot trainer |" in proc.stdout
    assert "measured matmul peak" in proc.stdout
    if importlib.util.find_spec("trl") is not None:
        assert "| TRL SFTTrainer |" in proc.stdout
        assert "ratios brandbot / TRL: tokens/s" in proc.stdout
