"""The fake workspace's ids and the generators of fresh Slack-looking timestamps and ids, shared
by the payload builders (:mod:`bot.testkit.payloads`) and the fake Web API."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from typing import Any

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
