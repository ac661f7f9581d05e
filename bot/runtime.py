"""The runtime: routes platform-neutral events to plugin handlers, exactly once.

A chat event with an ``event_id`` is processed in one database transaction that also records
the id; a duplicate delivery or a retry of an event that already took effect is dropped, and a
handler that raises leaves no mark, so the retry does the work. The chat adapters (Slack,
console) only translate; every decision is made here.
"""

from __future__ import annotations

import fnmatch
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from bot.observability import (
    EVENTS_DUPLICATE,
    EVENTS_RECEIVED,
    HANDLER_ERRORS,
    HANDLER_LATENCY,
)
from bot.plugin import (
    ActionEvent,
    CommandEvent,
    Context,
    Event,
    HandlerSpec,
    HomeOpenedEvent,
    InternalEvent,
    MemberJoinedEvent,
    MessageChangedEvent,
    MessageDeletedEvent,
    MessageEvent,
    Plugin,
    ReactionEvent,
    Requirement,
    Services,
)
from bot.ratelimit import Busy
from bot.storage.repositories import ProcessedEvents

log = logging.getLogger("brandbot.runtime")

APOLOGY = "Sorry, something went wrong on my side (error id {error_id}). It has been logged."


class Outcome(Enum):
    HANDLED = "handled"
    DUPLICATE = "duplicate"
    UNHANDLED = "unhandled"
    DENIED = "denied"


@dataclass(frozen=True)
class Bound:
    plugin: Plugin
    method: str
    spec: HandlerSpec
    requirement: Requirement | None

    @property
    def name(self) -> str:
        return f"{type(self.plugin).__name__}.{self.method}"

    @property
    def fn(self) -> Callable[..., Any]:
        fn: Callable[..., Any] = getattr(self.plugin, self.method)
        return fn

    @property
    def doc(self) -> str:
        return (self.spec.help or (self.fn.__doc__ or "")).strip()


@dataclass
class Result:
    outcome: Outcome
    value: Any = None
    handlers: int = 0


class NotAllowed(Exception):
    """The user may not call this handler; the message says who may."""


def event_kind(event: Event) -> str:
    return {
        CommandEvent: "command",
        ReactionEvent: "reaction",
        MessageEvent: "message",
        MessageChangedEvent: "message_changed",
        MessageDeletedEvent: "message_deleted",
        MemberJoinedEvent: "member_joined",
        HomeOpenedEvent: "home_opened",
    }.get(type(event), "action")


