"""The training worker: claims queued runs from the database (``bot.run_claims``: an atomic
claim, a lease its heartbeat renews, one running run per dataset), trains with the trainer
library, evaluates base vs current vs new adapter on the same held-out examples, registers the
adapter, promotes it only if it wins, and announces the result through the outbox
(``run.finished`` / ``run.failed``).

A run whose worker died is re-queued once its lease runs out, by any worker, and resumes from
its checkpoints under the same adapter version, unless its training examples changed since
(the ids recorded on the run with its checkpoint folder, the examples' hash in the checkpoint):
then its checkpoints are deleted and it starts over, and the audit log says why.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.registry import activate, deploy
from bot.run_claims import Heartbeat, LeaseLost, RunClaims
from bot.settings import Settings
from bot.storage.db import Database, DatabaseUnavailable
from bot.storage.models import Adapter, Dataset, TrainingRun, utcnow
from bot.storage.repositories import Adapters, Audit, Outbox
from bot.training_data import preference_pairs, train_examples
from serving.adapter_checksums import manifest_checksum
from serving.adapters import DeployResult
from serving.client import InferenceClient, InferenceError, InferenceUnavailable

log = logging.getLogger("brandbot.worker")


@dataclass
class RunSummary:
    run_id: int
    status: str
    adapter: str | None = None
    promoted: bool = False
    reason: str = ""


class Worker:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        client: InferenceClient,
        *,
        worker_id: str | None = None,
        config_overrides: dict[str, Any] | None = None,
        progress: Callable[[int, int, float], None] | None = None,
        decide: Callable[..., Any] | None = None,
    ) -> None:
        """``decide`` replaces the promotion rule (``trainer.promotion.decide_promotion``)."""
        self.settings = settings
        self.decide = decide
        self.db = db
        self.client = client
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.config_overrides = config_overrides or {}
        self.progress = progress
        self.claims = RunClaims(db, self.worker_id, settings.training_lease_seconds)
        self._stop = threading.Event()

    # ---- claiming ---------------------------------------------------------------------

    def requeue_stale(self) -> list[int]:
        """Runs whose worker stopped renewing its lease go back to the queue."""
        return self.claims.requeue_expired()

    def claim(self) -> int | None:
        """Take the oldest queued run of a dataset not being trained; None when there is none."""
        return self.claims.claim()

    # ---- running ----------------------------------------------------------------------

    def run_now(self, run_id: int) -> RunSummary:
        """Run a specific queued run in this process (``brandbot train``)."""
        if not self.claims.claim_run(run_id):
            return RunSummary(
                run_id, "skipped", reason="the run is not queued, or its dataset is training"
            )
        return self.execute(run_id)

    def run_once(self) -> RunSummary | None:
        run_id = self.claim()
        if run_id is None:
            return None
        return self.execute(run_id)

    def serve(self, poll_seconds: float = 5.0) -> None:
        """Claim and run until ``stop()``; runs of dead workers are re-queued between runs."""
        poll = min(poll_seconds, self.claims.lease.total_seconds() / 3)
        while not self._stop.is_set():
            try:
                self.requeue_stale()
                if self.run_once() is not None:
                    continue
            except DatabaseUnavailable as exc:  # wait for the database to come back
                log.error("worker: %s", exc)
            self._stop.wait(poll)

    def stop(self) -> None:
        self._stop.set()

    def execute(self, run_id: int) -> RunSummary:
        """Run a run this worker claimed, renewing its lease meanwhile."""
        started = time.perf_counter()
        with Heartbeat(self.claims, run_id) as beat:
            try:
                return self._execute(run_id, started, beat)
            except LeaseLost as exc:
                log.error("run %s abandoned: %s", run_id, exc)
                return RunSummary(run_id, "lost", reason=str(exc))
            except Exception as exc:
                return self._failed(run_id, exc, started)

    def _failed(self, run_id: int, exc: Exception, started: float) -> RunSummary:
        message = f"{type(exc).__name__}: {exc}"
        log.error("run %s failed: %s", run_id, message)
        with self.db.session() as session:
            run = session.get(TrainingRun, run_id, with_for_update=True)
            if run is not None and run.status == "running" and run.worker_id == self.worker_id:
                run.status, run.finished_at, run.lease_until = "failed", utcnow(), None
                run.error = message[:4000] + "\n" + traceback.format_exc()[-4000:]
                run.duration_s = time.perf_counter() - started
                Outbox(session).publish(
                    "run.failed",
                    {"run_id": run_id, "dataset_id": run.dataset_id, "error": message[:500]},
                )
        return RunSummary(run_id, "failed", reason=message)

    def _execute(self, run_id: int, started: float, beat: Heartbeat) -> RunSummary:
        from serving.base_model import resolve_base_model
        from trainer.config import defaults_for
        from trainer.evaluate import BrandRules
        from trainer.lora import ResumeMismatch, train_lora
        from trainer.promotion import decide_promotion

        settings = self.settings
        with self.db.session() as session:
            run = session.get(TrainingRun, run_id)
            assert run is not None
            self.claims.check_owned(run)
            dataset = session.get(Dataset, run.dataset_id)
            assert dataset is not None
            train, train_ids = train_examples(session, dataset, "train")
            heldout, heldout_ids = train_examples(session, dataset, "heldout")
            train_pairs, train_pair_ids = preference_pairs(session, dataset, "train")
            heldout_pairs, heldout_pair_ids = preference_pairs(session, dataset, "heldout")
            current = Adapters(session).active(dataset.id)
            current_name = current.name if current else None
            current_path = Path(current.path) if current else None
            overrides = {k: v for k, v in settings.training.items() if not isinstance(v, dict)}
            overrides.update(settings.training.get(dataset.task, {}))
            overrides.update(self.config_overrides)
            config = defaults_for(dataset.task, **overrides)
            base = resolve_base_model(settings.base_model, settings.models_dir)
            checkpoints = settings.runs_dir / str(run_id) / "checkpoints"
            if run.checkpoint_dir:
                checkpoints = Path(run.checkpoint_dir)
            run.checkpoint_dir = str(checkpoints)
            all_ids = train_ids + train_pair_ids
            changed = _changed_examples(checkpoints, list(run.example_ids or []), all_ids)
            run.example_ids = all_ids
            if changed:
                _start_over(session, run, checkpoints, changed)
            # A retried run keeps the version (and the name) its first attempt was given.
            adapter_version = int((run.hyperparams or {}).get("_version", 0)) or None
            if adapter_version is None:
                adapter_version = Adapters(session).next_version()
            run.hyperparams = {**config.model_dump(mode="json"), "_version": adapter_version}
            run.base_model, run.base_fingerprint = str(base.path), base.fingerprint
            name = f"{dataset.name}-v{adapter_version}"
            task, labels = dataset.task, list(dataset.labels)
            rules = BrandRules(
                max_length=dataset.max_length,
                banned_words=tuple(dataset.banned_words),
                required_words=tuple(dataset.required_words),
            )
        out_dir = settings.adapters_dir / name
        if out_dir.exists():  # a previous attempt finished training but not the rest
            import shutil

            shutil.rmtree(out_dir)
        log.info("run %s: training %s on %d examples and %d preference pairs", run_id, name,
                 len(train), len(train_pairs))  # fmt: skip

        def fit() -> Any:
            return train_lora(
                base.path, train, config, out_dir,
                served_model_name=settings.served_model_name, base_fingerprint=base.fingerprint,
                progress=self._progress(beat), checkpoint_dir=checkpoints,
                preference_pairs=train_pairs,
            )  # fmt: skip

        try:
            result = fit()
        except ResumeMismatch:  # same ids, but an example's text or the settings changed
            with self.db.session() as session:
                run = session.get(TrainingRun, run_id)
                assert run is not None
                _start_over(session, run, checkpoints,
                            "its examples' text or its training settings changed")  # fmt: skip
            result = fit()
        loaded = {m.id for m in self.client.models()}
        if current_name and current_path and current_name not in loaded:
            self.client.load_adapter(current_name, str(current_path))
        if name in loaded:  # loaded by an attempt that died: its weights are not these
            self.client.unload_adapter(name)
        self.client.load_adapter(name, str(out_dir))
        scorecards = self._evaluate(
            task, heldout, labels, rules, base.path, current_name, current_path, name, out_dir,
            heldout_pairs,
        )  # fmt: skip
        base_sc, current_sc, new_sc = scorecards
        decision = (self.decide or decide_promotion)(current_sc, new_sc, base=base_sc)
        metrics = {
            "base": base_sc.summary(),
            "current": current_sc.summary() if current_sc else None,
            "new": new_sc.summary(),
            "decision": decision.details,
            "heldout_ids": heldout_ids,
            "heldout_pair_ids": heldout_pair_ids,
            "pairs": {"train": len(train_pairs), "heldout": len(heldout_pairs),
                      "trained_on": result.preference_pairs},
            "preference_stage": {
                "method": result.preference_method, "steps": result.preference_steps,
                "losses": result.preference_losses, "seconds": result.preference_seconds,
                "resumed_from_step": result.preference_resumed_from_step,
            } if result.preference_pairs else None,
        }  # fmt: skip
        checksum = manifest_checksum(out_dir)
        deployed = None
        if decision.promote:  # on the server first, outside the transaction that records it
            # It was loaded for the evaluation; deployment loads it again, with its checks.
            self.client.unload_adapter(name)
            staged = Adapter(name=name, path=str(out_dir), base_fingerprint=base.fingerprint,
                             weights_fingerprint=checksum)  # fmt: skip
            try:
                deployed = deploy(settings, self.client, staged)
            except (InferenceError, InferenceUnavailable) as exc:
                deployed = DeployResult(ok=False, name=name, reasons=[f"server: {exc}"])
        with self.db.session() as session:
            run = session.get(TrainingRun, run_id, with_for_update=True)
            assert run is not None
            self.claims.check_owned(run)
            dataset = session.get(Dataset, run.dataset_id)
            assert dataset is not None
            adapter = Adapter(
                dataset_id=dataset.id, name=name, version=adapter_version, status="candidate",
                run_id=run_id, path=str(out_dir), base_fingerprint=base.fingerprint,
                metrics=new_sc.summary(), decision=decision.reason,
                weights_fingerprint=checksum,
            )  # fmt: skip
            session.add(adapter)
            session.flush()
            promoted = False
            reason = decision.reason
            if deployed is not None:
                outcome = activate(session, adapter, deployed, actor="worker")
                promoted = outcome.ok
                if not outcome.ok:
                    reason = f"{decision.reason}; but deployment failed: {outcome.reason}"
                    adapter.decision = reason
            if not promoted:
                adapter.status = "rejected"
            run.status, run.finished_at, run.lease_until = "succeeded", utcnow(), None
            run.losses = result.losses
            run.metrics = {**metrics, "scorecards": [s.to_dict() for s in scorecards if s]}
            run.duration_s = time.perf_counter() - started
            run.tokens_per_s, run.peak_memory_mb = result.tokens_per_s, result.peak_memory_mb
            Audit(session).record(
                "run.finished", dataset_id=dataset.id, run=run_id, adapter=name, promoted=promoted
            )
            Outbox(session).publish(
                "run.finished",
                {"run_id": run_id, "dataset_id": dataset.id, "adapter": name,
                 "promoted": promoted, "reason": reason},
            )  # fmt: skip
        if not promoted:
            try:
                self.client.unload_adapter(name)
            except Exception:  # the server may already have dropped it
                log.debug("unload of %s failed", name)
        log.info("run %s finished: %s", run_id, reason)
        return RunSummary(run_id, "succeeded", name, promoted, reason)

    def _progress(self, beat: Heartbeat) -> Callable[[int, int, float], None]:
        """The training progress callback: stops the training once the lease is lost."""

        def progress(step: int, total: int, loss: float) -> None:
            if beat.lost.is_set():
                raise LeaseLost(f"run {beat.run_id}: the lease was lost while training")
            if self.progress is not None:
                self.progress(step, total, loss)

        return progress

    def _evaluate(
        self,
        task: str,
        heldout: list[Any],
        labels: list[str],
        rules: Any,
        base_dir: Path,
        current_name: str | None,
        current_path: Path | None,
        new_name: str,
        new_dir: Path,
        pairs: list[Any],
    ) -> tuple[Any, Any, Any]:
        """Base, current (None without one) and new scorecards; held-out ``pairs`` are scored
        for every model (preference accuracy and margin)."""
        from trainer.evaluate import Candidate, evaluate_classify, evaluate_drafts, score_pairs

        candidates = [Candidate("base", None, None), Candidate(new_name, new_name, new_dir)]
        if current_name:
            candidates.insert(1, Candidate(current_name, current_name, current_path))
        if task == "classify":
            cards = [
                evaluate_classify(heldout, labels, name=c.name, client=self.client, model=c.model)
                for c in candidates
            ]
            score_pairs(cards, pairs, [c.adapter_dir for c in candidates], base_dir=base_dir)
        else:  # every model's drafts in one batch, the weights loaded once for perplexity
            cards = evaluate_drafts(
                heldout, candidates, base_dir=base_dir, client=self.client, rules=rules,
                pairs=pairs,
            )  # fmt: skip
        return cards[0], cards[1] if current_name else None, cards[-1]


def _changed_examples(checkpoints: Path, before: list[Any], now: list[Any]) -> str | None:
    """Why the checkpoints in ``checkpoints`` are not this attempt's to resume, or None."""
    if not checkpoints.is_dir() or not any(checkpoints.glob("ckpt-*.pt")):
        return None
    added, removed = set(now) - set(before), set(before) - set(now)
    if not (added or removed):
        return None
    return (
        f"its training examples changed since the checkpoint ({len(added)} added, "
        f"{len(removed)} removed)"
    )


