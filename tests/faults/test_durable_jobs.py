"""Work queued after a handler's commit survives the process: a job is stored in the handler's
transaction, resumed by any bot process after a restart or once its runner's lease ran out,
retried with backoff, and dead-lettered after its last attempt."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.durable import claim, dead_jobs, resume_due
from bot.jobs import JobQueue
from bot.plugin import Context, InternalEvent, Plugin, Services, on_event
from bot.plugin_loader import PluginEntry, instantiate
from bot.runtime import Runtime
from bot.settings import Settings
from bot.storage import Database
from bot.storage.models import AuditEntry, Job, Prediction
from bot.storage.repositories import Audit, Datasets, Outbox
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from tests.bot.recording import RecordingChat
from tests.conftest import BRANDBOT, free_port, wait_until_up


class Worky(Plugin):
    """Queues a job per ``work`` event; the job fails while ``failures`` is positive."""

    failures = 0

    @on_event("work")
    def queue(self, event: InternalEvent, ctx: Context) -> None:
        ctx.submit_after_commit(self.do, ctx.services, int(event.payload["n"]), name="worky.do")

    def do(self, services: Services, n: int) -> None:
        if Worky.failures > 0:
            Worky.failures -= 1
            raise RuntimeError("the model server is away")
        with services.db.session() as s:
            Audit(s).record("worked", actor=str(n))


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    Worky.failures = 0
    yield database
    database.dispose()


def runtime_over(db: Database, **settings: Any) -> Runtime:
    services = Services(settings=Settings(**settings), db=db, chat=RecordingChat(),
                        jobs=JobQueue())  # fmt: skip
    return Runtime(services, instantiate([PluginEntry("worky", Worky)], {}, services))


def worked(db: Database) -> list[str]:
    with db.session() as s:
        stmt = select(AuditEntry.actor).where(AuditEntry.action == "worked")
        return sorted(str(a) for a in s.scalars(stmt))


def test_a_job_stored_by_a_process_that_stopped_is_run_by_the_next(db: Database) -> None:
    gone = runtime_over(db)
    with db.session() as s:  # the handler committed; its process stopped before the job ran
        (plugin,) = gone.plugins
        assert isinstance(plugin, Worky)
        plugin.queue(InternalEvent("work", {"n": 7}, "x"), Context(gone.services, s))
    with db.session() as s:
        (job,) = s.scalars(select(Job)).all()
        assert (job.name, job.target, job.args) == ("worky.do", f"{__name__}:Worky.do", [7])
    restarted = runtime_over(db)
    assert resume_due(restarted) == 1
    assert restarted.services.jobs.wait_idle(30)
    assert worked(db) == ["7"]
    with db.session() as s:
        assert s.scalars(select(Job)).all() == []  # done jobs are removed
    assert resume_due(restarted) == 0


def test_a_failing_job_is_retried_then_dead_lettered(db: Database) -> None:
    runtime = runtime_over(db, retry_seconds=0, max_attempts=3)
    with db.session() as s:
        Outbox(s).publish("work", {"n": 1})
        Outbox(s).publish("work", {"n": 2})
    Worky.failures = 3  # three failures between the two jobs: neither fails three times
    runtime.deliver_outbox()
    assert runtime.services.jobs.wait_idle(30)
    for _ in range(3):
        resume_due(runtime)
        assert runtime.services.jobs.wait_idle(30)
    assert worked(db) == ["1", "2"]
    Worky.failures = 10
    with db.session() as s:
        Outbox(s).publish("work", {"n": 3})
    runtime.deliver_outbox()
    assert runtime.services.jobs.wait_idle(30)
    for _ in range(3):
        resume_due(runtime)
        assert runtime.services.jobs.wait_idle(30)
    with db.session() as s:
        (job,) = s.scalars(select(Job)).all()
        assert job.status == "dead" and job.attempts == 3 and "away" in (job.last_error or "")
        assert dead_jobs(s) == 1


class Slow(Plugin):
    """Queues a job that runs until the test lets it finish."""

    release = threading.Event()
    runs = 0

    @on_event("slow")
    def queue(self, event: InternalEvent, ctx: Context) -> None:
        ctx.submit_after_commit(self.do, ctx.services, name="slow.do")

    def do(self, services: Services) -> None:
        Slow.runs += 1
        assert Slow.release.wait(60)


def test_a_job_running_past_its_lease_is_not_run_again_while_it_runs(db: Database) -> None:
    """A job's lease is renewed while its process runs it: the pump neither starts it a second
    time nor lets another process claim it (a classification that outlived its lease was
    classified twice and its verdict posted twice)."""
    Slow.release.clear()
    Slow.runs = 0
    services = Services(settings=Settings(job_lease_seconds=1.0), db=db, chat=RecordingChat(),
                        jobs=JobQueue())  # fmt: skip
    runtime = Runtime(services, instantiate([PluginEntry("slow", Slow)], {}, services))
    with db.session() as s:
        Outbox(s).publish("slow", {})
    runtime.deliver_outbox()
    try:
        deadline = time.monotonic() + 30
        while Slow.runs == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert Slow.runs == 1
        with db.session() as s:
            (job_id,) = s.scalars(select(Job.id)).all()
        for _ in range(3):  # pump rounds, each after the lease would have run out
            time.sleep(1.1)
            assert resume_due(runtime) == 0
            with db.session() as s:
                assert not claim(s, job_id, 1.0)  # what another process's pump tries
        assert Slow.runs == 1
    finally:
        Slow.release.set()
    assert services.jobs.wait_idle(30)
    assert Slow.runs == 1
    with db.session() as s:
        assert s.scalars(select(Job)).all() == []


# ---- kill -9 of the bot between a ticket's ack and its classification -------------------------

TICKETS, PRIYA = "C0SUPPORT1", "U0PRIYA001"


def bot_env(tmp_path: Path, fake: FakeSlack, secret: str, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    env.update(
        SLACK_BOT_TOKEN=fake.bot_token, SLACK_SIGNING_SECRET=secret, SLACK_API_URL=fake.api_url,
        BRANDBOT_DATA_DIR=str(tmp_path / "data"), BRANDBOT_DATABASE_URL=db_url,
        BRANDBOT_CONFIG=str(tmp_path / "brandbot.toml"), BRANDBOT_JOB_LEASE_SECONDS="2",
    )  # fmt: skip
    return env


def start_bot(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[str]:
    with log.open("a") as err:
        proc = subprocess.Popen(
            [BRANDBOT, "run", "--http", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=err, text=True,
        )  # fmt: skip
    wait_until_up(f"http://127.0.0.1:{port}/healthz", proc)
    return proc


def poll(what: str, check: Any, timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-4000:]}")


@pytest.mark.slow
def test_a_ticket_acked_by_a_bot_killed_before_classifying_it_is_classified_after_restart(
    db: Database, tmp_path: Path, tiny_model_dir: Path, fake_slack: FakeSlack,
    slack_signing_secret: str,
) -> None:  # fmt: skip
    with db.session() as s:
        Datasets(s).create("kk_tickets", "classify", channels=[TICKETS], ticket_channels=[TICKETS],
                           labels=["billing", "refund", "shipping"])  # fmt: skip
    fake_slack.add_user(PRIYA, "priya")
    fake_slack.add_channel(TICKETS, "support", members=[fake_slack.bot_user_id, PRIYA])
    (tmp_path / "brandbot.toml").write_text("")
    env = bot_env(tmp_path, fake_slack, slack_signing_secret, db.url)
    log = tmp_path / "bot.log"
    with socket.socket() as silent:  # a model server that takes requests and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = free_port()
        first = start_bot(
            {**env, "BRANDBOT_INFERENCE_URL": f"http://127.0.0.1:{silent.getsockname()[1]}"},
            port, log,
        )  # fmt: skip
        try:
            ticket = payloads.message(TICKETS, PRIYA, "I was charged twice for order KK-48213",
                                      ts="1700000100.000100")  # fmt: skip
            body = payloads.event_callback(ticket)
            url = f"http://127.0.0.1:{port}/slack/events"
            assert signed_post(url, slack_signing_secret, body).status_code == 200  # the ack

            def classifying() -> bool:
                with db.session() as s:
                    return bool(s.scalars(select(Job).where(Job.status == "running")).all())

            poll("the classification job to start", classifying, 60, log)
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
        killed_at = time.monotonic()
    with db.session() as s:
        (prediction,) = s.scalars(select(Prediction)).all()
        assert prediction.status == "queued"  # killed before it was classified
    second = start_bot({**env, "BRANDBOT_BASE_MODEL": str(tiny_model_dir),
                        "BRANDBOT_SERVED_MODEL_NAME": "brandbot-base"}, port, log)  # fmt: skip
    try:

        def classified() -> bool:
            with db.session() as s:
                row = s.scalars(select(Prediction)).one()
                return row.status == "pending" and row.label in ("billing", "refund", "shipping")

        poll("the ticket to be classified after the restart", classified, 180, log)
        print(f"classified {time.monotonic() - killed_at:.1f} s after the kill (lease 2 s)")
        verdicts = poll(
            "the verdict in the ticket's thread",
            lambda: [c for c in fake_slack.calls_for("chat.postMessage")
                     if c.args.get("thread_ts") == "1700000100.000100"],
            30, log,
        )  # fmt: skip
    finally:
        second.terminate()
        second.wait(timeout=30)
    assert len(verdicts) == 1
    with db.session() as s:
        assert s.scalars(select(Job)).all() == []
