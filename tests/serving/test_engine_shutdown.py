"""The engine's scheduler thread ends before the interpreter does (no SIGABRT at exit)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.engine import EngineError, LocalEngine, SamplingParams

BUSY = SamplingParams(max_tokens=4000, temperature=0, ignore_eos=True)
HI = [{"role": "user", "content": "hi"}]

SCRIPT = """
import sys
from pathlib import Path
from serving.engine import LocalEngine, SamplingParams
engine = LocalEngine(Path(sys.argv[1]), served_name="b", threads=1)
engine.chat({hi!r}, SamplingParams(max_tokens=4000, temperature=0, ignore_eos=True))
print("leaving while the engine generates", flush=True)
"""


def test_a_process_that_never_closes_its_engine_still_exits_cleanly(tiny_model_dir: Path) -> None:
    # A scheduler thread inside torch at interpreter shutdown used to abort the process with
    # "terminate called without an active exception" (exit 134); the atexit hook joins it.
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(hi=HI), str(tiny_model_dir)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "leaving" in proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "terminate called" not in proc.stderr


def test_close_joins_the_thread_and_fails_what_is_left(tiny_model_dir: Path) -> None:
    engine = LocalEngine(tiny_model_dir, served_name="b", threads=1)
    running = engine.chat(HI, BUSY)
    next(running.deltas(timeout=30))
    engine.close()
    assert not engine._thread.is_alive()
    with pytest.raises(EngineError, match="the engine stopped"):
        running.result(timeout=5)
    with pytest.raises(EngineError, match="the engine stopped"):
        engine.chat(HI, BUSY)
    with pytest.raises(EngineError, match="the engine stopped"):
        engine.run(lambda: None)
    engine.close()  # idempotent
