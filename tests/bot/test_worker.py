"""The training worker end to end on the tiny model: claim, train, evaluate base vs current vs
new, register, promote only a winner, announce through the outbox; failures are recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.importer import Candidate, import_candidates, read_file
from bot.reporting import build_report
from bot.samples import sample_dir
from bot.settings import Settings
from bot.storage import Database
from bot.storage.models import Adapter, OutboxEvent, TrainingRun
from bot.storage.repositories import Datasets, Runs
from bot.worker import Worker
from serving.client import LocalClient
from serving.engine import LocalEngine

FAST = {"epochs": 1, "min_examples": 4, "checkpoint_every": 0, "max_length": 256}


@pytest.fixture
def setup(db_url: str, tiny_model_dir: Path, tmp_path: Path) -> Iterator[tuple[Worker, Database]]:
    db = Database(db_url)
    db.upgrade()
    settings = Settings(data_dir=tmp_path / "data", base_model=str(tiny_model_dir),
                        served_model_name="brandbot-base")  # fmt: skip
    engine = LocalEngine(tiny_model_dir, served_name="brandbot-base")
    worker = Worker(settings, db, LocalClient(engine), config_overrides=FAST)
    yield worker, db
    engine.close()
    db.dispose()


def test_a_queued_run_trains_evaluates_and_announces(setup: tuple[Worker, Database]) -> None:
    worker, db = setup
    with db.session() as s:
        ds = Datasets(s).create("kk_tickets", "classify", system_prompt="Label the ticket.",
                                labels=["billing", "refund_request", "shipping_delay"])  # fmt: skip
        rows = [r for r in read_file(sample_dir() / "tickets.jsonl", "classify")
                if getattr(r, "label", None) in ("billing", "refund_request", "shipping_delay")]  # fmt: skip
        import_candidates(s, ds, rows[:60])
        run = Runs(s).enqueue(ds)
        assert run is not None
    summary = worker.run_once()
    assert summary is not None and summary.status == "succeeded", summary
    assert worker.run_once() is None  # nothing left to claim
    with db.session() as s:
        run = s.scalars(select(TrainingRun)).one()
        assert run.status == "succeeded" and run.example_ids and run.losses
        assert run.tokens_per_s and run.tokens_per_s > 0 and run.peak_memory_mb
        assert set(run.metrics) >= {"base", "new", "decision"}
        adapter = s.scalars(select(Adapter)).one()
        assert adapter.name == f"kk_tickets-v{adapter.version}" and adapter.decision
        assert adapter.status in ("active", "rejected")
        assert Path(adapter.path, "adapter_config.json").is_file()
        events = [e.topic for e in s.scalars(select(OutboxEvent))]
        assert "run.finished" in events
        assert (adapter.status == "active") == ("adapter.promoted" in events)


def test_too_few_examples_fails_the_run_with_the_number_needed(
    setup: tuple[Worker, Database],
) -> None:
    worker, db = setup
    with db.session() as s:
        ds = Datasets(s).create("tiny", "draft")
        Runs(s).enqueue(ds)
    summary = worker.run_once()
    assert summary is not None and summary.status == "failed"
    with db.session() as s:
        run = s.scalars(select(TrainingRun)).one()
        assert run.status == "failed" and "needs at least" in (run.error or "")
        assert s.scalars(select(Adapter)).all() == []
        assert [e.topic for e in s.scalars(select(OutboxEvent))] == ["run.failed"]


def test_a_run_left_running_by_a_dead_worker_is_requeued(setup: tuple[Worker, Database]) -> None:
    worker, db = setup
    with db.session() as s:
        ds = Datasets(s).create("tiny", "draft")
        run = Runs(s).enqueue(ds)
        assert run is not None
        run.status, run.worker_id = "running", "gone:1"
    assert worker.requeue_stale() == [run.id]
    with db.session() as s:
        stored = s.get(TrainingRun, run.id)
        assert stored is not None and stored.status == "queued"


def test_the_report_is_posted_once_with_its_chart(
    setup: tuple[Worker, Database], fake_slack: object, slack_signing_secret: str
) -> None:
    from bot.plugin_loader import PluginEntry
    from bot.testkit.slack import FakeSlack
    from plugins.report import ReportPlugin
    from tests.bot.slack_harness import serve_bot

    assert isinstance(fake_slack, FakeSlack)
    worker, db = setup
    fake_slack.add_channel("C0REPORTS1", "reports", members=[fake_slack.bot_user_id])
    with db.session() as s:
        ds = Datasets(s).create("kk_tickets", "classify", labels=["billing", "refund_request"],
                                report_channel="C0REPORTS1")  # fmt: skip
        rows = [r for r in read_file(sample_dir() / "tickets.jsonl", "classify")
                if getattr(r, "label", None) in ("billing", "refund_request")]  # fmt: skip
        import_candidates(s, ds, rows)
        Runs(s).enqueue(ds)
        small = Datasets(s).create("tiny", "draft", report_channel="C0REPORTS1")
        Runs(s).enqueue(small)
    summary = worker.run_once()
    assert summary is not None and summary.status == "succeeded"
    summary = worker.run_once()
    assert summary is not None and summary.status == "failed"
    with serve_bot(
        db, fake_slack, slack_signing_secret, [PluginEntry("report", ReportPlugin)]
    ) as bot:
        assert bot.runtime.deliver_outbox() >= 2
        assert bot.runtime.deliver_outbox() == 1  # the chart, a step of its own
        assert bot.runtime.deliver_outbox() == 0  # delivered exactly once
    posts = [c.args["text"] for c in fake_slack.calls_for("chat.postMessage")]
    report = next(p for p in posts if "Retraining report" in p)
    assert "macro-F1" in report and "Decision:" in report and "By label:" in report
    assert any("failed" in p and "needs at least" in p for p in posts)
    assert len(posts) == 2
    (png,) = fake_slack.uploaded_files
    assert png.content.startswith(b"\x89PNG")


def test_active_adapters_are_loaded_at_start(
    setup: tuple[Worker, Database], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from bot.bootstrap import load_active_adapters_soon
    from bot.testkit.models import build_tiny_adapter

    worker, db = setup
    folder = build_tiny_adapter(
        tiny_model_dir, tmp_path / "kk_copy-v7", served_name="brandbot-base"
    )
    with db.session() as s:
        ds = Datasets(s).create("kk_copy", "draft")
        s.add(
            Adapter(
                dataset_id=ds.id, name="kk_copy-v7", version=7, status="active", path=str(folder)
            )
        )
    assert "kk_copy-v7" not in {m.id for m in worker.client.models()}
    load_active_adapters_soon(worker.settings, db, worker.client).join()
    assert "kk_copy-v7" in {m.id for m in worker.client.models()}


def test_a_winning_adapter_is_deployed_and_becomes_active(setup: tuple[Worker, Database]) -> None:
    from trainer.promotion import Decision

    worker, db = setup
    worker.decide = lambda current, candidate, base=None: Decision(True, "forced win", {})
    with db.session() as s:
        ds = Datasets(s).create("kk_tickets", "classify", labels=["billing", "refund_request"])
        rows = [r for r in read_file(sample_dir() / "tickets.jsonl", "classify")
                if getattr(r, "label", None) in ("billing", "refund_request")]  # fmt: skip
        import_candidates(s, ds, rows)
        Runs(s).enqueue(ds)
    summary = worker.run_once()
    assert summary is not None and summary.promoted, summary
    with db.session() as s:
        adapter = s.scalars(select(Adapter)).one()
        assert adapter.status == "active" and adapter.promoted_at is not None
        topics = [e.topic for e in s.scalars(select(OutboxEvent))]
    assert "adapter.promoted" in topics
    assert adapter.name in {m.id for m in worker.client.models()}


@pytest.mark.slow
def test_a_run_trains_in_two_processes_through_accelerate_launch(
    sqlite_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``brandbot train --gpus 2`` / ``[training] processes = 2``: the worker stays one process,
    the training step runs in two gloo CPU processes, and the run is recorded as usual."""
    db = Database(sqlite_url)
    db.upgrade()
    settings = Settings(data_dir=tmp_path / "data", base_model=str(tiny_model_dir),
                        served_model_name="brandbot-base")  # fmt: skip
    with LocalEngine(tiny_model_dir, served_name="brandbot-base") as engine:
        overrides = {**FAST, "processes": 2, "threads": 1}
        worker = Worker(settings, db, LocalClient(engine), config_overrides=overrides)
        with db.session() as s:
            ds = Datasets(s).create("kk_tickets", "classify", labels=["billing", "refund_request"])
            rows = [r for r in read_file(sample_dir() / "tickets.jsonl", "classify")
                    if getattr(r, "label", None) in ("billing", "refund_request")]  # fmt: skip
            import_candidates(s, ds, rows[:40])
            Runs(s).enqueue(ds)
        summary = worker.run_once()
    assert summary is not None and summary.status == "succeeded", summary
    with db.session() as s:
        run = s.scalars(select(TrainingRun)).one()
        assert run.hyperparams["processes"] == 2 and run.losses
        (adapter,) = s.scalars(select(Adapter)).all()
    assert [p.name for p in (tmp_path / "data" / "adapters").iterdir()] == [adapter.name]
    db.dispose()


