"""A ChatAPI that records calls, for runtime tests that need no chat platform."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.plugin import Button, ChatMessage


class RecordingChat:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.messages: dict[tuple[str, str], ChatMessage] = {}
        self.groups: dict[str, list[str]] = {}
        self.members: dict[str, list[str]] = {}

    def _rec(self, method: str, **kw: Any) -> None:
        self.calls.append((method, kw))

    def of(self, method: str) -> list[dict[str, Any]]:
        return [kw for m, kw in self.calls if m == method]

    def post(self, channel: str, text: str, *, thread_ts: str | None = None,
             buttons: Sequence[Button] = (), blocks: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
        self._rec("post", channel=channel, text=text, thread_ts=thread_ts, buttons=list(buttons))
        return f"{len(self.calls)}.000100"

    def ephemeral(
        self, channel: str, user: str, text: str, *, buttons: Sequence[Button] = ()
    ) -> None:
        self._rec("ephemeral", channel=channel, user=user, text=text)

    def respond(self, response_url: str, text: str, *, buttons: Sequence[Button] = (),
                replace_original: bool = False, in_channel: bool = False) -> None:  # fmt: skip
        self._rec("respond", url=response_url, text=text, buttons=list(buttons))

    def progress(self, response_url: str, text: str) -> None:
        self._rec("progress", url=response_url, text=text)

    def update(self, channel: str, ts: str, text: str, *, buttons: Sequence[Button] = ()) -> None:
        self._rec("update", channel=channel, ts=ts, text=text)

    def upload_file(self, channel: str, content: bytes, filename: str, *, title: str | None = None,
                    comment: str | None = None, thread_ts: str | None = None) -> None:  # fmt: skip
        self._rec("upload", channel=channel, filename=filename, size=len(content))

    def open_modal(self, trigger_id: str, view: dict[str, Any]) -> None:
        self._rec("modal", trigger_id=trigger_id, view=view)

    def publish_home(self, user: str, view: dict[str, Any]) -> None:
        self._rec("home", user=user, view=view)

    def fetch_message(self, channel: str, ts: str) -> ChatMessage | None:
        return self.messages.get((channel, ts))

    def fetch_messages(self, refs: Sequence[tuple[str, str]]) -> list[ChatMessage | None]:
        return [self.fetch_message(channel, ts) for channel, ts in refs]

    def history(self, channel: str, oldest: str, limit: int = 200) -> list[ChatMessage]:
        found = [m for (c, _), m in self.messages.items()
                 if c == channel and not m.thread_ts and float(m.ts) > float(oldest)]  # fmt: skip
        return sorted(found, key=lambda m: float(m.ts), reverse=True)[:limit]

    def channel_members(self, channel: str) -> list[str]:
        return self.members.get(channel, [])

    def is_private(self, channel: str) -> bool:
        return False

    def bot_user_id(self) -> str:
        return "U0BOT"

    def usergroup_members(self, group: str) -> list[str]:
        return self.groups.get(group, [])
