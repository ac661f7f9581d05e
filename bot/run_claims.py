"""Who trains which run: atomic claims with leases, heartbeats, and re-queueing of dead workers.

A worker claims a queued run with one conditional ``UPDATE ... WHERE status = 'queued'`` and
keeps it only if a row changed, so two workers (threads, processes, machines) never take the same
run, on SQLite and PostgreSQL alike. The database also refuses a second running run of a
dataset (a partial unique index), so a dataset is never trained twice at once.

A claimed run carries a lease (``lease_until``) that the worker's heartbeat extends while it
trains. Only a run whose lease ran out is given back to the queue, so a starting worker never
takes a run another live worker is training. Every write of a run's outcome is fenced by the
worker's id: a worker that lost its lease cannot overwrite the run another worker took over.
Workers' clocks must agree (NTP) to within a small part of the lease.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from bot.periodic import Periodic
from bot.storage.db import Database
from bot.storage.models import TrainingRun, utcnow

log = logging.getLogger("brandbot.worker")


class LeaseLost(RuntimeError):
    """Another worker owns the run now (this worker's lease ran out)."""


class RunClaims:
    """Claims, lease renewals and re-queueing of training runs for one worker."""

    def __init__(self, db: Database, worker_id: str, lease_seconds: float) -> None:
        self.db = db
        self.worker_id = worker_id
        self.lease = dt.timedelta(seconds=lease_seconds)

    def _take(self, run_id: int) -> bool:
        now = utcnow()
        try:
            with self.db.session() as session:
                changed = session.execute(
                    update(TrainingRun)
                    .where(TrainingRun.id == run_id, TrainingRun.status == "queued")
                    .values(
                        status="running",
                        worker_id=self.worker_id,
                        started_at=now,
                        lease_until=now + self.lease,
                    )
                ).rowcount  # type: ignore[attr-defined]
        except IntegrityError:  # another run of its dataset is running
            return False
        return bool(changed)

    def claim(self) -> int | None:
        """Take the oldest queued run of a dataset that is not being trained; None if none."""
        with self.db.session() as session:
            busy = select(TrainingRun.dataset_id).where(TrainingRun.status == "running")
            candidates = list(
                session.scalars(
                    select(TrainingRun.id)
                    .where(TrainingRun.status == "queued", TrainingRun.dataset_id.not_in(busy))
                    .order_by(TrainingRun.id)
                    .limit(10)
                )
            )
        for run_id in candidates:
            if self._take(run_id):
                return run_id
        return None

    def claim_run(self, run_id: int) -> bool:
        """Take this run if it is queued (``brandbot train``)."""
        return self._take(run_id)

    def renew(self, run_id: int) -> bool:
        """Extend the lease; False when the run was given to the queue or another worker
        (True, with nothing to extend, once this worker has finished it)."""
        with self.db.session() as session:
            changed = session.execute(
                update(TrainingRun)
                .where(
                    TrainingRun.id == run_id,
                    TrainingRun.status == "running",
                    TrainingRun.worker_id == self.worker_id,
                )
                .values(lease_until=utcnow() + self.lease)
            ).rowcount  # type: ignore[attr-defined]
            if changed:
                return True
            run = session.get(TrainingRun, run_id)
            return run is not None and run.worker_id == self.worker_id and run.status != "queued"

    def check_owned(self, run: TrainingRun) -> None:
        """Raise LeaseLost unless ``run`` (read in the caller's transaction) is still ours."""
        if run.status != "running" or run.worker_id != self.worker_id:
            raise LeaseLost(f"run {run.id} was taken over by {run.worker_id or 'the queue'}")

    def requeue_expired(self) -> list[int]:
        """Give back to the queue every running run whose lease ran out (its worker died)."""
        now = utcnow()
        with self.db.session() as session:
            stale = or_(TrainingRun.lease_until.is_(None), TrainingRun.lease_until < now)
            ids = list(
                session.scalars(
                    select(TrainingRun.id).where(TrainingRun.status == "running", stale)
                )
            )
            if ids:
                session.execute(
                    update(TrainingRun)
                    .where(TrainingRun.id.in_(ids), TrainingRun.status == "running", stale)
                    .values(status="queued", worker_id=None, lease_until=None)
                )
        if ids:
            log.warning("re-queued runs %s: their worker stopped renewing its lease", ids)
        return ids


class Heartbeat:
    """Renews a run's lease every third of the lease on a daemon thread while it trains;
    ``lost`` is set when the run turned out to be another worker's."""

    def __init__(self, claims: RunClaims, run_id: int) -> None:
        self.claims = claims
        self.run_id = run_id
        self.lost = threading.Event()
        self._periodic = Periodic(
            "brandbot-lease", claims.lease.total_seconds() / 3, self._beat, immediately=False,
            logger=log, failure=f"run {run_id}: could not renew the lease",
        )  # fmt: skip

    def __enter__(self) -> Heartbeat:
        self._periodic.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._periodic.stop()
        self._periodic.join(timeout=10)

    def _beat(self) -> None:
        if not self.claims.renew(self.run_id):
            log.error("run %s: lease lost to another worker", self.run_id)
            self.lost.set()
            self._periodic.stop()
