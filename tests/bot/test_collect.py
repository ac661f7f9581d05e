"""Collect, end to end: signed Slack events into the real app, examples checked in the database
(SQLite and PostgreSQL), messages fetched from the fake Web API."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
from sqlalchemy import Table, select

from bot.briefs import write_brief
from bot.collection import purge_ticket_text
from bot.importer import import_candidates, parse_chat_record
from bot.plugin import Event, ReactionEvent
from bot.plugin_loader import PluginEntry
from bot.runtime import Outcome, Result
from bot.storage import Database
from bot.storage.models import Approval, AuditEntry, ChannelNotice, Example, OutboxEvent, utcnow
from bot.storage.repositories import Datasets
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack, SlackError
from plugins.admin import AdminPlugin
from plugins.collect import CollectPlugin
from plugins.help import HelpPlugin
from serving.client import InferenceClient
from tests.bot.slack_harness import Served, serve_bot
from tests.conftest import not_none

COPY, TICKETS, ELSEWHERE = "C0BRANDCPY", "C0SUPPORT1", "C0RANDOM01"
MAYA, JONAS, PRIYA, TOM = "U0MAYA0001", "U0JONAS001", "U0PRIYA001", "U0TOM00001"
PLUGINS = [PluginEntry("collect", CollectPlugin), PluginEntry("admin", AdminPlugin),
           PluginEntry("help", HelpPlugin)]  # fmt: skip


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    with database.session() as s:
        Datasets(s).create(
            "kk_copy", "draft", channels=[COPY], approvers=[MAYA, JONAS], max_length=280,
            approve_emoji=["white_check_mark"], reject_emoji=["x"],
        )  # fmt: skip
        Datasets(s).create(
            "kk_tickets", "classify", channels=[TICKETS], ticket_channels=[TICKETS],
            labels=["billing", "refund"], label_emoji={"credit_card": "billing", "money": "refund"},
            approvers=[TOM],
        )  # fmt: skip
    yield database
    database.dispose()


@pytest.fixture
def bot(db: Database, fake_slack: FakeSlack, slack_signing_secret: str) -> Iterator[Served]:
    for uid, name in [(MAYA, "maya"), (JONAS, "jonas"), (PRIYA, "priya"), (TOM, "tom")]:
        fake_slack.add_user(uid, name)
    everyone = [fake_slack.bot_user_id, MAYA, JONAS, PRIYA, TOM]
    for cid, name in [(COPY, "brand-copy"), (TICKETS, "support"), (ELSEWHERE, "random")]:
        fake_slack.add_channel(cid, name, members=everyone)
    with serve_bot(db, fake_slack, slack_signing_secret, PLUGINS, admins=[MAYA]) as served:
        yield served


class Env:
    def __init__(self, bot: Served, fake: FakeSlack, secret: str, db: Database) -> None:
        self.bot, self.fake, self.secret, self.db = bot, fake, secret, db

    def event(self, event: dict[str, Any], event_id: str | None = None) -> int:
        return self.post(payloads.event_callback(event, event_id=event_id))

    def post(self, body: dict[str, Any], retry_num: int | None = None) -> int:
        """Post a signed event; returns its HTTP status once the notices it caused are out
        (they are sent after Slack's answer)."""
        status = signed_post(self.bot.events_url, self.secret, body, retry_num=retry_num)
        self.bot.bridge.batcher.wait_idle()
        return status.status_code

    def react(self, user: str, emoji: str, channel: str, ts: str, removed: bool = False) -> int:
        make = payloads.reaction_removed if removed else payloads.reaction_added
        return self.event(make(user, emoji, channel, ts))

    def command(self, text: str, user: str = MAYA, channel: str = COPY) -> str:
        rid = f"r{time.monotonic_ns()}"
        body = payloads.slash_command("/brandbot", text, user, channel, self.fake.response_url(rid))
        assert signed_post(self.bot.events_url, self.secret, body).status_code == 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.fake.responses(rid):
                return str(self.fake.responses(rid)[0]["text"])
            time.sleep(0.02)
        raise AssertionError("no response")

    def ephemerals(self) -> list[str]:
        return [str(c.args.get("text")) for c in self.fake.calls_for("chat.postEphemeral")]

    def examples(self, **where: Any) -> list[Example]:
        with self.db.session() as s:
            stmt = select(Example).order_by(Example.id)
            for k, v in where.items():
                stmt = stmt.where(getattr(Example, k) == v)
            return list(s.scalars(stmt))


@pytest.fixture
def env(bot: Served, fake_slack: FakeSlack, slack_signing_secret: str, db: Database) -> Env:
    return Env(bot, fake_slack, slack_signing_secret, db)


POST = "Our autumn chai lands Thursday: cardamom, clove and a knob of ginger over strong Assam."


def test_approval_creates_a_clean_example_with_provenance(env: Env) -> None:
    ts = env.fake.add_message(COPY, POST + " Questions to hello@kettle.example.com", user=PRIYA)
    assert env.react(MAYA, "white_check_mark", COPY, ts) == 200
    (ex,) = env.examples()
    assert (ex.channel_id, ex.message_ts, ex.author_id, ex.approver_id) == (COPY, ts, PRIYA, MAYA)
    assert ex.workspace_id == env.fake.team_id and ex.source == "reaction"
    assert ex.kind == "positive" and ex.status == "active" and ex.split in ("train", "heldout")
    assert "hello@kettle.example.com" not in ex.text and "[EMAIL]" in ex.text
    assert "Added to kk_copy: 1 example, 1 new since the last training." in env.ephemerals()
    with env.db.session() as s:
        audit = s.scalars(select(AuditEntry).where(AuditEntry.action == "example.add")).one()
        assert audit.example_id == ex.id and audit.content_hash == ex.content_hash
        assert "chai" not in json.dumps(audit.details)
        topics = [e.topic for e in s.scalars(select(OutboxEvent))]
    assert topics == ["example.needs_brief"]  # no brief yet: a job writes one


def test_brief_from_thread_parent_and_the_queued_brief_writer(env: Env) -> None:
    parent = env.fake.add_message(
        COPY, "Brief: announce the chai, warm spices, out Thursday", user=MAYA
    )
    reply = env.fake.add_message(COPY, POST, user=PRIYA, thread_ts=parent)
    env.react(JONAS, "white_check_mark", COPY, reply)
    (ex,) = env.examples()
    assert ex.prompt == "Brief: announce the chai, warm spices, out Thursday"
    assert ex.prompt_source == "thread"
    other = env.fake.add_message(
        COPY,
        "Earl Grey is back on the shelf, bright with bergamot and a little cornflower blue.",
        user=PRIYA,
    )
    env.react(JONAS, "white_check_mark", COPY, other)
    pending = env.examples(message_ts=other)[0]
    assert pending.prompt is None

    class Model:  # an injected inference client that answers like a model would
        def chat(self, messages: list[dict[str, str]], **kw: Any) -> Any:
            assert "Earl Grey" in messages[0]["content"]
            return type("R", (), {"text": "Say Earl Grey is back in stock\nextra line"})()

    services = env.bot.runtime.services
    services.inference = cast(InferenceClient, Model())  # duck-typed: only chat is called
    write_brief(services, pending.id)
    done = env.examples(message_ts=other)[0]
    assert (done.prompt, done.prompt_source) == ("Say Earl Grey is back in stock", "generated")


def test_reject_records_a_negative_and_strangers_have_no_effect(env: Env) -> None:
    ts = env.fake.add_message(
        COPY, "HUGE SALE, hurry guys, cheapest tea ever, buy now or regret it!", user=PRIYA
    )
    env.react(MAYA, "x", COPY, ts)
    assert [e.kind for e in env.examples()] == ["negative"]
    ts2 = env.fake.add_message(COPY, POST.replace("Thursday", "Friday"), user=PRIYA)
    env.react(PRIYA, "white_check_mark", COPY, ts2)  # not an approver
    elsewhere = env.fake.add_message(ELSEWHERE, POST, user=PRIYA)
    env.react(MAYA, "white_check_mark", ELSEWHERE, elsewhere)  # not a dataset channel
    env.react(MAYA, "tada", COPY, ts2)  # not a dataset emoji
    assert len(env.examples()) == 1
    assert any("Only the approvers of kk_copy" in t for t in env.ephemerals())


def test_unreadable_bot_and_file_only_messages_are_explained(env: Env) -> None:
    env.react(MAYA, "white_check_mark", COPY, "1600000000.000001")  # no such message
    bot_ts = env.fake.add_message(
        COPY, "A message from an integration bot about tea.", bot_id="B0OTHER01"
    )
    env.react(MAYA, "white_check_mark", COPY, bot_ts)
    files = env.fake.add_message(COPY, "", user=PRIYA, files=[{"name": "tea.png"}])
    env.react(MAYA, "white_check_mark", COPY, files)
    long = env.fake.add_message(COPY, "word " * 80, user=PRIYA)
    env.react(MAYA, "white_check_mark", COPY, long)
    assert env.examples() == []
    said = " | ".join(env.ephemerals())
    assert "can't read that message" in said and "Bot messages are not collected" in said
    assert "only files" in said and "the limit is 280" in said


def test_removing_reactions_edits_and_deletes(env: Env) -> None:
    ts = env.fake.add_message(COPY, POST, user=PRIYA)
    env.react(MAYA, "white_check_mark", COPY, ts)
    env.react(JONAS, "white_check_mark", COPY, ts)
    env.react(MAYA, "white_check_mark", COPY, ts, removed=True)
    assert env.examples()[0].status == "active"  # Jonas still approves
    env.react(JONAS, "white_check_mark", COPY, ts, removed=True)
    assert env.examples()[0].status == "withdrawn"
    env.react(JONAS, "white_check_mark", COPY, ts)
    (ex,) = env.examples()
    assert ex.status == "active"
    split, old_hash = ex.split, ex.content_hash
    env.event(
        payloads.message_changed(COPY, ts, POST.replace("Thursday", "on Friday"), PRIYA, POST)
    )
    (edited,) = env.examples()  # the author is no approver: the edit waits for one
    assert edited.status == "pending" and edited.text == POST and edited.content_hash == old_hash
    assert edited.pending_text is not None and "on Friday" in edited.pending_text
    env.react(JONAS, "white_check_mark", COPY, ts, removed=True)
    env.react(JONAS, "white_check_mark", COPY, ts)  # approving again takes the edit
    (edited,) = env.examples()
    assert "on Friday" in edited.text and edited.content_hash != old_hash and edited.split == split
    assert edited.status == "active" and edited.pending_text is None
    env.event(payloads.message_deleted(COPY, ts))
    assert env.examples()[0].status == "withdrawn"
    with env.db.session() as s:
        actions = [a.action for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
        texts = json.dumps([a.details for a in s.scalars(select(AuditEntry))])
    assert actions.count("example.withdraw") == 3 and "example.edit" in actions
    assert "example.edit_pending" in actions
    assert "Friday" not in texts and "chai" not in texts


def test_duplicates_and_near_duplicates_are_not_added_twice(env: Env) -> None:
    a = env.fake.add_message(COPY, POST, user=PRIYA)
    b = env.fake.add_message(COPY, POST, user=PRIYA)
    c = env.fake.add_message(
        COPY, POST.replace("a knob of ginger", "a good knob of ginger"), user=PRIYA
    )
    for ts in (a, b, c):
        env.react(MAYA, "white_check_mark", COPY, ts)
    assert len(env.examples()) == 1
    said = [t for t in env.ephemerals() if "Not added to kk_copy" in t]
    assert len(said) == 2 and "near-identical" in said[1]
    different = env.fake.add_message(
        COPY,
        "Tasting evenings are back at the Bristol shop, first Friday of every month.",
        user=PRIYA,
    )
    env.react(MAYA, "white_check_mark", COPY, different)
    assert len(env.examples()) == 2


def test_ticket_labels_by_emoji_and_by_command(env: Env) -> None:
    ts = env.fake.add_message(
        TICKETS, "I was charged twice for order KK-48213, please sort it", user=PRIYA
    )
    env.react(TOM, "credit_card", TICKETS, ts)
    (ex,) = env.examples()
    assert (ex.task, ex.label, ex.text) == (
        "classify",
        "billing",
        "I was charged twice for order KK-48213, please sort it",
    )
    ts2 = env.fake.add_message(TICKETS, "I'd like my money back for the broken teapot", user=PRIYA)
    link = f"https://kk.slack.com/archives/{TICKETS}/p{ts2.replace('.', '')}"
    answer = env.command(f"label {link} refund", user=TOM, channel=TICKETS)
    assert answer.startswith("Labelled `refund`.")
    assert env.examples(message_ts=ts2)[0].label == "refund"
    bad = env.command(f"label {link} shipping", user=TOM, channel=TICKETS)
    assert "not a label here" in bad and "billing, refund" in bad
    env.react(TOM, "credit_card", TICKETS, ts, removed=True)
    assert env.examples(message_ts=ts)[0].status == "withdrawn"


def test_held_out_text_never_enters_train(env: Env) -> None:
    text = "Where is my parcel? It has been two weeks since order KK-11111."
    with env.db.session() as s:
        ds = Datasets(s).get("kk_tickets")
        record = {
            "messages": [
                {"role": "user", "content": text},
                {"role": "assistant", "content": "billing"},
            ],
            "label": "billing",
        }
        import_candidates(s, ds, [parse_chat_record(record, "classify", 1)])
        s.execute(cast(Table, Example.__table__).update().values(split="heldout"))
    ts = env.fake.add_message(TICKETS, text, user=PRIYA)
    env.react(TOM, "money", TICKETS, ts)
    slack_example = env.examples(message_ts=ts)[0]
    assert slack_example.label == "refund" and slack_example.split == "heldout"


def test_opt_out_and_erasure(env: Env) -> None:
    assert "will not be collected" in env.command("optout", user=PRIYA)
    ts = env.fake.add_message(COPY, POST, user=PRIYA)
    env.react(MAYA, "white_check_mark", COPY, ts)
    assert env.examples() == []
    assert any("opted out" in t for t in env.ephemerals())
    env.command("optin", user=PRIYA)
    env.react(MAYA, "white_check_mark", COPY, ts)
    assert len(env.examples()) == 1
    assert "only admins" in env.command(f"forget <@{PRIYA}>", user=JONAS)
    answer = env.command(f"forget <@{PRIYA}|priya>", user=MAYA)
    assert answer.startswith(f"Erased <@{PRIYA}>: 1 examples")
    assert env.examples() == []
    with env.db.session() as s:
        assert s.scalars(select(Approval)).all() == []
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "user.forget")).one()
        assert entry.details["subject"] == PRIYA and entry.details["examples"] == 1


