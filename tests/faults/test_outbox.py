"""Outbox faults: failing deliveries back off, are dead-lettered after the last attempt, and never
hold back the events behind them; the report's text and chart are retried apart."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select

from bot.durable import backoff
from bot.jobs import JobQueue
from bot.outbox import dead_letters
from bot.plugin import Context, InternalEvent, Plugin, Services, on_event
from bot.plugin_loader import PluginEntry, instantiate
from bot.runtime import Runtime
from bot.settings import Settings
from bot.storage import Database
from bot.storage.models import AuditEntry, OutboxEvent, utcnow
from bot.storage.repositories import Audit, Outbox
from tests.bot.recording import RecordingChat


class Poisoned(Plugin):
    """Fails on every ``poison`` event; records every ``good`` one."""

    @on_event("poison")
    def poison(self, event: InternalEvent, ctx: Context) -> None:
        Audit(ctx.session).record("poison.partial")
        raise ValueError("this event can never be handled")

    @on_event("good")
    def good(self, event: InternalEvent, ctx: Context) -> None:
        Audit(ctx.session).record("good", actor=str(event.payload["n"]))


def runtime_over(db: Database, **settings: Any) -> Runtime:
    services = Services(settings=Settings(**settings), db=db, chat=RecordingChat(),
                        jobs=JobQueue())  # fmt: skip
    return Runtime(services, instantiate([PluginEntry("poisoned", Poisoned)], {}, services))


def audits(db: Database, action: str) -> int:
    with db.session() as s:
        stmt = select(func.count()).select_from(AuditEntry).where(AuditEntry.action == action)
        return int(s.scalar(stmt) or 0)


def aware(at: dt.datetime) -> dt.datetime:
    """SQLite gives back naive UTC times."""
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def publish(db: Database, topic: str, n: int) -> None:
    with db.session() as s:
        for i in range(n):
            Outbox(s).publish(topic, {"n": i})


def test_sixty_poison_rows_do_not_stop_the_sixty_first(db: Database) -> None:
    runtime = runtime_over(db, retry_seconds=60, max_attempts=5)
    publish(db, "poison", 60)
    publish(db, "good", 1)
    assert runtime.deliver_outbox(limit=50) == 0  # the first 50 rows are all poison
    assert runtime.deliver_outbox(limit=50) == 1  # the failures wait: the good one goes through
    assert audits(db, "good") == 1
    assert audits(db, "poison.partial") == 0  # each failure rolled its writes back
    with db.session() as s:
        rows = s.scalars(select(OutboxEvent).where(OutboxEvent.topic == "poison")).all()
        assert len(rows) == 60
        assert all(r.attempts == 1 and r.delivered_at is None and r.dead_at is None for r in rows)
        now = utcnow()
        assert all(aware(r.available_at) > now for r in rows)  # backing off
        assert all("ValueError" in (r.last_error or "") for r in rows)
    assert runtime.deliver_outbox(limit=50) == 0  # nothing is due before the backoff ends


def test_a_failing_event_is_dead_lettered_after_its_last_attempt(db: Database) -> None:
    runtime = runtime_over(db, retry_seconds=0, max_attempts=3)
    publish(db, "poison", 2)
    for _ in range(3):
        runtime.deliver_outbox()
    with db.session() as s:
        rows = s.scalars(select(OutboxEvent)).all()
        assert [(r.attempts, r.dead_at is not None) for r in rows] == [(3, True), (3, True)]
        assert dead_letters(s) == 2
    publish(db, "good", 1)
    assert runtime.deliver_outbox() == 1  # dead letters are not tried again
    with db.session() as s:
        assert [r.attempts for r in s.scalars(select(OutboxEvent).order_by(OutboxEvent.id))] == [
            3, 3, 1,
        ]  # fmt: skip


def test_the_wait_doubles_up_to_an_hour() -> None:
    assert [backoff(n, 5).total_seconds() for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff(30, 5).total_seconds() == 3600


def test_dead_letters_are_counted_in_brandbot_status(db: Database) -> None:
    from bot.plugin import CommandEvent
    from plugins.admin import AdminPlugin

    services = Services(settings=Settings(admins=["U0ADMIN"], retry_seconds=0, max_attempts=1),
                        db=db, chat=RecordingChat(), jobs=JobQueue())  # fmt: skip
    plugins = instantiate(
        [PluginEntry("poisoned", Poisoned), PluginEntry("admin", AdminPlugin)], {}, services
    )
    runtime = Runtime(services, plugins)
    publish(db, "poison", 3)
    runtime.deliver_outbox()
    runtime.handle(CommandEvent(user_id="U0ADMIN", channel_id="C0CHAN", command="/brandbot",
                                text="status", response_url="http://resp/1"))  # fmt: skip
    chat = services.chat
    assert isinstance(chat, RecordingChat)
    (reply,) = chat.of("respond")
    assert "dead letters: 3" in reply["text"]


def test_a_failing_chart_upload_is_retried_without_posting_the_report_again(
    db: Database, fake_slack: Any, slack_signing_secret: str
) -> None:
    from bot.storage.models import TrainingRun
    from bot.storage.repositories import Datasets
    from plugins.report import ReportPlugin
    from tests.bot.slack_harness import serve_bot

    fake_slack.add_channel("C0REPORTS1", "reports", members=[fake_slack.bot_user_id])
    with db.session() as s:
        ds = Datasets(s).create("kk_copy", "draft", report_channel="C0REPORTS1")
        run = TrainingRun(dataset_id=ds.id, status="succeeded", losses=[2.0, 1.5, 1.2],
                          metrics={"new": {"name": "kk_copy-v1", "chrf": 40.0}})  # fmt: skip
        s.add(run)
        s.flush()
        Outbox(s).publish("run.finished", {"run_id": run.id, "dataset_id": ds.id})
    fake_slack.fail("files.getUploadURLExternal", times=2)
    with serve_bot(db, fake_slack, slack_signing_secret, [PluginEntry("report", ReportPlugin)],
                   settings={"retry_seconds": 0}) as bot:  # fmt: skip
        delivered = [bot.runtime.deliver_outbox() for _ in range(4)]
    assert delivered == [1, 0, 0, 1]  # text; the chart fails twice, then goes up
    posts = [c.args["text"] for c in fake_slack.calls_for("chat.postMessage")]
    assert len(posts) == 1 and "Retraining report" in posts[0]
    (png,) = fake_slack.uploaded_files
    assert png.content.startswith(b"\x89PNG")
    with db.session() as s:
        chart = s.scalars(select(OutboxEvent).where(OutboxEvent.topic == "report.chart")).one()
        assert chart.attempts == 3 and chart.delivered_at is not None


def test_brandbot_report_counts_the_dead_letters(db: Database, cli: Any) -> None:
    from bot.storage.repositories import Datasets

    with db.session() as s:
        Datasets(s).create("kk_copy", "draft")
        Outbox(s).publish("poison", {}).dead_at = utcnow()
    shown = cli("report", "-d", "kk_copy", "--json")
    assert shown.code == 0, shown.err
    assert shown.json()["dead_letters"] == 1
    assert "dead letters: 1" in cli("report", "-d", "kk_copy").out
