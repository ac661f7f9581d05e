"""The console's in-memory workspace: users, channels and numbered messages."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ConsoleMessage:
    number: int
    channel_id: str
    user_id: str
    text: str
    ts: str
    thread_ts: str | None = None
    bot: bool = False
    deleted: bool = False


@dataclass
class Workspace:
    team_id: str
    users: dict[str, dict[str, Any]]
    channels: dict[str, dict[str, Any]]
    messages: list[ConsoleMessage] = field(default_factory=list)
    bot_user_id: str = "U0BRANDBOT"
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def from_definition(cls, data: dict[str, Any]) -> Workspace:
        users = {u["id"]: u for u in data.get("users", [])}
        channels = {c["id"]: c for c in data.get("channels", [])}
        bot = next((u["id"] for u in users.values() if u.get("is_bot")), "U0BRANDBOT")
        return cls(data.get("team_id", "T0CONSOLE"), users, channels, bot_user_id=bot)

    def next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def add(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None, bot: bool = False
    ) -> ConsoleMessage:
        message = ConsoleMessage(
            len(self.messages) + 1, channel, user, text, self.next_ts(), thread_ts, bot
        )
        self.messages.append(message)
        return message

    def by_number(self, number: int) -> ConsoleMessage | None:
        if 1 <= number <= len(self.messages):
            message = self.messages[number - 1]
            return None if message.deleted else message
        return None

    def by_ts(self, channel: str, ts: str) -> ConsoleMessage | None:
        for message in self.messages:
            if message.channel_id == channel and message.ts == ts and not message.deleted:
                return message
        return None

    def user_id(self, name: str) -> str | None:
        name = name.lstrip("@")
        for uid, user in self.users.items():
            if name in (uid, user.get("name")):
                return uid
        return None

    def channel_id(self, name: str) -> str | None:
        name = name.lstrip("#")
        for cid, channel in self.channels.items():
            if name in (cid, channel.get("name")):
                return cid
        return None

    def user_name(self, uid: str | None) -> str:
        return str(self.users.get(uid or "", {}).get("name", uid or "?"))

    def channel_name(self, cid: str | None) -> str:
        return str(self.channels.get(cid or "", {}).get("name", cid or "?"))
