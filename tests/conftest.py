"""Shared helpers for brandbot's tests. Database fixtures come from the test kit plugin."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
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


def free_port() -> int:
    """A port nothing listens on right now (for a server a test starts, or a closed one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    """Wait until ``url`` answers 200, failing with the process's output if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the server exited: {out}{err}"[-3000:])
        with contextlib.suppress(httpx.HTTPError):  # not listening yet
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not come up in {timeout:.0f} s")
