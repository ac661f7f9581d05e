"""A bot killed with SIGKILL while it posts a draft never posts it a second time: the press
claimed the draft before posting, so after a restart a second press is told it is being posted,
and the sweep later finds the post in the channel and records it (SQLite and PostgreSQL; a real
bot process, real signed HTTP, the fake Slack)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.plugin_loader import PluginEntry
from bot.storage import Database
from bot.storage.models import Draft, Example, utcnow
from bot.storage.repositories import Datasets
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from plugins.draft import DraftPlugin
from tests.bot.slack_harness import serve_bot
from tests.conftest import free_port
from tests.faults.test_durable_jobs import bot_env, poll, start_bot

COPY, MAYA = "C0BRANDCPY", "U0MAYA0001"
POST = "Our autumn chai lands Thursday: cardamom, clove and a knob of ginger over strong Assam."


def press_post(port: int, secret: str, fake: FakeSlack, draft_id: int, answer: str) -> None:
    body = payloads.block_actions(
        MAYA, "draft_post", f"{draft_id}:0", COPY, "1.1", fake.response_url(answer)
    )
    url = f"http://127.0.0.1:{port}/slack/events"
    assert signed_post(url, secret, body).status_code == 200


@pytest.mark.slow
def test_a_bot_killed_while_posting_a_draft_never_posts_it_twice(
    db_url: str, tmp_path: Path, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    db = Database(db_url)
    db.upgrade()
    with db.session() as s:
        dataset = Datasets(s).create("kk_copy", "draft", channels=[COPY], approvers=[MAYA])
        draft = Draft(dataset_id=dataset.id, brief="announce the chai", requested_by=MAYA,
                      channel_id=COPY, variants=[POST], text=POST)  # fmt: skip
        s.add(draft)
        s.flush()
        draft_id = draft.id
    fake_slack.add_user(MAYA, "maya")
    fake_slack.add_channel(COPY, "brand-copy", members=[fake_slack.bot_user_id, MAYA])
    arrived, release, stored = threading.Event(), threading.Event(), threading.Event()
    posted_ts: list[str] = []

    def held_post(call: Any) -> dict[str, Any]:  # Slack has the message; the bot never hears
        arrived.set()
        release.wait(60)
        posted_ts.append(fake_slack.add_message(call.args["channel"], call.args["text"],
                                                user=fake_slack.bot_user_id,
                                                bot_id=fake_slack.bot_id))  # fmt: skip
        stored.set()
        return {"channel": call.args["channel"], "ts": posted_ts[0]}

    fake_slack.handle("chat.postMessage", held_post)
    (tmp_path / "brandbot.toml").write_text("")
    env = bot_env(tmp_path, fake_slack, slack_signing_secret, db_url)
    log = tmp_path / "bot.log"
    port = free_port()
    bot = start_bot(env, port, log)
    try:
        press_post(port, slack_signing_secret, fake_slack, draft_id, "first")
        assert arrived.wait(60), log.read_text()[-3000:]
        os.kill(bot.pid, signal.SIGKILL)
        bot.wait()
    finally:
        release.set()
        if bot.poll() is None:
            bot.kill()
            bot.wait()
    fake_slack.handle("chat.postMessage", None)
    assert stored.wait(60)
    with db.session() as s:
        row = s.get(Draft, draft_id)
        assert row is not None and row.status == "posting"
        assert (row.final_text, row.posted_by, row.claim_index) == (POST, MAYA, 0)
        assert row.claimed_at is not None  # the claim survived the kill, for the sweep
    port = free_port()
    bot = start_bot(env, port, log)
    try:
        press_post(port, slack_signing_secret, fake_slack, draft_id, "again")
        said = poll("the second press's answer", lambda: fake_slack.responses("again"), 60, log)
        assert said[0]["text"] == "This draft is being posted."
    finally:
        bot.terminate()
        bot.wait(timeout=30)
    posts = [c for c in fake_slack.calls_for("chat.postMessage") if c.args["channel"] == COPY]
    assert len(posts) == 1
    assert fake_slack.responses("first") == []  # the killed bot never said "Posted"

    with db.session() as s:  # the sweep's wait passes
        row = s.get(Draft, draft_id)
        assert row is not None
        row.claimed_at = utcnow() - dt.timedelta(minutes=30)
    with serve_bot(
        db, fake_slack, slack_signing_secret, [PluginEntry("draft", DraftPlugin)]
    ) as bot2:
        (sweep,) = [b for b in bot2.runtime.scheduled() if b.name == "DraftPlugin.settle_stuck"]
        bot2.runtime.run_scheduled(sweep)
        bot2.runtime.services.jobs.wait_idle(30)
    with db.session() as s:
        row = s.get(Draft, draft_id)
        assert row is not None and (row.status, row.message_ts) == ("posted", posted_ts[0])
        example = s.scalars(select(Example).where(Example.kind == "positive")).one()
        assert (example.text, example.message_ts) == (POST, posted_ts[0])
    posts = [c for c in fake_slack.calls_for("chat.postMessage") if c.args["channel"] == COPY]
    assert len(posts) == 1  # recorded, not posted again
    db.dispose()
