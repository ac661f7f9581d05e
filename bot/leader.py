"""The schedule, run in exactly one replica: the scheduler leader, its stored jobs, and the
scheduled training runs.

On PostgreSQL the leader is the replica holding a session-level advisory lock. Every replica
bids again every ``leader_bid_seconds`` (:meth:`SchedulerLeader.campaign`), so when the leader
dies, even with kill -9, its database session ends, the lock is free, and another replica takes
over at its next bid. A leader whose lock connection is lost stops scheduling at once (its lock
may be someone else's by then).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Connection, func, select, text

from bot.cron import cron_trigger
from bot.periodic import Periodic
from bot.runtime import Runtime
from bot.storage.db import Database

log = logging.getLogger("brandbot.leader")

# PostgreSQL advisory lock key held by the one replica that runs schedules.
SCHEDULER_LOCK_KEY = 0x6272616E64  # "brand"

#: APScheduler's job table in the bot's database. It belongs to APScheduler, which creates it;
#: Alembic leaves it alone (bot/migrations/env.py).
JOBS_TABLE = "apscheduler_jobs"

#: A leader that was down (a restart, a failover) runs each missed job once, however late
#: (``coalesce``: N missed fire times make one run; no grace limit: a late retraining still has
#: examples to learn from), and never twice at the same time.
JOB_DEFAULTS: dict[str, Any] = {"coalesce": True, "misfire_grace_time": None, "max_instances": 1}

# The leader running the schedule in this process: the persistent jobs are module-level
# functions with plain arguments (APScheduler pickles them), so they find it here.
_leading: SchedulerLeader | None = None


class SchedulerLeader:
    """Runs the schedules (each dataset's retraining cron and the plugins' ``@schedule``
    handlers) in exactly one replica.

    On PostgreSQL the replica holding a session-level advisory lock (on a connection it keeps
    open) is the leader; on the others :meth:`start` returns False and may be called again to
    take over. On SQLite there is one process, which leads.

    The jobs live in APScheduler's persistent ``SQLAlchemyJobStore`` (table ``apscheduler_jobs``
    in the bot's database), so their next fire times survive a restart or a failover to another
    replica: a fire time missed while no leader ran is caught up once when the next one starts
    (``JOB_DEFAULTS``). Only the lock holder ever opens the store (APScheduler 3 job stores must
    not be shared). Stored jobs are ``run_dataset_schedule(name)`` and
    ``run_plugin_schedule(name)``; at start and then every minute they are reconciled with the
    datasets' schedules and the loaded plugins, and a job is only replaced when its schedule
    changed (replacing resets its next fire time). One leader runs per process at a time.
    """

    def __init__(
        self, runtime: Runtime, db: Database, *, on_leader: Callable[[], None] | None = None
    ) -> None:
        self.runtime = runtime
        self.db = db
        self.scheduler = self._new_scheduler()
        self._campaign: Periodic | None = None
        self._started = False
        self._conn: Connection | None = None
        self.on_leader = on_leader

    def _new_scheduler(self) -> BackgroundScheduler:
        return BackgroundScheduler(
            timezone="UTC",
            jobstores={
                "default": SQLAlchemyJobStore(engine=self.db.engine, tablename=JOBS_TABLE),
                "local": MemoryJobStore(),  # the reconciliation job: this process's own
            },
            job_defaults=JOB_DEFAULTS,
        )

    @property
    def leading(self) -> bool:
        return _leading is self and self.scheduler.running

    def campaign(self, interval: float) -> Periodic:
        """Bid now and every ``interval`` seconds on a daemon thread until :meth:`stop`; a
        leader checks its lock's connection instead and resigns when it is gone."""
        if self._campaign is not None:
            self._campaign.stop()
        self._campaign = Periodic(
            "brandbot-leader", interval, self._bid, immediately=True, logger=log,
            failure="scheduler bid failed; bidding again",
        )  # fmt: skip
        self._campaign.start()
        return self._campaign

    def _bid(self) -> None:
        if self.leading:
            if not self._lock_alive():
                log.error("lost the scheduler lock's connection: not leading")
                self._resign()
        elif self.start():
            log.info("this replica runs the schedule")

    def _lock_alive(self) -> bool:
        if self.db.dialect != "postgresql":
            return True
        try:
            assert self._conn is not None
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except Exception:
            if self._conn is not None:
                self._conn.invalidate()
            return False

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
        """Start scheduling if this replica leads; True if it does. The stored jobs are
        reconciled while the scheduler is paused, so a job is caught up under its current
        schedule, and only then do due jobs run."""
        global _leading
        if not self.try_lead():
            return False
        _leading = self
        if self._started:  # an APScheduler scheduler does not start twice
            self.scheduler = self._new_scheduler()
        self._started = True
        self.scheduler.start(paused=True)
        self.sync_plugin_schedules()
        self.sync_dataset_schedules()
        self.scheduler.add_job(
            self.sync_dataset_schedules, "interval", minutes=1, id="brandbot:sync",
            jobstore="local", replace_existing=True,
        )  # fmt: skip
        self.scheduler.add_job(
            self.collect_garbage, "interval", hours=1, id="brandbot:retention",
            jobstore="local", replace_existing=True,
        )  # fmt: skip
        self.scheduler.resume()
        if self.on_leader:
            self.on_leader()
        return True

    def collect_garbage(self) -> None:
        """Retention (:mod:`bot.retention`): old checkpoints and adapter files, hourly."""
        from bot.retention import collect_garbage

        with self.db.session() as session:
            result = collect_garbage(session, self.runtime.services.settings)
        for error in result.errors:
            log.error("retention: %s", error)

    def sync_plugin_schedules(self) -> None:
        """One stored cron job per plugin ``@schedule`` handler; jobs of plugins no longer
        loaded are removed."""
        wanted = {f"plugin:{b.name}": (b.name, b.spec.key, "UTC") for b in self.runtime.scheduled()}
        self._reconcile("plugin:", wanted, run_plugin_schedule)

    def sync_dataset_schedules(self) -> None:
        """One stored cron job per dataset (its schedule and time zone), kept in step with the
        database as admins change them."""
        from bot.storage.models import Dataset

        with self.db.session() as session:
            wanted = {
                f"dataset:{d.name}": (d.name, d.schedule_cron, d.schedule_timezone)
                for d in session.scalars(select(Dataset))
            }
        self._reconcile("dataset:", wanted, run_dataset_schedule)

    def _reconcile(
        self, prefix: str, wanted: dict[str, tuple[str, str, str]], func: Callable[[str], Any]
    ) -> None:
        for job in self.scheduler.get_jobs(jobstore="default"):
            if job.id.startswith(prefix) and job.id not in wanted:
                job.remove()
        for job_id, (name, cron, tz) in wanted.items():
            try:
                trigger = cron_trigger(cron, tz)
            except (ValueError, LookupError) as exc:  # stored before validation; keep the rest
                log.error("schedule of %s (%r, %s) is invalid: %s", job_id, cron, tz, exc)
                continue
            existing = self.scheduler.get_job(job_id, jobstore="default")
            if existing is not None and repr(existing.trigger) == repr(trigger):
                continue
            self.scheduler.add_job(
                func, trigger, args=[name], id=job_id, name=f"{job_id} {cron} {tz}",
                jobstore="default", replace_existing=True,
            )  # fmt: skip

    def stop(self) -> None:
        """Stop bidding and leading, and release the lock."""
        if self._campaign is not None:
            self._campaign.stop()
        self._resign()

    def _resign(self) -> None:
        global _leading
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if _leading is self:
            _leading = None
        if self._conn is not None:
            # Pooled connections stay open: release the session-level lock explicitly.
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
                self._conn.commit()
            except Exception:
                self._conn.invalidate()
            self._conn.close()
            self._conn = None


def _fenced_leader() -> SchedulerLeader | None:
    """The leader of this process, if it still holds the lock right now. A job fires on the
    leader's clock, which may be up to a bid interval after its lock's session ended (and another
    replica took over): each job checks the lock's connection first and, when it is gone,
    resigns instead of running."""
    leader = _leading
    if leader is None:  # the scheduler stopped while the job was being submitted
        return None
    if not leader._lock_alive():
        log.error("lost the scheduler lock's connection: a due job is left to the new leader")
        leader._resign()
        return None
    return leader


def run_dataset_schedule(dataset_name: str) -> str:
    """The stored job of a dataset's schedule: :func:`scheduled_run` on the leader's database."""
    leader = _fenced_leader()
    if leader is None:
        return "no scheduler leads in this process"
    return scheduled_run(leader.db, dataset_name)


def run_plugin_schedule(handler: str) -> str:
    """The stored job of a plugin's ``@schedule`` handler (``Plugin.method``)."""
    leader = _fenced_leader()
    if leader is None:
        return "no scheduler leads in this process"
    for bound in leader.runtime.scheduled():
        if bound.name == handler:
            leader.runtime.run_scheduled(bound)
            return "ran"
    return "no such handler"


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
