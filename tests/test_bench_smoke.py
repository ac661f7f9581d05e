"""Every benchmark has a --smoke mode that CI runs, so the benchmarks cannot rot."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_bench_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "import_bench.py"), "--smoke"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "re-import" in proc.stdout
    assert "added 0" in proc.stdout


def test_bot_ack_bench_smoke_runs_the_real_http_command() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bot_bench.py"), "--smoke"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every request acked under 3 s: yes" in proc.stdout


def test_collect_bench_smoke_on_postgres(postgres_server: object) -> None:
    """Needs the PostgreSQL binaries (the fixture fails in CI without them)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "collect_bench.py"), "--smoke"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "exactly the expected examples: yes" in proc.stdout
    assert "bare bolt app that only acks" in proc.stdout and "x the bare app" in proc.stdout


def test_quality_bench_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "quality_bench.py"), "--smoke"],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "per-label F1" in proc.stdout and "tuned (clinc_banking-v1)" in proc.stdout


def test_eval_bench_smoke_a_batch_per_model_drafts_as_one_mixed_batch() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "eval_bench.py"), "--smoke", "--compare"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "same drafts mixed as in a batch per model: yes" in proc.stdout
    assert "| drafts: base, then adapter (a batch each) |" in proc.stdout
    assert "| (compare) base and adapter in one mixed batch |" in proc.stdout