def test_consent_notice_is_posted_once_when_the_bot_joins(env: Env) -> None:
    join = payloads.member_joined_channel(env.fake.bot_user_id, COPY)
    assert env.event(join) == 200
    assert env.event(payloads.member_joined_channel(env.fake.bot_user_id, COPY)) == 200
    env.event(payloads.member_joined_channel(MAYA, COPY))
    notices = [
        c for c in env.fake.calls_for("chat.postMessage") if "optout" in str(c.args.get("text"))
    ]
    assert len(notices) == 1 and notices[0].args["channel"] == COPY
    with env.db.session() as s:
        assert s.get(ChannelNotice, COPY) is not None


def test_datasets_in_slack(env: Env) -> None:
    ts = env.fake.add_message(COPY, POST, user=PRIYA)
    env.react(MAYA, "white_check_mark", COPY, ts)
    listing = env.command("datasets")
    assert "`kk_copy` (draft): 1 examples" in listing and "`kk_tickets`" in listing
    shown = env.command("datasets kk_copy")
    assert "by source: reaction 1" in shown and f"<@{MAYA}> 1" in shown
    assert "only admins" in env.command("datasets create kk_new draft", user=JONAS)
    assert "Created dataset `kk_new`" in env.command("datasets create kk_new draft")
    updated = env.command(
        'datasets update kk_new channels=C0NEW00001 max_length=200 banned_words=cheap,hurry system_prompt="Be warm."'
    )
    assert updated.startswith("Updated `kk_new`")
    with env.db.session() as s:
        ds = Datasets(s).get("kk_new")
        assert (ds.channels, ds.max_length, ds.banned_words, ds.system_prompt) == (
            ["C0NEW00001"],
            200,
            ["cheap", "hurry"],
            "Be warm.",
        )
    assert "must match" in env.command("datasets create Bad! draft")
    assert "unknown dataset 'nope'" in env.command("datasets nope")
    assert "schedule_cron" in env.command("datasets update kk_new schedule=never")


