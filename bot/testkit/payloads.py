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

import itertools
import json
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx

from bot.testkit.signing import sign

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

TEAM_ID = "T0TESTTEAM"
TEAM_DOMAIN = "brandbot-test"
API_APP_ID = "A0BRANDBOT"
BOT_USER_ID = "U0BRANDBOT"
BOT_ID = "B0BRANDBOT"
#: The deprecated verification token Slack still puts in every payload (bolt ignores it).
VERIFICATION_TOKEN = "verification-token-not-used"  # noqa: S105 - a placeholder, not a secret

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

#: Interactive payload types: posted as ``payload=<JSON>``, delivered as ``interactive`` envelopes.
INTERACTIVE_TYPES = frozenset(
    {
        "block_actions",
        "block_suggestion",
        "interactive_message",
        "message_action",
        "shortcut",
        "view_closed",
        "view_submission",
        "dialog_submission",
    }
)

_ts_lock = threading.Lock()
_last_ts = 0.0
_ids = itertools.count(1)


def new_ts() -> str:
    """A fresh, strictly increasing Slack timestamp (``"1732550400.000100"``)."""
    global _last_ts
    with _ts_lock:
        now = round(time.time(), 6)
        _last_ts = max(now, round(_last_ts + 0.000001, 6))
        return f"{_last_ts:.6f}"


def new_id(prefix: str) -> str:
    """A fresh Slack-looking id: ``new_id("Ev")`` -> ``"Ev0000000001AB"``."""
    return f"{prefix}{next(_ids):010d}{uuid.uuid4().hex[:2].upper()}"


def _trigger_id() -> str:
    return f"{int(time.time())}.{next(_ids)}.{uuid.uuid4().hex}"


def rich_text(text: str) -> list[dict[str, Any]]:
    """The ``rich_text`` blocks Slack attaches to a message typed by a person."""
    return [
        {
            "type": "rich_text",
            "block_id": uuid.uuid4().hex[:5],
            "elements": [
                {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}
            ],
        }
    ]


def _user_object(user: str, team_id: str) -> dict[str, Any]:
    name = user.lower()
    return {"id": user, "username": name, "name": name, "team_id": team_id}


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


# -- slash commands and interactivity --------------------------------------------------------


def slash_command(
    command: str,
    text: str,
    user_id: str,
    channel_id: str,
    response_url: str,
    trigger_id: str | None = None,
    channel_name: str = "general",
    user_name: str | None = None,
    team_id: str = TEAM_ID,
    team_domain: str = TEAM_DOMAIN,
    api_app_id: str = API_APP_ID,
) -> dict[str, str]:
    """The fields of a slash command, in Slack's order; :func:`encode` form-encodes them."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name or user_id.lower(),
        "command": command if command.startswith("/") else f"/{command}",
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or _trigger_id(),
    }


def block_actions(
    user: str,
    action_id: str,
    value: str | None,
    channel: str,
    message_ts: str,
    response_url: str,
    block_id: str = "actions",
    container: dict[str, Any] | None = None,
    message: dict[str, Any] | None = None,
    action_type: str = "button",
    text: str = "Button",
    state_values: dict[str, Any] | None = None,
    trigger_id: str | None = None,
) -> dict[str, Any]:
    """A ``block_actions`` payload: ``user`` pressed button ``action_id`` on message
    ``message_ts`` (pass ``container`` for a button in a modal or an ephemeral message)."""
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": block_id,
        "text": {"type": "plain_text", "text": text, "emoji": True},
        "type": action_type,
        "action_ts": new_ts(),
    }
    if value is not None:
        action["value"] = value
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": _user_object(user, TEAM_ID),
        "api_app_id": API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "container": container
        or {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "trigger_id": trigger_id or _trigger_id(),
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel, "name": "general"},
        "state": {"values": state_values or {}},
        "response_url": response_url,
        "actions": [action],
    }
    if payload["container"].get("type") == "message":
        payload["message"] = message or {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "text": "",
            "ts": message_ts,
            "team": TEAM_ID,
            "blocks": [],
        }
    return payload


def home_block_actions(
    user: str, action_id: str, value: str | None, view: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A ``block_actions`` payload for a button of the Home tab: ``container`` is the view,
    and there is neither a channel nor a ``response_url``."""
    view = view or {"id": new_id("V"), "type": "home", "blocks": []}
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": "home",
        "text": {"type": "plain_text", "text": "Button", "emoji": True},
        "type": "button",
        "action_ts": new_ts(),
    }
    if value is not None:
        action["value"] = value
    return {
        "type": "block_actions",
        "user": _user_object(user, TEAM_ID),
        "api_app_id": API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "container": {"type": "view", "view_id": view.get("id", "")},
        "trigger_id": _trigger_id(),
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "view": view,
        "actions": [action],
    }


