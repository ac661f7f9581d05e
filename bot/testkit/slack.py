"""A fake Slack Web API: a real HTTP server on 127.0.0.1 that records every call.

The bot under test talks to it through slack_sdk's ordinary clients, exactly as it talks to
Slack (``WebClient(base_url=fake.api_url, token=fake.bot_token)``, sync or async): requests
are form-encoded or JSON, authenticated with ``Authorization: Bearer``, and answered with
Slack-shaped JSON from a small in-memory workspace (users, channels, messages, threads,
reactions, views, uploaded files). Nothing in the bot is patched.

Besides the Web API (``/api/<method>``) the server answers the URLs Slack hands out:
``/upload/<file_id>`` (the upload URL of ``files.getUploadURLExternal``), ``/response/<id>``
(a ``response_url``, see :meth:`FakeSlack.response_url`) and ``/files/<file_id>/<name>``
(a file's ``url_private``).

Tests steer it with :meth:`FakeSlack.fail` (the next calls answer ``ok: false``),
:meth:`FakeSlack.rate_limit` (HTTP 429 with ``Retry-After``) and :meth:`FakeSlack.handle`
(a custom answer for one method), and assert on :attr:`FakeSlack.calls`,
:meth:`FakeSlack.calls_for` and :meth:`FakeSlack.wait_for`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import mimetypes
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from slack_sdk import WebClient

from bot.testkit import payloads
from bot.testkit.blockkit import view_problems
from bot.testkit.payloads import new_id, new_ts

__all__ = ["Call", "FakeSlack", "SlackError", "UploadedFile"]

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
class _Token:
    user_id: str
    kind: str  # "bot", "user" or "app"


class _SocketModeServer(Protocol):
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


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, a keep-alive
    # client would wait for a delayed ACK (40 ms) on every call.
    disable_nagle_algorithm = True
    server: _Server
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:  # the test output stays clean
        return

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, resp_headers, body = self.server.fake._route(self.path, headers, raw)
        self.send_response(status)
        for name, value in resp_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A real listen backlog: benchmarks open hundreds of connections at once.
    request_queue_size = 1024
    fake: FakeSlack

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _RequestHandler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Close idle keep-alive connections so their threads end with the server."""
        with self._open_lock:
            live, self._open = list(self._open), set()
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class FakeSlack:
    """A fake Slack workspace behind a real Web API server on ``127.0.0.1:<free port>``.

    Use it as a context manager or call :meth:`start` / :meth:`stop` (the ``fake_slack``
    fixture does both). It is seeded with one team, the bot user (``bot_user_id``, token
    ``bot_token``), the app-level token ``app_token`` and a public ``#general`` channel
    (``general_channel``) the bot is a member of.
    """

    team_id = payloads.TEAM_ID
    team_domain = payloads.TEAM_DOMAIN
    team_name = "Brandbot Test"
    api_app_id = payloads.API_APP_ID
    bot_user_id = payloads.BOT_USER_ID
    bot_id = payloads.BOT_ID
    bot_name = "brandbot"
    bot_token = "xoxb-0000000000-fake-brandbot-bot-token"  # noqa: S105 - a fake's token
    app_token = "xapp-1-A0BRANDBOT-0000-fake-brandbot-app-token"  # noqa: S105
    general_channel = "C0GENERAL"

    def __init__(self, seed: bool = True) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._socket_mode: _SocketModeServer | None = None
        self.calls: list[Call] = []
        self._failures: dict[str, deque[str]] = {}
        self._rate_limits: dict[str, deque[int]] = {}
        self._custom: dict[str, Handler] = {}
        self._tokens: dict[str, _Token] = {}
        self._users: dict[str, dict[str, Any]] = {}
        self._channels: dict[str, dict[str, Any]] = {}
        self._members: dict[str, list[str]] = {}
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._usergroups: dict[str, list[str]] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._views: dict[str, dict[str, Any]] = {}
        self._home_views: dict[str, dict[str, Any]] = {}
        self._files: dict[str, UploadedFile] = {}
        self._responses: dict[str, list[Any]] = {}
        self._methods: dict[str, Callable[[Call, str], dict[str, Any]]] = {
            "api.test": lambda call, _user: {"args": call.args},
            "auth.test": self._auth_test,
            "team.info": self._team_info,
            "chat.postMessage": self._chat_post_message,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.getPermalink": self._chat_get_permalink,
            "conversations.history": self._conversations_history,
            "conversations.replies": self._conversations_replies,
            "conversations.info": self._conversations_info,
            "conversations.members": self._conversations_members,
            "conversations.join": self._conversations_join,
            "conversations.open": self._conversations_open,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroups_users_list,
            "reactions.add": self._reactions_add,
            "reactions.remove": self._reactions_remove,
            "views.open": self._views_open,
            "views.push": self._views_open,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
            "apps.connections.open": self._apps_connections_open,
        }
        self._tokens[self.bot_token] = _Token(self.bot_user_id, "bot")
        self._tokens[self.app_token] = _Token(self.bot_user_id, "app")
        if seed:
            self.add_user(self.bot_user_id, self.bot_name, is_bot=True)
            self.add_channel(self.general_channel, "general", members=[self.bot_user_id])

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeSlack:
        """Start serving on a random free port of 127.0.0.1 (in a daemon thread)."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0))
        server.fake = self
        self._server = server
        self._serve_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-slack-web-api",
            daemon=True,
        )
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join(timeout=5)
            self._serve_thread = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeSlack is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The Web API base URL: ``WebClient(base_url=fake.api_url)``."""
        return f"{self.base_url}/api/"

    def client(self, token: str | None = None, **kwargs: Any) -> WebClient:
        """A slack_sdk ``WebClient`` on this fake (the bot token unless ``token`` is given)."""
        return WebClient(base_url=self.api_url, token=token or self.bot_token, **kwargs)

    def attach_socket_mode(self, server: _SocketModeServer) -> None:
        """Make ``apps.connections.open`` hand out ``server.url`` (a FakeSocketMode)."""
        self._socket_mode = server

    # -- seeding -----------------------------------------------------------------------------

    def add_token(self, token: str, user_id: str, kind: str = "user") -> None:
        """Accept another token (``kind`` ``user``, ``bot`` or ``app``) acting as ``user_id``."""
        with self._lock:
            self._tokens[token] = _Token(user_id, kind)

    def add_user(
        self,
        id: str,
        name: str,
        is_bot: bool = False,
        is_admin: bool = False,
        real_name: str | None = None,
        email: str | None = None,
        deleted: bool = False,
    ) -> dict[str, Any]:
        """Add (or replace) a workspace member; returns its ``users.info`` object."""
        real = real_name or name.replace(".", " ").replace("_", " ").title()
        profile: dict[str, Any] = {
            "real_name": real,
            "real_name_normalized": real,
            "display_name": name,
            "display_name_normalized": name,
            "first_name": real.split(" ")[0],
            "status_text": "",
            "status_emoji": "",
            "image_48": f"https://avatars.example.invalid/{id}_48.png",
            "team": self.team_id,
        }
        if email is not None:
            profile["email"] = email
        if is_bot and id == self.bot_user_id:
            profile["bot_id"] = self.bot_id
            profile["api_app_id"] = self.api_app_id
        user = {
            "id": id,
            "team_id": self.team_id,
            "name": name,
            "deleted": deleted,
            "color": "9f69e7",
            "real_name": real,
            "tz": "Europe/London",
            "tz_label": "Greenwich Mean Time",
            "tz_offset": 0,
            "profile": profile,
            "is_admin": is_admin,
            "is_owner": False,
            "is_primary_owner": False,
            "is_restricted": False,
            "is_ultra_restricted": False,
            "is_bot": is_bot,
            "is_app_user": False,
            "updated": int(time.time()),
        }
        with self._lock:
            self._users[id] = user
        return copy.deepcopy(user)

    def add_channel(
        self,
        id: str,
        name: str,
        is_private: bool = False,
        members: list[str] | None = None,
        topic: str = "",
        purpose: str = "",
    ) -> dict[str, Any]:
        """Add (or replace) a channel (``is_private`` makes it a private channel)."""
        channel = {
            "id": id,
            "name": name,
            "name_normalized": name,
            "is_channel": not is_private,
            "is_group": False,
            "is_im": False,
            "is_mpim": False,
            "is_private": is_private,
            "is_archived": False,
            "is_general": name == "general",
            "is_shared": False,
            "is_ext_shared": False,
            "is_org_shared": False,
            "created": int(time.time()),
            "creator": "",
            "context_team_id": self.team_id,
            "topic": {"value": topic, "creator": "", "last_set": 0},
            "purpose": {"value": purpose, "creator": "", "last_set": 0},
        }
        with self._lock:
            self._channels[id] = channel
            self._members[id] = list(dict.fromkeys(members or []))
            self._messages.setdefault(id, [])
        return self._channel_object(id, None)

    def add_member(self, channel: str, user: str) -> None:
        """Add ``user`` to ``channel``'s members."""
        with self._lock:
            members = self._members.setdefault(channel, [])
            if user not in members:
                members.append(user)

    def add_usergroup(self, id: str, users: list[str]) -> None:
        """Add (or replace) a user group (``usergroups.users.list`` answers its users)."""
        with self._lock:
            self._usergroups[id] = list(users)

    def add_message(
        self,
        channel: str,
        text: str,
        user: str | None = None,
        ts: str | None = None,
        thread_ts: str | None = None,
        bot_id: str | None = None,
        files: list[dict[str, Any]] | None = None,
        blocks: list[dict[str, Any]] | None = None,
        reactions: dict[str, list[str]] | None = None,
    ) -> str:
        """Put a message in ``channel`` (created if unknown) as if it had been posted; returns
        its ``ts``. ``thread_ts`` makes it a reply; ``reactions`` maps name to user ids."""
        message: dict[str, Any] = {"type": "message", "text": text, "ts": ts or new_ts()}
        if user is not None:
            message["user"] = user
        if bot_id is not None:
            message["bot_id"] = bot_id
            if user is None:
                message["subtype"] = "bot_message"
        else:
            message["client_msg_id"] = str(uuid.uuid4())
        message["team"] = self.team_id
        message["blocks"] = blocks if blocks is not None else payloads.rich_text(text)
        if files:
            message["files"] = [{"id": new_id("F"), **f} for f in files]
            message["upload"] = True
        if reactions:
            message["reactions"] = [
                {"name": name, "users": list(users), "count": len(users)}
                for name, users in reactions.items()
            ]
        if thread_ts is not None:
            message["thread_ts"] = thread_ts
        with self._lock:
            if channel not in self._channels:
                self.add_channel(channel, channel.lower(), members=[self.bot_user_id])
            self._store(channel, message)
        return str(message["ts"])

    # -- steering ----------------------------------------------------------------------------

    def fail(self, method: str, error: str = "internal_error", times: int = 1) -> None:
        """The next ``times`` calls of ``method`` (``"*"``: any) answer ``ok: false, error``."""
        with self._lock:
            self._failures.setdefault(method, deque()).extend([error] * times)

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """The next ``times`` calls of ``method`` (``"*"``: any) answer HTTP 429 with
        ``Retry-After: retry_after`` and ``{"ok": false, "error": "ratelimited"}``."""
        with self._lock:
            self._rate_limits.setdefault(method, deque()).extend([retry_after] * times)

    def handle(self, method: str, handler: Handler | None) -> None:
        """Answer ``method`` with ``handler(call) -> dict`` (``ok: true`` is added unless the
        dict has ``ok``; raise :class:`SlackError` to fail). ``None`` restores the default.
        Tokens are still checked."""
        with self._lock:
            if handler is None:
                self._custom.pop(method, None)
            else:
                self._custom[method] = handler

    def reset(self) -> None:
        """Forget recorded calls, response_url posts and pending failures and rate limits.
        The workspace (users, channels, messages, files, views) is kept."""
        with self._lock:
            self.calls.clear()
            self._responses = {k: [] for k in self._responses}
            self._failures.clear()
            self._rate_limits.clear()

    # -- assertions --------------------------------------------------------------------------

    def calls_for(self, method: str) -> list[Call]:
        """Recorded calls of ``method``, oldest first."""
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:
        """Block until at least ``count`` calls of ``method`` arrived; returns them.

        Raises ``TimeoutError`` (listing the calls seen) when they do not arrive in time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [c for c in self.calls if c.method == method]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = ", ".join(c.method for c in self.calls) or "none"
                    raise TimeoutError(
                        f"expected {count} call(s) of {method} within {timeout}s, "
                        f"got {len(found)}; calls seen: {seen}"
                    )
                self._changed.wait(left)

    def wait_until(
        self, check: Callable[[list[Call]], bool], timeout: float = 5.0, what: str = "a condition"
    ) -> list[Call]:
        """Block until ``check(calls)`` holds for the calls received so far; returns the calls.
        Raises ``TimeoutError`` naming ``what`` when it does not hold in time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not check(list(self.calls)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what} did not happen within {timeout}s")
                self._changed.wait(left)
            return list(self.calls)

    def response_url(self, id: str | None = None) -> str:
        """A response_url on this server; JSON posted there is recorded under ``id``."""
        id = id or uuid.uuid4().hex[:12]
        with self._lock:
            self._responses.setdefault(id, [])
        return f"{self.base_url}/response/{id}"

    def responses(self, id: str) -> list[Any]:
        """The JSON bodies posted to :meth:`response_url` ``id``, oldest first."""
        with self._lock:
            return copy.deepcopy(self._responses.get(id, []))

    def messages(self, channel: str, include_replies: bool = True) -> list[dict[str, Any]]:
        """Messages stored in ``channel``, oldest first (thread replies included by default)."""
        with self._lock:
            stored = self._messages.get(channel, [])
            return copy.deepcopy([m for m in stored if include_replies or not self._is_reply(m)])

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """The stored message ``ts`` of ``channel`` (``None`` if absent or deleted)."""
        with self._lock:
            found = self._find(channel, ts)
            return copy.deepcopy(found) if found is not None else None

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The parent and replies of a thread, oldest first."""
        with self._lock:
            return copy.deepcopy(self._thread(channel, thread_ts))

    @property
    def ephemerals(self) -> list[dict[str, Any]]:
        """Ephemeral messages posted (``channel``, ``user``, ``text``, ``blocks``, ...)."""
        with self._lock:
            return copy.deepcopy(self._ephemerals)

    @property
    def views(self) -> dict[str, dict[str, Any]]:
        """Modals opened, pushed or updated, by view id."""
        with self._lock:
            return copy.deepcopy(self._views)

    @property
    def home_views(self) -> dict[str, dict[str, Any]]:
        """App Home views published, by user id."""
        with self._lock:
            return copy.deepcopy(self._home_views)

    @property
    def uploaded_files(self) -> list[UploadedFile]:
        """Files whose upload was completed (``files.completeUploadExternal``), in order."""
        with self._lock:
            return [copy.copy(f) for f in self._files.values() if f.completed]

    # -- HTTP routing ------------------------------------------------------------------------

    def _route(
        self, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(target)
        path = url.path
        args = dict(parse_qsl(url.query, keep_blank_values=True))
        if path.startswith("/api/"):
            args.update(self._parse_body(headers, raw))
            return self._api(path.removeprefix("/api/"), args, headers, raw, target)
        if path.startswith("/upload/"):
            return self._upload(path.removeprefix("/upload/"), headers, raw, target)
        if path.startswith("/response/"):
            return self._response_post(path.removeprefix("/response/"), headers, raw, target)
        if path.startswith("/files/"):
            return self._download(path.removeprefix("/files/"), headers)
        return 404, {"Content-Type": "text/plain"}, b"not found"

    @staticmethod
    def _parse_body(headers: dict[str, str], raw: bytes) -> dict[str, Any]:
        if not raw:
            return {}
        content_type = headers.get("content-type", "").lower()
        if content_type.startswith("application/json"):
            try:
                body = json.loads(raw)
            except ValueError:
                return {}
            return body if isinstance(body, dict) else {}
        if content_type.startswith("multipart/form-data"):
            head = f"Content-Type: {headers['content-type']}\r\n\r\n".encode("latin-1")
            message = BytesParser(policy=HTTP).parsebytes(head + raw)
            fields: dict[str, Any] = {}
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if not isinstance(name, str):
                    continue
                data = part.get_payload(decode=True)
                if part.get_filename() is not None:
                    fields[name] = data
                elif isinstance(data, bytes):
                    fields[name] = data.decode("utf-8")
            return fields
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))

    @staticmethod
    def _token_of(headers: dict[str, str], args: dict[str, Any]) -> str | None:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip() or None
        token = args.pop("token", None)
        return str(token) if token else None

    def _api(
        self, method: str, args: dict[str, Any], headers: dict[str, str], raw: bytes, path: str
    ) -> tuple[int, dict[str, str], bytes]:
        token = self._token_of(headers, args)
        args.pop("token", None)
        for key in JSON_ARGS & args.keys():
            args[key] = _json_arg(args[key])
        call = Call(method, args, headers, token, path=path, raw=raw)
        extra_headers: dict[str, str] = {}
        with self._lock:
            retry_after = self._take(self._rate_limits, method)
            failure = self._take(self._failures, method)
            if retry_after is not None:
                call.status = 429
                call.response = {"ok": False, "error": "ratelimited"}
                extra_headers["Retry-After"] = str(retry_after)
            elif failure is not None:
                call.response = {"ok": False, "error": failure}
            else:
                call.response = self._answer(call)
            self._record(call)
        body = json.dumps(call.response).encode("utf-8")
        return (
            call.status,
            {"Content-Type": "application/json; charset=utf-8", **extra_headers},
            body,
        )

    @staticmethod
    def _take(queues: dict[str, deque[Any]], method: str) -> Any:
        for key in (method, "*"):
            queue = queues.get(key)
            if queue:
                return queue.popleft()
        return None

    def _answer(self, call: Call) -> dict[str, Any]:
        custom = self._custom.get(call.method)
        builtin = self._methods.get(call.method)
        if custom is None and builtin is None:
            return {"ok": False, "error": "unknown_method"}
        if call.token is None:
            return {"ok": False, "error": "not_authed"}
        token = self._tokens.get(call.token)
        if token is None:
            return {"ok": False, "error": "invalid_auth"}
        app_only = call.method == "apps.connections.open"
        if (token.kind == "app") != app_only:
            return {"ok": False, "error": "not_allowed_token_type"}
        try:
            if custom is not None:
                result = custom(call)
            else:
                assert builtin is not None
                result = builtin(call, token.user_id)
        except SlackError as exc:
            return {"ok": False, "error": exc.error}
        return result if "ok" in result else {"ok": True, **result}

    def _record(self, call: Call) -> None:
        with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    def _upload(
        self, file_id: str, headers: dict[str, str], raw: bytes, path: str
    ) -> tuple[int, dict[str, str], bytes]:
        data = raw
        if headers.get("content-type", "").lower().startswith("multipart/form-data"):
            fields = self._parse_body(headers, raw)
            data = next((v for v in fields.values() if isinstance(v, bytes)), b"")
        call = Call("upload", {"file_id": file_id, "length": len(data)}, headers, None, path)
        call.raw = raw
        with self._lock:
            upload = self._files.get(file_id)
            if upload is None:
                call.status, call.response = 404, "file not found"
            else:
                upload.data = data
                call.response = f"OK - {len(data)}"
            self._record(call)
        return call.status, {"Content-Type": "text/plain"}, str(call.response).encode()

    def _response_post(
        self, id: str, headers: dict[str, str], raw: bytes, path: str
    ) -> tuple[int, dict[str, str], bytes]:
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        call = Call("response_url", {}, headers, None, path, raw=raw)
        call.args = {**body, "response_url_id": id} if isinstance(body, dict) else {}
        with self._lock:
            if id not in self._responses:
                call.status, call.response = 404, {"ok": False, "error": "expired_url"}
            elif not isinstance(body, dict):
                call.status, call.response = 400, {"ok": False, "error": "invalid_payload"}
            else:
                self._responses[id].append(body)
                call.response = {"ok": True}
            self._record(call)
        return call.status, {"Content-Type": "application/json"}, json.dumps(call.response).encode()

    def _download(self, rest: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        file_id = rest.split("/", 1)[0]
        token = self._token_of(headers, {})
        with self._lock:
            upload = self._files.get(file_id)
            if token is None or token not in self._tokens:
                return 401, {"Content-Type": "text/plain"}, b"not authed"
            if upload is None or not upload.completed:
                return 404, {"Content-Type": "text/plain"}, b"file not found"
            mime = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
            return 200, {"Content-Type": mime}, upload.content

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

    # -- Web API methods ---------------------------------------------------------------------

    def _auth_test(self, call: Call, actor: str) -> dict[str, Any]:
        user = self._users.get(actor, {})
        answer = {
            "url": f"https://{self.team_domain}.slack.com/",
            "team": self.team_name,
            "user": user.get("name", actor),
            "team_id": self.team_id,
            "user_id": actor,
        }
        if self._tokens[call.token or ""].kind == "bot":
            answer["bot_id"] = self.bot_id
        answer["is_enterprise_install"] = False
        return answer

    def _team_info(self, call: Call, actor: str) -> dict[str, Any]:
        return {
            "team": {
                "id": self.team_id,
                "name": self.team_name,
                "domain": self.team_domain,
                "email_domain": "",
                "icon": {"image_default": True},
                "url": f"https://{self.team_domain}.slack.com/",
            }
        }

    def _chat_post_message(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"), actor)
        if not (args.get("text") or args.get("blocks") or args.get("attachments")):
            raise SlackError("no_text")
        message = self._new_message(call, actor)
        thread_ts = args.get("thread_ts")
        if thread_ts:
            message["thread_ts"] = str(thread_ts)
            if _bool(args.get("reply_broadcast")):
                message["subtype"] = "thread_broadcast"
        self._store(channel, message)
        return {"channel": channel, "ts": message["ts"], "message": copy.deepcopy(message)}

    def _chat_post_ephemeral(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"), actor)
        user = str(_required(args, "user", "user_not_found"))
        if not (args.get("text") or args.get("blocks") or args.get("attachments")):
            raise SlackError("no_text")
        ts = new_ts()
        ephemeral = {
            "channel": channel,
            "user": user,
            "text": str(args.get("text") or ""),
            "message_ts": ts,
        }
        for key in ("blocks", "attachments", "thread_ts"):
            if args.get(key):
                ephemeral[key] = args[key]
        self._ephemerals.append(ephemeral)
        return {"message_ts": ts}

    def _chat_update(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"), actor)
        message = self._message_or_error(channel, args.get("ts"))
        if message.get("user") != actor:
            raise SlackError("cant_update_message")
        if "text" in args:
            message["text"] = str(args.get("text") or "")
        for key in ("blocks", "attachments", "metadata"):
            if key in args:
                message[key] = args[key]
        message["edited"] = {"user": actor, "ts": new_ts()}
        return {
            "channel": channel,
            "ts": message["ts"],
            "text": message.get("text", ""),
            "message": copy.deepcopy(message),
        }

    def _chat_delete(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"), actor)
        message = self._message_or_error(channel, args.get("ts"))
        if message.get("user") != actor:
            raise SlackError("cant_delete_message")
        self._messages[channel].remove(message)
        return {"channel": channel, "ts": message["ts"]}

    def _chat_get_permalink(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"), actor)
        message = self._message_or_error(channel, args.get("message_ts"))
        return {"channel": channel, "permalink": self._permalink(channel, message)}

    def _window(self, messages: list[dict[str, Any]], args: dict[str, Any]) -> list[Any]:
        inclusive = _bool(args.get("inclusive"))
        latest = args.get("latest")
        oldest = args.get("oldest")
        upper = _decimal(latest, "invalid_ts_latest") if latest not in (None, "") else None
        lower = _decimal(oldest, "invalid_ts_oldest") if oldest not in (None, "") else None
        out = []
        for message in messages:
            ts = Decimal(str(message["ts"]))
            if upper is not None and (ts > upper or (ts == upper and not inclusive)):
                continue
            if lower is not None and (ts < lower or (ts == lower and not inclusive)):
                continue
            out.append(message)
        return out

    def _conversations_history(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"))
        top = [
            m
            for m in self._messages.get(channel, [])
            if not self._is_reply(m) or m.get("subtype") == "thread_broadcast"
        ]
        chosen = list(reversed(self._window(top, args)))
        page, cursor = _page(chosen, args, 100)
        return {
            "messages": copy.deepcopy(page),
            "has_more": bool(cursor),
            "pin_count": 0,
            "channel_actions_ts": None,
            "channel_actions_count": 0,
            "response_metadata": {"next_cursor": cursor},
        }

    def _conversations_replies(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        channel = self._channel_id(args.get("channel"))
        message = self._find(channel, str(_required(args, "ts", "thread_not_found")))
        if message is None:
            raise SlackError("thread_not_found")
        root = str(message.get("thread_ts") or message["ts"])
        thread = self._thread(channel, root) or [message]
        page, cursor = _page(self._window(thread, args), args, 1000)
        return {
            "messages": copy.deepcopy(page),
            "has_more": bool(cursor),
            "response_metadata": {"next_cursor": cursor},
        }

    def _conversations_info(self, call: Call, actor: str) -> dict[str, Any]:
        channel = self._channel_id(call.args.get("channel"))
        return {"channel": self._channel_object(channel, actor)}

    def _conversations_members(self, call: Call, actor: str) -> dict[str, Any]:
        channel = self._channel_id(call.args.get("channel"))
        page, cursor = _page(list(self._members.get(channel, [])), call.args, 100)
        return {"members": page, "response_metadata": {"next_cursor": cursor}}

    def _conversations_join(self, call: Call, actor: str) -> dict[str, Any]:
        channel = self._channel_id(call.args.get("channel"))
        info = self._channels[channel]
        if info["is_private"] or info["is_im"]:
            raise SlackError("method_not_supported_for_channel_type")
        answer: dict[str, Any] = {}
        if actor in self._members.get(channel, []):
            answer["warning"] = "already_in_channel"
            answer["response_metadata"] = {"warnings": ["already_in_channel"]}
        self.add_member(channel, actor)
        return {"channel": self._channel_object(channel, actor), **answer}

    def _conversations_open(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        if args.get("channel"):
            channel = self._channel_id(args["channel"])
            return {"no_op": True, "already_open": True, "channel": {"id": channel}}
        users = _as_list(args.get("users"))
        if len(users) != 1:
            raise SlackError("users_list_not_supplied" if not users else "not_supported")
        if users[0] not in self._users:
            raise SlackError("user_not_found")
        channel, created = self._open_im(users[0], actor)
        answer: dict[str, Any] = {"channel": {"id": channel}}
        if not created:
            answer.update({"no_op": True, "already_open": True})
        return answer

    def _users_info(self, call: Call, actor: str) -> dict[str, Any]:
        user = self._users.get(str(call.args.get("user") or ""))
        if user is None:
            raise SlackError("user_not_found")
        return {"user": copy.deepcopy(user)}

    def _usergroups_users_list(self, call: Call, actor: str) -> dict[str, Any]:
        users = self._usergroups.get(str(call.args.get("usergroup") or ""))
        if users is None:
            raise SlackError("no_such_subteam")
        return {"users": list(users)}

    def _reaction_target(self, call: Call, actor: str) -> tuple[dict[str, Any], str]:
        args = call.args
        channel = self._channel_id(args.get("channel"))
        message = self._message_or_error(channel, args.get("timestamp"))
        name = str(_required(args, "name", "invalid_name")).strip(":")
        return message, name

    def _reactions_add(self, call: Call, actor: str) -> dict[str, Any]:
        message, name = self._reaction_target(call, actor)
        reactions = message.setdefault("reactions", [])
        reaction = next((r for r in reactions if r["name"] == name), None)
        if reaction is None:
            reaction = {"name": name, "users": [], "count": 0}
            reactions.append(reaction)
        if actor in reaction["users"]:
            raise SlackError("already_reacted")
        reaction["users"].append(actor)
        reaction["count"] = len(reaction["users"])
        return {}

    def _reactions_remove(self, call: Call, actor: str) -> dict[str, Any]:
        message, name = self._reaction_target(call, actor)
        reactions = message.get("reactions", [])
        reaction = next((r for r in reactions if r["name"] == name), None)
        if reaction is None or actor not in reaction["users"]:
            raise SlackError("no_reaction")
        reaction["users"].remove(actor)
        reaction["count"] = len(reaction["users"])
        if not reaction["users"]:
            reactions.remove(reaction)
        return {}

    def _view_object(self, spec: Any, view_id: str | None = None) -> dict[str, Any]:
        if not isinstance(spec, dict) or not spec.get("type"):
            raise SlackError("invalid_arguments")
        view_id = view_id or new_id("V")
        return {
            "id": view_id,
            "team_id": self.team_id,
            "type": spec["type"],
            "blocks": spec.get("blocks", []),
            "private_metadata": spec.get("private_metadata", ""),
            "callback_id": spec.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{uuid.uuid4().hex[:8]}",
            "title": spec.get("title"),
            "clear_on_close": bool(spec.get("clear_on_close", False)),
            "notify_on_close": bool(spec.get("notify_on_close", False)),
            "close": spec.get("close"),
            "submit": spec.get("submit"),
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": self.api_app_id,
            "external_id": spec.get("external_id", ""),
            "app_installed_team_id": self.team_id,
            "bot_id": self.bot_id,
        }

    def _views_open(self, call: Call, actor: str) -> dict[str, Any]:
        _required(call.args, "trigger_id", "invalid_trigger_id")
        view = self._view_object(call.args.get("view"))
        self._views[view["id"]] = view
        return {"view": copy.deepcopy(view)}

    def _views_update(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        view_id = args.get("view_id")
        if not view_id and args.get("external_id"):
            view_id = next(
                (k for k, v in self._views.items() if v["external_id"] == args["external_id"]),
                None,
            )
        current = self._views.get(str(view_id or ""))
        if current is None:
            raise SlackError("not_found")
        if args.get("hash") and args["hash"] != current["hash"]:
            raise SlackError("hash_conflict")
        view = self._view_object(args.get("view"), current["id"])
        view["root_view_id"] = current["root_view_id"]
        self._views[current["id"]] = view
        return {"view": copy.deepcopy(view)}

    def _views_publish(self, call: Call, actor: str) -> dict[str, Any]:
        """Publishes a Home view, refused (``invalid_arguments``) past Slack's limits."""
        user = str(_required(call.args, "user_id", "invalid_arguments"))
        if user not in self._users:
            raise SlackError("user_not_found")
        spec = call.args.get("view")
        if not isinstance(spec, dict) or spec.get("type") != "home" or view_problems(spec):
            raise SlackError("invalid_arguments")
        previous = self._home_views.get(user)
        view = self._view_object(call.args.get("view"), previous["id"] if previous else None)
        self._home_views[user] = view
        return {"view": copy.deepcopy(view)}

    def _files_get_upload_url(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        filename = str(_required(args, "filename"))
        try:
            length = int(_required(args, "length"))
        except ValueError:
            raise SlackError("invalid_arguments") from None
        file_id = new_id("F")
        self._files[file_id] = UploadedFile(
            id=file_id,
            filename=filename,
            length=length,
            user=actor,
            title=filename,
            alt_txt=args.get("alt_txt") or None,
            snippet_type=args.get("snippet_type") or None,
        )
        return {"upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    def _file_object(self, upload: UploadedFile) -> dict[str, Any]:
        ext = upload.filename.rsplit(".", 1)[-1].lower() if "." in upload.filename else "binary"
        mime = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
        url = f"{self.base_url}/files/{upload.id}/{upload.filename}"
        shared = [c for c in [upload.channel, *upload.channels] if c]
        obj: dict[str, Any] = {
            "id": upload.id,
            "created": upload.created,
            "timestamp": upload.created,
            "name": upload.filename,
            "title": upload.title,
            "mimetype": mime,
            "filetype": ext,
            "pretty_type": ext.upper(),
            "user": upload.user,
            "user_team": self.team_id,
            "editable": False,
            "size": len(upload.content),
            "mode": "hosted",
            "is_external": False,
            "external_type": "",
            "is_public": True,
            "public_url_shared": False,
            "display_as_bot": False,
            "username": "",
            "url_private": url,
            "url_private_download": url,
            "permalink": f"https://{self.team_domain}.slack.com/files/{upload.user}/{upload.id}/"
            f"{upload.filename}",
            "channels": list(dict.fromkeys(shared)),
            "groups": [],
            "ims": [],
            "comments_count": 0,
        }
        if upload.alt_txt:
            obj["alt_txt"] = upload.alt_txt
        return obj

    def _files_complete_upload(self, call: Call, actor: str) -> dict[str, Any]:
        args = call.args
        specs = args.get("files")
        if not isinstance(specs, list) or not specs:
            raise SlackError("invalid_arguments")
        channel_arg = args.get("channel_id") or args.get("channel")
        channel = self._channel_id(channel_arg, actor) if channel_arg else None
        channels = [self._channel_id(c, actor) for c in _as_list(args.get("channels"))]
        uploads: list[UploadedFile] = []
        for spec in specs:
            upload = self._files.get(str(spec.get("id") if isinstance(spec, dict) else ""))
            if upload is None or upload.data is None or upload.completed:
                raise SlackError("file_not_found")
            uploads.append(upload)
        for upload, spec in zip(uploads, specs, strict=True):
            upload.completed = True
            upload.title = str(spec.get("title") or upload.filename)
            upload.channel = channel
            upload.channels = channels
            upload.initial_comment = args.get("initial_comment") or None
            upload.thread_ts = args.get("thread_ts") or None
        objects = [self._file_object(u) for u in uploads]
        for target in [c for c in [channel, *channels] if c]:
            message = self._new_message(call, actor)
            message["text"] = str(args.get("initial_comment") or "")
            message["files"] = copy.deepcopy(objects)
            message["upload"] = True
            if args.get("thread_ts"):
                message["thread_ts"] = str(args["thread_ts"])
            self._store(target, message)
        return {"files": objects}

    def _apps_connections_open(self, call: Call, actor: str) -> dict[str, Any]:
        if self._socket_mode is None:
            raise SlackError("socket_mode_not_enabled")
        ticket = uuid.uuid4()
        return {"url": f"{self._socket_mode.url}?ticket={ticket}&app_id={self.api_app_id}"}
