"""What people see about a dataset's examples: totals, what is new since the last training,
the numbers of ``datasets show`` and ``/brandbot datasets NAME``. Read-only: the write path is
:mod:`bot.collection` and :mod:`bot.gate`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import bindparam, case, func, select
from sqlalchemy.orm import Session

from bot.gate import EXAMPLES
from bot.storage.models import Approval, Dataset, Example, TrainingRun

_LAST_TRAINED = (
    select(func.max(TrainingRun.started_at))
    .where(TrainingRun.dataset_id == bindparam("dataset"), TrainingRun.status == "succeeded")
    .scalar_subquery()
)
TOTALS = select(
    func.count(),
    func.coalesce(func.sum(case(
        (_LAST_TRAINED.is_(None), 1), (EXAMPLES.c.created_at > _LAST_TRAINED, 1), else_=0
    )), 0),
).where(EXAMPLES.c.dataset_id == bindparam("dataset"), EXAMPLES.c.status == "active")  # fmt: skip


def last_training(session: Session, dataset: Dataset) -> dt.datetime | None:
    """When the dataset's last successful training run started (None: never trained)."""
    return session.scalar(
        select(func.max(TrainingRun.started_at)).where(
            TrainingRun.dataset_id == dataset.id, TrainingRun.status == "succeeded"
        )
    )


def totals(session: Session, dataset: Dataset) -> tuple[int, int]:
    """(active examples, of which new since the last successful training run), in one
    query: the notice after every approval must stay cheap."""
    total, new = session.connection().execute(TOTALS, {"dataset": dataset.id}).one()
    return int(total), int(new)


def summary_line(session: Session, dataset: Dataset) -> str:
    total, new = totals(session, dataset)
    return (
        f"Added to {dataset.name}: {total} example{'s' if total != 1 else ''}, "
        f"{new} new since the last training."
    )


def dataset_stats(session: Session, dataset: Dataset) -> dict[str, Any]:
    """Counts for `datasets show` and `/brandbot datasets NAME`."""
    from bot.storage.repositories import Examples

    counts = Examples(session).counts(dataset.id)
    _, new = totals(session, dataset)
    top = session.execute(
        select(Approval.user_id, func.count())
        .join(Example, Example.id == Approval.example_id)
        .where(Example.dataset_id == dataset.id, Example.status == "active")
        .group_by(Approval.user_id)
        .order_by(func.count().desc())
        .limit(5)
    ).all()
    by_label = counts["by_label"]
    balance = None
    if by_label:
        balance = round(min(by_label.values()) / max(by_label.values()), 3)
    counts.update(
        new_since_last_training=new,
        top_approvers=[{"user": u, "approvals": int(n)} for u, n in top],
        label_balance=balance,
        missing_labels=[lbl for lbl in dataset.labels if lbl not in by_label],
    )
    return counts
