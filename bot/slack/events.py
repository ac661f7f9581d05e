"""Slack payloads -> the plugin API's platform-neutral events. Pure functions.

A payload missing what an event needs yields ``None`` (logged and answered 200 by the caller),
never an exception.
"""

from __future__ import annotations

from typing import Any

from bot.plugin import (
    ActionEvent,
    CommandEvent,
    Event,
    HomeOpenedEvent,
    MemberJoinedEvent,
    MessageChangedEvent,
    MessageDeletedEvent,
    MessageEvent,
    ReactionEvent,
)


def _s(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def team_of(body: dict[str, Any]) -> str | None:
    """The workspace a request comes from: ``team_id`` (events, commands) or ``team.id``
    (interactivity); None when it names none (``url_verification``)."""
    team = body.get("team")
    return _s(body.get("team_id")) or (_s(team.get("id")) if isinstance(team, dict) else None)


def from_event(body: dict[str, Any]) -> Event | None:
    """An Events API envelope (``event_callback``) -> a neutral event, or None."""
    event = body.get("event")
    if not isinstance(event, dict):
        return None
    event_id = _s(body.get("event_id"))
    team = _s(body.get("team_id"))
    kind = event.get("type")
    if kind in ("reaction_added", "reaction_removed"):
        item = event.get("item") or {}
        user, channel, ts = _s(event.get("user")), _s(item.get("channel")), _s(item.get("ts"))
        if not (user and channel and ts and _s(event.get("reaction"))):
            return None
        return ReactionEvent(
            user_id=user, channel_id=channel, event_id=event_id, team_id=team,
            reaction=event["reaction"], message_ts=ts, item_user=_s(event.get("item_user")),
            added=kind == "reaction_added",
        )  # fmt: skip
    if kind == "message":
        return _message(event, event_id, team)
    if kind == "member_joined_channel":
        user, channel = _s(event.get("user")), _s(event.get("channel"))
        if not (user and channel):
            return None
        return MemberJoinedEvent(user_id=user, channel_id=channel, event_id=event_id, team_id=team)
    if kind == "app_home_opened":
        user = _s(event.get("user"))
        if not user or event.get("tab") != "home":  # the Messages tab opens too
            return None
        view = event.get("view")
        view_id = _s(view.get("id")) if isinstance(view, dict) else None
        return HomeOpenedEvent(user_id=user, event_id=event_id, team_id=team, view_id=view_id)
    if kind == "app_mention":
        user, channel, ts = _s(event.get("user")), _s(event.get("channel")), _s(event.get("ts"))
        if not (user and channel and ts):
            return None
        return MessageEvent(
            user_id=user, channel_id=channel, event_id=event_id, team_id=team,
            text=str(event.get("text") or ""), ts=ts, thread_ts=_s(event.get("thread_ts")),
            subtype="app_mention",
        )  # fmt: skip
    return None


def _message(event: dict[str, Any], event_id: str | None, team: str | None) -> Event | None:
    channel = _s(event.get("channel"))
    subtype = _s(event.get("subtype"))
    if not channel:
        return None
    if subtype == "message_changed":
        new = event.get("message") or {}
        old = event.get("previous_message") or {}
        ts, user = _s(new.get("ts")), _s(new.get("user")) or _s(old.get("user"))
        if not ts:
            return None
        return MessageChangedEvent(
            user_id=user or "", channel_id=channel, event_id=event_id, team_id=team, ts=ts,
            text=str(new.get("text") or ""), previous_text=old.get("text"),
        )  # fmt: skip
    if subtype == "message_deleted":
        ts = _s(event.get("deleted_ts")) or _s((event.get("previous_message") or {}).get("ts"))
        if not ts:
            return None
        user = _s((event.get("previous_message") or {}).get("user")) or ""
        return MessageDeletedEvent(
            user_id=user, channel_id=channel, event_id=event_id, team_id=team, ts=ts
        )
    if subtype not in (None, "bot_message", "thread_broadcast", "file_share", "me_message"):
        return None  # joins, topic changes, ...: nothing a plugin collects
    ts = _s(event.get("ts"))
    user = _s(event.get("user")) or _s(event.get("bot_id"))
    if not (ts and user):
        return None
    return MessageEvent(
        user_id=user, channel_id=channel, event_id=event_id, team_id=team,
        text=str(event.get("text") or ""), ts=ts, thread_ts=_s(event.get("thread_ts")),
        bot_id=_s(event.get("bot_id")), subtype=subtype,
    )  # fmt: skip


def from_command(body: dict[str, Any]) -> CommandEvent | None:
    command, user = _s(body.get("command")), _s(body.get("user_id"))
    if not (command and user):
        return None
    return CommandEvent(
        user_id=user, channel_id=_s(body.get("channel_id")), team_id=_s(body.get("team_id")),
        command=command, text=str(body.get("text") or "").strip(),
        response_url=_s(body.get("response_url")), trigger_id=_s(body.get("trigger_id")),
    )  # fmt: skip


def from_block_action(body: dict[str, Any]) -> ActionEvent | None:
    actions = body.get("actions") or []
    user = _s((body.get("user") or {}).get("id"))
    if not (actions and isinstance(actions[0], dict) and user):
        return None
    action = actions[0]
    container = body.get("container") or {}
    channel = _s((body.get("channel") or {}).get("id")) or _s(container.get("channel_id"))
    message = body.get("message") or {}
    value = action.get("value")
    if value is None and isinstance(action.get("selected_option"), dict):
        value = action["selected_option"].get("value")
    return ActionEvent(
        user_id=user, channel_id=channel, team_id=_s((body.get("team") or {}).get("id")),
        kind="button", action_id=str(action.get("action_id") or ""), value=str(value or ""),
        message_ts=_s(message.get("ts")) or _s(container.get("message_ts")),
        response_url=_s(body.get("response_url")), trigger_id=_s(body.get("trigger_id")),
        message_text=message.get("text"),
    )  # fmt: skip


def from_view_submission(body: dict[str, Any]) -> ActionEvent | None:
    view = body.get("view") or {}
    user = _s((body.get("user") or {}).get("id"))
    if not (user and _s(view.get("callback_id"))):
        return None
    values: dict[str, Any] = {}
    for block_id, actions in ((view.get("state") or {}).get("values") or {}).items():
        for action_id, state in (actions or {}).items():
            value = state.get("value")
            if value is None and isinstance(state.get("selected_option"), dict):
                value = state["selected_option"].get("value")
            values[f"{block_id}.{action_id}"] = value
    return ActionEvent(
        user_id=user, team_id=_s((body.get("team") or {}).get("id")), kind="view",
        action_id=view["callback_id"], values=values,
        private_metadata=str(view.get("private_metadata") or ""),
        trigger_id=_s(body.get("trigger_id")),
    )  # fmt: skip


def from_shortcut(body: dict[str, Any]) -> ActionEvent | None:
    user = _s((body.get("user") or {}).get("id"))
    if not (user and _s(body.get("callback_id"))):
        return None
    message = body.get("message") or {}
    return ActionEvent(
        user_id=user, channel_id=_s((body.get("channel") or {}).get("id")),
        team_id=_s((body.get("team") or {}).get("id")), kind="shortcut",
        action_id=body["callback_id"], message_ts=_s(message.get("ts")),
        response_url=_s(body.get("response_url")), trigger_id=_s(body.get("trigger_id")),
        message_text=message.get("text"),
    )  # fmt: skip
