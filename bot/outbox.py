"""Delivering outbox events to the plugins' ``@on_event`` handlers, and the pump that does it.

Each event is delivered in its own transaction together with its handlers' writes, claimed by a
conditional update so two consumers (threads, processes, replicas) never both act on it. A
delivery that raises is rolled back and the row is tried again after a backoff that doubles
with each attempt (``retry_seconds``); after ``max_attempts`` it becomes a dead letter
(``dead_at``) that nothing delivers until a person looks. Rows are taken in the order they
become available, so rows waiting for a retry never hold back newer ones.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update

from bot.durable import backoff, resume_due
from bot.observability import OUTBOX_DEAD, OUTBOX_DELIVERED
from bot.periodic import Periodic
from bot.plugin import Context, InternalEvent
from bot.ratelimit import Busy
from bot.storage.models import OutboxEvent, utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bot.runtime import Runtime

log = logging.getLogger("brandbot.outbox")


def due(session: Session, limit: int, now: dt.datetime) -> list[int]:
    """Ids of events to deliver now, in the order they became available (locked rows of
    another consumer on PostgreSQL are skipped)."""
    stmt = (
        select(OutboxEvent.id)
        .where(
            OutboxEvent.delivered_at.is_(None),
            OutboxEvent.dead_at.is_(None),
            OutboxEvent.available_at <= now,
        )
        .order_by(OutboxEvent.available_at, OutboxEvent.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return list(session.scalars(stmt))


def dead_letters(session: Session) -> int:
    """How many outbox events were given up on."""
    return int(
        session.scalar(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.dead_at.is_not(None))
        )
        or 0
    )


def record_failure(
    session: Session, event_id: int, error: str, *, base: float, max_attempts: int
) -> bool:
    """Count a failed attempt and schedule the next one; True when it was the last allowed."""
    row = session.get(OutboxEvent, event_id, with_for_update=True)
    if row is None or row.delivered_at is not None:
        return False
    now = utcnow()
    row.attempts += 1
    row.last_error = error[:2000]
    row.available_at = now + backoff(row.attempts, base)
    if row.attempts >= max_attempts:
        row.dead_at = now
        OUTBOX_DEAD.labels(row.topic).inc()
        return True
    return False


def deliver(runtime: Runtime, limit: int = 50) -> int:
    """Deliver the events that are due, each in its own transaction with its handlers;
    returns how many were delivered."""
    services = runtime.services
    db, settings = services.db, services.settings
    delivered = 0
    with db.session() as session:
        ids = due(session, limit, utcnow())
    for event_id in ids:
        if not services.jobs.has_room():  # the events wait in the outbox meanwhile
            log.info("job queue full: outbox delivery paused")
            break
        try:
            contexts: list[Context] = []
            with db.session() as session:
                # A second consumer blocks on the row (or the database lock) until this
                # transaction ends, then finds it delivered. A handler that raises rolls the
                # claim back.
                claimed = session.execute(
                    update(OutboxEvent)
                    .where(
                        OutboxEvent.id == event_id,
                        OutboxEvent.delivered_at.is_(None),
                        OutboxEvent.dead_at.is_(None),
                    )
                    .values(delivered_at=utcnow(), attempts=OutboxEvent.attempts + 1)
                ).rowcount  # type: ignore[attr-defined]
                if not claimed:
                    continue
                row = session.get(OutboxEvent, event_id)
                assert row is not None
                event = InternalEvent(row.topic, dict(row.payload), f"outbox:{row.id}")
                for bound in runtime.match(event):
                    ctx = Context(services, session, event)
                    contexts.append(ctx)
                    runtime._call(bound, event, ctx)
                OUTBOX_DELIVERED.labels(row.topic).inc()
                delivered += 1
            runtime._run_after_commit(contexts)
        except Busy:
            log.warning("outbox event %s: the job queue was full", event_id)
        except Exception as exc:
            error_id = uuid.uuid4().hex[:8]
            log.exception("outbox event %s failed", event_id, extra={"error_id": error_id})
            with db.session() as session:
                dead = record_failure(
                    session, event_id, f"{type(exc).__name__} (error id {error_id})",
                    base=settings.retry_seconds, max_attempts=settings.max_attempts,
                )  # fmt: skip
            if dead:
                log.error("outbox event %s is a dead letter after %d attempts", event_id,
                          settings.max_attempts, extra={"error_id": error_id})  # fmt: skip
    return delivered


class OutboxPump:
    """Delivers outbox events, and resumes due jobs (``bot.durable``), every ``interval``
    seconds on a daemon thread."""

    def __init__(self, runtime: Runtime, interval: float = 1.0) -> None:
        self.runtime = runtime
        self.interval = interval
        self._periodic = Periodic(
            "brandbot-outbox", interval, self._round, immediately=False, logger=log
        )

    def start(self) -> None:
        self._periodic.start()

    def _round(self) -> None:
        try:
            deliver(self.runtime)
        except Exception:
            log.exception("outbox delivery failed; retrying")
        try:
            resume_due(self.runtime)
        except Exception:
            log.exception("resuming jobs failed; retrying")

    def stop(self) -> None:
        self._periodic.stop()