class Runtime:
    """Holds the plugins and their handler index; ``handle()`` runs one event."""

    def __init__(self, services: Services, plugins: list[Plugin]) -> None:
        self.services = services
        self.plugins = plugins
        self.handlers: list[Bound] = []
        commands: dict[str, Bound] = {}
        for plugin in plugins:
            for method, spec, req in type(plugin).handlers():
                bound = Bound(plugin, method, spec, req)
                if spec.kind == "command":
                    if spec.key in commands:
                        other = commands[spec.key].name
                        raise ValueError(f"{spec.key} is declared by both {other} and {bound.name}")
                    commands[spec.key] = bound
                self.handlers.append(bound)
        self.commands = commands
        services.help_entries = self.help_entries

    # ---- matching -----------------------------------------------------------------------

    def command_names(self) -> list[str]:
        """Top-level slash commands (``/brandbot``, ``/draft``), as the chat app declares them."""
        return sorted({key.split()[0] for key in self.commands})

    def match_command(self, event: CommandEvent) -> tuple[Bound | None, str]:
        """The handler for the longest matching ``/command sub`` key and the remaining text."""
        words = event.text.split()
        for n in range(len(words), -1, -1):
            key = " ".join([event.command, *words[:n]])
            if key in self.commands:
                return self.commands[key], " ".join(words[n:])
        return None, event.text

    def _matches(self, bound: Bound, event: Event | InternalEvent) -> bool:
        spec = bound.spec
        if isinstance(event, InternalEvent):
            return spec.kind == "internal" and fnmatch.fnmatchcase(event.topic, spec.key)
        if isinstance(event, ReactionEvent):
            return (
                spec.kind == "reaction"
                and spec.added == event.added
                and (not spec.key or spec.key == event.reaction)
            )
        if isinstance(event, MessageEvent):
            return spec.kind == "message" and (
                spec.pattern is None or spec.pattern.search(event.text) is not None
            )
        if isinstance(event, MessageChangedEvent):
            return spec.kind == "message_changed"
        if isinstance(event, MessageDeletedEvent):
            return spec.kind == "message_deleted"
        if isinstance(event, MemberJoinedEvent):
            return spec.kind == "member_joined"
        if isinstance(event, HomeOpenedEvent):
            return spec.kind == "home_opened"
        if isinstance(event, ActionEvent):
            kind = {"button": "action", "view": "view", "shortcut": "shortcut"}[event.kind]
            if spec.kind != kind:
                return False
            return fnmatch.fnmatchcase(event.action_id, spec.key)
        return False

    def match(self, event: Event | InternalEvent) -> list[Bound]:
        if isinstance(event, CommandEvent):
            bound, _ = self.match_command(event)
            return [bound] if bound else []
        return [b for b in self.handlers if self._matches(b, event)]

    # ---- permissions --------------------------------------------------------------------

    def is_admin(self, user_id: str) -> bool:
        return user_id in self.services.settings.admins

    def check_allowed(self, bound: Bound, user_id: str) -> None:
        req = bound.requirement
        if req is None:
            return
        if req.admins and self.is_admin(user_id):
            return
        if user_id in req.users:
            return
        chat = self.services.chat
        for group in req.groups:
            if user_id in chat.usergroup_members(group):
                return
        for channel in req.channel_members:
            if user_id in chat.channel_members(channel):
                return
        who = []
        if req.admins:
            who.append("admins")
        if req.users or req.groups or req.channel_members:
            who.append("the people it is configured for")
        raise NotAllowed(f"Sorry, only {' and '.join(who) or 'some people'} may do that.")

    # ---- running ------------------------------------------------------------------------

    def handle(self, event: Event) -> Result:
        """Run the handlers of one chat event, exactly once per ``event_id``.

        Raises what a handler raised (after rolling back), or NotAllowed.
        """
        kind = event_kind(event)
        EVENTS_RECEIVED.labels(kind).inc()
        bounds = self.match(event)
        text = event.text if isinstance(event, CommandEvent) else None
        if isinstance(event, CommandEvent) and bounds:
            _, text = self.match_command(event)
        if not bounds:
            return Result(Outcome.UNHANDLED)
        for bound in bounds:
            self.check_allowed(bound, event.user_id)
        value: Any = None
        contexts: list[Context] = []
        with self.services.db.session() as session:
            if event.event_id and not ProcessedEvents(session).claim(event.event_id, kind):
                EVENTS_DUPLICATE.labels(kind).inc()
                return Result(Outcome.DUPLICATE)
            for bound in bounds:
                call_event: Event = event
                if text is not None and isinstance(event, CommandEvent):
                    call_event = CommandEvent(**{**event.__dict__, "text": text})
                ctx = Context(self.services, session, call_event)
                contexts.append(ctx)
                arg: Any = [call_event] if bound.spec.batch else call_event
                value = self._call(bound, arg, ctx)
        self._run_after_commit(contexts)
        return Result(Outcome.HANDLED, value, len(bounds))

    def batchable(self, event: Event) -> bool:
        """Whether ``handle_batch`` takes this event: every handler it matches takes lists."""
        bounds = self.match(event)
        return bool(bounds) and all(b.spec.batch for b in bounds)

    def handle_batch(
        self,
        events: list[Event],
        on_commit: Callable[[list[Result | Exception]], None] | None = None,
    ) -> list[Result | Exception]:
        """Run batchable events (see ``batchable``) together: one transaction, each batch
        handler called once with the events it matches. Each event still takes effect exactly
        once per ``event_id``, including a retry that arrives in the same batch.

        Returns one Result per event, or the NotAllowed it met. Raises what a handler raised,
        after rolling the whole batch back: the caller then runs the events one by one
        (``handle``), so only the event that fails is reported as failed.

        ``on_commit`` gets the same results as soon as the transaction has committed, before
        the handlers' after-commit calls (notices to Slack) run: a caller can answer the
        events there instead of waiting for those calls.
        """
        results: list[Result | Exception | None] = [None] * len(events)
        runnable: list[tuple[int, Event, list[Bound]]] = []
        for i, event in enumerate(events):
            EVENTS_RECEIVED.labels(event_kind(event)).inc()
            bounds = self.match(event)
            if not bounds:
                results[i] = Result(Outcome.UNHANDLED)
                continue
            if not all(b.spec.batch for b in bounds):
                raise ValueError(f"{event_kind(event)} event has handlers that take one event")
            try:
                for bound in bounds:
                    self.check_allowed(bound, event.user_id)
            except NotAllowed as exc:
                results[i] = exc
                continue
            runnable.append((i, event, bounds))
        contexts: list[Context] = []
        with self.services.db.session() as session:
            by_kind: dict[str, list[str]] = {}
            for _, event, _ in runnable:
                if event.event_id:
                    by_kind.setdefault(event_kind(event), []).append(event.event_id)
            claimed: set[str] = set()
            for kind, ids in by_kind.items():
                claimed |= ProcessedEvents(session).claim_many(ids, kind)
            calls: dict[Bound, list[Event]] = {}
            for i, event, bounds in runnable:
                if event.event_id:
                    if event.event_id not in claimed:
                        EVENTS_DUPLICATE.labels(event_kind(event)).inc()
                        results[i] = Result(Outcome.DUPLICATE)
                        continue
                    claimed.discard(event.event_id)  # a second copy in this batch is a duplicate
                for bound in bounds:
                    calls.setdefault(bound, []).append(event)
                results[i] = Result(Outcome.HANDLED, None, len(bounds))
            for bound, batch in calls.items():
                ctx = Context(self.services, session, None)
                contexts.append(ctx)
                self._call(bound, batch, ctx)
        done = [r if r is not None else Result(Outcome.UNHANDLED) for r in results]
        if on_commit is not None:
            on_commit(done)
        self._run_after_commit(contexts)
        return done

    def _run_after_commit(self, contexts: list[Context]) -> None:
        """Make the contexts' after-commit calls (answers, notices), then queue their jobs: a
        job that later replaces an answer finds it sent. A job the full queue refuses is
        logged and skipped (the rest still run); the first such Busy is raised at the end, so
        the person who asked hears that it did not start."""
        refused: Busy | None = None
        for ctx in contexts:
            for then, args in ctx._calls_after_commit:
                try:
                    then(*args)
                except Exception:
                    name = getattr(then, "__qualname__", None) or getattr(
                        getattr(then, "func", None), "__qualname__", repr(then)
                    )
                    error_id = uuid.uuid4().hex[:8]
                    log.exception("after-commit call %s failed", name, extra={"error_id": error_id})
            for fn, args, name in ctx._after_commit:
                try:
                    self.services.jobs.submit(fn, *args, name=name)
                except Busy as exc:
                    refused = refused or exc
        if refused is not None:
            raise refused

    def _call(self, bound: Bound, event: Any, ctx: Context) -> Any:
        start = time.perf_counter()
        try:
            return bound.fn(event, ctx)
        except Exception:
            HANDLER_ERRORS.labels(bound.name).inc()
            raise
        finally:
            HANDLER_LATENCY.labels(bound.name).observe(time.perf_counter() - start)

    def handle_reporting(self, event: Event, reply: Callable[[str], None]) -> Result:
        """``handle`` for commands and button presses: errors become a short apology with an
        error id (logged under that id), refusals are explained; nothing propagates."""
        try:
            result = self.handle(event)
        except (NotAllowed, Busy) as exc:
            reply(str(exc))
            return Result(Outcome.DENIED)
        except Exception:
            error_id = uuid.uuid4().hex[:8]
            log.exception(
                "handler failed",
                extra={"error_id": error_id, "user_id": event.user_id,
                       "channel_id": event.channel_id},
            )  # fmt: skip
            reply(APOLOGY.format(error_id=error_id))
            return Result(Outcome.HANDLED, None)
        if result.outcome is Outcome.UNHANDLED and isinstance(event, CommandEvent):
            reply(f"Unknown command {event.command} {event.text}".strip() + ". Try /brandbot help.")
        return result

    # ---- internal events (outbox) and schedules ------------------------------------------

    def deliver_outbox(self, limit: int = 50) -> int:
        """Deliver the due outbox events (``bot.outbox.deliver``); how many were delivered."""
        from bot.outbox import deliver

        return deliver(self, limit)

    def scheduled(self) -> list[Bound]:
        return [b for b in self.handlers if b.spec.kind == "schedule"]

    def run_scheduled(self, bound: Bound) -> None:
        with self.services.db.session() as session:
            ctx = Context(self.services, session)
            self._call(bound, InternalEvent("schedule", {}, ""), ctx)
        self._run_after_commit([ctx])

    def help_entries(self, user_id: str | None = None) -> list[tuple[str, str]]:
        """(how to call it, what it does) for every command, from the handlers' docstrings."""
        entries = []
        for key, bound in sorted(self.commands.items()):
            req = bound.requirement
            hidden = req is not None and req.admins and user_id is not None
            if hidden and not self.is_admin(user_id or "") and user_id not in req.users:  # type: ignore[union-attr]
                continue
            first = bound.doc.splitlines()[0] if bound.doc else ""
            entries.append((key, first))
        return entries
