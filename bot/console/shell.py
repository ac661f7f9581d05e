"""The console's read-eval loop. Grammar (one command a line; also read from a pipe):

    TEXT                    post TEXT in the current channel as the current user
    /COMMAND [ARGS]         run a slash command, e.g. /brandbot help
    :EMOJI: N               react to message N, e.g. :white_check_mark: 12
    -:EMOJI: N              remove that reaction
    reply N TEXT            reply in the thread of message N
    edit N TEXT             replace the text of message N (yours)
    delete N                delete message N
                            (N may be `last`: the channel's latest message from a person)
    press N                 press button N of the numbered choices
    press LABEL             press the latest button labelled LABEL, e.g. press Post reply
    submit N TEXT           submit form N with TEXT
    #CHANNEL                switch channel, e.g. #brand-copy
    @USER                   act as USER, e.g. @maya
    history [K]             show the last K messages of the channel (default 20)
    home                    open your Home tab (what waits for you, datasets, runs)
    wait                    wait until queued training runs and background work are done
    channels | users        list them
    help                    this text
    quit                    leave (end of input does the same)

Lines starting with ``//`` are comments (scripts may use them).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterable

from bot.console.chat import ConsoleChat
from bot.console.workspace import Workspace
from bot.plugin import (
    ActionEvent,
    CommandEvent,
    Event,
    HomeOpenedEvent,
    MessageChangedEvent,
    MessageDeletedEvent,
    MessageEvent,
    ReactionEvent,
)
from bot.runtime import NotAllowed, Runtime
from bot.storage.db import Database

GRAMMAR = (__doc__ or "").split("\n\n", 1)[1].rsplit("\n\n", 1)[0]
REACTION = re.compile(r"^(-?):([a-z0-9_+\-']+):\s+(\d+|last)$")
NUMBERED = re.compile(r"^(reply|edit|submit)\s+(\d+|last)\s+(.+)$", re.S)


class Shell:
    def __init__(
        self,
        runtime: Runtime,
        chat: ConsoleChat,
        workspace: Workspace,
        out: Callable[[str], None],
        *,
        user: str | None = None,
        channel: str | None = None,
        db: Database | None = None,
        echo: bool = False,
    ) -> None:
        self.runtime = runtime
        self.db = db
        self.echo = echo
        self.chat = chat
        self.ws = workspace
        self.out = out
        humans = [u for u, d in workspace.users.items() if not d.get("is_bot")]
        admins = [u for u in humans if workspace.users[u].get("is_admin")]
        self.user = user or (admins or humans or ["U0CONSOLE"])[0]
        self.channel = channel or next(iter(workspace.channels), "C0CONSOLE")

    def prompt(self) -> str:
        return f"@{self.ws.user_name(self.user)} #{self.ws.channel_name(self.channel)}> "

    def _dispatch(self, event: Event, *, reporting: bool = False) -> None:
        self.chat.current_user = self.user
        self.chat.foreground = threading.get_ident()
        if reporting:
            self.runtime.handle_reporting(event, self._reply(event))
        else:
            try:
                self.runtime.handle(event)
            except NotAllowed as exc:
                self.out(f"    brandbot: {exc}")
            except Exception as exc:
                self.out(f"    error: {type(exc).__name__}: {exc}")
        self.runtime.services.jobs.wait_idle(timeout=900)
        self.runtime.deliver_outbox()
        self.runtime.services.jobs.wait_idle(timeout=900)

    def _reply(self, event: Event) -> Callable[[str], None]:
        def reply(text: str) -> None:
            url = getattr(event, "response_url", None)
            if url:
                self.chat.respond(url, text)
            else:
                self.chat.ephemeral(event.channel_id or self.channel, event.user_id, text)

        return reply

    def _eid(self) -> str:
        return f"console-{uuid.uuid4().hex}"

    def execute(self, line: str) -> bool:
        """Run one line; False means quit."""
        line = line.strip()
        if self.echo and line:
            self.out(("\n" + line[2:].strip()) if line.startswith("//") else f"> {line}")
        if not line or line.startswith("//"):
            return True
        if line in ("quit", "exit"):
            return False
        if line == "help":
            self.out(GRAMMAR)
        elif line.startswith("/"):
            self._command(line)
        elif line.startswith("#"):
            self._switch_channel(line)
        elif line.startswith("@") and " " not in line:
            self._switch_user(line)
        elif match := REACTION.match(line):
            self._react(match.group(2), self._number(match.group(3)), added=not match.group(1))
        elif match := NUMBERED.match(line):
            self._numbered(match.group(1), self._number(match.group(2)), match.group(3))
        elif m := re.match(r"^(press|delete)\s+(\d+|last)$", line):
            (self._press if m.group(1) == "press" else self._delete)(self._number(m.group(2)))
        elif m := re.match(r"^press\s+(.+)$", line):
            self._press(self._choice_labelled(m.group(1).strip()))
        elif m := re.match(r"^history(?:\s+(\d+))?$", line):
            self._history(int(m.group(1) or 20))
        elif line == "wait":
            self._wait()
        elif line == "home":
            self.chat.home_asked.add(self.user)
            event = HomeOpenedEvent(
                user_id=self.user, event_id=self._eid(), team_id=self.ws.team_id
            )
            self._dispatch(event)
        elif line == "channels":
            for cid, c in self.ws.channels.items():
                self.out(f"    #{c.get('name')} ({cid}) {c.get('purpose', '')}")
        elif line == "users":
            for uid, u in self.ws.users.items():
                self.out(f"    @{u.get('name')} ({uid}) {u.get('real_name', '')}")
        else:
            self._post(line)
        return True

    def _command(self, line: str) -> None:
        command, _, text = line.partition(" ")
        event = CommandEvent(
            user_id=self.user, channel_id=self.channel, team_id=self.ws.team_id,
            command=command, text=text.strip(), response_url=self.chat.response_url(),
            trigger_id=f"console-trigger-{uuid.uuid4().hex[:8]}",
        )  # fmt: skip
        self._dispatch(event, reporting=True)

    def _switch_channel(self, line: str) -> None:
        cid = self.ws.channel_id(line)
        if cid is None:
            names = ", ".join("#" + str(c.get("name")) for c in self.ws.channels.values())
            self.out(f"    no channel {line}; channels: {names}")
            return
        self.channel = cid
        self._history(10)

    def _switch_user(self, line: str) -> None:
        uid = self.ws.user_id(line)
        if uid is None:
            names = ", ".join("@" + str(u.get("name")) for u in self.ws.users.values())
            self.out(f"    no user {line}; users: {names}")
            return
        self.user = uid
        self.out(f"    you are now @{self.ws.user_name(uid)}")

    def _post(self, text: str, thread_ts: str | None = None) -> None:
        message = self.ws.add(self.channel, self.user, text, thread_ts=thread_ts)
        self.out(f"{message.number:>3} #{self.ws.channel_name(self.channel)} "
                 f"@{self.ws.user_name(self.user)}: {text}")  # fmt: skip
        self._dispatch(
            MessageEvent(
                user_id=self.user, channel_id=self.channel, event_id=self._eid(),
                team_id=self.ws.team_id, text=text, ts=message.ts, thread_ts=thread_ts,
            )
        )  # fmt: skip

    def _number(self, value: str) -> int:
        """``N`` itself, or for ``last`` the number of the current channel's latest message
        from a person (thread replies included); 0 when there is none."""
        if value != "last":
            return int(value)
        for message in reversed(self.ws.messages):
            if message.channel_id == self.channel and not message.bot and not message.deleted:
                return message.number
        return 0

    def _choice_labelled(self, label: str) -> int:
        """The latest choice whose button text is ``label`` (any case); 0 when there is none."""
        for number in sorted(self.chat.choices, reverse=True):
            if self.chat.choices[number].button.text.casefold() == label.casefold():
                return number
        return 0

    def _message(self, number: int) -> object:
        message = self.ws.by_number(number)
        if message is None:
            self.out(f"    there is no message {number} (see `history`)")
        return message

    def _react(self, emoji: str, number: int, *, added: bool) -> None:
        message = self.ws.by_number(number)
        if message is None:
            self.out(f"    there is no message {number} (see `history`)")
            return
        verb = "reacted" if added else "removed"
        self.out(f"    @{self.ws.user_name(self.user)} {verb} :{emoji}: on {number}")
        self._dispatch(
            ReactionEvent(
                user_id=self.user, channel_id=message.channel_id, event_id=self._eid(),
                team_id=self.ws.team_id, reaction=emoji, message_ts=message.ts,
                item_user=message.user_id, added=added,
            )
        )  # fmt: skip

    def _numbered(self, verb: str, number: int, text: str) -> None:
        if verb == "submit":
            self._submit(number, text)
            return
        message = self.ws.by_number(number)
        if message is None:
            self.out(f"    there is no message {number} (see `history`)")
            return
        if verb == "reply":
            prev, self.channel = self.channel, message.channel_id
            self._post(text, thread_ts=message.thread_ts or message.ts)
            self.channel = prev
            return
        if message.user_id != self.user:
            self.out("    you can only edit your own messages")
            return
        previous, message.text = message.text, text
        self.out(f"{number:>3} (edited) @{self.ws.user_name(self.user)}: {text}")
        self._dispatch(
            MessageChangedEvent(
                user_id=self.user, channel_id=message.channel_id, event_id=self._eid(),
                team_id=self.ws.team_id, ts=message.ts, text=text, previous_text=previous,
            )
        )  # fmt: skip

    def _delete(self, number: int) -> None:
        message = self.ws.by_number(number)
        if message is None:
            self.out(f"    there is no message {number} (see `history`)")
            return
        message.deleted = True
        self.out(f"{number:>3} (deleted)")
        self._dispatch(
            MessageDeletedEvent(
                user_id=message.user_id, channel_id=message.channel_id, event_id=self._eid(),
                team_id=self.ws.team_id, ts=message.ts,
            )
        )  # fmt: skip

    def _press(self, number: int) -> None:
        choice = self.chat.choices.get(number)
        if choice is None:
            self.out(f"    there is no choice {number}" if number else "    no such button")
            return
        self.out(f"    @{self.ws.user_name(self.user)} pressed [{number}] {choice.button.text}")
        event = ActionEvent(
            user_id=self.user, channel_id=choice.channel_id or self.channel,
            team_id=self.ws.team_id, kind="button", action_id=choice.button.action_id,
            value=choice.button.value, message_ts=choice.message_ts,
            response_url=choice.response_url or self.chat.response_url(),
            trigger_id=f"console-trigger-{uuid.uuid4().hex[:8]}",
            message_text=choice.message_text,
        )  # fmt: skip
        self._dispatch(event, reporting=True)

    def _submit(self, number: int, text: str) -> None:
        if not 1 <= number <= len(self.chat.views):
            self.out(f"    there is no form {number}")
            return
        view = self.chat.views[number - 1]
        values: dict[str, object] = {}
        for block in view.get("blocks", []):
            element = block.get("element") or {}
            if block.get("type") == "input" and element.get("action_id"):
                values[f"{block.get('block_id')}.{element['action_id']}"] = text
                break
        event = ActionEvent(
            user_id=self.user, channel_id=self.channel, team_id=self.ws.team_id, kind="view",
            action_id=str(view.get("callback_id", "")), values=values,
            private_metadata=str(view.get("private_metadata", "")),
        )  # fmt: skip
        self._dispatch(event, reporting=True)

    def _wait(self, timeout: float = 3600.0) -> None:
        """Until no training run is queued or running and the job queue and outbox are idle."""
        import time

        from sqlalchemy import func, select

        from bot.storage.models import OutboxEvent, TrainingRun

        deadline = time.monotonic() + timeout
        self.out("    waiting for background work…")
        while time.monotonic() < deadline:
            self.runtime.services.jobs.wait_idle(timeout=5)
            self.runtime.deliver_outbox()
            if self.db is None:
                return
            with self.db.session() as session:
                busy = session.scalar(
                    select(func.count()).select_from(TrainingRun)
                    .where(TrainingRun.status.in_(("queued", "running")))
                )  # fmt: skip
                pending = session.scalar(
                    select(func.count()).select_from(OutboxEvent)
                    .where(OutboxEvent.delivered_at.is_(None))
                )  # fmt: skip
            if not busy and not pending and not self.runtime.services.jobs.depth:
                self.out("    done")
                return
            time.sleep(0.5)
        self.out("    still busy; giving up waiting")

    def _history(self, count: int) -> None:
        shown = [m for m in self.ws.messages if m.channel_id == self.channel and not m.deleted][
            -count:
        ]
        self.out(f"    #{self.ws.channel_name(self.channel)}, last {len(shown)} messages:")
        for m in shown:
            thread = " (thread)" if m.thread_ts else ""
            self.out(f"{m.number:>3}{thread} @{self.ws.user_name(m.user_id)}: {m.text}")

    def run(self, lines: Iterable[str]) -> None:
        for line in lines:
            if not self.execute(line):
                break
