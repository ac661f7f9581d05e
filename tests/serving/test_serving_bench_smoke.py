"""The serving benchmark's --smoke mode runs (tiny model, no vLLM), so the benchmark cannot rot."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.usefixtures("bundled_tokenizer_dir")  # copied, not read from the GGUF again
def test_serving_bench_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serving_bench.py"), "--smoke"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vs generate" in proc.stdout
    assert "label scoring, 10 labels" in proc.stdout
    # the local engine both in process and over HTTP, base and adapter; vLLM only with --vllm
    assert "| base | 4 |" in proc.stdout and "| adapter | 4 |" in proc.stdout
    assert "| adapter | brandbot serve (HTTP) |" in proc.stdout
    assert "vLLM" not in proc.stdout
    assert "commit " in proc.stdout and "load average" in proc.stdout