def test_retention_purges_old_ticket_text(env: Env) -> None:
    ts = env.fake.add_message(
        TICKETS, "Refund please, the tin arrived dented and the lid won't shut", user=PRIYA
    )
    env.react(TOM, "money", TICKETS, ts)
    with env.db.session() as s:
        assert purge_ticket_text(s, utcnow().replace(year=2000)) == {
            "examples": 0,
            "predictions": 0,
            "suggestions": 0,
        }
        assert purge_ticket_text(s, utcnow().replace(year=2100))["examples"] == 1
    assert env.examples() == []


def test_pii_scrubbing_is_configurable(
    db: Database, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    fake_slack.add_user(MAYA, "maya")
    fake_slack.add_channel(COPY, "brand-copy", members=[fake_slack.bot_user_id, MAYA, PRIYA])
    config: dict[str, object] = {
        "collect": {"keep_pii": ["email"], "extra_pii_patterns": {"order": r"KK-\d{5}"}}
    }
    with serve_bot(db, fake_slack, slack_signing_secret, PLUGINS, config) as served:
        env = Env(served, fake_slack, slack_signing_secret, db)
        ts = fake_slack.add_message(
            COPY,
            "Order KK-48213 ships today; write to hello@kettle.example.com or call +44 7700 900123.",
            user=PRIYA,
        )
        env.react(MAYA, "white_check_mark", COPY, ts)
        (ex,) = env.examples()
    assert "hello@kettle.example.com" in ex.text  # kept on purpose
    assert "KK-48213" not in ex.text and "[ORDER]" in ex.text
    assert "7700 900123" not in ex.text


def test_forgetting_a_person_flags_adapters_trained_on_them(env: Env) -> None:
    from bot.collection import forget_user
    from bot.storage.models import Adapter, TrainingRun
    from bot.storage.repositories import Adapters

    ts = env.fake.add_message(COPY, POST, user=PRIYA)
    env.react(MAYA, "white_check_mark", COPY, ts)
    (ex,) = env.examples()
    with env.db.session() as s:
        ds = Datasets(s).get("kk_copy")
        run = TrainingRun(dataset_id=ds.id, status="succeeded", example_ids=[ex.id])
        s.add(run)
        s.flush()
        Adapters(s).create(ds, "/adapters/kk_copy-v1", run_id=run.id)
    with env.db.session() as s:
        counts = forget_user(s, PRIYA, actor=MAYA)
    assert counts["examples"] == 1 and counts["adapters_retired"] == 1
    with env.db.session() as s:
        adapter = s.scalars(select(Adapter)).one()
        assert adapter.needs_retrain is True and adapter.status == "rejected"


def test_status_and_retrain(env: Env) -> None:
    status = env.command("status")
    assert "model server: not configured" in status
    assert "`kk_copy` (draft): base model; last run never; next Mon" in status
    assert "only admins" in env.command("status", user=JONAS)
    queued = env.command("retrain kk_copy")
    assert queued.startswith("Queued training run") and "`kk_copy`" in queued
    assert "unknown dataset 'nope'" in env.command("retrain nope")
    assert "last run queued" in env.command("status")


def test_new_since_the_last_training_counts_only_later_active_examples(env: Env) -> None:
    import datetime as dt

    from bot.dataset_stats import totals
    from bot.storage.models import TrainingRun

    first = env.fake.add_message(COPY, POST, user=PRIYA)
    env.react(MAYA, "white_check_mark", COPY, first)
    with env.db.session() as s:
        ds = Datasets(s).get("kk_copy")
        assert totals(s, ds) == (1, 1)  # never trained: everything is new
        # the first example an hour before a training, the next one after it (no waiting)
        started = utcnow() - dt.timedelta(hours=1)
        (example,) = s.scalars(select(Example).where(Example.dataset_id == ds.id))
        example.created_at = started - dt.timedelta(hours=1)
        s.add(TrainingRun(dataset_id=ds.id, status="failed", started_at=started))
        s.add(TrainingRun(dataset_id=ds.id, status="succeeded", started_at=started))
    second = env.fake.add_message(
        COPY, "A smoky lapsang for cold evenings, back in stock.", user=PRIYA
    )
    env.react(MAYA, "white_check_mark", COPY, second)
    assert "Added to kk_copy: 2 examples, 1 new since the last training." in env.ephemerals()
    env.react(MAYA, "white_check_mark", COPY, second, removed=True)
    with env.db.session() as s:
        assert totals(s, Datasets(s).get("kk_copy")) == (1, 0)


# ---- reactions that arrive together ------------------------------------------------------


def _reaction(user: str, emoji: str, channel: str, ts: str, event_id: str) -> ReactionEvent:
    return ReactionEvent(user, channel, event_id, "T0TEST", reaction=emoji, message_ts=ts)


def test_a_batch_of_reactions_gives_what_one_by_one_would(env: Env) -> None:
    a = env.fake.add_message(COPY, POST, user=PRIYA)
    same = env.fake.add_message(COPY, POST, user=PRIYA)
    near = env.fake.add_message(COPY, POST.replace("a knob of", "a good knob of"), user=PRIYA)
    other = env.fake.add_message(
        COPY, "Tasting evenings are back in Bristol on Friday.", user=PRIYA
    )
    ticket = env.fake.add_message(TICKETS, "I was charged twice for order KK-1", user=PRIYA)
    events = [
        _reaction(MAYA, "white_check_mark", COPY, a, "Ev1"),
        _reaction(MAYA, "white_check_mark", COPY, a, "Ev1"),  # Slack's retry, same batch
        _reaction(JONAS, "white_check_mark", COPY, a, "Ev2"),  # a second approver
        _reaction(MAYA, "white_check_mark", COPY, same, "Ev3"),
        _reaction(MAYA, "white_check_mark", COPY, near, "Ev4"),
        _reaction(MAYA, "white_check_mark", COPY, other, "Ev5"),
        _reaction(PRIYA, "white_check_mark", COPY, other, "Ev6"),  # not an approver
        _reaction(TOM, "credit_card", TICKETS, ticket, "Ev7"),
    ]
    results = env.bot.runtime.handle_batch(list(events))  # JONAS's approval adds nobody a line
    outcomes = [r.outcome.value if isinstance(r, Result) else r for r in results]
    assert outcomes == ["handled", "duplicate", *["handled"] * 6]
    examples = env.examples()
    assert [(e.message_ts, e.kind, e.label) for e in examples] == [
        (a, "positive", None), (other, "positive", None), (ticket, "positive", "billing"),
    ]  # fmt: skip
    with env.db.session() as s:
        approvers = sorted(s.scalars(select(Approval.user_id).where(Approval.example_id
                                                                    == examples[0].id)))  # fmt: skip
        actions = [e.action for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert approvers == sorted([MAYA, JONAS])
    assert sorted(actions) == ["example.add"] * 3 + ["example.approve"]
    said = [(c.args["user"], c.args["text"]) for c in env.fake.calls_for("chat.postEphemeral")]
    assert said == [
        (PRIYA, "Only the approvers of kk_copy can add examples with that."),
        (MAYA, "Added to kk_copy: 2 examples, 2 new since the last training."),  # once for all
        (MAYA, "Not added to kk_copy: the same text is already an example."),
        (MAYA, "Not added to kk_copy: a near-identical example exists."),
        (TOM, "Added to kk_tickets: 1 example, 1 new since the last training."),
    ]
    again = env.bot.runtime.handle_batch([_reaction(MAYA, "white_check_mark", COPY, a, "Ev1")])
    assert [r.outcome for r in again if isinstance(r, Result)] == [Outcome.DUPLICATE]


def test_one_failing_event_in_a_batch_fails_alone_and_its_retry_succeeds(env: Env) -> None:
    good = [env.fake.add_message(COPY, f"Post {i}: {POST[: 20 + 9 * i]}", user=PRIYA)
            for i in range(5)]  # fmt: skip
    bad = env.fake.add_message(COPY, "Kettle club members get early access to the new tins.")

    def replies(call: Any) -> dict[str, Any]:
        if call.args.get("ts") == bad:
            raise SlackError("internal_error")  # Slack having a bad moment for this one
        return {"messages": [env.fake.message(call.args["channel"], call.args["ts"])]}

    env.fake.handle("conversations.replies", replies)
    bodies = [
        payloads.event_callback(payloads.reaction_added(MAYA, "white_check_mark", COPY, ts),
                                event_id=f"EvBatch{i}")
        for i, ts in enumerate([*good, bad])
    ]  # fmt: skip
    with ThreadPoolExecutor(len(bodies)) as pool:
        statuses = list(pool.map(lambda b: env.post(b), bodies))
    assert statuses == [200] * 5 + [500]  # Slack retries only the event that failed
    assert sorted(not_none(e.message_ts for e in env.examples())) == sorted(good)
    env.fake.handle("conversations.replies", None)
    assert env.post(bodies[-1], retry_num=1) == 200
    assert sorted(not_none(e.message_ts for e in env.examples())) == sorted([*good, bad])
    assert env.post(bodies[0], retry_num=2) == 200  # a late retry of a done event adds nothing
    assert len(env.examples()) == 6


def test_concurrent_reactions_over_http_create_each_example_once(env: Env) -> None:
    words = (POST + " Tasting evenings are back at the Bristol shop, first Friday of every month"
             " with scones, smoked oolong, jasmine pearls and a storyteller").split()  # fmt: skip
    texts = [" ".join(random.Random(i).sample(words, 14)) for i in range(24)]
    posts = [env.fake.add_message(COPY, text, user=PRIYA) for text in texts]
    bodies = [
        payloads.event_callback(payloads.reaction_added(MAYA, "white_check_mark", COPY, ts),
                                event_id=f"EvConc{i}")
        for i, ts in enumerate(posts)
    ]  # fmt: skip
    bodies += bodies[:6]  # retries racing their originals
    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda b: env.post(b), bodies))
    assert statuses == [200] * len(bodies)
    examples = env.examples()
    assert sorted(not_none(e.message_ts for e in examples)) == sorted(posts)
    with env.db.session() as s:
        adds = s.scalars(select(AuditEntry).where(AuditEntry.action == "example.add")).all()
    assert sorted(not_none(a.example_id for a in adds)) == sorted(e.id for e in examples)


