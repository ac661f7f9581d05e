"""Assembling the bot: settings -> database -> chat -> services -> plugins -> runtime, and the
background loops every mode shares (outbox delivery, the schedule in exactly one replica)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Connection, text

from bot.cron import cron_trigger
from bot.jobs import JobQueue
from bot.plugin import ChatAPI, Services
from bot.plugin_loader import PluginEntry, instantiate, load_plugins
from bot.runtime import Runtime
from bot.settings import Settings
from bot.storage.db import Database

log = logging.getLogger("brandbot.bootstrap")

# PostgreSQL advisory lock key held by the one replica that runs schedules.
SCHEDULER_LOCK_KEY = 0x6272616E64  # "brand"


@dataclass
class Bot:
    settings: Settings
    db: Database
    services: Services
    runtime: Runtime


def build_bot(
    settings: Settings,
    db: Database,
    chat: ChatAPI,
    *,
    jobs: JobQueue | None = None,
    inference: Any = None,
    plugins: list[PluginEntry] | None = None,
) -> Bot:
    """``plugins`` replaces entry-point discovery (tests, embedding); settings still apply."""
    services = Services(
        settings=settings, db=db, chat=chat, jobs=jobs or JobQueue(), inference=inference
    )
    if plugins is None:
        loaded = load_plugins(services)
    else:
        loaded = instantiate(plugins, settings.plugins, services)
    return Bot(settings, db, services, Runtime(services, loaded))


class OutboxPump:
    """Delivers outbox events every ``interval`` seconds on a daemon thread."""

    def __init__(self, runtime: Runtime, interval: float = 1.0) -> None:
        self.runtime = runtime
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="brandbot-outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.runtime.deliver_outbox()
            except Exception:
                log.exception("outbox delivery failed; retrying")

    def stop(self) -> None:
        self._stop.set()


class SchedulerLeader:
    """Runs the plugins' ``@schedule`` handlers in exactly one replica.

    On PostgreSQL the replica holding a session-level advisory lock (on a connection it keeps
    open) is the leader; the others retry every ``retry`` seconds. On SQLite there is one
    process, which leads.
    """

    def __init__(
        self, runtime: Runtime, db: Database, *, on_leader: Callable[[], None] | None = None
    ) -> None:
        self.runtime = runtime
        self.db = db
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._conn: Connection | None = None
        self.on_leader = on_leader

    def try_lead(self) -> bool:
        if self.db.dialect != "postgresql":
            return True
        if self._conn is None:
            self._conn = self.db.engine.connect()
        got = self._conn.execute(
            text("SELECT pg_try_advisory_lock(:k)"), {"k": SCHEDULER_LOCK_KEY}
        ).scalar()
        self._conn.commit()
        return bool(got)

    def start(self) -> bool:
        """Start scheduling if this replica leads; True if it does."""
        if not self.try_lead():
            return False
        for bound in self.runtime.scheduled():
            self.scheduler.add_job(
                self.runtime.run_scheduled,
                cron_trigger(bound.spec.key, "UTC"),
                args=[bound],
                id=bound.name,
                replace_existing=True,
            )
        self.scheduler.start()
        if self.on_leader:
            self.on_leader()
        return True

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
