"""Assembling the bot: settings -> database -> chat -> services -> plugins -> runtime, and the
background loops every mode shares (outbox delivery, the schedule in exactly one replica)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Connection, func, select, text

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
        self._specs: dict[str, tuple[str, str]] = {}
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
        self.sync_dataset_schedules()
        self.scheduler.add_job(
            self.sync_dataset_schedules,
            "interval",
            minutes=1,
            id="brandbot:sync",
            replace_existing=True,
        )
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

    def sync_dataset_schedules(self) -> None:
        """One cron job per dataset (its schedule and time zone), kept in step with the
        database as admins change them."""
        from bot.storage.models import Dataset

        wanted: dict[str, tuple[str, str]] = {}
        with self.db.session() as session:
            for dataset in session.scalars(select(Dataset)):
                wanted[f"dataset:{dataset.name}"] = (
                    dataset.schedule_cron,
                    dataset.schedule_timezone,
                )
        for job in self.scheduler.get_jobs():
            if job.id.startswith("dataset:") and job.id not in wanted:
                job.remove()
                self._specs.pop(job.id, None)
        for job_id, (cron, tz) in wanted.items():
            existing = self.scheduler.get_job(job_id)
            if existing is not None and self._specs.get(job_id) == (cron, tz):
                continue
            self.scheduler.add_job(
                scheduled_run, cron_trigger(cron, tz), args=[self.db, job_id.split(":", 1)[1]],
                id=job_id, replace_existing=True, misfire_grace_time=3600,
            )  # fmt: skip
            self._specs[job_id] = (cron, tz)

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self._conn is not None:
            # Pooled connections stay open: release the session-level lock explicitly.
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
                self._conn.commit()
            except Exception:
                self._conn.invalidate()
            self._conn.close()
            self._conn = None


def scheduled_run(db: Database, dataset_name: str, now: dt.datetime | None = None) -> str:
    """A dataset's scheduled training: a run row unique on (dataset, scheduled_for), skipped
    when fewer than the dataset's minimum of new examples arrived since the last training."""
    from bot.storage.models import Dataset, Example, TrainingRun, utcnow
    from bot.storage.repositories import Runs

    slot = (now or utcnow()).replace(second=0, microsecond=0)
    with db.session() as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == dataset_name))
        if dataset is None:
            return "unknown dataset"
        last = session.scalar(
            select(func.max(TrainingRun.started_at)).where(
                TrainingRun.dataset_id == dataset.id, TrainingRun.status == "succeeded"
            )
        )
        new = (
            select(func.count())
            .select_from(Example)
            .where(Example.dataset_id == dataset.id, Example.status == "active")
        )
        if last is not None:
            new = new.where(Example.created_at > last)
        count = int(session.scalar(new) or 0)
        if count < dataset.min_new_examples:
            log.info("scheduled run of %s skipped: %d new examples, %d needed",
                     dataset_name, count, dataset.min_new_examples)  # fmt: skip
            return f"skipped: {count} new examples, {dataset.min_new_examples} needed"
        run = Runs(session).enqueue(dataset, trigger="schedule", scheduled_for=slot)
        return "queued" if run is not None else "already queued for this slot"


def load_active_adapters_soon(settings: Settings, db: Database, client: Any) -> threading.Thread:
    """Load every dataset's active adapter on the inference server in the background (an
    in-process engine starts empty; vLLM may have restarted)."""
    from bot.registry import load_active
    from bot.storage.models import Adapter

    def work() -> None:
        try:
            with db.session() as session:
                if session.scalar(select(Adapter.id).where(Adapter.status == "active").limit(1)):
                    loaded = load_active(session, settings, client)
                    if loaded:
                        log.info("loaded active adapters %s", loaded)
        except Exception:
            log.exception("could not load the active adapters")

    thread = threading.Thread(target=work, name="brandbot-load-adapters", daemon=True)
    thread.start()
    return thread
