"""Promotion and rollback: the database decides, the model server follows. A ``brandbot``
process killed with -9 between the database commit and the server's load (rollback), or
between the server's load and the commit (promotion), ends, once a bot is started again, with
the server serving exactly what the registry says, and nothing promoted twice.

Real processes: ``brandbot serve`` (the tiny model) as the model server, ``brandbot adapters``
as the process killed, ``brandbot run --http`` as the restarted bot. Between the killed process
and the server sits a proxy that holds chosen requests forever, so the kill lands exactly in
the window under test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from bot.storage import Database
from bot.storage.models import Adapter, AuditEntry
from bot.storage.repositories import Datasets
from bot.testkit.models import build_tiny_adapter
from bot.testkit.slack import FakeSlack
from serving.adapter_checksums import write_manifest
from serving.base_model import read_fingerprint
from tests.conftest import BRANDBOT, free_port, wait_until_up
from tests.faults.test_durable_jobs import bot_env, poll, start_bot

pytestmark = pytest.mark.slow
KEY, SERVED = "k3y", "brandbot-base"
Hold = Callable[[str, dict[str, object]], bool]


@pytest.fixture(scope="module")
def model_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``brandbot serve`` on the tiny model, shared by the tests (each unloads what it loaded)."""
    home = tmp_path_factory.mktemp("server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    env |= {"BRANDBOT_DATA_DIR": str(home / "data"), "BRANDBOT_CONFIG": str(home / "x.toml"),
            "BRANDBOT_BASE_MODEL": str(tiny_model_dir), "BRANDBOT_SERVED_MODEL_NAME": SERVED,
            "BRANDBOT_INFERENCE_API_KEY": KEY}  # fmt: skip
    with (home / "server.log").open("w") as log:
        proc = subprocess.Popen([BRANDBOT, "serve", "--port", str(port), "--threads", "1"],
                                env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT,
                                text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", proc, timeout=120)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class Proxy:
    """Forwards to the model server; a request ``hold(path, body)`` selects is never answered
    (until :meth:`close`), and ``held`` is set when one arrives."""

    def __init__(self, target: str, hold: Hold) -> None:
        self.held = threading.Event()
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                """No access log: the test's output is its assertions."""

            def do_GET(self) -> None:
                self.forward(b"")

            def do_POST(self) -> None:
                self.forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def forward(self, body: bytes) -> None:
                parsed = json.loads(body) if body else {}
                if hold(self.path, parsed):
                    proxy.held.set()
                    proxy.release.wait()
                    return
                answer = httpx.request(
                    self.command, target + self.path, content=body, timeout=120,
                    headers={k: v for k, v in self.headers.items()
                             if k.lower() in ("authorization", "content-type")},
                )  # fmt: skip
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", "text/plain"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def loaded(server: str) -> set[str]:
    answer = httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    answer.raise_for_status()
    return {m["id"] for m in answer.json()["data"]} - {SERVED}


def load(server: str, name: str, path: Path) -> None:
    httpx.post(f"{server}/v1/load_lora_adapter", headers={"Authorization": f"Bearer {KEY}"},
               json={"lora_name": name, "lora_path": str(path)}).raise_for_status()  # fmt: skip


@pytest.fixture
def server(model_server: str) -> Iterator[str]:
    yield model_server
    for name in loaded(model_server):  # leave the shared server empty
        httpx.post(f"{model_server}/v1/unload_lora_adapter", json={"lora_name": name},
                   headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip


def adapters(db: Database, tiny: Path, tmp_path: Path, statuses: list[str]) -> list[Path]:
    """kk_copy-v1..vN with these statuses, real tiny adapters with checksums."""
    folders = []
    with db.session() as s:
        ds = Datasets(s).create("kk_copy", "draft")
        for version, status in enumerate(statuses, start=1):
            name = f"kk_copy-v{version}"
            folder = build_tiny_adapter(tiny, tmp_path / "data" / "adapters" / name,
                                        served_name=SERVED, seed=version)  # fmt: skip
            s.add(Adapter(dataset_id=ds.id, name=name, version=version, status=status,
                          path=str(folder), base_fingerprint=read_fingerprint(tiny),
                          weights_fingerprint=write_manifest(folder)))  # fmt: skip
            folders.append(folder)
    return folders


def registry(db: Database) -> dict[str, str]:
    with db.session() as s:
        return dict(s.execute(select(Adapter.name, Adapter.status)).tuples().all())


def cli(env: dict[str, str], inference: str, log: Path, *args: str) -> subprocess.Popen[str]:
    """``brandbot adapters ARGS`` talking to ``inference``, its output appended to ``log``."""
    with log.open("a") as out:
        return subprocess.Popen(
            [BRANDBOT, "adapters", *args], env={**env, "BRANDBOT_INFERENCE_URL": inference},
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip


def finish(proc: subprocess.Popen[str], log: Path) -> str:
    """Wait for ``proc`` to exit 0; the output it appended to ``log``."""
    before = log.stat().st_size if log.exists() else 0
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    return log.read_text()[before:]


def kill(proc: subprocess.Popen[str]) -> float:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.monotonic()


def restart_bot_until(env: dict[str, str], server: str, want: set[str], log: Path,
                      killed_at: float) -> float:  # fmt: skip
    """Start a bot on the real server; seconds from the kill until the server has ``want``."""
    bot = start_bot({**env, "BRANDBOT_INFERENCE_URL": server}, free_port(), log)
    try:
        poll(f"the server to load exactly {sorted(want)}", lambda: loaded(server) == want, 60, log)
        return time.monotonic() - killed_at
    finally:
        bot.terminate()
        bot.wait(timeout=30)


@pytest.fixture
def env(
    tmp_path: Path, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> dict[str, str]:
    (tmp_path / "brandbot.toml").write_text("")
    return {**bot_env(tmp_path, fake_slack, slack_signing_secret, db.url),
            "BRANDBOT_SERVED_MODEL_NAME": SERVED, "BRANDBOT_INFERENCE_API_KEY": KEY,
            "BRANDBOT_ADAPTER_CHECK_SECONDS": "1"}  # fmt: skip


def test_a_rollback_killed_after_its_commit_is_served_after_a_restart(
    db: Database, server: str, env: dict[str, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    _, v2 = adapters(db, tiny_model_dir, tmp_path, ["retired", "active"])
    load(server, "kk_copy-v2", v2)  # v1 is not loaded (the server restarted since)
    proxy = Proxy(server, lambda path, body: path.endswith("_lora_adapter"))
    try:
        proc = cli(env, proxy.url, tmp_path / "cli.log", "rollback", "-d", "kk_copy")
        poll("the rollback's commit and its server call", lambda: (
            proxy.held.is_set() and registry(db)["kk_copy-v1"] == "active"), 90,
            tmp_path / "cli.log")  # fmt: skip
        killed_at = kill(proc)
    finally:
        proxy.close()
    assert registry(db) == {"kk_copy-v1": "active", "kk_copy-v2": "retired"}
    assert loaded(server) == {"kk_copy-v2"}  # the database and the server disagree
    took = restart_bot_until(env, server, {"kk_copy-v1"}, tmp_path / "bot.log", killed_at)
    print(f"rollback: the server follows the registry {took:.1f} s after the kill")
    assert registry(db) == {"kk_copy-v1": "active", "kk_copy-v2": "retired"}
    with db.session() as s:
        rollbacks = s.scalars(select(AuditEntry).where(AuditEntry.action == "adapter.rollback"))
        assert len(rollbacks.all()) == 1


def test_a_promotion_killed_before_its_commit_leaves_the_old_adapter_and_promotes_once(
    db: Database, server: str, env: dict[str, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    v1, _ = adapters(db, tiny_model_dir, tmp_path, ["active", "rejected"])
    load(server, "kk_copy-v1", v1)

    def canary_of_v2(path: str, body: dict[str, object]) -> bool:
        return path.endswith("/chat/completions") and body.get("model") == "kk_copy-v2"

    proxy = Proxy(server, canary_of_v2)
    try:
        proc = cli(env, proxy.url, tmp_path / "cli.log", "promote", "kk_copy-v2")
        poll("the promotion's canary of v2", proxy.held.is_set, 90, tmp_path / "cli.log")
        killed_at = kill(proc)
    finally:
        proxy.close()
    assert registry(db) == {"kk_copy-v1": "active", "kk_copy-v2": "rejected"}  # not committed
    assert loaded(server) == {"kk_copy-v1", "kk_copy-v2"}  # but loaded on the server
    took = restart_bot_until(env, server, {"kk_copy-v1"}, tmp_path / "bot.log", killed_at)
    print(f"promotion: the server follows the registry {took:.1f} s after the kill")

    log = tmp_path / "again.log"
    finish(cli(env, server, log, "promote", "kk_copy-v2"), log)  # the person tries again
    assert registry(db) == {"kk_copy-v1": "retired", "kk_copy-v2": "active"}
    assert loaded(server) == {"kk_copy-v1", "kk_copy-v2"}  # v1 stays as the rollback target
    with db.session() as s:
        promotions = s.scalars(select(AuditEntry).where(AuditEntry.action == "adapter.promote"))
        assert [p.details["adapter"] for p in promotions] == ["kk_copy-v2"]
    assert "already active" in finish(cli(env, server, log, "promote", "kk_copy-v2"), log)
    with db.session() as s:
        promotions = s.scalars(select(AuditEntry).where(AuditEntry.action == "adapter.promote"))
        assert len(promotions.all()) == 1
