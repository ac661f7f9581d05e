"""Scheduled training: one run per (dataset, slot), skipped without enough new examples, and
the scheduler leads in exactly one replica (PostgreSQL advisory lock)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from bot.bootstrap import SchedulerLeader, scheduled_run
from bot.jobs import JobQueue
from bot.plugin import Services
from bot.runtime import Runtime
from bot.settings import Settings
from bot.storage import Database
from bot.storage.models import TrainingRun
from bot.storage.repositories import Datasets, Examples
from tests.bot.recording import RecordingChat

SLOT = dt.datetime(2026, 11, 30, 6, 0, 17, tzinfo=dt.UTC)


def _rows(dataset_id: int, n: int) -> list[dict[str, object]]:
    return [
        {"dataset_id": dataset_id, "task": "draft", "prompt": f"b{i}", "text": f"t{i}",
         "split": "train", "content_hash": f"h{i}", "text_key": f"k{i}", "source": "import"}
        for i in range(n)
    ]  # fmt: skip


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

    def leader() -> SchedulerLeader:
        services = Services(settings=Settings(), db=db, chat=RecordingChat(), jobs=JobQueue())
        return SchedulerLeader(Runtime(services, []), db)

    first, second = leader(), leader()
    try:
        assert first.start() is True
        assert second.start() is False  # the advisory lock is taken
        job = first.scheduler.get_job("dataset:kk_copy")
        assert job is not None and job.next_run_time.weekday() == 0
        first.stop()
        assert second.start() is True  # the lock was released
    finally:
        first.stop()
        second.stop()
