"""``ChatAPI`` over Slack's Web API (slack_sdk), with rate-limit and connection retries."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from concurrent import futures
from typing import Any

import aiohttp
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.plugin import Button, ChatError, ChatMessage

# Slack's limits: 40,000 characters in a message's text, 3,000 in a section block.
TEXT_LIMIT = 39_000
SECTION_LIMIT = 3_000


def retry_handlers() -> list[Any]:
    return [RateLimitErrorRetryHandler(max_retry_count=5), ConnectionErrorRetryHandler()]


def async_retry_handlers() -> list[Any]:
    return [AsyncRateLimitErrorRetryHandler(max_retry_count=5), AsyncConnectionErrorRetryHandler()]


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def blocks_for(text: str, buttons: Sequence[Button]) -> list[dict[str, Any]] | None:
    """A section with the text and an actions block with the buttons (None without buttons)."""
    if not buttons:
        return None
    elements = []
    for button in buttons[:25]:
        element: dict[str, Any] = {
            "type": "button",
            "text": {"type": "plain_text", "text": clip(button.text, 75)},
            "action_id": button.action_id,
            "value": button.value[:2000],
        }
        if button.style in ("primary", "danger"):
            element["style"] = button.style
        elements.append(element)
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, SECTION_LIMIT)}},
        {"type": "actions", "elements": elements},
    ]


def _message(channel: str, raw: dict[str, Any]) -> ChatMessage:
    return ChatMessage(
        channel_id=channel,
        ts=str(raw.get("ts", "")),
        user_id=raw.get("user"),
        text=str(raw.get("text") or ""),
        thread_ts=raw.get("thread_ts"),
        bot_id=raw.get("bot_id"),
        has_files=bool(raw.get("files")),
    )


class _PooledWebAPI:
    """Slack Web API calls and response_url posts over one pooled aiohttp session, for
    handler threads.

    slack_sdk's sync ``WebClient`` and ``WebhookClient`` open a new connection (and TLS
    handshake) for every call; handlers make two or three calls per event, so the connection
    set-up dominated, and its CPU competes with the event loop that acks Slack's requests.
    Calls run on a private event loop thread through the ``AsyncWebClient`` and
    ``AsyncWebhookClient`` (same retries and errors), and the calling thread waits for the
    result. Once closed, a call raises ``ChatError("client_closed")`` instead of waiting on a
    loop that no longer runs (a job may still be answering while the process stops).
    """

    def __init__(self, token: str, base_url: str, timeout: int) -> None:
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._closed = False
        self._waiting: set[futures.Future[Any]] = set()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="slack-web-api", daemon=True
        )
        self._thread.start()
        self.timeout = timeout

        async def build() -> AsyncWebClient:
            connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=30)
            session = aiohttp.ClientSession(connector=connector)
            return AsyncWebClient(
                token=token, base_url=base_url, timeout=timeout, session=session,
                retry_handlers=async_retry_handlers(),
            )  # fmt: skip

        self.client = self.run(build())

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the API's loop and wait for its result (from any other thread)."""
        with self._lock:
            if self._closed:
                coro.close()
                raise ChatError("client_closed", "the Slack client is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._waiting.add(future)
        try:
            return future.result()
        except futures.CancelledError:
            raise ChatError("client_closed", "the Slack client closed during the call") from None
        finally:
            with self._lock:
                self._waiting.discard(future)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        session = self.client.session
        if session is not None and self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(session.close(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        with self._lock:
            for future in self._waiting:
                future.cancel()


class SlackChat:
    """What plugins call to talk in Slack. Errors become ``ChatError(code)``."""

    def __init__(self, token: str, base_url: str, *, timeout: int = 30) -> None:
        self.client = WebClient(
            token=token, base_url=base_url, timeout=timeout, retry_handlers=retry_handlers()
        )
        self.api = _PooledWebAPI(token, base_url, timeout)
        self._bot_user_id: str | None = None

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = self.api.run(self._acall(method, **kwargs))
        return data

    def close(self) -> None:
        """Close the pooled connections (the process may also just exit)."""
        self.api.close()

    def post(
        self,
        channel: str,
        text: str,
        *,
        thread_ts: str | None = None,
        buttons: Sequence[Button] = (),
        blocks: list[dict[str, Any]] | None = None,
    ) -> str:
        data = self._call(
            "chat.postMessage",
            channel=channel,
            text=clip(text),
            thread_ts=thread_ts,
            blocks=blocks or blocks_for(text, buttons),
        )
        return str(data.get("ts", ""))

    def ephemeral(
        self, channel: str, user: str, text: str, *, buttons: Sequence[Button] = ()
    ) -> None:
        self._call(
            "chat.postEphemeral",
            channel=channel,
            user=user,
            text=clip(text),
            blocks=blocks_for(text, buttons),
        )

    def respond(
        self,
        response_url: str,
        text: str,
        *,
        buttons: Sequence[Button] = (),
        replace_original: bool = False,
        in_channel: bool = False,
    ) -> None:
        webhook = AsyncWebhookClient(
            response_url, timeout=self.api.timeout, session=self.api.client.session,
            retry_handlers=async_retry_handlers(),
        )  # fmt: skip
        status: int = self.api.run(self._send(webhook, {
            "text": clip(text), "blocks": blocks_for(text, buttons),
            "replace_original": replace_original,
            "response_type": "in_channel" if in_channel else "ephemeral",
        }))  # fmt: skip
        if status >= 400:
            raise ChatError("response_url_failed", f"response_url answered {status}")

    @staticmethod
    async def _send(webhook: AsyncWebhookClient, body: dict[str, Any]) -> int:
        response = await webhook.send(**body)
        return response.status_code

    def progress(self, response_url: str, text: str) -> None:
        self.respond(response_url, text, replace_original=True)

    def update(self, channel: str, ts: str, text: str, *, buttons: Sequence[Button] = ()) -> None:
        self._call(
            "chat.update", channel=channel, ts=ts, text=clip(text), blocks=blocks_for(text, buttons)
        )

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
        try:
            response = self.client.files_upload_v2(
                channel=channel,
                content=content,
                filename=filename,
                title=title or filename,
                initial_comment=comment,
                thread_ts=thread_ts,
            )
        except SlackApiError as exc:
            code = str(exc.response.get("error", "unknown_error"))
            raise ChatError(code, f"Slack file upload failed: {code}") from None
        files = response.get("files") or []
        return str(files[0]["id"]) if files else None

    def open_modal(self, trigger_id: str, view: dict[str, Any]) -> None:
        self._call("views.open", trigger_id=trigger_id, view=view)

    def publish_home(self, user: str, view: dict[str, Any]) -> None:
        self._call("views.publish", user_id=user, view=view)

    def fetch_message(self, channel: str, ts: str) -> ChatMessage | None:
        """The message (a thread reply too), with its replies and its thread parent; None if
        it is gone or the bot cannot read it."""
        message: ChatMessage | None = self.api.run(self._fetch(channel, ts))
        return message

    def fetch_messages(self, refs: Sequence[tuple[str, str]]) -> list[ChatMessage | None]:
        """``fetch_message`` for several (channel, ts) at once, the calls made concurrently."""

        async def fetch_all() -> list[ChatMessage | None]:
            return list(await asyncio.gather(*(self._fetch(c, ts) for c, ts in refs)))

        messages: list[ChatMessage | None] = self.api.run(fetch_all())
        return messages

    def history(self, channel: str, oldest: str, limit: int = 200) -> list[ChatMessage]:
        out: list[ChatMessage] = []
        page: dict[str, Any] = {}
        while len(out) < limit:
            data = self._call(
                "conversations.history", channel=channel, oldest=oldest,
                limit=min(200, limit - len(out)), **page,
            )  # fmt: skip
            out += [_message(channel, m) for m in data.get("messages", [])]
            cursor = (data.get("response_metadata") or {}).get("next_cursor")
            if not data.get("has_more") or not cursor:
                break
            page = {"cursor": cursor}
        return out[:limit]

    async def _acall(self, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self.api.client.api_call(method, json=kwargs)
        except SlackApiError as exc:
            code = str(exc.response.get("error", "unknown_error"))
            raise ChatError(code, f"Slack {method} failed: {code}") from None
        data: dict[str, Any] = response.data if isinstance(response.data, dict) else {}
        return data

    async def _fetch(self, channel: str, ts: str) -> ChatMessage | None:
        unreadable = {"channel_not_found", "not_in_channel", "missing_scope", "access_denied",
                      "message_not_found", "is_archived"}  # fmt: skip
        try:
            data = await self._acall("conversations.replies", channel=channel, ts=ts, limit=200)
            messages = list(data.get("messages", []))
        except ChatError as exc:
            if exc.code in unreadable:
                return None
            if exc.code != "thread_not_found":
                raise
            messages = []
        if not any(m.get("ts") == ts for m in messages):
            try:
                data = await self._acall(
                    "conversations.history",
                    channel=channel, latest=ts, oldest=ts, inclusive=True, limit=1,
                )  # fmt: skip
            except ChatError as exc:
                if exc.code in unreadable:
                    return None
                raise
            messages = list(data.get("messages", []))
        found = next((m for m in messages if m.get("ts") == ts), None)
        if found is None:
            return None
        thread_ts = found.get("thread_ts")
        parent_raw = next(
            (m for m in messages if thread_ts and thread_ts != ts and m.get("ts") == thread_ts),
            None,
        )
        replies = tuple(
            _message(channel, m) for m in messages if m.get("ts") != ts and m.get("thread_ts") == ts
        )
        message = _message(channel, found)
        return ChatMessage(
            **{
                **message.__dict__,
                "replies": replies,
                "parent": _message(channel, parent_raw) if parent_raw else None,
            }
        )

    def channel_members(self, channel: str) -> list[str]:
        try:
            data = self._call("conversations.members", channel=channel, limit=1000)
        except ChatError:
            return []
        return [str(m) for m in data.get("members", [])]

    def is_private(self, channel: str) -> bool:
        try:
            info = self._call("conversations.info", channel=channel).get("channel", {})
        except ChatError:
            return True
        return bool(info.get("is_private", False))

    def bot_user_id(self) -> str:
        if self._bot_user_id is None:
            self._bot_user_id = str(self._call("auth.test").get("user_id", ""))
        return self._bot_user_id

    def usergroup_members(self, group: str) -> list[str]:
        try:
            data = self._call("usergroups.users.list", usergroup=group)
        except ChatError:
            return []
        return [str(u) for u in data.get("users", [])]
