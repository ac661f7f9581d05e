"""Real-shaped Slack payloads, as Slack sends them to an app, and a signed HTTP sender.

Three kinds of request reach a Slack app's request URL, each with its own body encoding:

- the Events API posts JSON: an ``event_callback`` wrapping one event (:func:`event_callback`
  around :func:`message`, :func:`reaction_added`, ...) or a :func:`url_verification` challenge;
- slash commands post a flat form (``application/x-www-form-urlencoded``): :func:`slash_command`;
- interactivity posts a form with one field, ``payload=<JSON>``: :func:`block_actions`,
  :func:`view_submission`, :func:`message_shortcut`.

Every builder returns a plain ``dict`` (easy to tweak in a test). :func:`encode` turns any of
them into ``(body, content_type)`` the way Slack encodes it, :func:`envelope_type` names the
Socket Mode envelope that carries it, and :func:`signed_post` sends it, signed, to a running app.
Ids default to the fake workspace's (:data:`TEAM_ID`, :data:`API_APP_ID`, :data:`BOT_USER_ID`),
which :class:`bot.testkit.slack.FakeSlack` seeds too.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bot.testkit.interactions import (
    block_actions,
    encode,
    envelope_type,
    home_block_actions,
    message_shortcut,
    signed_post,
    slash_command,
    view_submission,
)
from bot.testkit.slack_ids import (
    API_APP_ID,
    BOT_ID,
    BOT_USER_ID,
    FORM,
    JSON,
    TEAM_DOMAIN,
    TEAM_ID,
    VERIFICATION_TOKEN,
    new_id,
    new_ts,
    rich_text,
)

__all__ = [
    "API_APP_ID",
    "BOT_ID",
    "BOT_USER_ID",
    "FORM",
    "JSON",
    "TEAM_DOMAIN",
    "TEAM_ID",
    "VERIFICATION_TOKEN",
    "app_home_opened",
    "app_mention",
    "block_actions",
    "encode",
    "envelope_type",
    "event_callback",
    "home_block_actions",
    "member_joined_channel",
    "message",
    "message_changed",
    "message_deleted",
    "message_shortcut",
    "new_id",
    "new_ts",
    "reaction_added",
    "reaction_removed",
    "rich_text",
    "signed_post",
    "slash_command",
    "url_verification",
    "view_submission",
]

# -- Events API ------------------------------------------------------------------------------


def event_callback(
    event: dict[str, Any],
    event_id: str | None = None,
    team_id: str = TEAM_ID,
    api_app_id: str = API_APP_ID,
    event_time: int | None = None,
    authorized_user: str = BOT_USER_ID,
) -> dict[str, Any]:
    """The JSON body the Events API posts for ``event`` (``type: event_callback``)."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "context_team_id": team_id,
        "context_enterprise_id": None,
        "api_app_id": api_app_id,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or new_id("Ev"),
        "event_time": int(time.time()) if event_time is None else event_time,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": authorized_user,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-{uuid.uuid4().hex}",
    }


def url_verification(
    challenge: str = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
) -> dict[str, Any]:
    """The handshake Slack posts when a request URL is saved; the app echoes ``challenge``."""
    return {"token": VERIFICATION_TOKEN, "challenge": challenge, "type": "url_verification"}


def _reaction(
    kind: str, user: str, reaction: str, channel: str, ts: str, item_user: str | None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": kind,
        "user": user,
        "reaction": reaction,
        "item": {"type": "message", "channel": channel, "ts": ts},
        "event_ts": new_ts(),
    }
    if item_user is not None:
        event["item_user"] = item_user
    return event


def reaction_added(
    user: str, reaction: str, channel: str, ts: str, item_user: str | None = None
) -> dict[str, Any]:
    """``reaction_added``: ``user`` put ``:reaction:`` (no colons) on message ``ts``."""
    return _reaction("reaction_added", user, reaction, channel, ts, item_user)


def reaction_removed(
    user: str, reaction: str, channel: str, ts: str, item_user: str | None = None
) -> dict[str, Any]:
    """``reaction_removed``: the same shape as :func:`reaction_added`."""
    return _reaction("reaction_removed", user, reaction, channel, ts, item_user)


