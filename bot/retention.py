"""Retention: delete what training leaves behind once nobody can need it.

After ``retention_days``, the checkpoints of finished runs (succeeded, failed, cancelled) and the
folders of rejected and superseded (retired) adapters are deleted, by ``brandbot gc`` and by the
scheduler's leader every hour. Never deleted: a dataset's active adapter, its rollback target
(the newest retired adapter below the active version, which ``roll_back`` would restore), any
candidate, and the checkpoints of a queued or running run (a retried run resumes from them).
Only folders inside the data folder's ``adapters`` and ``runs`` are touched.

Files are deleted before the database forgets them, so a crash in between only leaves a row
pointing at a folder that is gone, which the next collection finishes; the adapter rows stay
(their metrics are history), and loading one whose files are gone is refused by its checksum
check with a sentence that says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.reconciler import desired
from bot.settings import Settings
from bot.storage.models import Adapter, TrainingRun, utcnow
from bot.storage.repositories import Audit

log = logging.getLogger("brandbot.retention")

FINISHED = ("succeeded", "failed", "cancelled")
UNFINISHED = ("queued", "running")


@dataclass
class Removal:
    kind: str  # "checkpoints" or "adapter"
    name: str  # run id or adapter name
    path: str
    bytes: int


@dataclass
class Collected:
    """What a collection deleted (or, with ``dry_run``, would delete) and what it could not."""

    dry_run: bool
    cutoff: dt.datetime
    removed: list[Removal] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(r.bytes for r in self.removed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "cutoff": self.cutoff.isoformat(),
            "removed": [asdict(r) for r in self.removed],
            "freed_bytes": self.freed_bytes,
            "errors": self.errors,
        }


def protected_adapters(session: Session) -> set[str]:
    """Names of the adapters retention never deletes: every active one, its rollback target
    (what the model server keeps loaded, :func:`bot.reconciler.desired`), and every candidate
    (a run is evaluating or promoting it)."""
    _active, keep, _drop = desired(session)
    candidates = session.scalars(select(Adapter.name).where(Adapter.status == "candidate"))
    return keep | set(candidates)


def collect_garbage(
    session: Session, settings: Settings, *, dry_run: bool = False, now: dt.datetime | None = None
) -> Collected:
    """Delete (or list, with ``dry_run``) what is older than ``settings.retention_days``."""
    cutoff = (now or utcnow()) - dt.timedelta(days=settings.retention_days)
    result = Collected(dry_run, cutoff)
    busy = {
        Path(run.checkpoint_dir).resolve()
        for run in session.scalars(select(TrainingRun).where(TrainingRun.status.in_(UNFINISHED)))
        if run.checkpoint_dir
    }
    runs = session.scalars(
        select(TrainingRun)
        .where(TrainingRun.status.in_(FINISHED), TrainingRun.finished_at <= cutoff,
               TrainingRun.checkpoint_dir.is_not(None))
        .order_by(TrainingRun.id)
    )  # fmt: skip
    for run in runs:
        folder = Path(run.checkpoint_dir or "")
        if folder.resolve() in busy:
            continue
        if _delete(result, "checkpoints", str(run.id), folder, settings.runs_dir):
            run.checkpoint_dir = None
            if not dry_run:
                _remove_if_empty(settings.runs_dir / str(run.id))
    keep = protected_adapters(session)
    adapters = session.scalars(
        select(Adapter)
        .where(Adapter.status.in_(("rejected", "retired")),
               func.coalesce(Adapter.promoted_at, Adapter.created_at) <= cutoff)
        .order_by(Adapter.id)
    )  # fmt: skip
    for adapter in adapters:
        if adapter.name in keep:
            continue
        _delete(result, "adapter", adapter.name, Path(adapter.path), settings.adapters_dir)
    if result.removed and not dry_run:
        Audit(session).record(
            "retention.collected",
            checkpoints=[r.name for r in result.removed if r.kind == "checkpoints"],
            adapters=[r.name for r in result.removed if r.kind == "adapter"],
            freed_bytes=result.freed_bytes,
        )
    if dry_run:
        session.rollback()
    return result


def _delete(result: Collected, kind: str, name: str, folder: Path, root: Path) -> bool:
    """Delete ``folder`` if it exists and lies inside ``root``; True when it is gone."""
    try:
        resolved, inside = folder.resolve(), root.resolve()
    except OSError as exc:
        result.errors.append(f"{kind} {name}: {exc}")
        return False
    if not resolved.exists():
        return True
    if not resolved.is_relative_to(inside) or resolved == inside:
        result.errors.append(f"{kind} {name}: {folder} is outside {root}; left alone")
        return False
    size = sum(p.stat().st_size for p in resolved.rglob("*") if p.is_file())
    if not result.dry_run:
        try:
            shutil.rmtree(resolved)
        except OSError as exc:
            result.errors.append(f"{kind} {name}: could not delete {folder}: {exc}")
            return False
        log.info("retention: deleted %s %s (%s)", kind, name, folder)
    result.removed.append(Removal(kind, name, str(folder), size))
    return True


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        folder.rmdir()
