"""``ChatAPI`` for the console: messages go to the workspace and are printed; buttons become
numbered choices that ``press N`` selects."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.console.view_text import render
from bot.console.workspace import Workspace
from bot.plugin import Button, ChatMessage

MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
CHANNEL = re.compile(r"<#([CGD][A-Z0-9]+)(?:\|[^>]*)?>")


@dataclass(frozen=True)
class Choice:
    button: Button
    channel_id: str | None
    message_ts: str | None
    response_url: str | None
    message_text: str


class ConsoleChat:
    def __init__(
        self,
        workspace: Workspace,
        out: Callable[[str], None],
        upload_dir: Path,
        *,
        interactive: bool = False,
    ) -> None:
        self.ws = workspace
        self.interactive = interactive
        self._progress_shown = False
        self.out = out
        self.upload_dir = upload_dir
        self.choices: dict[int, Choice] = {}
        self._choice_no = itertools.count(1)
        self._url_no = itertools.count(1)
        self.current_user: str | None = None
        self.views: list[dict[str, Any]] = []
        self.homes: dict[str, dict[str, Any]] = {}  # user -> the Home view published last
        self.foreground: int | None = None  # the thread whose publishes are printed in full
        self.home_asked: set[str] = set()  # people who typed `home`, until their view is shown

    def response_url(self) -> str:
        return f"console://response/{next(self._url_no)}"

    def _offer(
        self,
        buttons: Sequence[Button],
        channel: str | None,
        ts: str | None,
        url: str | None,
        text: str,
    ) -> None:
        if not buttons:
            return
        labels = []
        for button in buttons:
            n = next(self._choice_no)
            self.choices[n] = Choice(button, channel, ts, url, text)
            labels.append(f"[{n}] {button.text}")
        self.out("    " + "  ".join(labels) + "   (press N)")

    def post(
        self,
        channel: str,
        text: str,
        *,
        thread_ts: str | None = None,
        buttons: Sequence[Button] = (),
        blocks: list[dict[str, Any]] | None = None,
    ) -> str:
        message = self.ws.add(channel, self.ws.bot_user_id, text, thread_ts=thread_ts, bot=True)
        where = f"#{self.ws.channel_name(channel)}" + (" (thread)" if thread_ts else "")
        self.out(f"{message.number:>3} {where} brandbot: {text}")
        self._offer(buttons, channel, message.ts, None, text)
        return message.ts

    def ephemeral(
        self, channel: str, user: str, text: str, *, buttons: Sequence[Button] = ()
    ) -> None:
        self.out(f"    (only @{self.ws.user_name(user)} sees this) brandbot: {text}")
        self._offer(buttons, channel, None, self.response_url(), text)

    def respond(
        self,
        response_url: str,
        text: str,
        *,
        buttons: Sequence[Button] = (),
        replace_original: bool = False,
        in_channel: bool = False,
    ) -> None:
        if self._progress_shown:
            print(flush=True)
            self._progress_shown = False
        prefix = "(updated) " if replace_original else ""
        self.out(f"    {prefix}brandbot: {text}")
        self._offer(buttons, None, None, response_url, text)

    def progress(self, response_url: str, text: str) -> None:
        """A terminal shows the latest text on one line; a pipe gets only the final answer."""
        if self.interactive:
            width = 100
            line = text if len(text) <= width else "…" + text[-(width - 1) :]
            print("\r    " + line.replace("\n", " "), end="", flush=True)
            self._progress_shown = True

    def update(self, channel: str, ts: str, text: str, *, buttons: Sequence[Button] = ()) -> None:
        message = self.ws.by_ts(channel, ts)
        if message is not None:
            message.text = text
            self.out(f"{message.number:>3} (edited) brandbot: {text}")
        self._offer(buttons, channel, ts, None, text)

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
        """Writes the file to the upload directory; its path is its id."""
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        path = self.upload_dir / Path(filename).name
        path.write_bytes(content)
        note = f" {comment}" if comment else ""
        self.out(f"    #{self.ws.channel_name(channel)} brandbot uploaded {path}{note}")
        return str(path)

    def open_modal(self, trigger_id: str, view: dict[str, Any]) -> None:
        self.views.append(view)
        title = (view.get("title") or {}).get("text", "form")
        self.out(
            f"    [form {len(self.views)}: {title}] answer with: submit {len(self.views)} TEXT"
        )

    def _names(self, text: str) -> str:
        """Slack's ``<@U…>`` and ``<#C…>`` as the console's ``@name`` and ``#name``."""
        text = MENTION.sub(lambda m: "@" + self.ws.user_name(m.group(1)), text)
        return CHANNEL.sub(lambda m: "#" + self.ws.channel_name(m.group(1)), text)

    def publish_home(self, user: str, view: dict[str, Any]) -> None:
        """Print the Home view as text, its buttons numbered choices, when it answers what the
        person typed (``home``, or a press on the shell's thread, ``foreground``); a refresh in
        the background only says so, instead of printing the whole view under the prompt."""
        self.homes[user] = view
        name = self.ws.user_name(user)
        asked = user in self.home_asked
        self.home_asked.discard(user)
        if not asked and threading.get_ident() != self.foreground:
            self.out(f"    (the Home of @{name} changed; `home` shows it)")
            return
        self.out(f"    [Home of @{name}]")
        for line, buttons in render(view):
            if line:
                self.out("    " + self._names(line))
            self._offer(buttons, None, None, self.response_url(), line)

    def fetch_message(self, channel: str, ts: str) -> ChatMessage | None:
        message = self.ws.by_ts(channel, ts)
        if message is None:
            return None
        replies = tuple(
            ChatMessage(m.channel_id, m.ts, m.user_id, m.text, m.thread_ts)
            for m in self.ws.messages
            if m.thread_ts == ts and m.channel_id == channel and not m.deleted
        )
        parent = None
        if message.thread_ts and message.thread_ts != ts:
            root = self.ws.by_ts(channel, message.thread_ts)
            if root is not None:
                parent = ChatMessage(channel, root.ts, root.user_id, root.text)
        return ChatMessage(
            channel, ts, message.user_id, message.text, message.thread_ts,
            bot_id="B0BRANDBOT" if message.bot else None, replies=replies, parent=parent,
        )  # fmt: skip

    def fetch_messages(self, refs: Sequence[tuple[str, str]]) -> list[ChatMessage | None]:
        return [self.fetch_message(channel, ts) for channel, ts in refs]

    def history(self, channel: str, oldest: str, limit: int = 200) -> list[ChatMessage]:
        found = [
            ChatMessage(m.channel_id, m.ts, m.user_id, m.text, m.thread_ts,
                        bot_id="B0BRANDBOT" if m.bot else None)
            for m in self.ws.messages
            if m.channel_id == channel and not m.deleted and not m.thread_ts
            and float(m.ts) > float(oldest)
        ]  # fmt: skip
        return found[::-1][:limit]

    def channel_members(self, channel: str) -> list[str]:
        members = self.ws.channels.get(channel, {}).get("members")
        return list(members) if members else list(self.ws.users)

    def is_private(self, channel: str) -> bool:
        return bool(self.ws.channels.get(channel, {}).get("is_private", False))

    def bot_user_id(self) -> str:
        return self.ws.bot_user_id

    def usergroup_members(self, group: str) -> list[str]:
        return []
