"""Training claims under concurrency and crashes: an atomic claim on both databases, one running
run per dataset enforced by the database, leases that only a dead worker loses, and a worker
killed with -9 mid-training whose run another worker resumes under the same adapter version."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bot.importer import import_candidates, read_file
from bot.run_claims import RunClaims
from bot.samples import sample_dir
from bot.storage import Database
from bot.storage.models import Adapter, AuditEntry, TrainingRun
from bot.storage.repositories import Datasets, Runs
from tests.conftest import BRANDBOT


def queue(db: Database, runs: dict[str, int]) -> list[int]:
    """``runs[name]`` queued runs for each of these (empty) draft datasets."""
    ids = []
    with db.session() as s:
        for name, n in runs.items():
            ds = Datasets(s).create(name, "draft")
            for _ in range(n):
                run = Runs(s).enqueue(ds)
                assert run is not None
                ids.append(run.id)
    return ids


def test_concurrent_claims_take_each_run_once_and_one_run_per_dataset(db: Database) -> None:
    queue(db, {"kk_copy": 3, "kk_other": 1})
    workers = [RunClaims(db, f"w{i}", lease_seconds=60) for i in range(8)]
    start = threading.Barrier(len(workers))
    taken: dict[str, int | None] = {}

    def claim(w: RunClaims) -> None:
        start.wait()
        taken[w.worker_id] = w.claim()

    threads = [threading.Thread(target=claim, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in taken.values() if r is not None]
    assert len(won) == len(set(won)) == 2  # one run of each dataset, each taken once
    with db.session() as s:
        running = s.scalars(select(TrainingRun).where(TrainingRun.status == "running")).all()
        assert sorted(r.id for r in running) == sorted(won)
        assert len({r.dataset_id for r in running}) == 2
        assert {r.worker_id for r in running} == {w for w, r in taken.items() if r is not None}


def test_the_database_refuses_a_second_running_run_of_a_dataset(db: Database) -> None:
    first, second = queue(db, {"kk_copy": 2})
    with db.session() as s:
        s.get(TrainingRun, first).status = "running"  # type: ignore[union-attr]
    with pytest.raises(IntegrityError), db.session() as s:
        s.get(TrainingRun, second).status = "running"  # type: ignore[union-attr]
    assert RunClaims(db, "w", 60).claim_run(second) is False


def test_only_a_run_whose_lease_ran_out_is_requeued(db: Database) -> None:
    live_id, dead_id = queue(db, {"kk_copy": 1, "kk_other": 1})
    live = RunClaims(db, "live", lease_seconds=3600)
    dead = RunClaims(db, "dead", lease_seconds=-1)  # a lease that has already run out
    assert live.claim_run(live_id) and dead.claim_run(dead_id)
    starting = RunClaims(db, "starting", lease_seconds=60)
    assert starting.requeue_expired() == [dead_id]
    assert dead.renew(dead_id) is False  # the dead worker's heartbeat finds it lost the run
    assert live.renew(live_id) is True
    assert starting.claim() == dead_id
    with db.session() as s:
        assert s.get(TrainingRun, live_id).worker_id == "live"  # type: ignore[union-attr]


def test_the_heartbeat_of_a_finished_run_does_not_report_it_lost(db: Database) -> None:
    (run_id,) = queue(db, {"kk_copy": 1})
    worker = RunClaims(db, "w", lease_seconds=60)
    assert worker.claim_run(run_id)
    with db.session() as s:  # the worker wrote its outcome; its heartbeat beats once more
        s.get(TrainingRun, run_id).status = "succeeded"  # type: ignore[union-attr]
    assert worker.renew(run_id) is True
    assert RunClaims(db, "other", lease_seconds=60).renew(run_id) is False


# ---- real worker processes ------------------------------------------------------------------

TRAINING = """
[training]
epochs = 2
min_examples = 4
checkpoint_every = 0
max_length = 128
"""


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen([BRANDBOT, "worker", "--poll", "0.2"], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip


def wait_for(what: str, check: object, timeout: float, procs: list[subprocess.Popen[bytes]],
             logs: list[Path]) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    tails = "\n".join(p.read_text(errors="replace")[-3000:] for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}; exit codes "
                         f"{[p.poll() for p in procs]}\n{tails}")  # fmt: skip


@pytest.mark.slow
def test_a_worker_killed_mid_training_is_replaced_and_one_adapter_is_promoted(
    db: Database, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Two worker processes share one database and two queued runs of one dataset. The worker
    training the first is killed with -9; the other takes the run over once the lease runs out,
    trains it under the version the first attempt was given, and promotes one adapter; the two
    runs of the dataset are never running at once."""
    with db.session() as s:
        ds = Datasets(s).create("kk_copy", "draft")
        import_candidates(s, ds, list(read_file(sample_dir() / "copy.jsonl", "draft"))[:30])
        first = Runs(s).enqueue(ds)
        second = Runs(s).enqueue(ds)
        assert first is not None and second is not None
        first_id, second_id, ds_id = first.id, second.id, ds.id
    (tmp_path / "brandbot.toml").write_text(TRAINING)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    env |= {
        "BRANDBOT_DATABASE_URL": db.url,
        "BRANDBOT_DATA_DIR": str(tmp_path / "data"),
        "BRANDBOT_CONFIG": str(tmp_path / "brandbot.toml"),
        "BRANDBOT_BASE_MODEL": str(tiny_model_dir),
        "BRANDBOT_SERVED_MODEL_NAME": "brandbot-base",
        "BRANDBOT_TRAINING_LEASE_SECONDS": "3",
    }
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    procs = [start_worker(env, log) for log in logs]
    running_at_once = 0
    try:

        def first_is_training() -> bool:
            with db.session() as s:
                run = s.get(TrainingRun, first_id)
                return bool(run and run.status == "running" and run.hyperparams.get("_version"))

        wait_for("the first run to start training", first_is_training, 120, procs, logs)
        with db.session() as s:
            run = s.get(TrainingRun, first_id)
            assert run is not None
            version, owner = run.hyperparams["_version"], run.worker_id or ""
        victim = next(p for p in procs if owner.endswith(f":{p.pid}"))
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        killed_at = time.monotonic()

        def taken_over() -> bool:
            with db.session() as s:
                run = s.get(TrainingRun, first_id)
                return bool(run and run.status == "running" and run.worker_id != owner)

        wait_for("the survivor to take the run over", taken_over, 60, procs, logs)
        print(f"run taken over {time.monotonic() - killed_at:.1f} s after the kill (lease 3 s)")

        def both_finished() -> bool:
            nonlocal running_at_once
            with db.session() as s:
                runs = s.scalars(select(TrainingRun).where(TrainingRun.dataset_id == ds_id)).all()
                running_at_once = max(running_at_once,
                                      sum(r.status == "running" for r in runs))  # fmt: skip
                return all(r.status in ("succeeded", "failed") for r in runs)

        wait_for("both runs to finish", both_finished, 240, procs, logs)
        print(f"first run finished {time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
    assert running_at_once <= 1
    with db.session() as s:
        runs = {r.id: r for r in s.scalars(select(TrainingRun))}
        assert runs[first_id].status == "succeeded", runs[first_id].error
        assert runs[first_id].worker_id != owner  # the survivor finished it
        assert runs[second_id].status == "succeeded", runs[second_id].error
        assert runs[second_id].started_at >= runs[first_id].finished_at  # type: ignore[operator]
        adapters = {a.run_id: a for a in s.scalars(select(Adapter))}
        assert set(adapters) == {first_id, second_id}  # one adapter per run, no orphan
        assert adapters[first_id].name == f"kk_copy-v{version}"  # the first attempt's version
        promotions = s.scalars(
            select(AuditEntry).where(AuditEntry.action == "adapter.promote")
        ).all()
        assert [p.details["adapter"] for p in promotions][:1] == [f"kk_copy-v{version}"]
        assert sum(a.status == "active" for a in adapters.values()) == 1
    folders = sorted(p.name for p in (tmp_path / "data" / "adapters").iterdir())
    assert folders == sorted(a.name for a in adapters.values())