def _start_over(session: Any, run: TrainingRun, checkpoints: Path, why: str) -> None:
    """Delete a run's checkpoints so it trains from the start, and say why."""
    import shutil

    shutil.rmtree(checkpoints, ignore_errors=True)
    log.warning("run %s starts over: %s", run.id, why)
    Audit(session).record("run.started_over", dataset_id=run.dataset_id, run=run.id, reason=why)


def main() -> None:
    """``python -m bot.worker``: the worker loop. It stays one process: with ``processes = N``
    under ``[training]`` in brandbot.toml (or ``brandbot worker --gpus N``) each run's training
    step runs in N processes through ``accelerate launch`` (``trainer.launch.launch_train_lora``),
    while claiming, evaluation and promotion happen here once."""
    from bot.inference import LazyInference
    from bot.observability import configure_logging, settings_secrets
    from bot.settings import load_settings

    settings = load_settings()
    configure_logging(settings_secrets(settings))
    db = Database(settings.resolved_database_url)
    db.upgrade()
    Worker(settings, db, LazyInference(settings)).serve()


if __name__ == "__main__":
    main()


def evaluate_dataset(
    settings: Settings,
    db: Database,
    client: InferenceClient,
    dataset_name: str,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """``brandbot eval``: the base model and the active adapter on the held-out examples, with
    the promotion rule's verdict of the adapter against the base. ``progress(model, done,
    total)`` follows each model's held-out examples; ``seconds`` is the whole evaluation (the
    model server's start and the adapter's load included)."""
    from bot.storage.repositories import Datasets
    from serving.base_model import resolve_base_model
    from trainer.evaluate import (
        BrandRules,
        Candidate,
        evaluate_classify,
        evaluate_drafts,
        score_pairs,
    )
    from trainer.promotion import decide_promotion

    started = time.perf_counter()
    with db.session() as session:
        dataset = Datasets(session).get(dataset_name)
        heldout, ids = train_examples(session, dataset, "heldout")
        pairs, _ = preference_pairs(session, dataset, "heldout")
        active = Adapters(session).active(dataset.id)
        name, path = (active.name, Path(active.path)) if active else (None, None)
        task, labels = dataset.task, list(dataset.labels)
        rules = BrandRules(dataset.max_length, tuple(dataset.banned_words),
                           tuple(dataset.required_words))  # fmt: skip
    if not heldout:
        raise ValueError(f"{dataset_name} has no held-out examples to evaluate on")
    base = resolve_base_model(settings.base_model, settings.models_dir)
    if name and path and name not in {m.id for m in client.models()}:
        client.load_adapter(name, str(path))

    def step(label: str, done: int, total: int) -> None:
        if progress is not None:
            progress(label, done, total)

    candidates = [Candidate("base", None, None)]
    if name:
        candidates.append(Candidate(name, name, path))
    if task == "classify":
        cards = []
        for c in candidates:

            def one(done: int, total: int, label: str = c.name) -> None:
                step(label, done, total)

            cards.append(evaluate_classify(heldout, labels, name=c.name, client=client,
                                           model=c.model, progress=one))  # fmt: skip
        score_pairs(cards, pairs, [c.adapter_dir for c in candidates], base_dir=base.path)
    else:  # both models' drafts in one batch, the weights loaded once for perplexity
        cards = evaluate_drafts(heldout, candidates, base_dir=base.path, client=client,
                                rules=rules, progress=step, pairs=pairs)  # fmt: skip
    result: dict[str, Any] = {
        "dataset": dataset_name,
        "heldout": len(ids),
        "base": cards[0].summary(),
    }
    if name:
        decision = decide_promotion(None, cards[1], base=cards[0])
        result |= {"active": cards[1].summary(), "verdict": decision.reason}
    result["seconds"] = time.perf_counter() - started
    return result
