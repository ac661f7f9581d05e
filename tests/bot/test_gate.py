"""Only approved, clean data teaches the model (issue 17): signed Slack requests into the real
app with the fake Slack, examples checked in the database (SQLite and PostgreSQL).

Drafts, suggestions and predictions are written to the database as the generation jobs would
leave them, so the buttons people press are exercised without a model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from bot.plugin_loader import PluginEntry
from bot.reply_prompts import reply_prompt
from bot.storage import Database
from bot.storage.models import (
    Approval,
    Draft,
    Example,
    OptOut,
    OutboxEvent,
    Prediction,
    Suggestion,
)
from bot.storage.repositories import Datasets
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from plugins.classify import ClassifyPlugin
from plugins.collect import CollectPlugin
from plugins.draft import DraftPlugin
from plugins.replies import RepliesPlugin
from tests.bot.slack_harness import Served, serve_bot

COPY, TICKETS = "C0BRANDCPY", "C0SUPPORT1"
MAYA, PRIYA, TOM, ANA, CUSTOMER, OUTSIDER, ADMIN = (
    "U0MAYA0001", "U0PRIYA001", "U0TOM00001", "U0ANA00001", "U0CUST0001", "U0OUTSIDE1",
    "U0ADMIN001",
)  # fmt: skip
PLUGINS = [PluginEntry("collect", CollectPlugin), PluginEntry("draft", DraftPlugin),
           PluginEntry("classify", ClassifyPlugin), PluginEntry("replies", RepliesPlugin)]  # fmt: skip
LABELS = ["billing", "refund", "shipping"]
POST = "Our autumn chai lands Thursday: cardamom, clove and a knob of ginger over strong Assam."
REPLY = "So sorry: the second charge is refunded today, it lands in 3-5 working days."


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    with database.session() as s:
        Datasets(s).create("kk_copy", "draft", channels=[COPY], approvers=[MAYA])
        Datasets(s).create("kk_tickets", "classify", ticket_channels=[TICKETS], labels=LABELS,
                           approvers=[TOM])  # fmt: skip
        Datasets(s).create("kk_replies", "draft", ticket_channels=[TICKETS], reply_mode="thread",
                           approvers=[TOM])  # fmt: skip
    yield database
    database.dispose()


class Env:
    def __init__(self, bot: Served, fake: FakeSlack, secret: str, db: Database) -> None:
        self.bot, self.fake, self.secret, self.db = bot, fake, secret, db

    def send(self, body: dict[str, Any]) -> Any:
        response = signed_post(self.bot.events_url, self.secret, body)
        assert response.status_code == 200
        self.bot.bridge.batcher.wait_idle()
        return response

    def event(self, event: dict[str, Any]) -> None:
        self.send(payloads.event_callback(event))

    def react(self, user: str, emoji: str, channel: str, ts: str, removed: bool = False) -> None:
        make = payloads.reaction_removed if removed else payloads.reaction_added
        self.event(make(user, emoji, channel, ts))

    def press(self, user: str, action: str, value: str, channel: str = COPY) -> str:
        rid = f"p{time.monotonic_ns()}"
        self.send(payloads.block_actions(user, action, value, channel, "1.1",
                                         self.fake.response_url(rid)))  # fmt: skip
        return self.answer(rid)

    def command(self, command: str, text: str, user: str, channel: str = COPY) -> str:
        rid = f"r{time.monotonic_ns()}"
        self.send(payloads.slash_command(command, text, user, channel, self.fake.response_url(rid)))
        return self.answer(rid)

    def answer(self, rid: str) -> str:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.fake.responses(rid):
                return str(self.fake.responses(rid)[0]["text"])
            time.sleep(0.02)
        raise AssertionError("no response")

    def until(self, check: Any, **where: Any) -> list[Example]:
        """The examples once ``check(examples)`` holds: a button's answer can arrive just
        before its handler's transaction commits."""
        deadline = time.monotonic() + 10
        while True:
            found = self.examples(**where)
            if check(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def examples(self, **where: Any) -> list[Example]:
        with self.db.session() as s:
            stmt = select(Example).order_by(Example.id)
            for k, v in where.items():
                stmt = stmt.where(getattr(Example, k) == v)
            return list(s.scalars(stmt))

    def add(self, row: Any) -> int:
        with self.db.session() as s:
            s.add(row)
            s.flush()
            return int(row.id)

    def dataset_id(self, name: str) -> int:
        with self.db.session() as s:
            return Datasets(s).get(name).id

    def draft(self, text: str, by: str) -> int:
        return self.add(Draft(dataset_id=self.dataset_id("kk_copy"), brief="announce the chai",
                              requested_by=by, channel_id=COPY, variants=[text], text=text))  # fmt: skip

    def prediction(self, text: str, label: str = "billing") -> int:
        ts = self.fake.add_message(TICKETS, text, user=CUSTOMER)
        return self.add(Prediction(dataset_id=self.dataset_id("kk_tickets"), channel_id=TICKETS,
                                   message_ts=ts, author_id=CUSTOMER, text=text, label=label,
                                   confidence=0.9, status="pending"))  # fmt: skip

    def suggestion(self, ticket: str, text: str = REPLY) -> Suggestion:
        ts = self.fake.add_message(TICKETS, ticket, user=CUSTOMER)
        row = Suggestion(dataset_id=self.dataset_id("kk_replies"), channel_id=TICKETS,
                         ticket_ts=ts, author_id=CUSTOMER, ticket_text=ticket, label="billing",
                         mode="thread", status="ready", text=text)  # fmt: skip
        self.add(row)
        return row


@pytest.fixture
def env(db: Database, fake_slack: FakeSlack, slack_signing_secret: str) -> Iterator[Env]:
    for uid in (MAYA, PRIYA, TOM, ANA, CUSTOMER, OUTSIDER, ADMIN):
        fake_slack.add_user(uid, uid.lower())
    bot = fake_slack.bot_user_id
    fake_slack.add_channel(COPY, "brand-copy", members=[bot, MAYA, PRIYA, OUTSIDER])
    fake_slack.add_channel(TICKETS, "support", is_private=True,
                           members=[bot, TOM, ANA, CUSTOMER])  # fmt: skip
    with serve_bot(db, fake_slack, slack_signing_secret, PLUGINS, admins=[ADMIN]) as served:
        yield Env(served, fake_slack, slack_signing_secret, db)


def test_a_non_approvers_posted_draft_is_pending_until_an_approver_approves_it(env: Env) -> None:
    said = env.press(PRIYA, "draft_post", f"{env.draft(POST, PRIYA)}:0")
    assert "An approver's ✅ on it makes it training data" in said
    (example,) = env.until(len)
    assert example.status == "pending" and example.approver_id is None
    env.bot.runtime.deliver_outbox()  # the approvers hear of it privately, with buttons
    asked = [c.args for c in env.fake.calls_for("chat.postMessage") if c.args["channel"] == MAYA]
    assert len(asked) == 1 and "not trained on until an approver approves it" in asked[0]["text"]
    # the refusal is the handler's last word: nothing else of that press can change the row
    assert "Only the approvers" in env.press(PRIYA, "example_approve", str(example.id))
    assert env.examples()[0].status == "pending"
    env.react(MAYA, "white_check_mark", COPY, str(example.message_ts))  # ✅ on the posted draft
    (approved,) = env.examples()
    assert approved.status == "active" and approved.approver_id == MAYA
    with env.db.session() as s:  # the other approvers' open Home views drop it
        decided = s.scalars(select(OutboxEvent).where(OutboxEvent.topic == "example.decided"))
        assert [(e.payload["example_id"], e.payload["by"]) for e in decided] == [(example.id, MAYA)]


def test_two_presses_of_post_at_once_post_the_draft_once(env: Env) -> None:
    """A double click, or two people pressing Post together: one message in the channel, one
    example. Slack answering slowly holds both presses in the window between reading the draft
    and recording it as posted."""
    draft = env.draft(POST, MAYA)
    posted: list[str] = []

    def slow_post(call: Any) -> dict[str, Any]:
        time.sleep(0.5)
        posted.append(str(call.args["text"]))
        return {"channel": call.args["channel"], "ts": f"1700000000.{len(posted):06d}"}

    env.fake.handle("chat.postMessage", slow_post)
    with ThreadPoolExecutor(2) as pool:
        said = list(pool.map(lambda _: env.press(MAYA, "draft_post", f"{draft}:0"), range(2)))
    assert posted == [POST]
    first, second = sorted(said, key=lambda text: not text.startswith("Posted in"))
    assert first == f"Posted in <#{COPY}>."
    assert second in ("This draft is being posted.", "This draft was already posted.")
    (example,) = env.until(len)
    assert example.status == "active" and example.message_ts == "1700000000.000001"


def test_a_post_slack_refuses_leaves_the_draft_to_post_again(env: Env) -> None:
    draft = env.draft(POST, MAYA)
    env.fake.fail("chat.postMessage", "channel_not_found")
    assert "Couldn't post" in env.press(MAYA, "draft_post", f"{draft}:0")
    assert env.examples() == []
    assert env.press(MAYA, "draft_post", f"{draft}:0") == f"Posted in <#{COPY}>."
    (example,) = env.until(len)
    assert example.status == "active"


def test_an_approvers_posted_draft_is_active_and_a_stranger_cannot_withdraw_it(env: Env) -> None:
    env.press(MAYA, "draft_post", f"{env.draft(POST, MAYA)}:0")
    (example,) = env.until(len)
    assert example.status == "active" and example.approver_id == MAYA
    ts = str(example.message_ts)
    env.react(PRIYA, "white_check_mark", COPY, ts)  # not an approver: not recorded
    env.react(PRIYA, "white_check_mark", COPY, ts, removed=True)
    env.react(OUTSIDER, "x", COPY, ts, removed=True)
    assert env.examples()[0].status == "active"
    env.react(ADMIN, "white_check_mark", COPY, ts, removed=True)  # an admin can withdraw
    assert env.examples()[0].status == "withdrawn"


def test_only_the_last_approver_withdraws_a_reaction_approved_example(env: Env) -> None:
    ts = env.fake.add_message(COPY, POST, user=PRIYA)
    env.react(MAYA, "white_check_mark", COPY, ts)
    with env.db.session() as s:
        approvals = s.scalars(select(Approval)).all()
    assert [a.user_id for a in approvals] == [MAYA]
    env.react(PRIYA, "white_check_mark", COPY, ts, removed=True)
    assert env.examples()[0].status == "active"
    env.react(MAYA, "white_check_mark", COPY, ts, removed=True)
    assert env.examples()[0].status == "withdrawn"


def test_an_edit_after_approval_is_pending_and_keeps_the_approved_text(env: Env) -> None:
    ts = env.fake.add_message(COPY, POST, user=PRIYA)
    env.react(MAYA, "white_check_mark", COPY, ts)
    edited = POST.replace("Thursday", "Friday, buy now")
    env.event(payloads.message_changed(COPY, ts, edited, PRIYA, POST))
    (example,) = env.examples()
    assert (example.status, example.text, example.pending_text) == ("pending", POST, edited)
    env.event(payloads.message_changed(COPY, ts, edited + "!", PRIYA, edited))  # and again
    (example,) = env.examples()
    assert (example.text, example.pending_text) == (POST, edited + "!")
    edited += "!"
    env.bot.runtime.deliver_outbox()
    asked = [c.args for c in env.fake.calls_for("chat.postMessage") if c.args["channel"] == MAYA]
    assert len(asked) == 2 and edited in asked[-1]["text"]  # each edit is shown to approve
    assert "Approved by" in env.press(MAYA, "example_approve", str(example.id), channel=MAYA)
    (example,) = env.until(lambda found: found[0].status == "active")
    assert (example.status, example.text, example.pending_text) == ("active", edited, None)
    maya_ts = env.fake.add_message(COPY, "Tasting evenings are back in Bristol.", user=MAYA)
    env.react(MAYA, "white_check_mark", COPY, maya_ts)
    env.event(payloads.message_changed(COPY, maya_ts, "Tasting evenings are back in Bath.", MAYA))
    assert env.examples(message_ts=maya_ts)[0].text == "Tasting evenings are back in Bath."


def test_a_non_approvers_ticket_label_is_pending_and_an_approvers_is_trained_on(env: Env) -> None:
    first = env.prediction("I was charged twice for order KK-48213")
    said = env.press(ANA, "classify_pick", f"{first}:refund", channel=TICKETS)
    assert "checks it before it's training data" in said
    (pending,) = env.until(len)
    assert (pending.status, pending.label) == ("pending", "refund")
    approved = env.press(TOM, "classify_pick", f"{first}:billing", channel=TICKETS)
    assert "Approved *billing*" in approved
    (example,) = env.until(lambda found: found[0].status == "active")
    assert (example.status, example.label, example.approver_id) == ("active", "billing", TOM)
    second = env.prediction("Where is my parcel? It has been two weeks.", label="shipping")
    assert "training data now" in env.press(TOM, "classify_confirm", str(second), TICKETS)
    assert env.until(lambda found: len(found) == 2, status="active")[-1].label == "shipping"


def test_a_non_approvers_posted_reply_is_pending_and_an_approvers_is_active(env: Env) -> None:
    ticket = "I was charged twice, my card is 4111 1111 1111 1111, mail me at kim@example.com"
    row = env.suggestion(ticket)
    assert "an approver's ✅" in env.press(ANA, "reply_post", str(row.id), channel=TICKETS)
    (pending,) = env.until(len)
    assert pending.status == "pending" and pending.subject_id == CUSTOMER
    other = env.suggestion("the lid of my tin won't shut", "Sorry! A new lid is on its way.")
    env.press(TOM, "reply_post", str(other.id), channel=TICKETS)
    approved = env.until(len, status="active")
    assert len(approved) == 1 and approved[0].approver_id == TOM
    assert approved[0].prompt == reply_prompt("the lid of my tin won't shut", "billing")


def test_ticket_text_is_scrubbed_before_it_is_stored(env: Env) -> None:
    text = "Refund please! Card 4111\u200b1111\u200b1111\u200b1111, call +44 7700 900123."
    ts = env.fake.add_message(TICKETS, text, user=CUSTOMER)
    env.event(payloads.message(TICKETS, CUSTOMER, text, ts=ts))
    with env.db.session() as s:
        stored = [p.text for p in s.scalars(select(Prediction))]
        stored += [r.ticket_text for r in s.scalars(select(Suggestion))]
    assert len(stored) == 2
    for kept in stored:
        assert kept and "[CARD]" in kept and "4111" not in kept and "900123" not in kept


def test_briefs_and_reply_datasets_are_for_approvers_and_channel_members(env: Env) -> None:
    row = env.suggestion("Please refund order KK-1, I'm moving to 12 Elm Street")
    env.press(TOM, "reply_post", str(row.id), channel=TICKETS)
    (example,) = env.until(len)
    refused = env.command("/brandbot", f"brief {example.id}", OUTSIDER)
    assert "only its approvers and the members of its channels" in refused
    assert "Elm Street" not in refused
    assert "Elm Street" in env.command("/brandbot", f"brief {example.id}", ANA, TICKETS)
    changed = env.command("/brandbot", f"brief {example.id} Answer kim@example.com kindly", TOM)
    assert "[EMAIL]" in changed and "kim@" not in changed  # briefs pass the gate too
    drafting = env.command("/draft", "-d kk_replies answer a refund", OUTSIDER)
    assert "only drafts for their members" in drafting
    with env.db.session() as s:
        assert s.scalars(select(Draft)).all() == []


def test_slack_forget_removes_reply_examples_built_on_a_customers_ticket(env: Env) -> None:
    row = env.suggestion("I was charged twice for my Steep Club box")
    env.press(TOM, "reply_post", str(row.id), channel=TICKETS)
    assert len(env.until(len)) == 1  # written by Tom, about the customer
    answer = env.command("/brandbot", f"forget <@{CUSTOMER}>", ADMIN)
    assert answer.startswith(f"Erased <@{CUSTOMER}>: 1 examples")
    assert env.until(lambda found: not found) == []
    with env.db.session() as s:
        assert s.get(OptOut, CUSTOMER) is not None
        assert s.scalars(select(Suggestion)).all() == []
    again = env.suggestion("Another ticket from the same customer")  # collection has stopped
    assert "opted out" in env.press(TOM, "reply_post", str(again.id), channel=TICKETS)
    assert env.examples() == []


def test_retention_clears_what_predictions_and_suggestions_kept(env: Env) -> None:
    from bot.privacy import purge_ticket_text
    from bot.storage.models import utcnow

    row = env.suggestion("My box of Earl Grey never came")
    env.press(TOM, "reply_post", str(row.id), channel=TICKETS)
    env.prediction("charged twice, please help")
    env.until(len)
    with env.db.session() as s:
        assert purge_ticket_text(s, utcnow().replace(year=2100))["suggestions"] == 1
    with env.db.session() as s:
        (kept,) = s.scalars(select(Suggestion)).all()
        assert (kept.ticket_text, kept.text, kept.final_text) == (None, None, None)
        assert [p.text for p in s.scalars(select(Prediction))] == [None]
        assert s.scalars(select(Example)).all() == []  # the reply example held the ticket
