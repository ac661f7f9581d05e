"""The scheduler leader is replaced when it dies: every replica bids again on an interval, so a
leader killed with -9 (its session, and so its advisory lock, ends) is taken over, and a leader
that loses its lock's connection stops scheduling."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.jobs import JobQueue
from bot.leader import SchedulerLeader, run_plugin_schedule
from bot.plugin import Context, InternalEvent, Plugin, Services, schedule
from bot.plugin_loader import PluginEntry, instantiate
from bot.runtime import Runtime
from bot.settings import Settings
from bot.storage import Database
from bot.storage.repositories import Datasets
from bot.testkit.slack import FakeSlack
from tests.bot.recording import RecordingChat
from tests.conftest import BRANDBOT, free_port, wait_until_up

pytestmark = pytest.mark.postgres  # the advisory lock elects a leader only on PostgreSQL
LEADS = "this replica runs the schedule"


@pytest.fixture
def db(postgres_url: str) -> Iterator[Database]:
    database = Database(postgres_url)
    database.upgrade()
    with database.session() as s:
        Datasets(s).create("kk_copy", "draft", schedule_cron="0 6 * * 1")
    yield database
    database.dispose()


def leader(db: Database) -> SchedulerLeader:
    services = Services(settings=Settings(), db=db, chat=RecordingChat(), jobs=JobQueue())
    return SchedulerLeader(Runtime(services, []), db)


def until(what: str, check: object, timeout: float = 30) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_leader_that_loses_its_lock_connection_resigns_and_another_takes_over(
    db: Database,
) -> None:
    first, second = leader(db), leader(db)
    try:
        first.campaign(0.2)
        until("the first to lead", lambda: first.leading)
        second.campaign(0.2)
        time.sleep(0.5)  # a few of the second's bids, all refused while the first leads
        assert not second.leading
        assert first._conn is not None
        backend = first._conn.execute(text("SELECT pg_backend_pid()")).scalar()
        first._conn.commit()
        with db.engine.connect() as admin:  # the database drops the leader's session
            admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend})
        until("the first to resign", lambda: not first.leading)
        until("the second to lead", lambda: second.leading)
        assert second.scheduler.get_job("dataset:kk_copy") is not None
    finally:
        first.stop()
        second.stop()


class Ticker(Plugin):
    ran = 0

    @schedule("* * * * *")
    def tick(self, event: InternalEvent, ctx: Context) -> None:
        Ticker.ran += 1


def test_a_due_job_of_a_leader_that_lost_its_lock_does_not_run(db: Database) -> None:
    services = Services(settings=Settings(), db=db, chat=RecordingChat(), jobs=JobQueue())
    runtime = Runtime(services, instantiate([PluginEntry("ticker", Ticker)], {}, services))
    old = SchedulerLeader(runtime, db)
    Ticker.ran = 0
    try:
        assert old.start()
        (bound,) = runtime.scheduled()
        assert run_plugin_schedule(bound.name) == "ran" and Ticker.ran == 1
        assert old._conn is not None
        backend = old._conn.execute(text("SELECT pg_backend_pid()")).scalar()
        old._conn.commit()
        with db.engine.connect() as admin:  # its session ends before its next bid notices
            admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend})
        # The job fires on the old leader's clock: it finds the lock gone and resigns.
        assert run_plugin_schedule(bound.name) == "no scheduler leads in this process"
        assert Ticker.ran == 1 and not old.leading
    finally:
        old.stop()


@pytest.mark.slow
def test_a_leader_killed_with_minus_9_is_replaced_within_the_bid_interval(
    db: Database, tmp_path: Path, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    (tmp_path / "brandbot.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    env.update(
        SLACK_BOT_TOKEN=fake_slack.bot_token, SLACK_SIGNING_SECRET=slack_signing_secret,
        SLACK_API_URL=fake_slack.api_url, BRANDBOT_DATA_DIR=str(tmp_path / "data"),
        BRANDBOT_DATABASE_URL=db.url, BRANDBOT_CONFIG=str(tmp_path / "brandbot.toml"),
        BRANDBOT_LEADER_BID_SECONDS="2",
    )  # fmt: skip
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs: list[subprocess.Popen[str]] = []
    try:
        for log in logs:
            port = free_port()
            with log.open("w") as err:
                proc = subprocess.Popen(
                    [BRANDBOT, "run", "--http", "--host", "127.0.0.1", "--port", str(port)],
                    env=env, stdout=subprocess.DEVNULL, stderr=err, text=True,
                )  # fmt: skip
            procs.append(proc)
            wait_until_up(f"http://127.0.0.1:{port}/healthz", proc)

        def leaders() -> list[int]:
            return [i for i, log in enumerate(logs) if LEADS in log.read_text()]

        until("one replica to lead", lambda: leaders(), 60)
        time.sleep(4)  # two bid intervals: the other replica keeps bidding and is refused
        (first,) = leaders()
        os.kill(procs[first].pid, signal.SIGKILL)
        procs[first].wait()
        other = 1 - first
        took = until("the other replica to take over", lambda: other in leaders(), 60)
        print(f"leader replaced {took:.1f} s after kill -9 (bids every 2 s)")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
