"""A run killed with -9 after it wrote checkpoints, whose dataset then gets new training
examples, does not resume the old checkpoints (which would fail, or train on stale data): the
next worker deletes them, starts over on the current examples, and the audit log says why."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.importer import import_candidates, read_file
from bot.samples import sample_dir
from bot.storage import Database
from bot.storage.models import Adapter, AuditEntry, TrainingRun
from bot.storage.repositories import Datasets, Runs
from tests.faults.test_training_claims import start_worker, wait_for

TRAINING = """
[training]
epochs = 2
min_examples = 4
checkpoint_every = 1
max_length = 128
"""


@pytest.mark.slow
def test_a_killed_run_whose_examples_changed_starts_over_and_says_why(
    db: Database, tiny_model_dir: Path, tmp_path: Path
) -> None:
    candidates = list(read_file(sample_dir() / "copy.jsonl", "draft"))
    with db.session() as s:
        ds = Datasets(s).create("kk_copy", "draft")
        import_candidates(s, ds, candidates[:30])
        run = Runs(s).enqueue(ds)
        assert run is not None
        run_id = run.id
    (tmp_path / "brandbot.toml").write_text(TRAINING)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    env |= {"BRANDBOT_DATABASE_URL": db.url, "BRANDBOT_DATA_DIR": str(tmp_path / "data"),
            "BRANDBOT_CONFIG": str(tmp_path / "brandbot.toml"),
            "BRANDBOT_BASE_MODEL": str(tiny_model_dir),
            "BRANDBOT_SERVED_MODEL_NAME": "brandbot-base",
            "BRANDBOT_TRAINING_LEASE_SECONDS": "2"}  # fmt: skip
    checkpoints = tmp_path / "data" / "runs" / str(run_id) / "checkpoints"
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = start_worker(env, logs[0])
    try:
        wait_for("a checkpoint of the run", lambda: any(checkpoints.glob("ckpt-*.pt")), 180,
                 [first], logs)  # fmt: skip
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    killed_at = time.monotonic()
    with db.session() as s:
        killed = s.get(TrainingRun, run_id)
        assert killed is not None and killed.status == "running"  # killed mid-run
        old_ids = set(killed.example_ids)
        ds = Datasets(s).get("kk_copy")
        import_candidates(s, ds, candidates[30:42])  # the dataset changes meanwhile
    assert any(checkpoints.glob("ckpt-*.pt"))
    second = start_worker(env, logs[1])
    try:

        def finished() -> bool:
            with db.session() as s:
                row = s.get(TrainingRun, run_id)
                return bool(row and row.status in ("succeeded", "failed"))

        wait_for("the run to finish", finished, 300, [second], logs)
        print(f"started over and finished {time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        second.terminate()
        second.wait(timeout=30)
    with db.session() as s:
        done = s.get(TrainingRun, run_id)
        assert done is not None and done.status == "succeeded", done.error if done else None
        added = set(done.example_ids) - old_ids
        assert added and not old_ids - set(done.example_ids)  # trained on the current examples
        (why,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "run.started_over"))
        assert why.details["run"] == run_id
        assert f"({len(added)} added, 0 removed)" in why.details["reason"]
        assert len(s.scalars(select(Adapter)).all()) == 1
    assert "starts over" in logs[1].read_text()
