"""Suggested replies end to end: signed Slack requests into the real app, the tiny real model
behind the inference client, the fake Slack Web API, and the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from bot.plugin_loader import PluginEntry
from bot.privacy import forget_user
from bot.reply_prompts import CUT_NOTE, cut_middle, fit_ticket, reply_prompt
from bot.storage import Database
from bot.storage.models import Example, OptOut, Prediction, Suggestion, utcnow
from bot.storage.repositories import Datasets
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from plugins.classify import ClassifyPlugin
from plugins.collect import CollectPlugin
from plugins.replies import RepliesPlugin
from serving.client import HttpClient, LocalClient
from serving.engine import LocalEngine
from tests.bot.slack_harness import Served, serve_bot
from trainer.cleaning import normalize_text

TICKETS, PRIVATE_Q = "C0SUPPORT1", "C0SUPPORT2"
TOM, ANA, CUSTOMER = "U0TOM00001", "U0ANA00001", "U0CUST0001"
LABELS = ["billing", "refund", "shipping"]
PLUGINS = [
    PluginEntry("classify", ClassifyPlugin),
    PluginEntry("replies", RepliesPlugin),
    PluginEntry("collect", CollectPlugin),
]
CONFIG: dict[str, object] = {"replies": {"max_tokens": 24, "temperature": 0.0}}


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    with database.session() as s:
        Datasets(s).create("kk_tickets", "classify", channels=[TICKETS],
                           ticket_channels=[TICKETS], labels=LABELS, approvers=[TOM])  # fmt: skip
        Datasets(s).create(
            "kk_replies", "draft", ticket_channels=[TICKETS, PRIVATE_Q], reply_mode="thread",
            reply_channel_modes={PRIVATE_Q: "ephemeral"}, approvers=[TOM],
            system_prompt="Answer support tickets kindly.",
        )  # fmt: skip
    yield database
    database.dispose()


@pytest.fixture
def bot(
    db: Database, fake_slack: FakeSlack, slack_signing_secret: str, engine: LocalEngine
) -> Iterator[Served]:
    for uid in (TOM, ANA, CUSTOMER):
        fake_slack.add_user(uid, uid.lower())
    for channel in (TICKETS, PRIVATE_Q):
        fake_slack.add_channel(channel, channel.lower(),
                               members=[fake_slack.bot_user_id, TOM, ANA, CUSTOMER])  # fmt: skip
    with serve_bot(db, fake_slack, slack_signing_secret, PLUGINS, config=CONFIG,
                   inference=LocalClient(engine)) as served:  # fmt: skip
        yield served


def wait(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def settle(bot: Served, rounds: int = 3) -> None:
    """Run queued jobs and deliver outbox events until the chain (classify -> suggest) ends."""
    for _ in range(rounds):
        bot.runtime.services.jobs.wait_idle(60)
        bot.runtime.deliver_outbox()
    bot.runtime.services.jobs.wait_idle(60)


def send(bot: Served, secret: str, event: dict[str, Any], event_id: str | None = None) -> None:
    body = payloads.event_callback(event, event_id=event_id)
    assert signed_post(bot.events_url, secret, body).status_code == 200


def post_ticket(
    bot: Served, fake: FakeSlack, secret: str, text: str, channel: str = TICKETS
) -> str:
    ts = fake.add_message(channel, text, user=CUSTOMER)
    send(bot, secret, payloads.message(channel, CUSTOMER, text, ts=ts))
    return ts


def press(
    bot: Served, fake: FakeSlack, secret: str, action: str, value: str, user: str = TOM,
    channel: str = TICKETS,
) -> str:  # fmt: skip
    rid = f"p{time.monotonic_ns()}"
    body = payloads.block_actions(user, action, value, channel, "1.1", fake.response_url(rid))
    assert signed_post(bot.events_url, secret, body).status_code == 200
    return rid


def buttons(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    blocks = message.get("blocks") or []
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    return {e["text"]["text"]: e for b in blocks if b["type"] == "actions" for e in b["elements"]}


def thread_posts(fake: FakeSlack, ts: str) -> list[dict[str, Any]]:
    return [c.args for c in fake.calls_for("chat.postMessage") if c.args.get("thread_ts") == ts]


def suggestion(db: Database, ts: str) -> Suggestion:
    with db.session() as s:
        row = s.scalars(select(Suggestion).where(Suggestion.ticket_ts == ts)).one()
        s.expunge(row)
        return row


def set_text(db: Database, suggestion_id: int, text: str) -> None:
    with db.session() as s:
        row = s.get(Suggestion, suggestion_id)
        assert row is not None
        row.text = text


# ---- pure helpers ----------------------------------------------------------------------------


def test_reply_prompt_and_cutting_from_the_middle() -> None:
    assert reply_prompt(" hi\n there ", "billing") == "Intent: billing | Ticket: hi there"
    assert reply_prompt("hi", None) == "Ticket: hi"
    text = "A" * 50 + "M" * 100 + "Z" * 50
    cut, n = cut_middle(text, 60)
    assert n == 140 and cut.startswith("A" * 40) and cut.endswith("Z" * 20)
    assert CUT_NOTE.format(n=140) in cut and "M" not in cut
    assert cut_middle("short", 60) == ("short", 0)
    fitted, n = fit_ticket("word " * 400, None, lambda t: len(t.split()) + 10, 100)
    assert 0 < len(fitted.split()) + 10 <= 100 and n > 0


# ---- thread mode -----------------------------------------------------------------------------


def test_ticket_gets_a_label_and_a_suggestion_and_an_edited_post_becomes_an_example(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> None:
    text = "I was charged twice for order KK-48213, can you refund one?"
    ts = post_ticket(bot, fake_slack, slack_signing_secret, text)
    settle(bot)
    posts = thread_posts(fake_slack, ts)
    label_post = [p for p in posts if str(p["text"]).startswith(("Label:", "I'm not sure"))]
    suggested = [p for p in posts if "*Suggested reply*" in str(p["text"])]
    assert len(label_post) == 1 and len(suggested) == 1
    with db.session() as s:
        prediction = s.scalars(select(Prediction)).one()
    row = suggestion(db, ts)
    assert row.status == "ready" and row.label == prediction.label and row.mode == "thread"
    assert f"for a *{prediction.label}* ticket" in suggested[0]["text"]
    assert "not sent yet" in suggested[0]["text"] and row.message_ts
    assert {"Post reply", "Edit and post", "Regenerate", "Dismiss"} <= set(buttons(suggested[0]))

    press(bot, fake_slack, slack_signing_secret, "reply_edit", str(row.id))
    view = fake_slack.wait_for("views.open")[0].args["view"]
    view = view if isinstance(view, dict) else json.loads(view)
    assert view["callback_id"] == "reply_edit"
    empty = payloads.view_submission(TOM, "reply_edit", {"text": {"value": "  "}},
                                     private_metadata=view["private_metadata"])  # fmt: skip
    answer = signed_post(bot.events_url, slack_signing_secret, empty).json()
    assert answer["response_action"] == "errors"
    final = "Sorry about that: one of the two charges is refunded, it lands in 3-5 working days."
    good = payloads.view_submission(TOM, "reply_edit", {"text": {"value": final}},
                                    private_metadata=view["private_metadata"])  # fmt: skip
    assert signed_post(bot.events_url, slack_signing_secret, good).status_code == 200
    replies = [p for p in thread_posts(fake_slack, ts) if p["text"] == final]
    assert len(replies) == 1  # posted in the ticket's thread, as the bot
    row = suggestion(db, ts)
    assert row.status == "posted" and row.final_text == final and row.resolved_by == TOM
    assert row.edit_distance is not None and row.edit_distance > 0 and row.resolved_at
    with db.session() as s:
        example = s.scalars(select(Example).where(Example.kind == "positive")).one()
    assert (example.source, example.task, example.text) == ("suggestion", "draft", final)
    assert example.prompt == reply_prompt(text, prediction.label)
    assert (example.channel_id, example.message_ts) == (TICKETS, row.reply_ts)

    again = press(bot, fake_slack, slack_signing_secret, "reply_post", str(row.id), user=ANA)
    assert "already posted" in wait(lambda: fake_slack.responses(again))[0]["text"]
    assert len([p for p in thread_posts(fake_slack, ts) if p["text"] == final]) == 1
    with db.session() as s:
        assert len(s.scalars(select(Example).where(Example.kind == "positive")).all()) == 1


def edit_and_post(
    bot: Served, fake: FakeSlack, secret: str, row: Suggestion, text: str, user: str
) -> dict[str, Any]:
    """Press Edit and post on a suggestion and submit the editor with ``text``."""
    opened = len(fake.calls_for("views.open"))
    press(bot, fake, secret, "reply_edit", str(row.id), user=user)
    view = fake.wait_for("views.open", count=opened + 1)[-1].args["view"]
    view = view if isinstance(view, dict) else json.loads(view)
    body = payloads.view_submission(user, "reply_edit", {"text": {"value": text}},
                                    private_metadata=view["private_metadata"])  # fmt: skip
    assert signed_post(bot.events_url, secret, body).status_code == 200
    return dict(view)


def test_only_an_approvers_edit_of_a_suggestion_is_a_preference_pair_and_forget_erases_it(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> None:
    first = post_ticket(bot, fake_slack, slack_signing_secret, "my tin arrived dented")
    second = post_ticket(bot, fake_slack, slack_signing_secret, "I was charged twice this month")
    settle(bot)
    rows = [suggestion(db, ts) for ts in (first, second)]
    for row in rows:
        if not (row.text or "").strip():  # the tiny random model may say nothing
            set_text(db, row.id, "We will look at it.")
    rows = [suggestion(db, ts) for ts in (first, second)]
    answer = "Sorry about the dent: a new tin is on its way today, no need to send the old one."
    edit_and_post(bot, fake_slack, slack_signing_secret, rows[0], answer, user=ANA)
    wait(lambda: suggestion(db, first).status == "posted")
    with db.session() as s:  # Ana does not approve kk_replies: her edit waits, and is no pair
        kinds = [(e.kind, e.status) for e in s.scalars(select(Example))]
    assert kinds == [("positive", "pending")]
    refund = "Sorry: the second charge is refunded today and reaches your card in 3-5 working days."
    view = edit_and_post(bot, fake_slack, slack_signing_secret, rows[1], refund, user=TOM)
    wait(lambda: suggestion(db, second).status == "posted")
    replay = payloads.view_submission(TOM, "reply_edit", {"text": {"value": refund}},
                                      private_metadata=view["private_metadata"])  # fmt: skip
    assert signed_post(bot.events_url, slack_signing_secret, replay).status_code == 200
    settle(bot)
    with db.session() as s:
        (pair,) = s.scalars(select(Example).where(Example.kind == "preference")).all()
        positive = s.scalars(
            select(Example).where(Example.kind == "positive", Example.status == "active")
        ).one()
        assert (pair.text, pair.rejected_text, pair.source) == (
            refund, normalize_text(rows[1].text or ""), "reply_edit",
        )  # fmt: skip
        assert pair.prompt == positive.prompt and pair.prompt_source == "suggestion"
        assert (pair.subject_id, pair.approver_id, pair.thread_ts) == (CUSTOMER, TOM, second)
        assert pair.message_ts is None and pair.split == positive.split
    with db.session() as s:
        forget_user(s, CUSTOMER, actor=TOM)
    with db.session() as s:
        assert s.scalars(select(Example).where(Example.kind == "preference")).all() == []


def test_post_as_suggested_records_zero_edits_and_dismiss_regenerate(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> None:
    ts = post_ticket(bot, fake_slack, slack_signing_secret, "where is my parcel? it's been a week")
    other = post_ticket(bot, fake_slack, slack_signing_secret, "the tin arrived dented, refund pls")
    settle(bot)
    row = suggestion(db, ts)
    if not (row.text or "").strip():  # the tiny random model may say nothing
        rid = press(bot, fake_slack, slack_signing_secret, "reply_post", str(row.id))
        assert "empty" in wait(lambda: fake_slack.responses(rid))[0]["text"]
        set_text(db, row.id, "It left Bristol on Monday; tracking says Friday.")
    rid = press(bot, fake_slack, slack_signing_secret, "reply_post", str(row.id))
    assert "as suggested" in wait(lambda: fake_slack.responses(rid))[0]["text"]
    row = wait(lambda: (r := suggestion(db, ts)).status == "posted" and r)
    assert row.status == "posted" and row.edit_distance == 0 and row.final_text == row.text

    second = suggestion(db, other)
    regen = press(bot, fake_slack, slack_signing_secret, "reply_regenerate", str(second.id))
    settle(bot)
    answers = wait(lambda: [r for r in fake_slack.responses(regen) if buttons(r)])
    assert answers[-1]["replace_original"] and "*Suggested reply*" in answers[-1]["text"]
    gone = press(bot, fake_slack, slack_signing_secret, "reply_dismiss", str(second.id))
    assert "dismissed" in wait(lambda: fake_slack.responses(gone))[0]["text"]
    wait(lambda: suggestion(db, other).status == "dismissed")
    suggested = [p for p in thread_posts(fake_slack, other) if "*Suggested reply*" in p["text"]]
    assert len(suggested) == 1  # regenerating replaced it in place


def test_an_agents_own_reply_approved_with_a_reaction_is_stored_with_the_ticket_as_prompt(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> None:
    ticket = "My Steep Club box never came this month."
    ts = post_ticket(bot, fake_slack, slack_signing_secret, ticket)
    settle(bot)
    with db.session() as s:
        label = s.scalars(select(Prediction)).one().label
    answer = "So sorry: I've sent a fresh box today, it should be with you by Friday."
    reply_ts = fake_slack.add_message(TICKETS, answer, user=ANA, thread_ts=ts)
    send(bot, slack_signing_secret, payloads.reaction_added(TOM, "white_check_mark", TICKETS, ts))
    send(bot, slack_signing_secret,
         payloads.reaction_added(TOM, "white_check_mark", TICKETS, reply_ts))  # fmt: skip
    with db.session() as s:
        examples = s.scalars(select(Example)).all()
    assert len(examples) == 1  # the ticket itself is a prompt, not an answer
    (example,) = examples
    assert (example.text, example.author_id, example.approver_id) == (answer, ANA, TOM)
    assert example.prompt == reply_prompt(ticket, label) and example.prompt_source == "ticket"
    told = [str(c.args.get("text")) for c in fake_slack.calls_for("chat.postEphemeral")]
    assert any("react to a reply in the ticket's thread" in t for t in told)


# ---- ephemeral mode, bad input ---------------------------------------------------------------


def test_ephemeral_channel_offers_a_private_suggestion_to_the_agent_who_asks(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> None:
    ts = post_ticket(bot, fake_slack, slack_signing_secret, "can I pause my subscription?",
                     channel=PRIVATE_Q)  # fmt: skip
    settle(bot)
    (offer,) = thread_posts(fake_slack, ts)  # no classify dataset here: no label to wait for
    assert "*Suggested reply*" not in offer["text"] and "Suggest a reply" in buttons(offer)
    row = suggestion(db, ts)
    assert row.status == "offered" and row.mode == "ephemeral" and row.label is None
    rid = press(bot, fake_slack, slack_signing_secret, "reply_ask", str(row.id), user=ANA,
                channel=PRIVATE_Q)  # fmt: skip
    wait(lambda: suggestion(db, ts).status != "offered")  # the press committed
    settle(bot)
    shown = wait(lambda: [r for r in fake_slack.responses(rid) if buttons(r)])[-1]
    assert "*Suggested reply*" in shown["text"] and not shown.get("replace_original")
    assert shown.get("response_type", "ephemeral") == "ephemeral"
    assert not [p for p in thread_posts(fake_slack, ts) if "*Suggested reply*" in p["text"]]
    assert suggestion(db, ts).requested_by == ANA


def test_bad_tickets_retries_and_long_tickets(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> None:
    files = fake_slack.add_message(TICKETS, "", user=CUSTOMER, files=[{"name": "a.png"}])
    send(bot, slack_signing_secret, payloads.message(TICKETS, CUSTOMER, "", ts=files))
    ts = fake_slack.add_message(TICKETS, "refund please", user=CUSTOMER)
    event = payloads.message(TICKETS, CUSTOMER, "refund please", ts=ts)
    send(bot, slack_signing_secret, event, event_id="Ev0RETRY01")
    send(bot, slack_signing_secret, event, event_id="Ev0RETRY01")  # Slack's retry
    send(bot, slack_signing_secret, event, event_id="Ev0RETRY02")  # a second delivery
    words = " ".join(f"word{i}" for i in range(1500))
    long_ts = post_ticket(bot, fake_slack, slack_signing_secret, "START " + words + " END")
    settle(bot)
    with db.session() as s:
        rows = s.scalars(select(Suggestion)).all()
    assert sorted(r.ticket_ts for r in rows) == sorted([ts, long_ts])  # none for the file
    plugin = next(p for p in bot.runtime.plugins if isinstance(p, RepliesPlugin))
    plugin.advance(bot.runtime.services, suggestion(db, ts).id)  # a restart re-running the job
    assert len([p for p in thread_posts(fake_slack, ts) if "*Suggested reply*" in p["text"]]) == 1
    long_row = suggestion(db, long_ts)
    assert long_row.status == "ready" and long_row.cut_chars > 0
    (shown,) = [p for p in thread_posts(fake_slack, long_ts) if "*Suggested reply*" in p["text"]]
    assert f"{long_row.cut_chars} characters were cut from its middle" in shown["text"]


def test_model_server_down_offers_a_retry_and_opted_out_customers_are_not_learned(
    db: Database, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    with db.session() as s:
        Datasets(s).update(Datasets(s).get("kk_tickets"), ticket_channels=[])
        s.add(OptOut(user_id=CUSTOMER))
    fake_slack.add_user(TOM, "tom")
    fake_slack.add_channel(TICKETS, "support", members=[fake_slack.bot_user_id, TOM, CUSTOMER])
    down = HttpClient("http://127.0.0.1:1", retries=0, timeout=1)
    with serve_bot(db, fake_slack, slack_signing_secret, PLUGINS, config=CONFIG,
                   inference=down) as served:  # fmt: skip
        ts = post_ticket(served, fake_slack, slack_signing_secret, "my order is late")
        settle(served)
        (failed,) = thread_posts(fake_slack, ts)
        assert "unreachable" in failed["text"] and "Retry" in buttons(failed)
        row = suggestion(db, ts)
        assert row.status == "failed" and row.error
        set_text(db, row.id, "We're on it.")  # as if an earlier try had worked
        rid = press(served, fake_slack, slack_signing_secret, "reply_post", str(row.id))
        assert "opted out" in wait(lambda: fake_slack.responses(rid))[0]["text"]
    with db.session() as s:
        assert s.scalars(select(Example)).all() == []


def test_forget_and_retention_clear_ticket_text_kept_with_suggestions(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> None:
    from bot.collection import forget_user, purge_ticket_text
    from bot.storage.models import utcnow

    first = post_ticket(bot, fake_slack, slack_signing_secret, "please cancel my Steep Club")
    settle(bot)
    with db.session() as s:
        assert forget_user(s, CUSTOMER, actor=TOM)["suggestions"] == 1
    with db.session() as s:  # forgetting deletes the customer's suggestions outright
        assert s.scalars(select(Suggestion).where(Suggestion.ticket_ts == first)).all() == []
        assert s.get(OptOut, CUSTOMER) is not None
    fake_slack.add_user("U0OTHER001", "other")
    ts = fake_slack.add_message(TICKETS, "wrong tea in my box", user="U0OTHER001")
    send(bot, slack_signing_secret, payloads.message(TICKETS, "U0OTHER001", "wrong tea", ts=ts))
    settle(bot)
    with db.session() as s:
        assert purge_ticket_text(s, utcnow().replace(year=2000))["suggestions"] == 0
        assert purge_ticket_text(s, utcnow().replace(year=2100))["suggestions"] == 1
    assert suggestion(db, ts).ticket_text is None


def test_the_sweep_takes_up_suggestions_a_restart_left_behind(
    bot: Served, fake_slack: FakeSlack, db: Database
) -> None:
    old = utcnow() - dt.timedelta(minutes=30)
    tickets = {}
    for status in ("queued", "waiting", "generating", "fresh"):
        text = f"Where is my order? ({status})"
        tickets[status] = fake_slack.add_message(TICKETS, text, user=CUSTOMER)
        with db.session() as s:
            ds = Datasets(s).get("kk_replies")
            s.add(Suggestion(
                dataset_id=ds.id, channel_id=TICKETS, ticket_ts=tickets[status], author_id=CUSTOMER,
                ticket_text=text, mode="thread",
                status="generating" if status == "fresh" else status,
                created_at=utcnow() if status == "fresh" else old,
            ))  # fmt: skip
    (sweep,) = [b for b in bot.runtime.scheduled() if b.name == "RepliesPlugin.sweep"]
    bot.runtime.run_scheduled(sweep)
    settle(bot)
    for status in ("queued", "waiting", "generating"):
        assert suggestion(db, tickets[status]).status == "ready", status
        shown = [p for p in thread_posts(fake_slack, tickets[status]) if "Suggested" in p["text"]]
        assert len(shown) == 1, status
    assert suggestion(db, tickets["fresh"]).status == "generating"  # may still be running
    assert not thread_posts(fake_slack, tickets["fresh"])
    bot.runtime.run_scheduled(sweep)  # nothing left behind: nothing happens twice
    settle(bot)
    assert len(fake_slack.calls_for("chat.postMessage")) == 3
