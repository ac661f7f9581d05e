"""Chat events that arrived while the database was down: kept on disk, replayed when it is back.

Slack retries an Events API delivery three times within about a minute and then drops it, so a
database outage of a few minutes would lose every reaction and ticket that arrived meanwhile.
Instead, an event whose handler found the database unreachable is written here (its text
fields scrubbed like everything the bot keeps), answered 200, and replayed through the runtime
by :class:`SpoolReplayer` once the database answers again.

Nothing is done twice: the runtime claims every ``event_id`` in the handler's own transaction,
so a replay of an event that Slack's own retry already delivered is a duplicate and dropped,
and a file is removed only after its event took effect (or was a duplicate). A crash between
the two leaves the file, and the next replay finds the event claimed.

One file per event (``<arrival ns>-<event id digest>.json``), written to a temporary name,
flushed to disk and renamed, so a kill -9 leaves either a whole file or none. The spool is
bounded (``max_events``): beyond it an event is refused as before (500, Slack retries), so an
outage cannot fill the disk. An event that keeps failing for another reason than the database
is moved to ``dead/`` after ``max_attempts`` replays and counted by ``/brandbot status``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import Gauge

from bot.periodic import Periodic
from bot.storage.db import DatabaseUnavailable

log = logging.getLogger("brandbot.spool")
SPOOLED = Gauge("brandbot_events_spooled", "Chat events kept on disk for replay.")
# Keys whose values may hold what people wrote, wherever they are in an envelope (the message,
# its rich-text blocks, attachments, the previous version of an edit).
_TEXT_KEYS = frozenset({"text", "fallback", "pretext", "title"})


class EventSpool:
    """The folder of kept events. Safe to share between the processes of one host."""

    def __init__(
        self, folder: Path, *, max_events: int = 20_000, scrub: Callable[[str], str] | None = None
    ) -> None:
        self.folder = folder
        self.dead = folder / "dead"
        self.max_events = max_events
        self.scrub = scrub

    def keep(self, body: dict[str, Any]) -> bool:
        """Write one Events API envelope; False when the spool is full. An event already kept
        (Slack's retry of it) is not kept twice."""
        self.folder.mkdir(parents=True, exist_ok=True)
        digest = _digest(body)
        if any(self.folder.glob(f"*-{digest}.json")):
            return True
        if self.count() >= self.max_events:
            log.error("event spool full (%d events): refusing %s", self.max_events, digest)
            return False
        data = json.dumps(self._scrubbed(body), separators=(",", ":")).encode()
        name = f"{time.time_ns():020d}-{digest}.json"
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        tmp.rename(self.folder / name)
        _fsync_dir(self.folder)
        SPOOLED.set(self.count())
        return True

    def pending(self) -> list[Path]:
        """The kept events, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("*.json"))

    def count(self) -> int:
        return len(self.pending())

    def dead_count(self) -> int:
        return len(list(self.dead.glob("*.json"))) if self.dead.is_dir() else 0

    def _scrubbed(self, body: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(json.dumps(body))
        if self.scrub is not None:
            _scrub_texts(out, self.scrub)
        return out


class SpoolReplayer:
    """A daemon thread that replays kept events, oldest first, whenever any are kept.

    ``handle`` takes one envelope and returns normally when it took effect, was a duplicate
    or is nothing for the plugins; it raises :class:`DatabaseUnavailable` while the database
    is still away (the round stops and waits) and anything else for a failing event.
    """

    def __init__(
        self,
        spool: EventSpool,
        handle: Callable[[dict[str, Any]], None],
        *,
        interval: float = 5.0,
        max_attempts: int = 5,
    ) -> None:
        self.spool = spool
        self.handle = handle
        self.interval = interval
        self.max_attempts = max_attempts
        self.replayed = 0
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._periodic = Periodic(
            "brandbot-spool", interval, self._round, immediately=False, logger=log,
            failure="event replay round failed",
        )  # fmt: skip

    def replay(self) -> int:
        """One round; returns how many events it replayed."""
        done = 0
        with self._lock:
            for path in self.spool.pending():
                try:
                    body = json.loads(path.read_bytes())
                except FileNotFoundError:  # another process replayed it
                    continue
                except ValueError:
                    self._bury(path, "not JSON")
                    continue
                try:
                    self.handle(body)
                except DatabaseUnavailable:
                    break
                except Exception as exc:
                    tries = self._attempts.get(path.name, 0) + 1
                    self._attempts[path.name] = tries
                    log.warning("replay of %s failed (%d/%d): %s", path.name, tries,
                                self.max_attempts, exc)  # fmt: skip
                    if tries >= self.max_attempts:
                        self._bury(path, str(exc))
                    continue
                path.unlink(missing_ok=True)
                self._attempts.pop(path.name, None)
                done += 1
        self.replayed += done
        SPOOLED.set(self.spool.count())
        if done:
            log.info("replayed %d kept events", done)
        return done

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
        self._periodic.join(timeout=10)

    def _round(self) -> None:
        if self.spool.pending():
            self.replay()

    def _bury(self, path: Path, why: str) -> None:
        self.spool.dead.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.rename(self.spool.dead / path.name)
            log.error("gave up replaying %s: %s (kept in %s)", path.name, why, self.spool.dead)


def spool_folder(data_dir: Path) -> Path:
    """Where a bot process with this data folder keeps events."""
    return data_dir / "spool" / "events"


def spooled(data_dir: Path) -> tuple[int, int]:
    """How many events are kept for replay, and how many were given up on, under ``data_dir``."""
    spool = EventSpool(spool_folder(data_dir))
    return spool.count(), spool.dead_count()


def _scrub_texts(node: Any, scrub: Callable[[str], str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _TEXT_KEYS and isinstance(value, str):
                node[key] = scrub(value)
            else:
                _scrub_texts(value, scrub)
    elif isinstance(node, list):
        for item in node:
            _scrub_texts(item, scrub)


def _digest(body: dict[str, Any]) -> str:
    key = body.get("event_id") or json.dumps(body, sort_keys=True)
    return hashlib.sha256(str(key).encode()).hexdigest()[:24]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