def test_a_run_with_preference_pairs_trains_the_stage_and_records_its_metrics(
    setup: tuple[Worker, Database],
) -> None:
    """Pairs of the train split go into the preference stage, held-out pairs into every model's
    scorecard; the run records the pair counts, the stage and the preference metrics."""
    from bot.storage.models import Example
    from trainer.cleaning import content_hash, text_key

    worker, db = setup
    worker.config_overrides = {**FAST, "min_preference_pairs": 8, "preference_epochs": 1}
    rows = [r for r in read_file(sample_dir() / "copy.jsonl", "draft") if isinstance(r, Candidate)]
    with db.session() as s:
        ds = Datasets(s).create("kk_copy", "draft", system_prompt="Write for Kettle & Kite.")
        import_candidates(s, ds, rows[:24])
        for i, row in enumerate(rows[24:46]):
            rejected = f"{row.text} Act now, cheap deals!"
            s.add(Example(
                dataset_id=ds.id, task="draft", prompt=row.prompt, text=row.text,
                rejected_text=rejected, kind="preference", split="train" if i < 16 else "heldout",
                content_hash=content_hash("preference", row.prompt, row.text, rejected),
                text_key=text_key(row.text), source="import",
            ))  # fmt: skip
        Runs(s).enqueue(ds)
    summary = worker.run_once()
    assert summary is not None and summary.status == "succeeded", summary
    with db.session() as s:
        run = s.scalars(select(TrainingRun)).one()
        pair_ids = s.scalars(select(Example.id).where(Example.kind == "preference")).all()
        metrics = run.metrics
        assert set(pair_ids[:16]) <= set(run.example_ids)  # what forgetting a person checks
    assert metrics["pairs"] == {"train": 16, "heldout": 6, "trained_on": 16}
    stage = metrics["preference_stage"]
    assert stage["method"] == "dpo" and stage["steps"] == len(stage["losses"]) > 0
    for model in ("base", "new"):
        assert metrics[model]["preference_pairs"] == 6
        assert 0 <= metrics[model]["preference_accuracy"] <= 1
    assert metrics["heldout_pair_ids"] == pair_ids[16:]
    assert metrics["decision"]["preference"]["pairs"] == 6
    new_card = next(c for c in metrics["scorecards"] if c["name"] == summary.adapter)
    assert len(new_card["pair_keys"]) == 6 and len(new_card["chosen_nll"]) == 6
    with db.session() as s:  # the retraining report says it in words
        lines = build_report(s, run.id).lines
    (accuracy,) = [line for line in lines if line.startswith("Preference accuracy")]
    base_acc = f"{100 * metrics['base']['preference_accuracy']:.0f}%"
    new_acc = f"{100 * metrics['new']['preference_accuracy']:.0f}%"
    assert accuracy.startswith(f"Preference accuracy on 6 held-out pairs: base {base_acc} (margin ")
    assert f" → new {new_acc} (margin " in accuracy
    assert f"Preference stage: dpo on 16 pairs, {stage['steps']} steps" in "\n".join(lines)
