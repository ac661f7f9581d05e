"""The trainer tests' SmolLM2 training run (``sample_copy_run``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from serving.base_model import ResolvedModel


@dataclass(frozen=True)
class SampleCopyRun:
    """The sample brand's ``kk_copy`` trained once through ``brandbot train``'s path: what the
    worker recorded (status, adapter, the base and new scorecards' summaries) and how long the
    whole fixture took (import, training and evaluation; not the model conversion)."""

    status: str
    adapter: str | None
    reason: str
    base: dict[str, Any]
    new: dict[str, Any]
    steps: int
    seconds: float
    adapter_path: Path | None


@pytest.fixture(scope="session")
def sample_copy_run(
    smollm2_model: ResolvedModel, tmp_path_factory: pytest.TempPathFactory
) -> SampleCopyRun:
    """The suite's one SmolLM2 training run, shared by the trainer tests. Train the bundled SmolLM2 on the sample brand's copy dataset, as ``brandbot train -d
    kk_copy`` does on a fresh installation: the sample brand imported into SQLite, the default
    base model (resolved from ``<data>/models``, where the session already converted it), the
    product's default draft settings (``defaults_for("draft")``: 3 epochs, max_length 512), the
    worker's run (train, evaluate base vs new on the held-out split, decide) and its in-process
    inference engine. Once per session: 3.2 minutes on 2 otherwise idle CPU cores with the
    model conversion (docs/training.md)."""
    from bot.inference import LazyInference
    from bot.samples import load_sample_brand
    from bot.settings import Settings
    from bot.storage import Database
    from bot.storage.models import TrainingRun
    from bot.storage.repositories import Datasets, Runs
    from bot.worker import Worker

    started = time.perf_counter()
    data = tmp_path_factory.mktemp("smollm2-copy") / "data"
    data.mkdir()
    (data / "models").symlink_to(smollm2_model.path.parent, target_is_directory=True)
    # Supervised training only: the quality bar this run feeds is the SFT one, and the sample
    # pairs' preference stage would add its minutes to the suite. The stage's effect on both
    # measures is measured by bench/preference_bench.py and tests/trainer/test_preference.
    settings = Settings(
        data_dir=data, database_url=f"sqlite:///{data / 'brandbot.db'}",
        training={"min_preference_pairs": 1_000_000},
    )  # fmt: skip
    db = Database(settings.resolved_database_url)
    db.upgrade()
    load_sample_brand(db)
    with db.session() as session:
        run = Runs(session).enqueue(Datasets(session).get("kk_copy"), requested_by="test")
        assert run is not None
        run_id = run.id
    client = LazyInference(settings)
    try:
        summary = Worker(settings, db, client).run_now(run_id)
        with db.session() as session:
            record = session.get(TrainingRun, run_id)
            assert record is not None
            metrics = dict(record.metrics or {})
            steps = len(record.losses or [])
    finally:
        client.close()
        db.dispose()
    return SampleCopyRun(
        status=summary.status,
        adapter=summary.adapter,
        reason=summary.reason,
        base=metrics.get("base") or {},
        new=metrics.get("new") or {},
        steps=steps,
        seconds=time.perf_counter() - started,
        adapter_path=data / "adapters" / summary.adapter if summary.adapter else None,
    )