def _state_values(values: dict[str, Any]) -> dict[str, Any]:
    """Accept ``{block: {action: "text"}}`` shorthand next to Slack's full element states."""
    out: dict[str, Any] = {}
    for block_id, actions in values.items():
        out[block_id] = {}
        for action_id, state in actions.items():
            if isinstance(state, str) or state is None:
                state = {"type": "plain_text_input", "value": state}
            out[block_id][action_id] = state
    return out


def view_submission(
    user: str,
    callback_id: str,
    values: dict[str, Any],
    private_metadata: str = "",
    view_id: str | None = None,
    title: str = "Modal",
    response_urls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``view_submission`` payload. ``values`` is ``view.state.values``:
    ``{block_id: {action_id: state}}``, where a plain string state means a text input."""
    view_id = view_id or new_id("V")
    return {
        "type": "view_submission",
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "user": _user_object(user, TEAM_ID),
        "api_app_id": API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "trigger_id": _trigger_id(),
        "view": {
            "id": view_id,
            "team_id": TEAM_ID,
            "type": "modal",
            "blocks": [],
            "private_metadata": private_metadata,
            "callback_id": callback_id,
            "state": {"values": _state_values(values)},
            "hash": f"{int(time.time())}.{uuid.uuid4().hex[:8]}",
            "title": {"type": "plain_text", "text": title, "emoji": True},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": {"type": "plain_text", "text": "Cancel", "emoji": True},
            "submit": {"type": "plain_text", "text": "Submit", "emoji": True},
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": API_APP_ID,
            "external_id": "",
            "app_installed_team_id": TEAM_ID,
            "bot_id": BOT_ID,
        },
        "response_urls": response_urls or [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def message_shortcut(
    user: str,
    callback_id: str,
    channel: str,
    message: dict[str, Any],
    response_url: str = "http://127.0.0.1:9/response/unused",
) -> dict[str, Any]:
    """A message shortcut (``type: message_action``) run by ``user`` on ``message``. The
    default ``response_url`` refuses connections; pass ``FakeSlack.response_url()`` to record
    what the app answers through it."""
    return {
        "type": "message_action",
        "token": VERIFICATION_TOKEN,
        "action_ts": new_ts(),
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "user": _user_object(user, TEAM_ID),
        "channel": {"id": channel, "name": "general"},
        "is_enterprise_install": False,
        "enterprise": None,
        "callback_id": callback_id,
        "trigger_id": _trigger_id(),
        "response_url": response_url,
        "message_ts": message.get("ts", ""),
        "message": message,
    }


# -- encoding and sending ---------------------------------------------------------------------


def envelope_type(payload: dict[str, Any]) -> str:
    """The Socket Mode envelope type that carries ``payload``: ``events_api``,
    ``slash_commands`` or ``interactive``."""
    if "command" in payload and "type" not in payload:
        return "slash_commands"
    if payload.get("type") in INTERACTIVE_TYPES:
        return "interactive"
    return "events_api"


def encode(payload: dict[str, Any]) -> tuple[str, str]:
    """``(body, content_type)`` exactly as Slack posts ``payload`` to a request URL: JSON for
    the Events API, a flat form for a slash command, ``payload=<JSON>`` for interactivity."""
    kind = envelope_type(payload)
    if kind == "slash_commands":
        return urlencode({k: str(v) for k, v in payload.items()}), FORM
    if kind == "interactive":
        return urlencode({"payload": json.dumps(payload, separators=(",", ":"))}), FORM
    return json.dumps(payload, separators=(",", ":")), JSON


def signed_post(
    url: str,
    secret: str,
    body: bytes | str | dict[str, Any],
    content_type: str | None = None,
    retry_num: int | None = None,
    retry_reason: str | None = None,
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
    client: httpx.Client | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    """POST ``body`` to ``url`` signed with ``secret``, as Slack would.

    A ``dict`` body is encoded with :func:`encode` (and its content type); a ``str``/``bytes``
    body is sent as is, with ``content_type`` (JSON by default). ``retry_num``/``retry_reason``
    add ``X-Slack-Retry-Num``/``X-Slack-Retry-Reason`` (``http_timeout``, ``http_error``...);
    ``timestamp`` signs with that request time (a stale one to test rejection).
    """
    if isinstance(body, dict):
        body, detected = encode(body)
        content_type = content_type or detected
    raw = body.encode("utf-8") if isinstance(body, str) else body
    send_headers = {"Content-Type": content_type or JSON, "User-Agent": "Slackbot 1.0"}
    send_headers.update(sign(secret, raw, timestamp))
    if retry_num is not None:
        send_headers["X-Slack-Retry-Num"] = str(retry_num)
        send_headers["X-Slack-Retry-Reason"] = retry_reason or "http_timeout"
    elif retry_reason is not None:
        send_headers["X-Slack-Retry-Reason"] = retry_reason
    send_headers.update(headers or {})
    if client is not None:
        return client.post(url, content=raw, headers=send_headers, timeout=timeout)
    with httpx.Client() as own:
        return own.post(url, content=raw, headers=send_headers, timeout=timeout)
