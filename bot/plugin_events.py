"""The platform-neutral events a plugin handler receives (re-exported by ``bot.plugin``).

Chat adapters (Slack, the console) translate what their platform sends into these; the runtime
routes them to handlers by type. Frozen, so a handler cannot change what others see.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """Common fields. ``event_id`` identifies the delivery across retries (None: not deduped)."""

    user_id: str
    channel_id: str | None = None
    event_id: str | None = None
    team_id: str | None = None


@dataclass(frozen=True)
class CommandEvent(Event):
    command: str = ""
    text: str = ""
    response_url: str | None = None
    trigger_id: str | None = None


@dataclass(frozen=True)
class ReactionEvent(Event):
    reaction: str = ""
    message_ts: str = ""
    item_user: str | None = None
    added: bool = True


@dataclass(frozen=True)
class MessageEvent(Event):
    text: str = ""
    ts: str = ""
    thread_ts: str | None = None
    bot_id: str | None = None
    subtype: str | None = None
    match: re.Match[str] | None = None


@dataclass(frozen=True)
class MessageChangedEvent(Event):
    ts: str = ""
    text: str = ""
    previous_text: str | None = None


@dataclass(frozen=True)
class MessageDeletedEvent(Event):
    ts: str = ""


@dataclass(frozen=True)
class MemberJoinedEvent(Event):
    pass


@dataclass(frozen=True)
class ActionEvent(Event):
    """A button press (``kind="button"``), a modal submission (``"view"``) or a shortcut."""

    kind: str = "button"
    action_id: str = ""
    value: str = ""
    message_ts: str | None = None
    response_url: str | None = None
    trigger_id: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    private_metadata: str = ""
    message_text: str | None = None


@dataclass(frozen=True)
class HomeOpenedEvent(Event):
    """The person opened the app's Home tab; the runtime routes it to ``on_home_opened``."""

    view_id: str | None = None


@dataclass(frozen=True)
class InternalEvent:
    """An outbox event (a run finished, an adapter promoted, ...), delivered exactly once."""

    topic: str
    payload: dict[str, Any]
    event_id: str
