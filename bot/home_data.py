"""What one person's Home tab shows, read from the database (``bot.home_view`` draws it).

Only what the person may see: pending examples of the datasets they approve, datasets they may
see (``bot.access.may_see``: private channels respected), and for admins the last runs. A few
grouped queries cover every dataset, so a workspace with many datasets stays cheap.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from bot.access import is_approver, may_see
from bot.cron import next_fire
from bot.home_view import (
    AUTHORS,
    DATASET_PAGE,
    PENDING_PAGE,
    AuthorLine,
    DatasetCard,
    HomeData,
    PendingItem,
    RunLine,
)
from bot.plugin import ChatAPI
from bot.production_signals import BASE, production_signals, version_signals
from bot.storage.models import Adapter, Dataset, Example, TrainingRun, utcnow
from bot.version_report import stats_text

HEADLINE = {"draft": "answer_perplexity", "classify": "macro_f1"}
LAST_RUNS = 5
SIGNALS_DAYS = 30


def visible(
    session: Session, user: str, chat: ChatAPI, admins: Iterable[str]
) -> tuple[list[Dataset], list[Dataset], dict[str, bool]]:
    """(datasets ``user`` may see, of those the ones they approve, channel -> private)."""
    admins = list(admins)
    private: dict[str, bool] = {}
    groups: dict[str, set[str]] = {}
    seen, approves = [], []
    for dataset in session.scalars(select(Dataset).order_by(Dataset.name)):
        if not may_see(dataset, user, chat, admins, private):
            continue
        seen.append(dataset)
        if is_approver(dataset, user, chat, admins, groups):
            approves.append(dataset)
    return seen, approves, private


def _counts(session: Session, ids: list[int]) -> dict[int, dict[str, int]]:
    """Per dataset: active, pending, heldout (active) and new since the last training."""
    out: dict[int, dict[str, int]] = {i: {"active": 0, "pending": 0, "heldout": 0, "new": 0}
                                      for i in ids}  # fmt: skip
    rows = session.execute(
        select(Example.dataset_id, Example.status, Example.split, func.count())
        .where(Example.dataset_id.in_(ids), Example.status.in_(("active", "pending")))
        .group_by(Example.dataset_id, Example.status, Example.split)
    )
    for dataset_id, status, split, n in rows:
        out[dataset_id][status] += int(n)
        if status == "active" and split == "heldout":
            out[dataset_id]["heldout"] += int(n)
    trained = (
        select(TrainingRun.dataset_id, func.max(TrainingRun.started_at).label("at"))
        .where(TrainingRun.status == "succeeded", TrainingRun.dataset_id.in_(ids))
        .group_by(TrainingRun.dataset_id)
        .subquery()
    )
    new = session.execute(
        select(Example.dataset_id, func.count())
        .outerjoin(trained, trained.c.dataset_id == Example.dataset_id)
        .where(Example.dataset_id.in_(ids), Example.status == "active",
               or_(trained.c.at.is_(None), Example.created_at > trained.c.at))
        .group_by(Example.dataset_id)
    )  # fmt: skip
    for dataset_id, n in new:
        out[dataset_id]["new"] = int(n)
    return out


def _card(
    session: Session, dataset: Dataset, counts: dict[str, int], private: dict[str, bool]
) -> DatasetCard:
    metric = HEADLINE.get(dataset.task, "")
    adapter = session.scalar(
        select(Adapter).where(Adapter.dataset_id == dataset.id, Adapter.status == "active")
    )
    value = base = None
    if adapter is not None:
        value = _number((adapter.metrics or {}).get(metric))
        run = session.get(TrainingRun, adapter.run_id) if adapter.run_id else None
        base = _number(((run.metrics or {}).get("base") or {}).get(metric)) if run else None
    latest = session.scalar(
        select(func.max(TrainingRun.id)).where(TrainingRun.dataset_id == dataset.id)
    )
    newest = session.scalar(
        select(Adapter).where(Adapter.dataset_id == dataset.id)
        .order_by(Adapter.version.desc()).limit(1)
    )  # fmt: skip
    channels = [*dataset.channels, *dataset.ticket_channels]
    return DatasetCard(
        name=dataset.name, task=dataset.task, private=any(private.get(c) for c in channels),
        active=counts["active"], pending=counts["pending"], heldout=counts["heldout"],
        new_since_training=counts["new"], adapter=adapter.name if adapter else None,
        metric=metric, value=value, base_value=base,
        next_training=next_fire(dataset.schedule_cron, dataset.schedule_timezone),
        dataset_id=dataset.id, retrain_token=str(latest or 0),
        signals=_signals(session, dataset, adapter),
        chart_adapter_id=newest.id if newest else 0,
        chart_file=(newest.chart_file or "") if newest else "",
    )  # fmt: skip


def _signals(session: Session, dataset: Dataset, adapter: Adapter | None) -> str:
    """``12 drafts posted, revision rate 0.180`` or ``label correction rate 0.050 of 40``, then
    for a draft dataset the editing the active version's drafts needed so far."""
    since = utcnow() - dt.timedelta(days=SIGNALS_DAYS)
    s = production_signals(session, dataset, since)
    parts = []
    if s["drafts_posted"]:
        rate = s["draft_revision_rate"]
        parts.append(f"{s['drafts_posted']} drafts posted"
                     + (f", revision rate {rate:.3f}" if rate is not None else ""))  # fmt: skip
    if s["predictions_resolved"]:
        parts.append(f"label correction rate {s['label_correction_rate']:.3f} of "
                     f"{s['predictions_resolved']} resolved")  # fmt: skip
    name = adapter.name if adapter else BASE
    if dataset.task == "draft":
        for version in version_signals(session, dataset, names=[name]):
            if version.drafts.n:
                parts.append(f"`{name}` so far: {stats_text(version.drafts, 'drafts')}")
    return "; ".join(parts)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _pending(
    session: Session, approves: list[Dataset], page: int
) -> tuple[list[PendingItem], int, int]:
    """(the page's pending items, how many in all, the page shown)."""
    names = {d.id: d.name for d in approves}
    where = [Example.dataset_id.in_(list(names)), Example.status == "pending"]
    total = int(session.scalar(select(func.count()).select_from(Example).where(*where)) or 0)
    page = max(0, min(page, (total - 1) // PENDING_PAGE)) if total else 0
    rows = session.scalars(
        select(Example).where(*where).order_by(Example.id)
        .offset(page * PENDING_PAGE).limit(PENDING_PAGE)
    )  # fmt: skip
    items = [_item(e, names[e.dataset_id]) for e in rows]
    return items, total, page


def _authors(session: Session, approves: list[Dataset]) -> list[AuthorLine]:
    """The ``AUTHORS`` people with most pending examples in ``approves``."""
    rows = session.execute(
        select(Example.author_id, func.count(), func.max(Example.id))
        .where(Example.dataset_id.in_([d.id for d in approves]), Example.status == "pending",
               Example.author_id.is_not(None))
        .group_by(Example.author_id)
        .order_by(func.count().desc(), Example.author_id)
        .limit(AUTHORS)
    )  # fmt: skip
    return [AuthorLine(str(author), int(n), int(last)) for author, n, last in rows]


def _item(e: Example, dataset: str) -> PendingItem:
    return PendingItem(
        example_id=e.id, dataset=dataset, source=e.source, author=e.author_id,
        channel=e.channel_id, preview=e.pending_text or e.text, label=e.label, kind=e.kind,
    )  # fmt: skip


def _runs(session: Session, datasets: list[Dataset]) -> list[RunLine]:
    names = {d.id: d.name for d in datasets}
    runs = session.scalars(
        select(TrainingRun).where(TrainingRun.dataset_id.in_(list(names)))
        .order_by(TrainingRun.id.desc()).limit(LAST_RUNS)
    )  # fmt: skip
    lines = []
    for run in runs:
        adapter = session.scalar(select(Adapter).where(Adapter.run_id == run.id))
        outcome = ""
        if run.status == "failed":
            outcome = (run.error or "failed").splitlines()[0][:120]
        elif adapter is not None:
            promoted = adapter.status in ("active", "retired")
            outcome = f"`{adapter.name}` " + ("promoted" if promoted else "not promoted")
        lines.append(RunLine(run.id, names[run.dataset_id], run.status, run.trigger,
                             run.created_at, outcome))  # fmt: skip
    return lines


def home_data(
    session: Session,
    user: str,
    chat: ChatAPI,
    admins: Iterable[str],
    *,
    pending_page: int = 0,
    dataset_page: int = 0,
) -> HomeData:
    """Everything ``user``'s Home shows, on the given pages."""
    admins = list(admins)
    seen, approves, private = visible(session, user, chat, admins)
    items, total, pending_page = _pending(session, approves, pending_page) if approves else (
        [], 0, 0)  # fmt: skip
    last_page = max(0, (len(seen) - 1) // DATASET_PAGE)
    dataset_page = max(0, min(dataset_page, last_page))
    shown = seen[dataset_page * DATASET_PAGE : (dataset_page + 1) * DATASET_PAGE]
    counts = _counts(session, [d.id for d in shown])
    is_admin = user in admins
    return HomeData(
        user=user, is_admin=is_admin, is_approver=bool(approves), pending=items,
        pending_total=total, pending_page=pending_page,
        authors=_authors(session, approves) if total else [],
        datasets=[_card(session, d, counts[d.id], private) for d in shown],
        datasets_total=len(seen), dataset_page=dataset_page,
        runs=_runs(session, seen) if is_admin else [],
    )  # fmt: skip
