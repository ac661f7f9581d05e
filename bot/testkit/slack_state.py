"""The fake Slack's types (calls, errors, uploaded files) and its in-memory workspace state."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from http.server import ThreadingHTTPServer
from typing import Any, Protocol

from bot.testkit.payloads import new_ts

#: Arguments that carry JSON in a form-encoded request; they are decoded in :attr:`Call.args`.
JSON_ARGS = frozenset({"blocks", "attachments", "view", "files", "metadata", "unfurls"})

Handler = Callable[["Call"], dict[str, Any]]


class SlackError(Exception):
    """Raised inside a method handler: the call answers ``{"ok": false, "error": error}``."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class Call:
    """One request the fake received.

    ``method`` is the Web API method (``chat.postMessage``), or ``upload`` (a file upload to
    an upload URL) or ``response_url`` (a post to a response URL). ``args`` merges the query
    string and the body (form fields are strings; JSON bodies keep their types; ``blocks``,
    ``view``, ``files``... sent as JSON strings are decoded). ``headers`` have lower-case
    names. ``token`` is the bearer token (or the ``token`` argument), ``None`` when absent.
    """

    method: str
    args: dict[str, Any]
    headers: dict[str, str]
    token: str | None
    path: str = ""
    status: int = 200
    response: Any = None
    raw: bytes = b""
    at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        """Whether the fake answered this call with success."""
        if isinstance(self.response, dict):
            return self.status == 200 and bool(self.response.get("ok", True))
        return self.status == 200


@dataclass
class UploadedFile:
    """A file uploaded through ``files.getUploadURLExternal`` + ``completeUploadExternal``."""

    id: str
    filename: str
    length: int
    user: str
    title: str = ""
    alt_txt: str | None = None
    snippet_type: str | None = None
    data: bytes | None = None
    completed: bool = False
    channel: str | None = None
    channels: list[str] = field(default_factory=list)
    initial_comment: str | None = None
    thread_ts: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def content(self) -> bytes:
        """The uploaded bytes (empty until the upload POST arrived)."""
        return self.data or b""


@dataclass
class Token:
    user_id: str
    kind: str  # "bot", "user" or "app"


class SocketModeServer(Protocol):
    @property
    def url(self) -> str: ...


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)


def _decimal(value: Any, error: str) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise SlackError(error) from None


