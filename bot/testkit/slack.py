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

import copy
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient

from bot.testkit import payloads
from bot.testkit.payloads import new_id, new_ts
from bot.testkit.slack_methods import WebApiMethods
from bot.testkit.slack_routing import HttpRouting, _Server
from bot.testkit.slack_state import (
    Call,
    Handler,
    SlackError,
    SocketModeServer,
    Token,
    UploadedFile,
)

__all__ = ["Call", "FakeSlack", "SlackError", "UploadedFile"]


class FakeSlack(WebApiMethods, HttpRouting):
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
        self._socket_mode: SocketModeServer | None = None
        self.calls: list[Call] = []
        self._failures: dict[str, deque[str]] = {}
        self._rate_limits: dict[str, deque[int]] = {}
        self._custom: dict[str, Handler] = {}
        self._tokens: dict[str, Token] = {}
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
        self._tokens[self.bot_token] = Token(self.bot_user_id, "bot")
        self._tokens[self.app_token] = Token(self.bot_user_id, "app")
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
    def api_url(self) -> str:
        """The Web API base URL: ``WebClient(base_url=fake.api_url)``."""
        return f"{self.base_url}/api/"

    def client(self, token: str | None = None, **kwargs: Any) -> WebClient:
        """A slack_sdk ``WebClient`` on this fake (the bot token unless ``token`` is given)."""
        return WebClient(base_url=self.api_url, token=token or self.bot_token, **kwargs)

    def attach_socket_mode(self, server: SocketModeServer) -> None:
        """Make ``apps.connections.open`` hand out ``server.url`` (a FakeSocketMode)."""
        self._socket_mode = server

    # -- seeding -----------------------------------------------------------------------------

    def add_token(self, token: str, user_id: str, kind: str = "user") -> None:
        """Accept another token (``kind`` ``user``, ``bot`` or ``app``) acting as ``user_id``."""
        with self._lock:
            self._tokens[token] = Token(user_id, kind)

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
        try:
            calls = self.wait_until(
                lambda seen: sum(c.method == method for c in seen) >= count, timeout
            )
        except TimeoutError:
            seen = ", ".join(c.method for c in self.calls) or "none"
            found = len(self.calls_for(method))
            raise TimeoutError(
                f"expected {count} call(s) of {method} within {timeout}s, "
                f"got {found}; calls seen: {seen}"
            ) from None
        return [c for c in calls if c.method == method]

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
