"""Drafts a crash left ``posting``: the sweep records the ones the channel shows the bot posted
and gives back the claim of the ones it does not, once (signed Slack requests into the real
app, the fake Slack Web API over HTTP, SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from bot.plugin import ChatMessage
from bot.plugin_loader import PluginEntry
from bot.storage import Database
from bot.storage.models import Draft, Example, utcnow
from bot.storage.repositories import Datasets
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from plugins.draft import DraftPlugin
from plugins.draft_posting import posted_message, slack_ts
from tests.bot.slack_harness import Served, serve_bot
from tests.bot.test_draft_classify import wait

COPY = "C0BRANDCPY"
MAYA, PRIYA = "U0MAYA0001", "U0PRIYA001"
PLUGINS = [PluginEntry("draft", DraftPlugin)]
POSTED = "Our autumn chai lands Thursday: cardamom, clove & a knob of ginger over strong Assam."
LOST = "Cold mornings call for our smoky lapsang: brew it strong, add a splash of milk."
EDITED = "Cold mornings call for smoky lapsang. Brew it strong."
FRESH = "Jasmine pearls are back in stock, hand-rolled and fragrant."


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    with database.session() as s:
        Datasets(s).create("kk_copy", "draft", channels=[COPY], approvers=[MAYA])
    yield database
    database.dispose()


@pytest.fixture
def bot(db: Database, fake_slack: FakeSlack, slack_signing_secret: str) -> Iterator[Served]:
    for uid in (MAYA, PRIYA):
        fake_slack.add_user(uid, uid.lower())
    fake_slack.add_channel(COPY, "brand-copy", members=[fake_slack.bot_user_id, MAYA, PRIYA])
    with serve_bot(db, fake_slack, slack_signing_secret, PLUGINS) as served:
        yield served


def claimed(db: Database, text: str, final: str, minutes_ago: float, index: int = 0) -> int:
    """A draft as a Post press leaves it when the bot dies before recording the post."""
    with db.session() as s:
        dataset = Datasets(s).get("kk_copy")
        assert dataset is not None
        draft = Draft(
            dataset_id=dataset.id, brief="a brief", requested_by=MAYA, channel_id=COPY,
            variants=[text], text=text, status="posting", final_text=final, posted_by=MAYA,
            claimed_at=utcnow() - dt.timedelta(minutes=minutes_ago), claim_index=index,
            claim_team="T0BRANDBOT", requested_at=utcnow() - dt.timedelta(hours=1),
        )  # fmt: skip
        s.add(draft)
        s.flush()
        return draft.id


def draft(db: Database, draft_id: int) -> Draft:
    with db.session() as s:
        row = s.get(Draft, draft_id)
        assert row is not None
        s.expunge(row)
        return row


def sweep(bot: Served) -> None:
    (job,) = [b for b in bot.runtime.scheduled() if b.name == "DraftPlugin.settle_stuck"]
    bot.runtime.run_scheduled(job)
    bot.runtime.services.jobs.wait_idle(30)


def channel_posts(fake: FakeSlack) -> list[Any]:
    return [c for c in fake.calls_for("chat.postMessage") if c.args.get("channel") == COPY]


def notes_to(fake: FakeSlack, user: str) -> list[dict[str, Any]]:
    return [e for e in fake.ephemerals if e["user"] == user and e["channel"] == COPY]


def test_the_sweep_records_what_slack_has_and_releases_what_it_has_not(
    bot: Served, fake_slack: FakeSlack, db: Database, slack_signing_secret: str
) -> None:
    posted = claimed(db, POSTED, POSTED, minutes_ago=30)
    lost = claimed(db, LOST, EDITED, minutes_ago=30)
    fresh = claimed(db, FRESH, FRESH, minutes_ago=1)
    # the bot's post of the first went out (Slack escapes "&"); a person pasted the second
    ts = fake_slack.add_message(COPY, POSTED.replace("&", "&amp;"), user=fake_slack.bot_user_id,
                                bot_id=fake_slack.bot_id)  # fmt: skip
    fake_slack.add_message(COPY, EDITED, user=PRIYA)
    sweep(bot)

    done = draft(db, posted)
    assert (done.status, done.message_ts, done.final_text) == ("posted", ts, POSTED)
    assert done.posted_at is not None and done.edit_distance == 0
    with db.session() as s:
        example = s.scalars(select(Example).where(Example.kind == "positive")).one()
        assert (example.text, example.message_ts, example.source) == (POSTED, ts, "draft")
    back = draft(db, lost)
    assert back.status == "pending"
    assert (back.final_text, back.posted_by, back.claimed_at, back.claim_index) == (None,) * 4
    assert draft(db, fresh).status == "posting"  # may still be posting: left alone
    assert channel_posts(fake_slack) == []  # settling never posts
    notes = sorted(notes_to(fake_slack, MAYA), key=lambda n: "cut off" in n["text"])
    assert len(notes) == 2
    assert "was posted in" in notes[0]["text"] and "recorded now" in notes[0]["text"]
    assert "cut off by a restart" in notes[1]["text"] and EDITED in notes[1]["text"]
    assert "paste it to post your edit" in notes[1]["text"]  # the edit is not the variant

    sweep(bot)  # settled once: nothing happens twice
    assert len(notes_to(fake_slack, MAYA)) == 2 and channel_posts(fake_slack) == []
    with db.session() as s:
        assert len(s.scalars(select(Example).where(Example.kind == "positive")).all()) == 1

    (post,) = [
        e for b in notes[1]["blocks"] if b["type"] == "actions" for e in b["elements"]
        if e["action_id"] == "draft_post"
    ]  # fmt: skip
    body = payloads.block_actions(MAYA, "draft_post", post["value"], COPY, "1.1",
                                  fake_slack.response_url("again"))  # fmt: skip
    assert signed_post(bot.events_url, slack_signing_secret, body).status_code == 200
    wait(lambda: draft(db, lost).status == "posted")
    assert [c.args["text"] for c in channel_posts(fake_slack)] == [LOST]


def test_a_channel_the_bot_cannot_read_leaves_the_draft_posting(
    bot: Served, fake_slack: FakeSlack, db: Database
) -> None:
    stuck = claimed(db, LOST, LOST, minutes_ago=30)
    fake_slack.fail("conversations.history", "not_in_channel")
    sweep(bot)
    assert draft(db, stuck).status == "posting"  # cannot tell, so never risks a second post
    assert notes_to(fake_slack, MAYA) == [] and channel_posts(fake_slack) == []
    sweep(bot)  # readable again: settled
    assert draft(db, stuck).status == "pending"


def test_a_draft_claimed_before_claims_were_timed_is_matched_by_its_variants(
    bot: Served, fake_slack: FakeSlack, db: Database
) -> None:
    with db.session() as s:
        dataset = Datasets(s).get("kk_copy")
        assert dataset is not None
        row = Draft(dataset_id=dataset.id, brief="b", requested_by=MAYA, channel_id=COPY,
                    variants=[LOST, POSTED], text=LOST, status="posting",
                    requested_at=utcnow() - dt.timedelta(hours=1))  # fmt: skip
        s.add(row)
        s.flush()
        old = row.id
    ts = fake_slack.add_message(COPY, POSTED, user=fake_slack.bot_user_id, bot_id=fake_slack.bot_id)
    sweep(bot)
    done = draft(db, old)
    assert (done.status, done.message_ts, done.final_text, done.posted_by) == (
        "posted", ts, POSTED, MAYA,
    )  # fmt: skip


def test_posted_message_matches_only_the_bots_unrecorded_top_level_messages() -> None:
    bot, text = "U0BOT", "Fresh chai & cake <today>"
    shown = "Fresh chai &amp; cake &lt;today&gt;"
    mine = ChatMessage(COPY, "100.000001", bot, shown)
    assert posted_message([mine], [text], bot, set()) == ("100.000001", 0)
    assert posted_message([mine], [text], bot, {"100.000001"}) is None  # another draft's
    assert posted_message([ChatMessage(COPY, "1.1", PRIYA, text)], [text], bot, set()) is None
    reply = ChatMessage(COPY, "101.000001", bot, text, thread_ts="100.000001")
    assert posted_message([reply], [text], bot, set()) is None
    long = "x" * 300
    clipped = ChatMessage(COPY, "102.000001", bot, long[:199] + "…")
    assert posted_message([clipped], ["other", long], bot, set()) == ("102.000001", 1)
    later = ChatMessage(COPY, "103.000001", bot, text)
    assert posted_message([later, mine], [text], bot, set()) == ("100.000001", 0)  # earliest
    assert slack_ts(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)) == "1767225600.000000"
    assert slack_ts(dt.datetime(2026, 1, 1)) == "1767225600.000000"  # naive: UTC
