"""Retention (``brandbot gc``): old checkpoints of finished runs and old files of rejected and
superseded adapters are deleted; the active adapter, its rollback target, candidates, recent
files and the checkpoints of queued or running runs never are (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from bot.storage import Database
from bot.storage.models import Adapter, AuditEntry, TrainingRun, utcnow
from bot.storage.repositories import Datasets
from tests.conftest import CliRunner

OLD = utcnow() - dt.timedelta(days=30)
RECENT = utcnow() - dt.timedelta(days=2)


@dataclass
class World:
    data: Path
    adapters: dict[str, Path]
    checkpoints: dict[str, Path]


def folder(path: Path, size: int = 1000) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"x" * size)
    return path


def build(db: Database, data: Path) -> World:
    """kk_copy: v1 retired, v2 rejected, v3 retired (the rollback target), v4 active,
    v5 candidate (all old), v6 rejected (recent); kk_other: v7 retired (old), no active adapter.
    Runs: succeeded old, failed old, succeeded recent, running, queued (a retry)."""
    adapters, checkpoints = {}, {}
    with db.session() as s:
        copy = Datasets(s).create("kk_copy", "draft")
        other = Datasets(s).create("kk_other", "draft")
        plan = [(copy, "retired", OLD), (copy, "rejected", OLD), (copy, "retired", OLD),
                (copy, "active", OLD), (copy, "candidate", OLD), (copy, "rejected", RECENT),
                (other, "retired", OLD)]  # fmt: skip
        for version, (ds, status, when) in enumerate(plan, start=1):
            name = f"{ds.name}-v{version}"
            path = folder(data / "adapters" / name)
            adapters[name] = path
            s.add(Adapter(dataset_id=ds.id, name=name, version=version, status=status,
                          path=str(path), created_at=when,
                          promoted_at=when if status != "rejected" else None))  # fmt: skip
        runs = [("succeeded-old", "succeeded", OLD), ("failed-old", "failed", OLD),
                ("succeeded-recent", "succeeded", RECENT), ("running", "running", None),
                ("queued-retry", "queued", None)]  # fmt: skip
        for i, (label, status, finished) in enumerate(runs, start=1):
            ds = copy if label != "queued-retry" else other
            path = folder(data / "runs" / str(i) / "checkpoints", 500)
            checkpoints[label] = path
            s.add(TrainingRun(id=i, dataset_id=ds.id, status=status, checkpoint_dir=str(path),
                              created_at=OLD, started_at=OLD, finished_at=finished))  # fmt: skip
    return World(data, adapters, checkpoints)


def existing(world: World) -> set[str]:
    both = {**world.adapters, **world.checkpoints}
    return {name for name, path in both.items() if path.exists()}


EVERYTHING = {"kk_copy-v1", "kk_copy-v2", "kk_copy-v3", "kk_copy-v4", "kk_copy-v5", "kk_copy-v6",
              "kk_other-v7", "succeeded-old", "failed-old", "succeeded-recent", "running",
              "queued-retry"}  # fmt: skip
DELETED = {"kk_copy-v1", "kk_copy-v2", "kk_other-v7", "succeeded-old", "failed-old"}


def test_gc_deletes_only_old_unneeded_files_and_dry_run_deletes_nothing(
    db: Database, cli: CliRunner, tmp_path: Path
) -> None:
    world = build(db, tmp_path / "data")
    dry = cli("gc", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    listed = json.loads(dry.out)
    assert listed["dry_run"] is True and listed["exit_code"] == 0
    assert {r["name"] for r in listed["removed"]} == {"kk_copy-v1", "kk_copy-v2", "kk_other-v7",
                                                      "1", "2"}  # fmt: skip
    assert listed["freed_bytes"] == 3 * 1000 + 2 * 500
    assert existing(world) == EVERYTHING  # nothing deleted
    with db.session() as s:
        assert all(r.checkpoint_dir for r in s.scalars(select(TrainingRun)))
        assert s.scalars(select(AuditEntry).where(AuditEntry.action == "retention.collected")
                         ).all() == []  # fmt: skip

    done = cli("gc")
    assert done.code == 0, done.err
    assert "deleted 5 folders, 4000 bytes" in done.out
    assert existing(world) == EVERYTHING - DELETED
    assert not (world.data / "runs" / "1").exists()  # the run's emptied folder goes too
    with db.session() as s:
        dirs = {r.id: r.checkpoint_dir for r in s.scalars(select(TrainingRun))}
        assert dirs[1] is None and dirs[2] is None and all(dirs[i] for i in (3, 4, 5))
        assert len(s.scalars(select(Adapter)).all()) == 7  # the rows (history) stay
        (audit,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "retention.collected"))
        assert audit.details["freed_bytes"] == 4000

    again = cli("gc", "--json")  # idempotent: nothing left to delete
    assert again.code == 0 and json.loads(again.out)["removed"] == []


def test_retention_days_is_the_age_limit(db: Database, cli: CliRunner, tmp_path: Path) -> None:
    world = build(db, tmp_path / "data")
    result = cli("gc", "--json", extra_env={"BRANDBOT_RETENTION_DAYS": "60"})
    assert result.code == 0 and json.loads(result.out)["removed"] == []
    result = cli("gc", "--json", extra_env={"BRANDBOT_RETENTION_DAYS": "1"})
    removed = {r["name"] for r in json.loads(result.out)["removed"]}
    assert removed == {"kk_copy-v1", "kk_copy-v2", "kk_copy-v6", "kk_other-v7", "1", "2", "3"}
    assert {"kk_copy-v3", "kk_copy-v4", "kk_copy-v5", "running", "queued-retry"} <= existing(world)


def test_a_folder_outside_the_data_folder_is_left_alone_and_gc_exits_1(
    db: Database, cli: CliRunner, tmp_path: Path
) -> None:
    world = build(db, tmp_path / "data")
    outside = folder(tmp_path / "elsewhere" / "kk_copy-v1")
    with db.session() as s:
        row = s.scalars(select(Adapter).where(Adapter.name == "kk_copy-v1")).one()
        row.path = str(outside)
    result = cli("gc", "--json")
    assert result.code == 1
    document = json.loads(result.out)
    assert document["exit_code"] == 1 and "outside" in document["errors"][0]
    assert outside.exists()
    assert existing(world) == (EVERYTHING - DELETED) | {"kk_copy-v1"}  # the rest was collected


def test_the_scheduler_leader_collects_every_hour(db: Database, tmp_path: Path) -> None:
    from bot.jobs import JobQueue
    from bot.leader import SchedulerLeader
    from bot.plugin import Services
    from bot.runtime import Runtime
    from bot.settings import Settings
    from tests.bot.recording import RecordingChat

    world = build(db, tmp_path / "data")
    services = Services(settings=Settings(data_dir=tmp_path / "data"), db=db,
                        chat=RecordingChat(), jobs=JobQueue())  # fmt: skip
    leader = SchedulerLeader(Runtime(services, []), db)
    assert leader.start()
    try:
        job = leader.scheduler.get_job("brandbot:retention", jobstore="local")
        assert job is not None and job.trigger.interval == dt.timedelta(hours=1)
        job.func()  # what the scheduler runs at the hour
    finally:
        leader.stop()
    assert existing(world) == EVERYTHING - DELETED
