"""Shared helpers for brandbot's tests. Database fixtures come from the test kit plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BRANDBOT = str(Path(sys.executable).parent / "brandbot")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


CliRunner = Callable[..., Result]


@pytest.fixture
def cli(tmp_path: Path, db_url: str) -> CliRunner:
    """Run the real ``brandbot`` console script against a fresh database (SQLite and PostgreSQL)."""
    return make_cli(tmp_path, db_url)


@pytest.fixture
def cli_sqlite(tmp_path: Path) -> CliRunner:
    return make_cli(tmp_path, None)


def make_cli(tmp_path: Path, db_url: str | None) -> CliRunner:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    env["BRANDBOT_DATA_DIR"] = str(tmp_path / "data")
    env["BRANDBOT_CONFIG"] = str(tmp_path / "brandbot.toml")
    env["COLUMNS"] = "200"
    if db_url:
        env["BRANDBOT_DATABASE_URL"] = db_url

    def run(
        *args: str, stdin: str | None = None, extra_env: dict[str, str] | None = None
    ) -> Result:
        proc = subprocess.run(
            [BRANDBOT, *args],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={**env, **(extra_env or {})},
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