def message(
    channel: str,
    user: str | None,
    text: str,
    ts: str | None = None,
    thread_ts: str | None = None,
    bot_id: str | None = None,
    subtype: str | None = None,
    channel_type: str = "channel",
    team_id: str = TEAM_ID,
    parent_user_id: str | None = None,
) -> dict[str, Any]:
    """A ``message`` event. ``thread_ts`` makes it a thread reply; ``bot_id`` a bot's message
    (``subtype="bot_message"`` for an integration without a bot user)."""
    ts = ts or new_ts()
    event: dict[str, Any] = {"type": "message"}
    if subtype is not None:
        event["subtype"] = subtype
    if bot_id is None and subtype is None:
        event["client_msg_id"] = str(uuid.uuid4())
    event["text"] = text
    if user is not None:
        event["user"] = user
    event["ts"] = ts
    if bot_id is not None:
        event["bot_id"] = bot_id
        event["app_id"] = API_APP_ID
    event["blocks"] = rich_text(text)
    event["team"] = team_id
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
        if thread_ts != ts:
            event["parent_user_id"] = parent_user_id or user
    event["channel"] = channel
    event["event_ts"] = ts
    event["channel_type"] = channel_type
    return event


def message_changed(
    channel: str,
    ts: str,
    new_text: str,
    user: str,
    previous_text: str = "",
    thread_ts: str | None = None,
    channel_type: str = "channel",
) -> dict[str, Any]:
    """A ``message`` event with ``subtype: message_changed`` (an edit of message ``ts``)."""
    event_ts = new_ts()
    current: dict[str, Any] = {
        "type": "message",
        "text": new_text,
        "user": user,
        "team": TEAM_ID,
        "edited": {"user": user, "ts": event_ts},
        "blocks": rich_text(new_text),
        "ts": ts,
        "source_team": TEAM_ID,
        "user_team": TEAM_ID,
    }
    previous: dict[str, Any] = {
        "type": "message",
        "text": previous_text,
        "user": user,
        "team": TEAM_ID,
        "blocks": rich_text(previous_text),
        "ts": ts,
    }
    if thread_ts is not None:
        current["thread_ts"] = previous["thread_ts"] = thread_ts
    return {
        "type": "message",
        "subtype": "message_changed",
        "message": current,
        "previous_message": previous,
        "channel": channel,
        "hidden": True,
        "ts": event_ts,
        "event_ts": event_ts,
        "channel_type": channel_type,
    }


def message_deleted(
    channel: str,
    ts: str,
    previous_message: dict[str, Any] | None = None,
    channel_type: str = "channel",
) -> dict[str, Any]:
    """A ``message`` event with ``subtype: message_deleted`` for message ``ts``."""
    event_ts = new_ts()
    previous = previous_message or {"type": "message", "text": "", "user": "U0UNKNOWN", "ts": ts}
    return {
        "type": "message",
        "subtype": "message_deleted",
        "previous_message": previous,
        "channel": channel,
        "hidden": True,
        "deleted_ts": ts,
        "event_ts": event_ts,
        "ts": event_ts,
        "channel_type": channel_type,
    }


def app_mention(
    channel: str,
    user: str,
    text: str,
    ts: str | None = None,
    thread_ts: str | None = None,
    bot_user_id: str = BOT_USER_ID,
) -> dict[str, Any]:
    """``app_mention``. ``text`` gets a leading ``<@BOT>`` if it does not mention the bot."""
    ts = ts or new_ts()
    mention = f"<@{bot_user_id}>"
    if mention not in text:
        text = f"{mention} {text}"
    event: dict[str, Any] = {
        "client_msg_id": str(uuid.uuid4()),
        "type": "app_mention",
        "text": text,
        "user": user,
        "ts": ts,
        "blocks": rich_text(text),
        "team": TEAM_ID,
        "channel": channel,
        "event_ts": ts,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return event


def app_home_opened(
    user: str, tab: str = "home", view: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``app_home_opened``: ``user`` opened the app's ``home`` (or ``messages``) tab; ``view``
    is the Home view published for them before, if any."""
    event: dict[str, Any] = {
        "type": "app_home_opened",
        "user": user,
        "channel": "D" + user.removeprefix("U").removeprefix("W"),
        "tab": tab,
        "event_ts": new_ts(),
    }
    if view is not None:
        event["view"] = view
    return event


def member_joined_channel(
    user: str, channel: str, channel_type: str = "C", inviter: str | None = None
) -> dict[str, Any]:
    """``member_joined_channel`` (``channel_type`` is ``C`` public or ``G`` private)."""
    event: dict[str, Any] = {
        "type": "member_joined_channel",
        "user": user,
        "channel": channel,
        "channel_type": channel_type,
        "team": TEAM_ID,
        "event_ts": new_ts(),
    }
    if inviter is not None:
        event["inviter"] = inviter
    return event
