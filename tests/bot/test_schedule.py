"""Scheduled training: one run per (dataset, slot), skipped without enough new examples, and
the scheduler leads in exactly one replica (PostgreSQL advisory lock), with its jobs in
APScheduler's persistent job store so a restarted leader keeps (and catches up) the schedule."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

from alembic import command
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_SUBMITTED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from sqlalchemy import func, inspect, select

from bot.bootstrap import JOBS_TABLE, SchedulerLeader, scheduled_run
from bot.jobs import JobQueue
from bot.plugin import Context, InternalEvent, Plugin, Services, schedule
from bot.plugin_loader import PluginEntry, instantiate
from bot.runtime import Runtime
from bot.settings import Settings
from bot.storage import Database
from bot.storage.db import migrations_config
from bot.storage.models import AuditEntry, TrainingRun
from bot.storage.repositories import Audit, Datasets, Examples
from tests.bot.recording import RecordingChat

SLOT = dt.datetime(2026, 11, 30, 6, 0, 17, tzinfo=dt.UTC)


def _rows(dataset_id: int, n: int) -> list[dict[str, object]]:
    return [
        {"dataset_id": dataset_id, "task": "draft", "prompt": f"b{i}", "text": f"t{i}",
         "split": "train", "content_hash": f"h{i}", "text_key": f"k{i}", "source": "import"}
        for i in range(n)
    ]  # fmt: skip


class Weekly(Plugin):
    """A plugin with a schedule, to see plugin jobs stored and caught up too."""

    @schedule("0 6 * * 1")
    def weekly(self, event: InternalEvent, ctx: Context) -> None:
        Audit(ctx.session).record("weekly")


def _leader(db: Database, *plugins: type[Plugin]) -> SchedulerLeader:
    services = Services(settings=Settings(), db=db, chat=RecordingChat(), jobs=JobQueue())
    loaded = instantiate([PluginEntry(p.__name__.lower(), p) for p in plugins], {}, services)
    return SchedulerLeader(Runtime(services, loaded), db)


def _stored_jobs(db: Database) -> dict[str, Any]:
    """The jobs in APScheduler's table, read with its own store (no scheduler running)."""
    store = SQLAlchemyJobStore(engine=db.engine, tablename=JOBS_TABLE)
    store.start(None, "default")
    return {job.id: job for job in store.get_all_jobs()}


def _move_into_the_past(db: Database, job_id: str, when: dt.datetime) -> None:
    store = SQLAlchemyJobStore(engine=db.engine, tablename=JOBS_TABLE)
    store.start(None, "default")
    job = store.lookup_job(job_id)
    job.next_run_time = when
    store.update_job(job)


def test_scheduled_runs_are_unique_per_slot_and_need_new_examples(db_url: str) -> None:
    db = Database(db_url)
    db.upgrade()
    with db.session() as s:
        ds = Datasets(s).create("kk_copy", "draft", min_new_examples=5)
        Examples(s).insert_many(_rows(ds.id, 3))
    assert scheduled_run(db, "kk_copy", SLOT).startswith("skipped: 3 new examples, 5 needed")
    with db.session() as s:
        Examples(s).insert_many(_rows(Datasets(s).get("kk_copy").id, 6))
    assert scheduled_run(db, "kk_copy", SLOT) == "queued"
    assert scheduled_run(db, "kk_copy", SLOT) == "already queued for this slot"
    with db.session() as s:
        (run,) = s.scalars(select(TrainingRun)).all()
        assert run.trigger == "schedule" and run.scheduled_for is not None
    assert scheduled_run(db, "nope", SLOT) == "unknown dataset"


def test_one_scheduler_leads(postgres_url: str) -> None:
    db = Database(postgres_url)
    db.upgrade()
    with db.session() as s:
        Datasets(s).create(
            "kk_copy", "draft", schedule_cron="0 6 * * 1", schedule_timezone="Europe/London"
        )

    first, second = _leader(db), _leader(db)
    try:
        assert first.start() is True
        assert second.start() is False  # the advisory lock is taken
        assert first.scheduler.running and not second.scheduler.running
        job = first.scheduler.get_job("dataset:kk_copy")
        assert job is not None and job.next_run_time.weekday() == 0
        first.stop()
        assert second.start() is True  # the lock was released
        taken_over = second.scheduler.get_job("dataset:kk_copy")
        assert taken_over is not None and taken_over.next_run_time == job.next_run_time
    finally:
        first.stop()
        second.stop()


