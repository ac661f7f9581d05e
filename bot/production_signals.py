"""Production signals: how people use what the model gives them, since a point in time.

- draft revision rate: mean edit distance between the draft and what was posted, relative to
  the posted length; the share of drafts posted unedited; the time from /draft to posting.
- label correction rate: the share of resolved ticket predictions that a person corrected.
- suggested replies (reply datasets): of the suggestions people acted on, the shares posted
  unedited, posted after an edit, and dismissed; the relative edit distance; the time from the
  suggestion to the posted reply.
"""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any

from sqlalchemy import select
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
