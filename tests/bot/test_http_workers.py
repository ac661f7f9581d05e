"""``brandbot run --http --workers N``: several processes share the port on PostgreSQL; each
event still takes effect once. Real processes, real signed requests, the fake Slack Web API."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.storage import Database
from bot.storage.models import Example
from bot.storage.repositories import Datasets
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from tests.conftest import BRANDBOT, free_port, wait_until_up

COPY, MAYA, PRIYA = "C0BRANDCPY", "U0MAYA0001", "U0PRIYA001"
TEXT = (
    "autumn chai lands thursday with cardamom clove ginger over strong assam while tasting "
    "evenings return to the bristol shop every first friday with scones smoked oolong jasmine "
    "pearls and a storyteller from the hills"
)
WORDS = TEXT.split(" ")


def _env(tmp_path: Path, fake: FakeSlack, secret: str, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    env.update(
        SLACK_BOT_TOKEN=fake.bot_token, SLACK_SIGNING_SECRET=secret, SLACK_API_URL=fake.api_url,
        BRANDBOT_DATA_DIR=str(tmp_path / "data"), BRANDBOT_DATABASE_URL=db_url,
        BRANDBOT_CONFIG=str(tmp_path / "brandbot.toml"),
    )  # fmt: skip
    return env


def test_workers_need_postgresql(
    tmp_path: Path, sqlite_url: str, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    proc = subprocess.run(
        [BRANDBOT, "run", "--http", "--workers", "2", "--port", "0"],
        env=_env(tmp_path, fake_slack, slack_signing_secret, sqlite_url),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "--workers above 1 needs PostgreSQL" in proc.stderr + proc.stdout


@pytest.mark.postgres
def test_two_worker_processes_share_the_port_and_apply_each_event_once(
    tmp_path: Path, postgres_url: str, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    db = Database(postgres_url)
    db.upgrade()
    with db.session() as s:
        Datasets(s).create("kk_copy", "draft", channels=[COPY], approvers=[MAYA])
    fake_slack.add_user(MAYA, "maya")
    fake_slack.add_user(PRIYA, "priya")
    fake_slack.add_channel(COPY, "brand-copy", members=[fake_slack.bot_user_id, MAYA, PRIYA])
    posts = [
        fake_slack.add_message(COPY, " ".join(random.Random(i).sample(WORDS, 14)), user=PRIYA)
        for i in range(20)
    ]
    bodies = [
        payloads.event_callback(payloads.reaction_added(MAYA, "white_check_mark", COPY, ts),
                                event_id=f"EvWorkers{i}")
        for i, ts in enumerate(posts)
    ]  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [BRANDBOT, "run", "--http", "--workers", "2", "--host", "127.0.0.1", "--port", str(port)],
        env=_env(tmp_path, fake_slack, slack_signing_secret, postgres_url),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/healthz", server)
        workers = set(_workers(server.pid))
        assert len(workers) == 2  # two worker processes
        deadline = time.monotonic() + 60
        while _listening_sockets(port) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _listening_sockets(port) == 2  # one socket per worker, not one shared
        answered = _workers_answering(port, connections=16)
        assert answered == workers  # each worker's own socket: the kernel spreads connections
        with ThreadPoolExecutor(8) as pool:  # a new connection per request
            statuses = list(pool.map(
                lambda b: signed_post(f"{url}/slack/events", slack_signing_secret, b).status_code,
                bodies + bodies[:5],  # retries too
            ))  # fmt: skip
        assert statuses == [200] * 25
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Example)) == 20
        os.kill(min(workers), signal.SIGKILL)  # a worker dies: the supervisor starts another
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = set(_workers(server.pid))
            if len(now) == 2 and min(workers) not in now and _listening_sockets(port) == 2:
                break
            time.sleep(0.2)
        assert len(now) == 2 and min(workers) not in now
        wait_until_up(f"{url}/healthz", server)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
        db.dispose()
    assert server.returncode == 0, err[-2000:]


def test_a_worker_that_cannot_start_stops_the_supervisor_with_a_reason(
    tmp_path: Path, postgres_url: str, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    with socket.socket() as taken:  # bound without SO_REUSEPORT: no worker can share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [BRANDBOT, "run", "--http", "--workers", "2", "--host", "127.0.0.1",
             "--port", str(port)],
            env=_env(tmp_path, fake_slack, slack_signing_secret, postgres_url),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert proc.returncode != 0
    assert "a worker exited during start-up" in proc.stderr + proc.stdout


def _workers_answering(port: int, connections: int) -> set[int]:
    """The worker pid behind each of ``connections`` simultaneous keep-alive connections (all
    on one worker would happen once in 2**15 with an even spread)."""
    opened = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(connections)]
    try:
        for conn in opened:  # all queued before any request, as a burst of new connections is
            conn.connect()
        pids = set()
        for conn in opened:
            conn.request("GET", "/healthz")
            pids.add(int(json.loads(conn.getresponse().read())["worker"]))
        return pids
    finally:
        for conn in opened:
            conn.close()


def _listening_sockets(port: int) -> int:
    """Listening TCP sockets on ``port`` (IPv4), from /proc/net/tcp."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for r in rows if r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A")


def _workers(pid: int) -> list[int]:
    """Child processes started by multiprocessing's spawn (not its resource tracker)."""
    found = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [p for p in found if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
