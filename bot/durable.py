"""Durable jobs: slow work a handler queues (``Context.submit_after_commit``) is first written as
a ``jobs`` row in the handler's own transaction, then run on the in-process job queue once that
transaction commits. A restart, a crash or a full queue therefore loses nothing: every bot
process's pump (:func:`resume_due`) picks up jobs that are due, and jobs whose runner's lease ran
out, and runs them again.

A job is claimed by a conditional update with a lease (``job_lease_seconds``), so two processes
never run it at once; the process renews the leases of the jobs it holds (claimed, queued or
running) at every pump round, so a job that outlives its lease is not started again while it
runs, and only a process that stopped renewing loses its jobs to another. A job that raises
is retried after a backoff that doubles (``retry_seconds``) and is a dead letter after
``max_attempts``. A done job's row is deleted.
Jobs run at least once, so they must be safe to repeat (ours check the row's status first).

Only work that can be named again after a restart is stored: a method of a loaded plugin or a
module-level function, called with the services first and JSON arguments. Anything else (a
lambda, a closure, an object argument) runs in memory as before.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, func, or_, select, update

from bot.storage.models import Job, utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bot.plugin import Services
    from bot.runtime import Runtime

log = logging.getLogger("brandbot.jobs")

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
#: The longest wait between two attempts.
MAX_BACKOFF_SECONDS = 3600.0
Submission = tuple[Callable[..., Any], tuple[Any, ...], str | None]

_held: set[int] = set()  # jobs this process claimed and has not finished
_held_lock = threading.Lock()


def _hold(job_id: int) -> None:
    with _held_lock:
        _held.add(job_id)


def _release(job_id: int) -> None:
    with _held_lock:
        _held.discard(job_id)


def renew_leases(session: Session, lease_seconds: float) -> list[int]:
    """Extend the lease of every job this process holds; returns their ids."""
    with _held_lock:
        held = sorted(_held)
    if held:
        session.execute(
            update(Job)
            .where(Job.id.in_(held), Job.worker_id == WORKER_ID, Job.status == "running")
            .values(lease_until=utcnow() + dt.timedelta(seconds=lease_seconds))
        )
    return held


def backoff(attempts: int, base: float) -> dt.timedelta:
    """The wait after the ``attempts``-th failed attempt: ``base``, then doubling, capped."""
    return dt.timedelta(seconds=min(base * 2 ** max(attempts - 1, 0), MAX_BACKOFF_SECONDS))


def target_of(fn: Callable[..., Any]) -> str | None:
    """``module:Class.method`` for a plugin method, ``module:function`` for a function; None
    for what cannot be found again after a restart."""
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        cls = type(owner)
        if "<" in cls.__qualname__:
            return None
        return f"{cls.__module__}:{cls.__qualname__}.{fn.__name__}"
    qualname = getattr(fn, "__qualname__", "")
    if not qualname or "<" in qualname or "." in qualname:
        return None
    return f"{fn.__module__}:{qualname}"


def submission(
    session: Session, services: Services, fn: Callable[..., Any], args: tuple[Any, ...],
    name: str | None,
) -> Submission:  # fmt: skip
    """Store ``fn(*args)`` as a job in ``session`` when it can be stored; the call the runtime
    submits after the commit (it claims the stored job first)."""
    from bot.plugin import Services

    target = target_of(fn)
    with_services = bool(args) and isinstance(args[0], Services)
    stored = list(args[1:] if with_services else args)
    try:
        json.dumps(stored)
    except (TypeError, ValueError):
        target = None
    if target is None:
        return fn, args, name
    job = Job(name=name or target, target=target, args=stored, with_services=with_services,
              available_at=utcnow())  # fmt: skip
    session.add(job)
    session.flush()
    return partial(run_claiming, services, job.id, fn), args, name


def claim(session: Session, job_id: int, lease_seconds: float) -> bool:
    """Take a due job (queued and available, or running with an expired lease)."""
    now = utcnow()
    changed = session.execute(
        update(Job)
        .where(Job.id == job_id, _due(now))
        .values(
            status="running",
            worker_id=WORKER_ID,
            attempts=Job.attempts + 1,
            lease_until=now + dt.timedelta(seconds=lease_seconds),
        )
    ).rowcount  # type: ignore[attr-defined]
    return bool(changed)


def _due(now: dt.datetime) -> Any:
    return or_(
        and_(Job.status == "queued", Job.available_at <= now),
        and_(Job.status == "running", Job.lease_until < now),
    )


def run_claiming(services: Services, job_id: int, fn: Callable[..., Any], *args: Any) -> None:
    """The after-commit path: claim the job just stored, then run it."""
    with services.db.session() as session:
        if not claim(session, job_id, services.settings.job_lease_seconds):
            return  # another process's pump took it first
    _hold(job_id)
    run_claimed(services, job_id, fn, *args)


def run_claimed(services: Services, job_id: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run a job this process claimed: delete it when done, else schedule a retry."""
    try:
        try:
            fn(*args)
        except Exception as exc:
            with services.db.session() as session:
                failed(session, job_id, f"{type(exc).__name__}: {exc}"[:2000],
                       base=services.settings.retry_seconds,
                       max_attempts=services.settings.max_attempts)  # fmt: skip
            raise
        with services.db.session() as session:
            session.execute(delete(Job).where(Job.id == job_id, Job.worker_id == WORKER_ID))
    finally:
        _release(job_id)


