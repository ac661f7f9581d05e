"""Forgetting a person and ageing out ticket text.

``forget_user`` removes everything by and about a person: the examples they wrote, the examples
whose prompt came from them (a reply built on their ticket, a post briefed by their thread
message), the preference pairs their choices made, their drafts, predictions and suggestions,
their approvals. It records an opt-out so nothing new is collected, takes every adapter trained
on their data out of service (the dataset rolls back to an adapter that was not, else to the
base model), queues retraining, and deletes those runs' checkpoints and adapter folders. The
audit log keeps counts and ids only.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from bot.access import valid_user_id
from bot.storage.models import (
    Adapter,
    Approval,
    Dataset,
    Draft,
    Example,
    OptOut,
    Prediction,
    Suggestion,
    TrainingRun,
    utcnow,
)
from bot.storage.repositories import Audit, Runs

TICKET_PROMPTS = ("ticket", "suggestion")  # prompt sources that hold a support ticket's text


@dataclass
class Forgotten:
    """What ``forget_user`` removed; ``counts`` is what people are told."""

    counts: dict[str, int] = field(default_factory=dict)
    adapters: list[str] = field(default_factory=list)
    now_serving: dict[str, str] = field(default_factory=dict)  # dataset -> adapter or "base"
    removed_paths: list[str] = field(default_factory=list)
    runs_queued: list[int] = field(default_factory=list)


def _examples_about(session: Session, user_id: str) -> list[int]:
    """Examples they wrote, and examples whose prompt came from them: recorded as the
    subject, or (older rows) the replies to tickets they opened. A preference pair also goes
    with the approver whose choice made it."""
    ids = set(
        session.scalars(
            select(Example.id).where(
                or_(
                    Example.author_id == user_id,
                    Example.subject_id == user_id,
                    (Example.kind == "preference") & (Example.approver_id == user_id),
                )
            )
        )
    )
    tickets: list[Any] = list(
        session.execute(
            select(Suggestion.channel_id, Suggestion.ticket_ts, Suggestion.reply_ts).where(
                Suggestion.author_id == user_id
            )
        )
    )
    tickets += session.execute(
        select(Prediction.channel_id, Prediction.message_ts, Prediction.message_ts).where(
            Prediction.author_id == user_id, Prediction.channel_id.is_not(None)
        )
    ).all()
    for channel, ticket_ts, reply_ts in tickets:
        about = (Example.channel_id == channel) & (
            (Example.thread_ts == ticket_ts) | (Example.message_ts == (reply_ts or ticket_ts))
        )
        ids |= set(session.scalars(select(Example.id).where(about)))
    return sorted(ids)


def forget_user(
    session: Session,
    user_id: str,
    actor: str | None,
    *,
    runs_dir: Path | None = None,
    adapters_dir: Path | None = None,
) -> dict[str, Any]:
    """Erase a person (see the module docstring); returns counts with the details of
    ``Forgotten`` under ``"detail"``. A malformed id raises ValueError: erasing nothing while
    saying "done" is worse than refusing."""
    if not valid_user_id(user_id):
        raise ValueError(f"{user_id!r} is not a Slack user id (like U0123ABCD)")
    report = Forgotten()
    example_ids = _examples_about(session, user_id)
    _retire_adapters(session, set(example_ids), actor, report, runs_dir, adapters_dir)
    if example_ids:
        session.execute(delete(Example).where(Example.id.in_(example_ids)))
    drafts = session.execute(
        delete(Draft).where((Draft.requested_by == user_id) | (Draft.posted_by == user_id))
    ).rowcount  # type: ignore[attr-defined]
    session.execute(update(Draft).where(Draft.discarded_by == user_id).values(discarded_by=None))
    predictions = session.execute(
        delete(Prediction).where(Prediction.author_id == user_id)
    ).rowcount  # type: ignore[attr-defined]
    session.execute(
        update(Prediction).where(Prediction.resolved_by == user_id).values(resolved_by=None)
    )
    suggestions = session.execute(
        delete(Suggestion).where(Suggestion.author_id == user_id)
    ).rowcount  # type: ignore[attr-defined]
    suggestions += session.execute(
        update(Suggestion)
        .where((Suggestion.resolved_by == user_id) | (Suggestion.requested_by == user_id))
        .values(final_text=None, resolved_by=None, requested_by=None)
    ).rowcount  # type: ignore[attr-defined]
    approvals = session.execute(delete(Approval).where(Approval.user_id == user_id)).rowcount  # type: ignore[attr-defined]
    if session.get(OptOut, user_id) is None:
        session.add(OptOut(user_id=user_id))
    report.counts = {
        "examples": len(example_ids),
        "drafts": int(drafts or 0),
        "predictions": int(predictions or 0),
        "suggestions": int(suggestions or 0),
        "approvals": int(approvals or 0),
        "adapters_retired": len(report.adapters),
        "checkpoints_deleted": len(report.removed_paths),
        "runs_queued": len(report.runs_queued),
    }
    details: dict[str, Any] = {"subject": user_id, **report.counts}
    Audit(session).record("user.forget", actor=actor, **details)
    return {**report.counts, "detail": report}


def _retire_adapters(
    session: Session,
    example_ids: set[int],
    actor: str | None,
    report: Forgotten,
    runs_dir: Path | None,
    adapters_dir: Path | None,
) -> None:
    """Take adapters trained on ``example_ids`` out of service for good (status rejected, so
    no rollback brings them back); roll each dataset whose active adapter was one of them back
    to the newest adapter that was not, else to the base model; queue retraining; delete the
    runs' checkpoints and the adapters' folders."""
    if not example_ids:
        return
    tainted_runs = [
        run for run in session.scalars(select(TrainingRun)).all()
        if example_ids & set(run.example_ids or [])
    ]  # fmt: skip
    run_ids = {run.id for run in tainted_runs}
    datasets: set[int] = {run.dataset_id for run in tainted_runs}
    for dataset_id in sorted(datasets):
        adapters = list(
            session.scalars(
                select(Adapter).where(Adapter.dataset_id == dataset_id).order_by(Adapter.version)
            )
        )
        tainted = [a for a in adapters if a.run_id in run_ids]
        was_active = any(a.status == "active" for a in tainted)
        for adapter in tainted:
            adapter.status, adapter.needs_retrain = "rejected", True
            adapter.decision = "trained on the data of a person who was forgotten"
            report.adapters.append(adapter.name)
            _remove(Path(adapter.path), adapters_dir, report)
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            continue
        if was_active:
            session.flush()  # one active adapter per dataset: retire before activating
            clean = [a for a in adapters if a not in tainted and a.status == "retired"]
            target = clean[-1] if clean else None
            if target is not None:
                target.status, target.promoted_at = "active", utcnow()
            report.now_serving[dataset.name] = target.name if target else "base"
            Audit(session).record(
                "adapter.rollback", actor=actor, dataset_id=dataset_id,
                to=target.name if target else "base", reason="forget",
            )  # fmt: skip
        run = Runs(session).enqueue(dataset, trigger="forget", requested_by=actor)
        if run is not None:
            report.runs_queued.append(run.id)
    for run in tainted_runs:
        for folder in (Path(run.checkpoint_dir) if run.checkpoint_dir else None,
                       runs_dir / str(run.id) if runs_dir else None):  # fmt: skip
            if folder is not None:
                _remove(folder, runs_dir, report)
        run.checkpoint_dir = None


def _remove(folder: Path, root: Path | None, report: Forgotten) -> None:
    """Delete a folder the bot wrote (under ``root`` when one is known)."""
    try:
        resolved = folder.resolve()
    except OSError:
        return
    if root is not None and not resolved.is_relative_to(root.resolve()):
        return
    if resolved.is_dir():
        shutil.rmtree(resolved, ignore_errors=True)
        report.removed_paths.append(str(resolved))


def purge_ticket_text(session: Session, older_than: dt.datetime) -> dict[str, int]:
    """Delete ticket text older than the retention cut-off: classify examples, reply examples
    (their prompt is the ticket), and what predictions and suggestions kept of tickets and the
    replies written to them."""
    holds_ticket = (Example.task == "classify") | Example.prompt_source.in_(TICKET_PROMPTS)
    old_ids = list(
        session.scalars(select(Example.id).where(holds_ticket, Example.created_at < older_than))
    )
    if old_ids:
        session.execute(delete(Example).where(Example.id.in_(old_ids)))
    predictions = session.execute(
        update(Prediction)
        .where(Prediction.created_at < older_than, Prediction.text.is_not(None))
        .values(text=None)
    ).rowcount  # type: ignore[attr-defined]
    suggestions = session.execute(
        update(Suggestion)
        .where(
            Suggestion.created_at < older_than,
            Suggestion.ticket_text.is_not(None)
            | Suggestion.text.is_not(None)
            | Suggestion.final_text.is_not(None),
        )
        .values(ticket_text=None, text=None, final_text=None)
    ).rowcount  # type: ignore[attr-defined]
    counts = {
        "examples": len(old_ids),
        "predictions": int(predictions or 0),
        "suggestions": int(suggestions or 0),
    }
    if any(counts.values()):
        Audit(session).record(
            "retention.purge", before=older_than.isoformat(), examples=counts["examples"],
            predictions=counts["predictions"], suggestions=counts["suggestions"],
        )  # fmt: skip
    return counts