def test_a_restarted_leader_keeps_the_stored_schedule_and_catches_up_once(db_url: str) -> None:
    db = Database(db_url)
    db.upgrade()
    with db.session() as s:
        ds = Datasets(s).create("kk_copy", "draft", schedule_cron="0 6 * * 1",
                                schedule_timezone="Europe/London", min_new_examples=5)  # fmt: skip
        Examples(s).insert_many(_rows(ds.id, 6))
    first = _leader(db, Weekly)
    try:
        assert first.start() is True
        planned = first.scheduler.get_job("dataset:kk_copy").next_run_time
    finally:
        first.stop()
    stored = _stored_jobs(db)
    assert set(stored) == {"dataset:kk_copy", "plugin:Weekly.weekly"}  # not the sync job
    assert stored["dataset:kk_copy"].next_run_time == planned
    assert JOBS_TABLE in inspect(db.engine).get_table_names()
    command.check(migrations_config(db.url))  # Alembic ignores APScheduler's table

    # The leader was down for three weekly fire times: the next one runs each job once.
    three_weeks_ago = planned - dt.timedelta(weeks=3)
    _move_into_the_past(db, "dataset:kk_copy", three_weeks_ago)
    _move_into_the_past(db, "plugin:Weekly.weekly", three_weeks_ago)
    restarted = _leader(db, Weekly)
    ran: list[str] = []
    done = threading.Event()

    def executed(event: JobExecutionEvent) -> None:
        ran.append(f"{event.job_id}: {event.exception or event.retval}")
        if len(ran) >= 2:
            done.set()

    submitted: list[tuple[str, int]] = []

    def submits(event: JobSubmissionEvent) -> None:
        submitted.append((event.job_id, len(event.scheduled_run_times)))

    restarted.scheduler.add_listener(executed, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    restarted.scheduler.add_listener(submits, EVENT_JOB_SUBMITTED)
    try:
        assert restarted.start() is True
        assert done.wait(20), ran
        # once both jobs' next fire time is in the future, no other catch-up run can come
        deadline = time.monotonic() + 20
        while any(
            restarted.scheduler.get_job(job_id).next_run_time <= dt.datetime.now(dt.UTC)
            for job_id in ("dataset:kk_copy", "plugin:Weekly.weekly")
        ):
            assert time.monotonic() < deadline, "the catch-up left a job due"
            time.sleep(0.02)
        assert sorted(submitted) == [("dataset:kk_copy", 1), ("plugin:Weekly.weekly", 1)]
        assert sorted(ran) == ["dataset:kk_copy: queued", "plugin:Weekly.weekly: ran"]
        job = restarted.scheduler.get_job("dataset:kk_copy")
        assert job.next_run_time > dt.datetime.now(dt.UTC)
        assert job.next_run_time.weekday() == 0 and job.next_run_time.hour == 6
    finally:
        restarted.stop()
    with db.session() as s:
        (run,) = s.scalars(select(TrainingRun)).all()
        assert run.trigger == "schedule"
        weekly = select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "weekly")
        assert s.scalar(weekly) == 1


def test_schedule_changes_and_removed_plugins_update_the_stored_jobs(db_url: str) -> None:
    db = Database(db_url)
    db.upgrade()
    with db.session() as s:
        Datasets(s).create("kk_copy", "draft", schedule_cron="0 6 * * 1", schedule_timezone="UTC")
    first = _leader(db, Weekly)
    try:
        assert first.start() is True
        with db.session() as s:
            Datasets(s).update(Datasets(s).get("kk_copy"), schedule_cron="30 9 * * 3")
        first.sync_dataset_schedules()  # what the leader does every minute
        job = first.scheduler.get_job("dataset:kk_copy")
        assert (job.next_run_time.weekday(), job.next_run_time.hour) == (2, 9)
    finally:
        first.stop()
    without_plugin = _leader(db)
    try:
        assert without_plugin.start() is True
        assert [j.id for j in without_plugin.scheduler.get_jobs(jobstore="default")] == [
            "dataset:kk_copy"
        ]
    finally:
        without_plugin.stop()
