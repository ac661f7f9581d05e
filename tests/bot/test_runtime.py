"""The runtime and plugin API, in process: routing, exactly-once, permissions, outbox, help."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import func, select

from bot.jobs import JobQueue
from bot.plugin import (
    ActionEvent,
    Button,
    CommandEvent,
    Context,
    Event,
    InternalEvent,
    MessageEvent,
    Plugin,
    ReactionEvent,
    Services,
    command,
    on_action,
    on_event,
    on_message,
    on_reaction,
    on_view_submission,
    require,
    schedule,
)
from bot.plugin_loader import PluginEntry, PluginError, instantiate
from bot.plugin_loader import select as select_plugins
from bot.runtime import APOLOGY, NotAllowed, Outcome, Result, Runtime
from bot.settings import Settings
from bot.storage import Database
from bot.storage.models import AuditEntry, OutboxEvent, ProcessedEvent
from bot.storage.repositories import Audit
from tests.bot.recording import RecordingChat


class Sample(Plugin):
    """A plugin used by these tests."""

    class Settings(BaseModel):
        greeting: str = "hello"
        times: int = 1

    fail_next = 0

    @command("/hello")
    def hello(self, event: CommandEvent, ctx: Context) -> None:
        """Say hello. Usage: /hello [name]"""
        assert isinstance(self.settings, Sample.Settings)
        ctx.respond(
            f"{self.settings.greeting} {event.text}".strip(), buttons=[Button("Again", "again")]
        )

    @command("/hello admin")
    @require(admins=True)
    def admin(self, event: CommandEvent, ctx: Context) -> None:
        """Admins only."""
        ctx.respond(f"admin {event.text}")

    @command("/chart")
    @require(channel_members=["C0CHAN0001"])
    def chart(self, event: CommandEvent, ctx: Context) -> None:
        """Upload a file (channel members only)."""
        ctx.chat.upload_file(event.channel_id or "", b"\x89PNG fake", "chart.png", title="Chart",
                             comment="the chart")  # fmt: skip
        ctx.chat.open_modal(event.trigger_id or "", {"type": "modal", "callback_id": "x",
                            "title": {"type": "plain_text", "text": "Hi"}, "blocks": []})  # fmt: skip

    @command("/boom")
    def boom(self, event: CommandEvent, ctx: Context) -> None:
        raise RuntimeError("kaboom xoxb-secret-token")

    @on_reaction("white_check_mark")
    def approve(self, event: ReactionEvent, ctx: Context) -> None:
        if Sample.fail_next:
            Sample.fail_next -= 1
            Audit(ctx.session).record("approve.partial", actor=event.user_id)
            raise RuntimeError("database hiccup")
        Audit(ctx.session).record("approve", actor=event.user_id)
        ctx.publish("example.added", {"user": event.user_id})

    @on_reaction("white_check_mark", removed=True)
    def unapprove(self, event: ReactionEvent, ctx: Context) -> None:
        Audit(ctx.session).record("unapprove", actor=event.user_id)

    @on_message(r"^ping\b")
    def ping(self, event: MessageEvent, ctx: Context) -> None:
        ctx.say("pong", thread=True)

    @on_action("choose:*")
    @require(groups=["S0APPROVE"])
    def choose(self, event: ActionEvent, ctx: Context) -> None:
        ctx.respond(f"chose {event.value}", replace_original=True)

    @on_view_submission("edit_draft")
    def edit(self, event: ActionEvent, ctx: Context) -> dict[str, str] | None:
        text = str(event.values.get("text.value") or "")
        return {"text": "too short"} if len(text) < 3 else None

    @on_event("example.*")
    def on_added(self, event: InternalEvent, ctx: Context) -> None:
        Audit(ctx.session).record("delivered", actor=event.payload["user"])
        ctx.chat.post("C0REPORT", f"new example by {event.payload['user']}")

    @schedule("0 6 * * 1")
    def weekly(self, event: InternalEvent, ctx: Context) -> None:
        Audit(ctx.session).record("weekly")


@pytest.fixture
def setup(db_url: str) -> Iterator[tuple[Runtime, RecordingChat, Database]]:
    db = Database(db_url)
    db.upgrade()
    chat = RecordingChat()
    settings = Settings(admins=["U0ADMIN"])
    services = Services(settings=settings, db=db, chat=chat, jobs=JobQueue())
    plugins = instantiate([PluginEntry("sample", Sample)], {"sample": {"greeting": "hi"}}, services)
    Sample.fail_next = 0
    yield Runtime(services, plugins), chat, db
    db.dispose()


def count(db: Database, model: Any, **where: Any) -> int:
    with db.session() as s:
        stmt = select(func.count()).select_from(model)
        for k, v in where.items():
            stmt = stmt.where(getattr(model, k) == v)
        return int(s.scalar(stmt) or 0)


def cmd(text: str, user: str = "U0USER", command_name: str = "/hello") -> CommandEvent:
    return CommandEvent(user_id=user, channel_id="C0CHAN", command=command_name, text=text,
                        response_url="http://resp/1")  # fmt: skip


def react(event_id: str, added: bool = True) -> ReactionEvent:
    return ReactionEvent(user_id="U0USER", channel_id="C0CHAN", event_id=event_id,
                         reaction="white_check_mark", message_ts="1.1", added=added)  # fmt: skip


def test_command_routing_with_settings_and_subcommands(setup: Any) -> None:
    runtime, chat, _ = setup
    assert runtime.handle(cmd("world")).outcome is Outcome.HANDLED
    assert chat.of("respond")[-1]["text"] == "hi world"
    assert chat.of("respond")[-1]["buttons"] == [Button("Again", "again")]
    assert runtime.handle(cmd("admin x", user="U0ADMIN")).outcome is Outcome.HANDLED
    assert chat.of("respond")[-1]["text"] == "admin x"
    assert runtime.command_names() == ["/boom", "/chart", "/hello"]


def test_requirements_refuse_with_a_reason(setup: Any) -> None:
    runtime, chat, _ = setup
    with pytest.raises(NotAllowed):
        runtime.handle(cmd("admin x"))
    replies: list[str] = []
    assert runtime.handle_reporting(cmd("admin x"), replies.append).outcome is Outcome.DENIED
    assert "only admins" in replies[0]
    press = ActionEvent(user_id="U0USER", channel_id="C0CHAN", action_id="choose:1", value="a",
                        response_url="http://resp/2")  # fmt: skip
    with pytest.raises(NotAllowed):
        runtime.handle(press)
    chat.groups["S0APPROVE"] = ["U0USER"]
    runtime.handle(press)
    assert chat.of("respond")[-1]["text"] == "chose a"


def test_failing_command_apologises_with_an_error_id(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    runtime, _, _ = setup
    replies: list[str] = []
    runtime.handle_reporting(cmd("", command_name="/boom"), replies.append)
    assert replies and replies[0].startswith("Sorry, something went wrong")
    error_id = replies[0].split("error id ")[1].split(")")[0]
    assert any(getattr(r, "error_id", None) == error_id for r in caplog.records)
    unknown: list[str] = []
    runtime.handle_reporting(cmd("", command_name="/nope"), unknown.append)
    assert "Unknown command /nope" in unknown[0]
    assert APOLOGY.format(error_id="x")


def test_the_same_event_three_times_has_one_effect(setup: Any) -> None:
    runtime, _, db = setup
    outcomes = [runtime.handle(react("Ev1")).outcome for _ in range(3)]
    assert outcomes == [Outcome.HANDLED, Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert count(db, AuditEntry, action="approve") == 1
    assert count(db, OutboxEvent) == 1
    assert count(db, ProcessedEvent) == 1


def test_a_failed_handler_leaves_no_mark_and_the_retry_does_the_work(setup: Any) -> None:
    runtime, _, db = setup
    Sample.fail_next = 1
    with pytest.raises(RuntimeError):
        runtime.handle(react("Ev2"))
    assert count(db, ProcessedEvent) == 0
    assert count(db, AuditEntry) == 0  # the partial write rolled back too
    assert runtime.handle(react("Ev2")).outcome is Outcome.HANDLED
    assert count(db, AuditEntry, action="approve") == 1


def test_reaction_removed_and_message_regex(setup: Any) -> None:
    runtime, chat, db = setup
    runtime.handle(react("Ev3", added=False))
    assert count(db, AuditEntry, action="unapprove") == 1
    msg = MessageEvent(
        user_id="U0USER", channel_id="C0CHAN", event_id="Ev4", text="ping me", ts="5.5"
    )
    assert runtime.handle(msg).outcome is Outcome.HANDLED
    assert chat.of("post")[-1] == {
        "channel": "C0CHAN",
        "text": "pong",
        "thread_ts": "5.5",
        "buttons": [],
    }
    other = MessageEvent(
        user_id="U0USER", channel_id="C0CHAN", event_id="Ev5", text="hello", ts="6.6"
    )
    assert runtime.handle(other).outcome is Outcome.UNHANDLED


def test_view_submission_errors_are_returned(setup: Any) -> None:
    runtime, _, _ = setup
    view = ActionEvent(
        user_id="U0USER", kind="view", action_id="edit_draft", values={"text.value": "x"}
    )
    assert runtime.handle(view).value == {"text": "too short"}
    ok = ActionEvent(
        user_id="U0USER", kind="view", action_id="edit_draft", values={"text.value": "long enough"}
    )
    assert runtime.handle(ok).value is None


def test_outbox_events_are_delivered_exactly_once(setup: Any) -> None:
    runtime, chat, db = setup
    runtime.handle(react("Ev6"))
    assert runtime.deliver_outbox() == 1
    assert runtime.deliver_outbox() == 0
    assert count(db, AuditEntry, action="delivered") == 1
    assert [c["text"] for c in chat.of("post")] == ["new example by U0USER"]


def test_scheduled_handlers_run(setup: Any) -> None:
    runtime, _, db = setup
    (bound,) = runtime.scheduled()
    assert bound.spec.key == "0 6 * * 1"
    runtime.run_scheduled(bound)
    assert count(db, AuditEntry, action="weekly") == 1


def test_help_is_generated_from_docstrings(setup: Any) -> None:
    runtime, _, _ = setup
    entries = dict(runtime.help_entries("U0USER"))
    assert entries["/hello"] == "Say hello. Usage: /hello [name]"
    assert "/hello admin" not in entries
    assert "/hello admin" in dict(runtime.help_entries("U0ADMIN"))


def test_invalid_plugin_settings_are_reported_at_start(setup: Any) -> None:
    runtime, _, _ = setup
    with pytest.raises(PluginError) as info:
        instantiate(
            [PluginEntry("sample", Sample)], {"sample": {"times": "many"}}, runtime.services
        )
    assert "[plugins.sample] times" in str(info.value)
    with pytest.raises(PluginError, match="unknown plugins: nope"):
        select_plugins([PluginEntry("sample", Sample)], {"disabled": ["nope"]})
    assert select_plugins([PluginEntry("sample", Sample)], {"disabled": ["sample"]}) == []


def test_schedule_rejects_a_bad_cron_at_import() -> None:
    with pytest.raises(ValueError, match=r"cron|field|wrong number"):
        schedule("every day")


def test_concurrent_consumers_deliver_each_outbox_event_once(setup: Any) -> None:
    import threading

    from bot.storage.repositories import Outbox

    runtime, chat, db = setup
    with db.session() as s:
        for i in range(20):
            Outbox(s).publish("example.added", {"user": f"U{i}"})
    threads = [threading.Thread(target=runtime.deliver_outbox) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count(db, AuditEntry, action="delivered") == 20
    assert len(chat.of("post")) == 20


class Teller(Plugin):
    """Tells someone after its transaction commits (``Context.after_commit``)."""

    told: list[tuple[str, int]] = []

    @on_reaction("tada")
    def cheer(self, event: ReactionEvent, ctx: Context) -> None:
        Audit(ctx.session).record("cheer", actor=event.user_id)
        ctx.after_commit(self.tell, event.user_id)
        if event.user_id == "U0ROLLBACK":
            raise RuntimeError("the transaction rolls back")

    def tell(self, user: str) -> None:
        if user == "U0REFUSED":
            raise RuntimeError("Slack refused the message")
        Teller.told.append((user, count(self.services.db, AuditEntry, actor=user)))


def runtime_over(db_url: str, plugin: type[Plugin]) -> tuple[Database, Runtime]:
    """A migrated database and a runtime with just this plugin (dispose of the database)."""
    db = Database(db_url)
    db.upgrade()
    services = Services(settings=Settings(), db=db, chat=RecordingChat(), jobs=JobQueue())
    return db, Runtime(services, instantiate([PluginEntry("teller", plugin)], {}, services))


def test_after_commit_calls_run_once_committed_never_on_rollback_and_cannot_fail_the_event(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db, runtime = runtime_over(db_url, Teller)
    Teller.told = []

    def cheer(user: str, event_id: str) -> ReactionEvent:
        return ReactionEvent(user_id=user, channel_id="C0CHAN", event_id=event_id,
                             reaction="tada", message_ts="1.1")  # fmt: skip

    try:
        assert runtime.handle(cheer("U0ONE", "Ev1")).outcome is Outcome.HANDLED
        assert Teller.told == [("U0ONE", 1)]  # another session already sees the row
        with pytest.raises(RuntimeError):
            runtime.handle(cheer("U0ROLLBACK", "Ev2"))
        assert Teller.told == [("U0ONE", 1)]
        assert runtime.handle(cheer("U0REFUSED", "Ev3")).outcome is Outcome.HANDLED
        assert count(db, AuditEntry, actor="U0REFUSED") == 1  # kept, and not retried
        assert "after-commit call Teller.tell failed" in caplog.text
    finally:
        db.dispose()


class BatchTeller(Plugin):
    """``Teller`` for batches: one after-commit call per batch."""

    told: list[list[str]] = []

    @on_reaction("clap", batch=True)
    def cheer(self, events: list[ReactionEvent], ctx: Context) -> None:
        for event in events:
            Audit(ctx.session).record("cheer", actor=event.user_id)
        ctx.after_commit(BatchTeller.told.append, [e.user_id for e in events])


def test_a_batch_is_answered_once_committed_and_before_its_after_commit_calls(
    db_url: str,
) -> None:
    db, runtime = runtime_over(db_url, BatchTeller)
    BatchTeller.told = []
    seen: list[tuple[list[Outcome], int, list[list[str]]]] = []

    def on_commit(results: list[Result | Exception]) -> None:
        committed = count(db, AuditEntry, action="cheer")  # another session sees the rows
        outcomes = [r.outcome for r in results if isinstance(r, Result)]
        seen.append((outcomes, committed, list(BatchTeller.told)))

    events: list[Event] = [
        ReactionEvent(user_id=user, channel_id="C0CHAN", event_id=f"Ev{user}", reaction="clap",
                      message_ts="1.1")
        for user in ("U0ONE", "U0TWO", "U0ONE")  # the second U0ONE: a retry in the same batch
    ]  # fmt: skip
    try:
        results = runtime.handle_batch(events, on_commit=on_commit)
        handled, duplicate = Outcome.HANDLED, Outcome.DUPLICATE
        assert seen == [([handled, handled, duplicate], 2, [])]
        assert [r.outcome for r in results if isinstance(r, Result)] == [
            handled,
            handled,
            duplicate,
        ]
        assert BatchTeller.told == [["U0ONE", "U0TWO"]]
    finally:
        db.dispose()


class Poster(Plugin):
    """Answers "Posted" and then its transaction fails to commit (a row it adds collides)."""

    @command("/post")
    def post(self, event: CommandEvent, ctx: Context) -> None:
        ctx.respond("Posted in #brand")
        ctx.submit_after_commit(Poster.follow_up, ctx.services, name="poster.follow_up")
        ctx.respond("A second line")
        if event.text == "collide":
            ctx.session.add(ProcessedEvent(event_id="taken", kind="x"))  # fails at the commit

    @staticmethod
    def follow_up(services: Services) -> None:
        services.chat.respond("http://resp/1", "replaced by the job", replace_original=True)


def test_an_answer_is_sent_only_once_its_transaction_committed(db_url: str) -> None:
    """Nobody reads "Posted" of a change that rolled back: ``Context.respond`` waits for the
    commit, and the handler's answers go out before its queued jobs start (a job that replaces
    the answer must find it there)."""
    db, runtime = runtime_over(db_url, Poster)
    chat = runtime.services.chat
    assert isinstance(chat, RecordingChat)
    try:
        with db.session() as s:
            s.add(ProcessedEvent(event_id="taken", kind="x"))
        replies: list[str] = []
        event = cmd("collide", command_name="/post")
        runtime.handle_reporting(event, replies.append)
        assert replies and replies[0].startswith("Sorry, something went wrong")
        assert chat.of("respond") == []  # not "Posted": nothing was committed
        assert runtime.handle(cmd("", command_name="/post")).outcome is Outcome.HANDLED
        assert runtime.services.jobs.wait_idle()
        assert [c["text"] for c in chat.of("respond")] == [
            "Posted in #brand", "A second line", "replaced by the job",
        ]  # fmt: skip
    finally:
        runtime.services.jobs.shutdown()
        db.dispose()
