"""``brandbot run`` without Slack: the console chat on the sample brand's workspace."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from bot.bootstrap import OutboxPump, SchedulerLeader, build_bot, load_active_adapters_soon
from bot.console.chat import ConsoleChat
from bot.console.shell import Shell
from bot.console.workspace import Workspace
from bot.samples import workspace as sample_workspace
from bot.settings import Settings
from bot.storage.db import Database
from bot.worker import Worker
from serving.client import InferenceClient


def _lines(stream: TextIO, shell: Shell, interactive: bool, history: Path) -> Iterator[str]:
    if not interactive:
        yield from stream
        return
    try:
        import readline

        history.parent.mkdir(parents=True, exist_ok=True)
        if history.exists():
            readline.read_history_file(history)
    except (ImportError, OSError):
        readline = None  # type: ignore[assignment]
    try:
        while True:
            try:
                yield input(shell.prompt())
            except EOFError:
                return
    finally:
        if readline is not None:
            readline.write_history_file(history)


def run_console(
    settings: Settings,
    db: Database,
    *,
    stdin: TextIO | None = None,
    inference: InferenceClient | None = None,
    echo: bool = False,
) -> None:
    """The console chat; ``echo`` prints each scripted line before running it (the demo)."""
    stream = stdin or sys.stdin
    interactive = stream.isatty()

    def out(text: str) -> None:
        print(text, flush=True)

    ws = Workspace.from_definition(sample_workspace())
    # The workspace's admins (the sample brand's @maya) are the bot's admins in the console.
    admins = [uid for uid, u in ws.users.items() if u.get("is_admin")]
    settings = settings.model_copy(update={"admins": sorted({*settings.admins, *admins})})
    from bot.samples import channel_messages

    for message in channel_messages():
        cid, uid = ws.channel_id(message["channel"]), ws.user_id(message["user"])
        if cid and uid:
            ws.add(cid, uid, message["text"])
    chat = ConsoleChat(ws, out, settings.data_dir / "console-uploads", interactive=interactive)
    owned = None
    if inference is None:
        from bot.inference import LazyInference

        inference = owned = LazyInference(settings)
    bot = build_bot(settings, db, chat, inference=inference)
    load_active_adapters_soon(settings, db, inference).join()
    pump = OutboxPump(bot.runtime)
    pump.start()
    # The embedded default runs the training worker and the schedule in this process.
    worker = Worker(settings, db, inference)
    worker_thread = threading.Thread(
        target=worker.serve, args=(1.0,), name="brandbot-worker", daemon=True
    )
    worker_thread.start()
    leader = SchedulerLeader(bot.runtime, db)
    leader.start()
    shell = Shell(bot.runtime, chat, ws, out, db=db, echo=echo)
    out(
        f"console chat on {ws.team_id}: you are @{ws.user_name(shell.user)} in "
        f"#{ws.channel_name(shell.channel)}. Type `help` for the grammar, `quit` to leave."
    )
    try:
        shell.run(_lines(stream, shell, interactive, settings.data_dir / ".console_history"))
    finally:
        # a training run in progress ends first: torch must not be running at shutdown
        worker.stop()
        leader.stop()
        pump.stop()
        bot.services.jobs.wait_idle()
        bot.services.jobs.shutdown()
        worker_thread.join()
        if owned is not None:
            owned.close()
    out("bye")
