"""Replicas that start together on one empty PostgreSQL migrate it once, without racing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from bot.storage.db import Database

ROOT = Path(__file__).resolve().parents[1]
# Import first, then wait on stdin, so every process starts migrating at the same moment.
UPGRADE = (
    "import sys; from bot.storage.db import Database; db = Database(sys.argv[1]); "
    "db.check_connection(); print('ready', flush=True); sys.stdin.readline(); db.upgrade()"
)


@pytest.mark.postgres
def test_concurrent_upgrades_on_an_empty_database_all_succeed(postgres_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADE, postgres_url],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    for code, err in results:
        assert code == 0, err[-2000:]
    db = Database(postgres_url)
    try:
        assert "examples" in inspect(db.engine).get_table_names()
        assert db.current_revision() is not None
    finally:
        db.dispose()