def test_approver_groups_are_asked_once_per_batch(env: Env) -> None:
    with env.db.session() as s:
        Datasets(s).update(Datasets(s).get("kk_copy"), approvers=[], approver_groups=["S0BRAND01"])
    env.fake.add_usergroup("S0BRAND01", [JONAS])
    posts = [env.fake.add_message(COPY, text, user=PRIYA) for text in (
        POST, "Tasting evenings are back in Bristol on Friday.", "Hojicha is roasted green tea.",
    )]  # fmt: skip
    events: list[Event] = [
        _reaction(JONAS, "white_check_mark", COPY, ts, f"EvG{i}") for i, ts in enumerate(posts)
    ]
    events.append(_reaction(MAYA, "white_check_mark", COPY, posts[0], "EvG9"))  # not in the group
    env.bot.runtime.handle_batch(events)
    assert sorted(not_none(e.message_ts for e in env.examples())) == sorted(posts)
    assert len(env.fake.calls_for("usergroups.users.list")) == 1
    assert "Only the approvers of kk_copy can add examples with that." in env.ephemerals()


def test_a_notice_slack_refuses_loses_no_example(env: Env) -> None:
    ts = env.fake.add_message(COPY, POST, user=PRIYA)
    env.fake.fail("chat.postEphemeral", "user_not_in_channel")
    assert env.react(MAYA, "white_check_mark", COPY, ts) == 200  # no retry: the example is kept
    assert len(env.ephemerals()) == 1  # tried once after the commit, refused, logged
    assert [e.message_ts for e in env.examples()] == [ts]