def failed(session: Session, job_id: int, error: str, *, base: float, max_attempts: int) -> None:
    job = session.get(Job, job_id)
    if job is None or job.status != "running":
        return
    job.last_error = error
    job.lease_until = None
    if job.attempts >= max_attempts:
        job.status = "dead"
        log.error("job %s (%s) is a dead letter after %d attempts", job.id, job.name, job.attempts)
    else:
        job.status, job.available_at = "queued", utcnow() + backoff(job.attempts, base)


def resolve(runtime: Runtime, target: str) -> Callable[..., Any] | None:
    """The callable a stored target names, among the loaded plugins or modules."""
    module, _, qualname = target.partition(":")
    if "." in qualname:
        cls_name, method = qualname.split(".", 1)
        for plugin in runtime.plugins:
            cls = type(plugin)
            if cls.__module__ == module and cls.__qualname__ == cls_name:
                fn: Callable[..., Any] = getattr(plugin, method)
                return fn
        return None
    try:
        found: Callable[..., Any] = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        return None
    return found


def resume_due(runtime: Runtime, limit: int = 20) -> int:
    """Claim and submit jobs that are due (left by a restart, a crash, a full queue or a
    retry); returns how many were submitted."""
    services = runtime.services
    settings = services.settings
    with services.db.session() as session:
        held = renew_leases(session, settings.job_lease_seconds)
        due = select(Job.id).where(_due(utcnow()), Job.id.not_in(held))
        ids = list(session.scalars(due.order_by(Job.available_at, Job.id).limit(limit)))
    submitted = 0
    for job_id in ids:
        if not services.jobs.has_room():
            break
        with services.db.session() as session:
            if not claim(session, job_id, settings.job_lease_seconds):
                continue
            job = session.get(Job, job_id)
            assert job is not None
            name, target, args = job.name, job.target, list(job.args)
            fn = resolve(runtime, target)
            if fn is None:
                failed(session, job_id, f"no loaded plugin or module provides {target}",
                       base=settings.retry_seconds, max_attempts=settings.max_attempts)  # fmt: skip
                continue
            call_args = (services, *args) if job.with_services else tuple(args)
        log.info("resuming job %s (%s)", job_id, name)
        _hold(job_id)
        try:
            services.jobs.submit(run_claimed, services, job_id, fn, *call_args, name=name)
        except BaseException:
            _release(job_id)  # its lease runs out and a later round takes it again
            raise
        submitted += 1
    return submitted


def dead_jobs(session: Session) -> int:
    """How many jobs were given up on."""
    stmt = select(func.count()).select_from(Job).where(Job.status == "dead")
    return int(session.scalar(stmt) or 0)
