"""No message or ticket text in logs: a database error in a handler, driven over signed HTTP,
logs neither the SQL parameters nor the text (SQLAlchemy ``hide_parameters``), on SQLite and
PostgreSQL; and ``brandbot worker`` logs through the secret redaction."""

from __future__ import annotations

import json
import logging

import pytest

from bot.observability import configure_logging
from bot.plugin import CommandEvent, Context, Plugin, command
from bot.plugin_loader import PluginEntry
from bot.storage import Database
from bot.storage.models import ProcessedEvent
from bot.storage.repositories import Datasets, Runs
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from tests.bot.slack_harness import serve_bot
from tests.bot.test_slack_http import command as slash
from tests.bot.test_slack_http import wait_responses
from tests.conftest import CliRunner

TICKET = "Customer Jane Roe, card ending 4242, wants a refund"


class Notes(Plugin):
    """Writes the command's text twice under one primary key: a database error with the text
    among its parameters."""

    @command("/hello")
    def note(self, event: CommandEvent, ctx: Context) -> None:
        ctx.session.add(ProcessedEvent(event_id=event.text[:100], kind="note"))
        ctx.session.flush()
        ctx.session.add(ProcessedEvent(event_id=event.text[:100], kind="note"))
        ctx.session.flush()


def test_a_database_error_logs_no_message_text(
    db: Database,
    fake_slack: FakeSlack,
    slack_signing_secret: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_slack.add_channel("C0CHAN0001", "brand", members=[fake_slack.bot_user_id, "U0USER0001"])
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging([])  # the bot's own logging: JSON on stderr, through the Redactor
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # echo the SQL as well
    try:
        with serve_bot(db, fake_slack, slack_signing_secret, [PluginEntry("notes", Notes)]) as bot:
            body, rid = slash(fake_slack, TICKET)
            assert signed_post(bot.events_url, slack_signing_secret, body).status_code == 200
            assert "error id" in wait_responses(fake_slack, rid)[0]["text"].lower()
    finally:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    logged = capsys.readouterr().err
    assert "IntegrityError" in logged and "INSERT INTO processed_events" in logged
    assert "Jane Roe" not in logged and "4242" not in logged


def test_brandbot_worker_logs_through_the_redaction(db_url: str, cli: CliRunner) -> None:
    db = Database(db_url)
    db.upgrade()
    with db.session() as s:
        Runs(s).enqueue(Datasets(s).create("tiny", "draft"))
    db.dispose()
    key = "sk-live-7f3a9c2e5b"
    out = cli("worker", "--once", extra_env={
        "BRANDBOT_INFERENCE_API_KEY": key,
        "BRANDBOT_BASE_MODEL": f"/nowhere/{key}/xoxb-1111-2222-leaked",
    })  # fmt: skip
    assert out.code == 4, out.err  # the run failed: its base model is nowhere
    failed = [json.loads(line) for line in out.err.splitlines() if "failed" in line]
    assert failed and failed[0]["level"] == "error" and "[redacted]" in failed[0]["message"]
    assert key not in out.err + out.out and "xoxb-1111" not in out.err + out.out
