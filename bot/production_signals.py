"""Production signals: how people use what the model gives them, since a point in time.

- draft revision rate: mean edit distance between the draft and what was posted, relative to
  the posted length; the share of drafts posted unedited; the time from /draft to posting.
- label correction rate: the share of resolved ticket predictions that a person corrected.
- suggested replies (reply datasets): of the suggestions people acted on, the shares posted
  unedited, posted after an edit, and dismissed; the relative edit distance; the time from the
  suggestion to the posted reply.
- per adapter version (``version_signals``): the same editing numbers for the drafts and
  replies each version wrote, so a team sees whether a new version saves editing.
"""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.storage.models import Dataset, Draft, Prediction, Suggestion


def production_signals(
    session: Session, dataset: Dataset, since: dt.datetime | None = None
) -> dict[str, Any]:
    drafts_q = select(Draft).where(Draft.dataset_id == dataset.id, Draft.status == "posted")
    preds_q = select(Prediction).where(
        Prediction.dataset_id == dataset.id, Prediction.status.in_(("confirmed", "corrected"))
    )
    if since is not None:
        drafts_q = drafts_q.where(Draft.posted_at > since)
        preds_q = preds_q.where(Prediction.resolved_at > since)
    drafts = list(session.scalars(drafts_q))
    predictions = list(session.scalars(preds_q))
    relative = [
        (d.edit_distance or 0) / max(1, len(d.final_text or ""))
        for d in drafts
        if d.edit_distance is not None
    ]
    minutes = [
        (d.posted_at - d.requested_at).total_seconds() / 60
        for d in drafts
        if d.posted_at and d.requested_at
    ]
    corrected = sum(p.status == "corrected" for p in predictions)
    return {
        **suggestion_signals(session, dataset, since),
        "since": since.isoformat() if since else None,
        "drafts_posted": len(drafts),
        "draft_revision_rate": round(statistics.fmean(relative), 4) if relative else None,
        "mean_edit_distance": (
            round(statistics.fmean(d.edit_distance or 0 for d in drafts), 2) if drafts else None
        ),
        "share_posted_unedited": (
            round(sum((d.edit_distance or 0) == 0 for d in drafts) / len(drafts), 4)
            if drafts
            else None
        ),
        "median_minutes_to_approved_draft": round(statistics.median(minutes), 2)
        if minutes
        else None,
        "predictions_resolved": len(predictions),
        "label_correction_rate": round(corrected / len(predictions), 4) if predictions else None,
    }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def suggestion_signals(
    session: Session, dataset: Dataset, since: dt.datetime | None = None
) -> dict[str, Any]:
    """What agents did with the suggested replies resolved since ``since``."""
    query = select(Suggestion).where(
        Suggestion.dataset_id == dataset.id, Suggestion.status.in_(("posted", "dismissed"))
    )
    if since is not None:
        query = query.where(Suggestion.resolved_at > since)
    rows = list(session.scalars(query))
    posted = [r for r in rows if r.status == "posted"]
    unedited = sum((r.edit_distance or 0) == 0 for r in posted)
    relative = [(r.edit_distance or 0) / max(1, len(r.final_text or "")) for r in posted]
    minutes = [
        (r.resolved_at - r.suggested_at).total_seconds() / 60
        for r in posted
        if r.resolved_at and r.suggested_at
    ]
    return {
        "suggestions_resolved": len(rows),
        "share_suggestions_posted_unedited": _share(unedited, len(rows)),
        "share_suggestions_posted_edited": _share(len(posted) - unedited, len(rows)),
        "share_suggestions_dismissed": _share(len(rows) - len(posted), len(rows)),
        "suggestion_revision_rate": round(statistics.fmean(relative), 4) if relative else None,
        "median_minutes_to_posted_reply": round(statistics.median(minutes), 2) if minutes else None,
    }


BASE = "base"


@dataclass(frozen=True)
class EditStats:
    """What people did with one adapter version's posted texts (``n`` of them)."""

    n: int
    revision_rate: float | None
    share_unedited: float | None
    median_minutes: float | None


@dataclass(frozen=True)
class VersionSignals:
    """One adapter version (``base`` when no adapter was active) in production: its posted
    drafts and, for reply datasets, its posted suggested replies. ``first_at`` is when the
    version first produced something that was posted, which orders versions in time."""

    name: str
    first_at: dt.datetime
    drafts: EditStats
    replies: EditStats


def _edit_stats(rows: list[tuple[int | None, int | None, float | None]]) -> EditStats:
    """``rows``: (edit distance, posted length, minutes to post) per posted text; a text with
    no recorded distance counts in ``n`` and the shares but not in the revision rate."""
    if not rows:
        return EditStats(0, None, None, None)
    relative = [d / max(1, length or 0) for d, length, _ in rows if d is not None]
    minutes = [m for _, _, m in rows if m is not None]
    return EditStats(
        n=len(rows),
        revision_rate=round(statistics.fmean(relative), 4) if relative else None,
        share_unedited=_share(sum((d or 0) == 0 for d, _, _ in rows), len(rows)),
        median_minutes=round(statistics.median(minutes), 2) if minutes else None,
    )


def version_signals(
    session: Session, dataset: Dataset, names: list[str] | None = None
) -> list[VersionSignals]:
    """Per adapter version, in the order the versions were first used: revision rate (mean
    edit distance relative to the posted length), share posted unedited and median minutes
    from the request to posting, of posted drafts and of posted suggested replies.

    A rollback does not split a version: its texts before and after count as one point.
    ``names`` limits the answer to those versions (``base`` for no adapter).
    """
    drafts = select(
        func.coalesce(Draft.adapter_name, BASE), Draft.edit_distance,
        func.length(Draft.final_text), Draft.requested_at, Draft.posted_at,
    ).where(Draft.dataset_id == dataset.id, Draft.status == "posted",
            Draft.posted_at.is_not(None))  # fmt: skip
    replies = select(
        func.coalesce(Suggestion.adapter_name, BASE), Suggestion.edit_distance,
        func.length(Suggestion.final_text), Suggestion.suggested_at, Suggestion.resolved_at,
    ).where(Suggestion.dataset_id == dataset.id, Suggestion.status == "posted",
            Suggestion.resolved_at.is_not(None))  # fmt: skip
    if names is not None:
        drafts = drafts.where(func.coalesce(Draft.adapter_name, BASE).in_(names))
        replies = replies.where(func.coalesce(Suggestion.adapter_name, BASE).in_(names))
    per: list[dict[str, list[tuple[int | None, int | None, float | None]]]] = [{}, {}]
    first: dict[str, dt.datetime] = {}
    for query, out in ((drafts, per[0]), (replies, per[1])):
        for version, distance, length, began, ended in session.execute(query):
            minutes = (ended - began).total_seconds() / 60 if began else None
            out.setdefault(version, []).append((distance, length, minutes))
            at = began or ended
            first[version] = min(first.get(version, at), at)
    order = sorted(first, key=lambda v: (first[v], v))
    return [
        VersionSignals(v, first[v], _edit_stats(per[0].get(v, [])), _edit_stats(per[1].get(v, [])))
        for v in order
    ]
