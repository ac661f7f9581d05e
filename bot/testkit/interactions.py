"""Slash commands and interactivity payloads (flat forms, and forms carrying ``payload=<JSON>``),
how Slack encodes each kind of request, and :func:`signed_post`, which sends one, signed."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx

from bot.testkit.signing import sign
from bot.testkit.slack_ids import (
    API_APP_ID,
    BOT_ID,
    BOT_USER_ID,
    FORM,
    INTERACTIVE_TYPES,
    JSON,
    TEAM_DOMAIN,
    TEAM_ID,
    VERIFICATION_TOKEN,
    _trigger_id,
    _user_object,
    new_id,
    new_ts,
)

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
