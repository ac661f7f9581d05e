"""The plugin API: a plugin is a class; decorators declare its handlers; services are injected.

    class Hello(Plugin):
        '''Says hello.'''

        @command("/hello")
        def hello(self, event: CommandEvent, ctx: Context) -> None:
            '''Say hello back. Usage: /hello [name]'''
            ctx.respond(f"Hello {event.text or 'there'}")

Handlers are plain (synchronous) methods called with a platform-neutral event and a
``Context``. A handler that reacts to a chat event runs inside one database transaction,
together with the mark that the event was processed; if it raises, both roll back and the
platform's retry does the work again. Commands and button presses are acknowledged before the
handler runs; slow work goes to ``ctx.jobs``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from bot.durable import submission
from bot.plugin_events import (
    ActionEvent,
    CommandEvent,
    Event,
    HomeOpenedEvent,
    InternalEvent,
    MemberJoinedEvent,
    MessageChangedEvent,
    MessageDeletedEvent,
    MessageEvent,
    ReactionEvent,
)
from bot.ratelimit import RateLimiter
from serving.client import InferenceClient, InferenceUnavailable

if TYPE_CHECKING:
    from bot.jobs import JobQueue
    from bot.settings import Settings
    from bot.storage.db import Database

# The events live in bot.plugin_events; plugins import them from here, with the rest of the API.
__all__ = [
    "ActionEvent",
    "CommandEvent",
    "Event",
    "HomeOpenedEvent",
    "InternalEvent",
    "MemberJoinedEvent",
    "MessageChangedEvent",
    "MessageDeletedEvent",
    "MessageEvent",
    "ReactionEvent",
]

F = TypeVar("F", bound=Callable[..., Any])


# ---- what a handler can use ---------------------------------------------------------------


@dataclass(frozen=True)
class Button:
    """A choice offered with a message: a Slack button, a numbered choice in the console."""

    text: str
    action_id: str
    value: str = ""
    style: str | None = None


@dataclass(frozen=True)
class ChatMessage:
    channel_id: str
    ts: str
    user_id: str | None
    text: str
    thread_ts: str | None = None
    bot_id: str | None = None
    has_files: bool = False
    replies: tuple[ChatMessage, ...] = ()
    parent: ChatMessage | None = None


class ChatError(Exception):
    """The chat platform refused or failed a call; ``code`` is its error code."""

    def __init__(self, code: str, message: str | None = None) -> None:
        super().__init__(message or code)
        self.code = code


class ChatAPI(Protocol):
    """What plugins may do in chat; implemented for Slack and for the console."""

    def post(
        self,
        channel: str,
        text: str,
        *,
        thread_ts: str | None = None,
        buttons: Sequence[Button] = (),
        blocks: list[dict[str, Any]] | None = None,
    ) -> str:
        """Post a message; returns its ts."""
        ...

    def ephemeral(
        self, channel: str, user: str, text: str, *, buttons: Sequence[Button] = ()
    ) -> None: ...

    def respond(
        self,
        response_url: str,
        text: str,
        *,
        buttons: Sequence[Button] = (),
        replace_original: bool = False,
        in_channel: bool = False,
    ) -> None:
        """Answer a command or a button press through its response URL."""
        ...

    def update(
        self, channel: str, ts: str, text: str, *, buttons: Sequence[Button] = ()
    ) -> None: ...

    def progress(self, response_url: str, text: str) -> None:
        """Show work in progress (a draft streaming in) in place of the placeholder."""
        ...

    def upload_file(
        self,
        channel: str,
        content: bytes,
        filename: str,
        *,
        title: str | None = None,
        comment: str | None = None,
        thread_ts: str | None = None,
    ) -> str | None:
        """Upload ``content`` and share it in ``channel``; returns the file's id where the chat
        has one (an image block can show the file by it)."""
        ...

    def open_modal(self, trigger_id: str, view: dict[str, Any]) -> None: ...

    def publish_home(self, user: str, view: dict[str, Any]) -> None:
        """Show ``view`` (a Block Kit ``home`` view) as ``user``'s Home tab."""
        ...

    def fetch_message(self, channel: str, ts: str) -> ChatMessage | None:
        """The message with its thread replies; None when it cannot be read."""
        ...

    def fetch_messages(self, refs: Sequence[tuple[str, str]]) -> list[ChatMessage | None]:
        """``fetch_message`` for several (channel, ts), in order; concurrent where it can be."""
        ...

    def history(self, channel: str, oldest: str, limit: int = 200) -> list[ChatMessage]:
        """The channel's top-level messages newer than ``oldest`` (a ts), newest first, at most
        ``limit``. Raises :class:`ChatError` when the channel cannot be read, so a caller never
        takes "cannot read" for "no such message"."""
        ...

    def channel_members(self, channel: str) -> list[str]: ...

    def usergroup_members(self, group: str) -> list[str]: ...

    def bot_user_id(self) -> str:
        """The bot's own user id (to recognise its joins and its messages)."""
        ...

    def is_private(self, channel: str) -> bool:
        """Whether the channel is private (unknown channels count as private)."""
        ...