def _required(args: dict[str, Any], key: str, error: str = "invalid_arguments") -> Any:
    value = args.get(key)
    if value is None or value == "":
        raise SlackError(error)
    return value


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _json_arg(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _page(items: list[Any], args: dict[str, Any], default_limit: int) -> tuple[list[Any], str]:
    """Cursor pagination: returns one page and the next cursor ("" at the end)."""
    try:
        start = int(str(args.get("cursor") or "0").removeprefix("next:"))
        limit = int(args.get("limit") or default_limit)
    except ValueError:
        raise SlackError("invalid_cursor") from None
    limit = limit if limit > 0 else default_limit
    page = items[start : start + limit]
    more = start + limit < len(items)
    return page, (f"next:{start + limit}" if more else "")


class SlackState:
    """The fake workspace's state and the lookups every part of :class:`FakeSlack` shares;
    :class:`FakeSlack` sets the attributes (``__init__``) and serves them."""

    team_id: str
    team_domain: str
    team_name: str
    api_app_id: str
    bot_user_id: str
    bot_id: str
    bot_name: str
    bot_token: str
    app_token: str
    general_channel: str
    _lock: threading.RLock
    _changed: threading.Condition
    _socket_mode: SocketModeServer | None
    calls: list[Call]
    _failures: dict[str, deque[str]]
    _rate_limits: dict[str, deque[int]]
    _custom: dict[str, Handler]
    _tokens: dict[str, Token]
    _users: dict[str, dict[str, Any]]
    _channels: dict[str, dict[str, Any]]
    _members: dict[str, list[str]]
    _messages: dict[str, list[dict[str, Any]]]
    _usergroups: dict[str, list[str]]
    _ephemerals: list[dict[str, Any]]
    _views: dict[str, dict[str, Any]]
    _home_views: dict[str, dict[str, Any]]
    _files: dict[str, UploadedFile]
    _responses: dict[str, list[Any]]
    _methods: dict[str, Callable[[Call, str], dict[str, Any]]]
    _server: ThreadingHTTPServer | None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeSlack is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    def add_member(self, channel: str, user: str) -> None:
        """Add ``user`` to ``channel``'s members."""
        with self._lock:
            members = self._members.setdefault(channel, [])
            if user not in members:
                members.append(user)

    # -- workspace state ---------------------------------------------------------------------

    @staticmethod
    def _is_reply(message: dict[str, Any]) -> bool:
        thread_ts = message.get("thread_ts")
        return thread_ts is not None and thread_ts != message.get("ts")

    def _find(self, channel: str, ts: str) -> dict[str, Any] | None:
        for message in self._messages.get(channel, []):
            if message.get("ts") == ts:
                return message
        return None

    def _thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        return [
            m
            for m in self._messages.get(channel, [])
            if m.get("ts") == thread_ts or m.get("thread_ts") == thread_ts
        ]

    def _store(self, channel: str, message: dict[str, Any]) -> None:
        stored = self._messages.setdefault(channel, [])
        stored.append(message)
        stored.sort(key=lambda m: Decimal(str(m["ts"])))
        if not self._is_reply(message):
            return
        parent = self._find(channel, str(message["thread_ts"]))
        if parent is None:
            return
        if parent.get("user"):
            message.setdefault("parent_user_id", parent["user"])
        parent["thread_ts"] = parent["ts"]
        replies = [m for m in self._thread(channel, parent["ts"]) if self._is_reply(m)]
        users = list(dict.fromkeys(str(m.get("user", "")) for m in replies if m.get("user")))
        parent["reply_count"] = len(replies)
        parent["reply_users"] = users
        parent["reply_users_count"] = len(users)
        parent["latest_reply"] = replies[-1]["ts"] if replies else parent["ts"]

    def _channel_id(self, value: Any, actor: str | None = None) -> str:
        """Resolve a channel argument: an id, ``#name``/``name``, or a user id (their DM)."""
        channel = str(_required({"channel": value}, "channel", "channel_not_found"))
        if channel in self._channels:
            return channel
        name = channel.removeprefix("#")
        for cid, info in self._channels.items():
            if info["name"] == name and not info["is_im"]:
                return cid
        if channel in self._users and actor is not None:
            return self._open_im(channel, actor)[0]
        raise SlackError("channel_not_found")

    def _open_im(self, user: str, actor: str) -> tuple[str, bool]:
        for cid, info in self._channels.items():
            if info["is_im"] and info.get("user") == user:
                return cid, False
        cid = "D" + user.removeprefix("U").removeprefix("W")
        self._channels[cid] = {
            "id": cid,
            "created": int(time.time()),
            "is_im": True,
            "is_org_shared": False,
            "user": user,
            "is_user_deleted": False,
            "priority": 0,
            "is_channel": False,
            "is_group": False,
            "is_mpim": False,
            "is_private": True,
            "is_archived": False,
            "name": cid,
            "context_team_id": self.team_id,
        }
        self._members[cid] = list(dict.fromkeys([user, actor]))
        self._messages.setdefault(cid, [])
        return cid, True

    def _channel_object(self, cid: str, actor: str | None) -> dict[str, Any]:
        info = copy.deepcopy(self._channels[cid])
        if not info.get("is_im"):
            info["is_member"] = actor in self._members.get(cid, [])
            info["num_members"] = len(self._members.get(cid, []))
        return info

    def _message_or_error(self, channel: str, ts: Any) -> dict[str, Any]:
        message = self._find(channel, str(_required({"ts": ts}, "ts", "message_not_found")))
        if message is None:
            raise SlackError("message_not_found")
        return message

    def _permalink(self, channel: str, message: dict[str, Any]) -> str:
        ts = str(message["ts"])
        link = f"https://{self.team_domain}.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        if self._is_reply(message):
            link += f"?thread_ts={message['thread_ts']}&cid={channel}"
        return link

    def _new_message(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        message: dict[str, Any] = {"user": actor, "type": "message", "ts": new_ts()}
        token = self._tokens[call.token or ""]
        if token.kind == "bot":
            message["bot_id"] = self.bot_id
            message["app_id"] = self.api_app_id
        message["text"] = str(args.get("text") or "")
        message["team"] = self.team_id
        if token.kind == "bot":
            message["bot_profile"] = {
                "id": self.bot_id,
                "app_id": self.api_app_id,
                "name": self.bot_name,
                "icons": {"image_36": "https://avatars.example.invalid/bot_36.png"},
                "deleted": False,
                "updated": int(time.time()),
                "team_id": self.team_id,
            }
        for key in ("blocks", "attachments", "metadata", "username", "icon_emoji", "icon_url"):
            if args.get(key):
                message[key] = args[key]
        return message
