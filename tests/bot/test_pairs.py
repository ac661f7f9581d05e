"""Preference pairs from /draft end to end: signed Slack requests into the real app, the tiny real
model behind the inference client, the fake Slack Web API, and the database (SQLite and
PostgreSQL). Only approvers' choices make pairs; trivial edits and replays make none."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from bot.plugin_loader import PluginEntry
from bot.privacy import forget_user
from bot.storage import Database
from bot.storage.models import Draft, Example
from bot.storage.repositories import Audit, Datasets
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from plugins.collect import CollectPlugin
from plugins.draft import DraftPlugin
from serving.client import LocalClient
from serving.engine import LocalEngine
from tests.bot.slack_harness import Served, serve_bot
from trainer.cleaning import normalize_text

COPY = "C0BRANDCPY"
MAYA, JONAS, PRIYA = "U0MAYA0001", "U0JONAS001", "U0PRIYA001"  # approvers: Maya and Jonas
CONFIG: dict[str, object] = {
    "draft": {"max_tokens": 16, "retries_for_rules": 0, "stream_every_s": 5.0, "temperature": 1.0}
}


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    with database.session() as s:
        Datasets(s).create("kk_copy", "draft", channels=[COPY], system_prompt="Write warmly.",
                           max_length=400, approvers=[MAYA, JONAS])  # fmt: skip
    yield database
    database.dispose()


@pytest.fixture
def bot(
    db: Database, fake_slack: FakeSlack, slack_signing_secret: str, engine: LocalEngine
) -> Iterator[Served]:
    for uid in (MAYA, JONAS, PRIYA):
        fake_slack.add_user(uid, uid.lower())
    fake_slack.add_channel(COPY, "brand-copy",
                           members=[fake_slack.bot_user_id, MAYA, JONAS, PRIYA])  # fmt: skip
    plugins = [PluginEntry("draft", DraftPlugin), PluginEntry("collect", CollectPlugin)]
    with serve_bot(db, fake_slack, slack_signing_secret, plugins, config=CONFIG,
                   inference=LocalClient(engine)) as served:  # fmt: skip
        yield served


class Chat:
    """A person's side of /draft: commands, button presses and the edit modal."""

    def __init__(self, bot: Served, fake: FakeSlack, secret: str) -> None:
        self.bot, self.fake, self.secret = bot, fake, secret

    def wait(self, predicate: Any, timeout: float = 90.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError("timed out")

    def preview(self, rid: str, after: int = 0) -> dict[str, dict[str, Any]]:
        """The buttons of the newest preview answered to ``rid`` (past the first ``after``)."""
        found = self.wait(lambda: [r for r in self.fake.responses(rid)[after:] if buttons(r)])
        return buttons(found[-1])

    def draft(self, text: str, user: str = MAYA) -> tuple[str, dict[str, dict[str, Any]]]:
        rid = f"r{time.monotonic_ns()}"
        body = payloads.slash_command("/draft", text, user, COPY, self.fake.response_url(rid))
        assert signed_post(self.bot.events_url, self.secret, body).status_code == 200
        return rid, self.preview(rid)

    def press(self, button: dict[str, Any], user: str = MAYA, rid: str | None = None) -> str:
        rid = rid or f"p{time.monotonic_ns()}"
        body = payloads.block_actions(
            user, button["action_id"], button["value"], COPY, "1.1", self.fake.response_url(rid)
        )
        assert signed_post(self.bot.events_url, self.secret, body).status_code == 200
        return rid

    def edit_and_post(self, button: dict[str, Any], text: str, user: str = MAYA) -> dict[str, Any]:
        """Press Edit, then submit the modal that opened with ``text``; returns the view."""
        opened = len(self.fake.calls_for("views.open"))
        self.press(button, user)
        view = self.fake.wait_for("views.open", count=opened + 1)[-1].args["view"]
        view = view if isinstance(view, dict) else json.loads(view)
        self.submit(view, text, user)
        return dict(view)

    def submit(self, view: dict[str, Any], text: str, user: str = MAYA) -> None:
        body = payloads.view_submission(
            user, "draft_edit", {"text": {"value": text}},
            private_metadata=view["private_metadata"],
        )  # fmt: skip
        assert signed_post(self.bot.events_url, self.secret, body).status_code == 200

    def settle(self) -> None:
        self.bot.runtime.services.jobs.wait_idle(60)
        self.bot.runtime.deliver_outbox()
        self.bot.runtime.services.jobs.wait_idle(60)


def buttons(response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["text"]["text"]: e
        for b in response.get("blocks") or []
        if b["type"] == "actions"
        for e in b["elements"]
    }


@pytest.fixture
def chat(bot: Served, fake_slack: FakeSlack, slack_signing_secret: str) -> Chat:
    return Chat(bot, fake_slack, slack_signing_secret)


def pairs(db: Database) -> list[Example]:
    with db.session() as s:
        rows = s.scalars(select(Example).where(Example.kind == "preference").order_by(Example.id))
        found = list(rows)
        s.expunge_all()
    return found


def drafts(db: Database) -> list[Draft]:
    with db.session() as s:
        found = list(s.scalars(select(Draft).order_by(Draft.id)))
        s.expunge_all()
    return found


POSTED = "Our autumn chai lands Thursday: cardamom, clove and ginger over strong Assam."


def test_a_non_approver_posting_an_edited_draft_makes_no_pair(chat: Chat, db: Database) -> None:
    _, preview = chat.draft("announce the autumn chai", user=PRIYA)
    chat.edit_and_post(preview["Edit"], POSTED, user=PRIYA)
    _, other = chat.draft("announce the autumn chai", user=PRIYA)
    chat.press(other["Discard"], user=PRIYA)
    chat.settle()
    # a press is acknowledged before it is handled: wait for both to have taken effect
    chat.wait(lambda: [d.status for d in drafts(db)] == ["posted", "discarded"])
    posted = [d for d in drafts(db) if d.status == "posted"]
    assert posted[0].final_text == POSTED and posted[0].posted_by == PRIYA
    with db.session() as s:
        (example,) = s.scalars(select(Example)).all()  # the post waits for an approver
        assert (example.kind, example.status, example.text) == ("positive", "pending", POSTED)
    assert pairs(db) == []


def test_an_approvers_edit_is_a_pair_once_beside_the_positive_example(
    chat: Chat, db: Database
) -> None:
    _, preview = chat.draft("announce the autumn chai")
    view = chat.edit_and_post(preview["Edit"], POSTED)
    chat.wait(lambda: [d for d in drafts(db) if d.status == "posted"])
    chat.submit(view, POSTED)  # a replayed submission
    chat.press(preview["Post to channel"])  # and a late press of Post
    chat.settle()
    (draft,) = drafts(db)
    (pair,) = pairs(db)
    assert (pair.prompt, pair.text, pair.rejected_text) == (
        "announce the autumn chai", POSTED, normalize_text(draft.variants[0]),
    )  # fmt: skip
    assert (pair.source, pair.status, pair.approver_id, pair.author_id) == (
        "edit", "active", MAYA, MAYA,
    )  # fmt: skip
    assert pair.message_ts is None and pair.channel_id == COPY
    with db.session() as s:
        (positive,) = s.scalars(select(Example).where(Example.kind == "positive")).all()
        assert (positive.text, positive.status, positive.message_ts) == (
            POSTED, "active", draft.message_ts,
        )  # fmt: skip
        assert pair.split == positive.split  # the chosen text keeps the positive's split
        audit = [a for a in Audit(s).entries() if a.action == "pair.add"]
        assert [(a.example_id, a.content_hash) for a in audit] == [(pair.id, pair.content_hash)]
    posts = [c for c in chat.fake.calls_for("chat.postMessage") if c.args.get("channel") == COPY]
    assert len(posts) == 1
    # The posted message deleted: its example and the pair that chose its text are withdrawn.
    gone = payloads.event_callback(payloads.message_deleted(COPY, str(draft.message_ts)))
    assert signed_post(chat.bot.events_url, chat.secret, gone).status_code == 200
    chat.settle()
    chat.wait(lambda: [p.status for p in pairs(db)] == ["withdrawn"])
    with db.session() as s:
        assert [e.status for e in s.scalars(select(Example))] == ["withdrawn", "withdrawn"]


def test_a_trivial_edit_is_no_pair(chat: Chat, db: Database) -> None:
    _, preview = chat.draft("tins are back")
    (draft,) = drafts(db)
    generated = draft.variants[0]
    trivial = "  " + generated.upper().replace(" ", "   ") + " ..."
    chat.edit_and_post(preview["Edit"], trivial)
    chat.wait(lambda: [d for d in drafts(db) if d.status == "posted"])
    chat.settle()
    assert drafts(db)[0].final_text == trivial.strip()
    assert pairs(db) == []


def test_the_variant_posted_is_chosen_over_each_one_not_posted(chat: Chat, db: Database) -> None:
    _, preview = chat.draft("-n 3 the copper kettle is back")
    chat.press(preview["Post 2 to channel"])
    chat.wait(lambda: [d for d in drafts(db) if d.status == "posted"])
    chat.settle()
    (draft,) = drafts(db)
    found = pairs(db)
    chosen = normalize_text(draft.variants[1])
    others = {normalize_text(draft.variants[i]) for i in (0, 2)} - {chosen}
    assert {p.source for p in found} == {"variant"}  # posted unedited: no edit pair
    assert all(p.text == chosen and p.prompt == "the copper kettle is back" for p in found)
    assert {p.rejected_text for p in found} == others and len(found) == len(others)


def test_a_regenerated_then_posted_draft_beats_the_text_it_replaced(
    chat: Chat, db: Database
) -> None:
    rid, preview = chat.draft("hiring a packer in Bristol")
    (first,) = drafts(db)
    seen = len(chat.fake.responses(rid))
    chat.press(preview["Regenerate"], rid=rid)
    again = chat.preview(rid, after=seen)
    regenerated = chat.wait(lambda: [d for d in drafts(db) if d.replaced])[0]
    assert regenerated.replaced == first.variants
    chat.edit_and_post(
        again["Edit"], "We're hiring a part-time packer in Bristol, three days a week."
    )
    chat.wait(lambda: [d for d in drafts(db) if d.status == "posted"])
    chat.settle()
    by_source = {p.source: p for p in pairs(db)}
    assert set(by_source) == {"edit", "regenerate"}
    assert by_source["regenerate"].rejected_text == normalize_text(first.variants[0])
    assert by_source["edit"].rejected_text == normalize_text(regenerated.variants[0])


def test_a_discarded_draft_is_a_weak_negative_only_beside_a_posted_one(
    chat: Chat, db: Database
) -> None:
    # Discarded first, then another draft of the same brief posted (by another approver).
    _, first = chat.draft("Tell people our pouches are compostable")
    chat.press(first["Discard"])
    _, lone = chat.draft("a brief nobody posts")
    chat.press(lone["Discard"])
    chat.wait(lambda: len([d for d in drafts(db) if d.status == "discarded"]) == 2)
    assert pairs(db) == []  # nothing posted for these briefs yet: no pair
    _, second = chat.draft("tell people our pouches are compostable.", user=JONAS)
    chat.edit_and_post(second["Edit"], "Our pouches are now fully compostable.", user=JONAS)
    chat.wait(lambda: [d for d in drafts(db) if d.status == "posted"])
    chat.settle()
    weak = [p for p in pairs(db) if p.source == "discard"]
    discarded = drafts(db)[0]
    assert [p.rejected_text for p in weak] == [normalize_text(discarded.variants[0])]
    assert weak[0].text == "Our pouches are now fully compostable."
    assert (weak[0].approver_id, weak[0].author_id) == (MAYA, JONAS)
    # Posted first, then a draft of the same brief discarded; a non-approver's discard is none.
    _, third = chat.draft("Tell people our pouches are compostable", user=PRIYA)
    chat.press(third["Discard"], user=PRIYA)
    _, fourth = chat.draft("Tell people our pouches are compostable")
    chat.press(fourth["Discard"])
    chat.wait(lambda: len([d for d in drafts(db) if d.status == "discarded"]) == 4)
    chat.settle()
    fourth_text = normalize_text(drafts(db)[-1].variants[0])
    weak = [p for p in pairs(db) if p.source == "discard"]
    assert len(weak) == 2 and weak[-1].rejected_text == fourth_text
    priya_text = normalize_text(drafts(db)[-2].variants[0])
    assert priya_text == fourth_text or priya_text not in {p.rejected_text for p in weak}
    # Forgetting the approver who discarded takes their pairs with them.
    with db.session() as s:
        forget_user(s, MAYA, actor="test")
    left = pairs(db)
    assert [p.source for p in left] == ["edit"] and left[0].approver_id == JONAS