@dataclass
class Services:
    """What the runtime hands a plugin. ``inference`` is None until a model client is set up."""

    settings: Settings
    db: Database
    chat: ChatAPI
    jobs: JobQueue
    inference: InferenceClient | None = None
    help_entries: Callable[[str | None], list[tuple[str, str]]] | None = None
    limits: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limits = RateLimiter(lambda: self.settings.rate_limit_per_minute)

    def require_inference(self) -> InferenceClient:
        """The inference client, for a handler that needs one; raises
        :class:`~serving.client.InferenceUnavailable` when none is set up."""
        if self.inference is None:
            raise InferenceUnavailable("no model server is configured")
        return self.inference


@dataclass
class Context:
    """One handler call: the services, plus a session in the handler's own transaction."""

    services: Services
    session: Session
    event: Event | InternalEvent | None = None
    error_id: str | None = None
    _published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _after_commit: list[tuple[Callable[..., Any], tuple[Any, ...], str | None]] = field(
        default_factory=list
    )
    _calls_after_commit: list[tuple[Callable[..., Any], tuple[Any, ...]]] = field(
        default_factory=list
    )

    @property
    def chat(self) -> ChatAPI:
        return self.services.chat

    @property
    def jobs(self) -> JobQueue:
        return self.services.jobs

    def say(self, text: str, *, buttons: Sequence[Button] = (), thread: bool = False) -> str:
        """Post in the event's channel (in its thread when ``thread``)."""
        event = self.event
        if not isinstance(event, Event) or event.channel_id is None:
            raise ValueError("this event has no channel to say anything in")
        thread_ts = None
        if thread:
            thread_ts = getattr(event, "thread_ts", None) or getattr(event, "ts", None)
            thread_ts = thread_ts or getattr(event, "message_ts", None)
        return self.chat.post(event.channel_id, text, thread_ts=thread_ts, buttons=buttons)

    def respond(
        self, text: str, *, buttons: Sequence[Button] = (), replace_original: bool = False
    ) -> None:
        """Answer the person who ran the command or pressed the button, privately.

        The answer is sent once this handler's transaction has committed (an
        :meth:`after_commit` call), never for one that rolled back: nobody reads "Posted" or
        "Saved" of a change that did not happen; the failure's apology comes instead. Answers
        keep their order and go out before the handler's queued jobs start.
        """
        event = self.event
        url = getattr(event, "response_url", None)
        send: Callable[[], Any]
        if url:
            send = partial(
                self.chat.respond, url, text, buttons=buttons, replace_original=replace_original
            )
        elif isinstance(event, Event) and event.channel_id:
            send = partial(
                self.chat.ephemeral, event.channel_id, event.user_id, text, buttons=buttons
            )
        else:
            raise ValueError("this event has nobody to respond to")
        self.after_commit(send)

    def submit_after_commit(
        self, fn: Callable[..., Any], *args: Any, name: str | None = None
    ) -> None:
        """Run slow work after this transaction commits; stored in it (bot/durable.py)."""
        self._after_commit.append(submission(self.session, self.services, fn, args, name))

    def after_commit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` right after this handler's transaction commits, on the same
        thread, before the event is answered: quick work such as telling someone what
        happened, which must not be said of a transaction that rolled back nor wait behind
        queued jobs. Its errors are logged; the event has taken effect and is not failed."""
        self._calls_after_commit.append((fn, args))

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Write an outbox event in this handler's transaction."""
        from bot.storage.repositories import Outbox

        Outbox(self.session).publish(topic, payload)


# ---- declaring handlers -------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    """Who may call a handler: any listed user, member of a listed group, or admin."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    admins: bool = False
    channel_members: tuple[str, ...] = ()


@dataclass(frozen=True)
class HandlerSpec:
    kind: str  # command | reaction | message | message_changed | message_deleted | member_joined
    #          | action | view | shortcut | schedule | internal | home_opened
    key: str = ""  # the command, emoji, action_id, callback_id, cron or topic
    pattern: re.Pattern[str] | None = None
    added: bool = True
    help: str = ""
    batch: bool = False  # the handler takes a list of events (see ``on_reaction``)


ATTR = "__brandbot_handlers__"
REQ_ATTR = "__brandbot_requirement__"


def _mark(spec: HandlerSpec) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        specs = list(getattr(fn, ATTR, []))
        specs.append(spec)
        setattr(fn, ATTR, specs)
        return fn

    return decorate


def command(name: str, *, help: str = "") -> Callable[[F], F]:
    """A slash command, e.g. ``@command("/draft")``. The docstring becomes its help."""
    if not name.startswith("/"):
        raise ValueError(f"a slash command starts with '/': {name!r}")
    return _mark(HandlerSpec("command", name, help=help))


def on_reaction(
    emoji: str | None = None, *, removed: bool = False, batch: bool = False
) -> Callable[[F], F]:
    """A reaction added (or, with ``removed=True``, removed); ``emoji=None`` matches any.

    With ``batch=True`` the handler is called as ``fn(events, ctx)`` with a list of reaction
    events that arrived together (one or more, distinct event ids, in arrival order) and a
    context whose ``event`` is None, all in one transaction. A busy workspace's reactions then
    cost a few queries per batch instead of per event; the runtime retries the events one by
    one when a batch fails, so a handler that raises still fails only its own event.
    """
    spec = HandlerSpec("reaction", (emoji or "").strip(":"), added=not removed, batch=batch)
    return _mark(spec)


def on_message(regex: str = "") -> Callable[[F], F]:
    """A new message whose text matches ``regex`` (``""`` matches every message)."""
    return _mark(HandlerSpec("message", regex, pattern=re.compile(regex) if regex else None))


def on_message_changed() -> Callable[[F], F]:
    return _mark(HandlerSpec("message_changed"))


def on_message_deleted() -> Callable[[F], F]:
    return _mark(HandlerSpec("message_deleted"))


def on_member_joined() -> Callable[[F], F]:
    """A member (the bot included) joined a channel."""
    return _mark(HandlerSpec("member_joined"))


def on_home_opened() -> Callable[[F], F]:
    """A person opened the app's Home tab (``HomeOpenedEvent``)."""
    return _mark(HandlerSpec("home_opened"))


def on_action(action_id: str) -> Callable[[F], F]:
    """A button press; ``action_id`` may end with ``*`` to match a prefix."""
    return _mark(HandlerSpec("action", action_id))


def on_view_submission(callback_id: str) -> Callable[[F], F]:
    """A modal submission. Returning a dict of block_id -> message shows those errors."""
    return _mark(HandlerSpec("view", callback_id))


def on_shortcut(callback_id: str) -> Callable[[F], F]:
    """A message shortcut."""
    return _mark(HandlerSpec("shortcut", callback_id))


def schedule(cron: str) -> Callable[[F], F]:
    """Run on a 5-field cron (UTC) in exactly one replica, e.g. ``@schedule("0 6 * * 1")``."""
    from bot.cron import cron_trigger

    cron_trigger(cron)  # fail at import time, not at 6 a.m.
    return _mark(HandlerSpec("schedule", cron))


def on_event(topic: str) -> Callable[[F], F]:
    """An internal (outbox) event, e.g. ``@on_event("run.finished")``; exactly once."""
    return _mark(HandlerSpec("internal", topic))


def require(
    *,
    users: Sequence[str] = (),
    groups: Sequence[str] = (),
    admins: bool = False,
    channel_members: Sequence[str] = (),
) -> Callable[[F], F]:
    """Restrict a handler to listed users, members of user groups or channels, or admins."""

    def decorate(fn: F) -> F:
        setattr(
            fn,
            REQ_ATTR,
            Requirement(tuple(users), tuple(groups), admins, tuple(channel_members)),
        )
        return fn

    return decorate


class Plugin:
    """Base class of every plugin.

    ``name`` is the entry-point name; ``Settings`` (a pydantic model) validates the plugin's
    section of brandbot.toml (``[plugins.<name>]``) at start. ``setup()`` runs once after
    injection, before any handler.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type[BaseModel] | None] = None

    def __init__(self, services: Services, settings: BaseModel | None = None) -> None:
        self.services = services
        self.settings = settings

    def setup(self) -> None:
        """Optional start-up work (after settings validation)."""

    @classmethod
    def handlers(cls) -> list[tuple[str, HandlerSpec, Requirement | None]]:
        """(method name, spec, requirement) for every decorated method, in definition order."""
        found = []
        for attr, value in vars(cls).items():
            for spec in getattr(value, ATTR, []):
                found.append((attr, spec, getattr(value, REQ_ATTR, None)))
        for base in cls.__mro__[1:]:
            if base is Plugin or not issubclass(base, Plugin):
                continue
            for attr, spec, req in base.handlers():
                if attr not in vars(cls):
                    found.append((attr, spec, req))
        return found
