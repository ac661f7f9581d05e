"""Socket Mode end to end: the real SlackRuntime connects to the fake Socket Mode server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from bot.plugin_loader import PluginEntry
from bot.settings import Settings
from bot.slack.runner import SlackRuntime
from bot.storage import Database
from bot.storage.models import AuditEntry
from bot.testkit import payloads
from bot.testkit.slack import FakeSlack
from bot.testkit.socket_mode import FakeSocketMode
from plugins.help import HelpPlugin
from tests.bot.test_runtime import Sample


@pytest.fixture
def running(
    sqlite_url: str, fake_slack: FakeSlack, fake_socket_mode: FakeSocketMode
) -> Iterator[tuple[SlackRuntime, Database]]:
    db = Database(sqlite_url)
    db.upgrade()
    settings = Settings(
        slack_bot_token=fake_slack.bot_token, slack_app_token=fake_slack.app_token,
        slack_api_url=fake_slack.api_url,
    )  # fmt: skip
    runtime = SlackRuntime(
        settings, db, plugins=[PluginEntry("sample", Sample), PluginEntry("help", HelpPlugin)]
    )
    thread = threading.Thread(target=runtime.run_socket_mode, args=("127.0.0.1", None), daemon=True)
    thread.start()
    fake_socket_mode.wait_for_connection(timeout=10)
    yield runtime, db
    runtime.stop_socket_mode()
    thread.join(timeout=10)
    db.dispose()


def test_events_and_commands_over_socket_mode(
    running: tuple[SlackRuntime, Database], fake_slack: FakeSlack, fake_socket_mode: FakeSocketMode
) -> None:
    runtime, db = running
    assert runtime.slack_status == "ok"  # auth.test against the fake
    event = payloads.event_callback(
        payloads.reaction_added("U0USER0001", "white_check_mark", "C0GENERAL", "1700000000.000100"),
        event_id="EvSOCKET1",
    )
    for attempt in range(3):  # a delivery and two retries
        ack = fake_socket_mode.wait_for_ack(
            fake_socket_mode.send("events_api", event, retry_attempt=attempt)
        )
        assert ack["envelope_id"]
    with db.session() as s:
        approvals = s.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "approve")
        )
    assert approvals == 1
    rid = "socket-help"
    command = payloads.slash_command(
        "/brandbot", "help", "U0USER0001", "C0GENERAL", fake_slack.response_url(rid)
    )
    fake_socket_mode.wait_for_ack(fake_socket_mode.send("slash_commands", command))
    deadline = time.monotonic() + 5
    while not fake_slack.responses(rid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "/hello" in fake_slack.responses(rid)[0]["text"]
