"""Small repositories over one session each. They never commit: the caller's transaction does,
so a handler's state change and its outbox row or processed-event mark land together.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.storage.bulk import insert_rows
from bot.storage.models import (
    Adapter,
    AdapterVersion,
    AuditEntry,
    Dataset,
    Example,
    OutboxEvent,
    ProcessedEvent,
    TrainingRun,
    utcnow,
)


class UnknownDataset(LookupError):
    """No dataset of that name; the message lists the known ones."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        known_txt = (
            ", ".join(known) if known else "none yet (create one with `brandbot datasets create`)"
        )
        super().__init__(f"unknown dataset {name!r}; known datasets: {known_txt}")
        self.name = name
        self.known = list(known)


class DatasetExists(ValueError):
    pass


def _insert_for(session: Session, model: Any) -> Any:
    """An INSERT that supports ON CONFLICT DO NOTHING on the session's dialect."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


class Datasets:
    def __init__(self, session: Session) -> None:
        self.session = session

    def names(self) -> list[str]:
        return list(self.session.scalars(select(Dataset.name).order_by(Dataset.name)))

    def list(self) -> list[Dataset]:
        return list(self.session.scalars(select(Dataset).order_by(Dataset.name)))

    def find(self, name: str) -> Dataset | None:
        return self.session.scalar(select(Dataset).where(Dataset.name == name))

    def get(self, name: str) -> Dataset:
        dataset = self.find(name)
        if dataset is None:
            raise UnknownDataset(name, self.names())
        return dataset

    def create(self, name: str, task: str, **fields: Any) -> Dataset:
        if self.find(name) is not None:
            raise DatasetExists(f"dataset {name!r} already exists")
        dataset = Dataset(
            name=name, task=task, **{k: v for k, v in fields.items() if v is not None}
        )
        self.session.add(dataset)
        try:
            self.session.flush()
        except IntegrityError:
            raise DatasetExists(f"dataset {name!r} already exists") from None
        return dataset

    def update(self, dataset: Dataset, **fields: Any) -> Dataset:
        for key, value in fields.items():
            if value is not None:
                setattr(dataset, key, value)
        self.session.flush()
        return dataset


class Examples:
    def __init__(self, session: Session) -> None:
        self.session = session

    def existing_hashes(self, dataset_id: int) -> set[str]:
        rows = self.session.scalars(
            select(Example.content_hash).where(Example.dataset_id == dataset_id)
        )
        return set(rows)

    def split_by_text_key(self, dataset_id: int) -> dict[str, str]:
        """Each known text's split; held-out wins when a text is in both."""
        result: dict[str, str] = {}
        rows = self.session.execute(
            select(Example.text_key, Example.split).where(Example.dataset_id == dataset_id)
        )
        for key, split in rows:
            if result.get(key) != "heldout":
                result[key] = split
        return result

    def insert_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """Bulk insert; a row whose content hash is already in its dataset is skipped."""
        if not rows:
            return
        stmt = _insert_for(self.session, Example).on_conflict_do_nothing()
        self.session.execute(stmt, list(rows))

    def active(
        self,
        dataset_id: int,
        split: str | None = None,
        kind: str | None = "positive",
        *,
        status: str = "active",
    ) -> list[Example]:
        """The examples training uses (``status`` active), or those of another status."""
        stmt = select(Example).where(Example.dataset_id == dataset_id, Example.status == status)
        if split:
            stmt = stmt.where(Example.split == split)
        if kind:
            stmt = stmt.where(Example.kind == kind)
        return list(self.session.scalars(stmt.order_by(Example.id)))

    def counts(self, dataset_id: int) -> dict[str, Any]:
        """Counts by status, split (active only), kind, source and label (active only)."""

        def grouped(col: Any, *where: Any) -> dict[str, int]:
            stmt = (
                select(col, func.count())
                .where(Example.dataset_id == dataset_id, *where)
                .group_by(col)
            )
            return {str(k): int(n) for k, n in self.session.execute(stmt)}

        active = Example.status == "active"
        return {
            "total": sum(grouped(Example.status).values()),
            "by_status": grouped(Example.status),
            "by_split": grouped(Example.split, active),
            "by_kind": grouped(Example.kind, active),
            "by_source": grouped(Example.source, active),
            "by_label": grouped(Example.label, active, Example.label.is_not(None)),
        }


class Runs:
    def __init__(self, session: Session) -> None:
        self.session = session

    def enqueue(
        self,
        dataset: Dataset,
        *,
        trigger: str = "manual",
        requested_by: str | None = None,
        scheduled_for: dt.datetime | None = None,
    ) -> TrainingRun | None:
        """Queue a run; a scheduled run already queued for the same slot returns None."""
        values = {
            "dataset_id": dataset.id,
            "trigger": trigger,
            "requested_by": requested_by,
            "scheduled_for": scheduled_for,
            "status": "queued",
            "created_at": utcnow(),
            "example_ids": [],
            "hyperparams": {},
            "losses": [],
            "metrics": {},
        }
        stmt = _insert_for(self.session, TrainingRun).values(**values).on_conflict_do_nothing()
        result = self.session.execute(stmt.returning(TrainingRun.id))
        run_id = result.scalar()
        return None if run_id is None else self.session.get(TrainingRun, run_id)

    def latest(self, dataset_id: int) -> TrainingRun | None:
        return self.session.scalar(
            select(TrainingRun)
            .where(TrainingRun.dataset_id == dataset_id)
            .order_by(TrainingRun.id.desc())
            .limit(1)
        )


class Adapters:
    def __init__(self, session: Session) -> None:
        self.session = session

    def next_version(self) -> int:
        """Take the next number from the adapter version sequence; never reused."""
        row = AdapterVersion()
        self.session.add(row)
        self.session.flush()
        return row.id

    def create(self, dataset: Dataset, path: str, **fields: Any) -> Adapter:
        version = self.next_version()
        adapter = Adapter(
            dataset_id=dataset.id,
            name=f"{dataset.name}-v{version}",
            version=version,
            path=path,
            **fields,
        )
        self.session.add(adapter)
        self.session.flush()
        return adapter

    def active(self, dataset_id: int) -> Adapter | None:
        return self.session.scalar(
            select(Adapter).where(Adapter.dataset_id == dataset_id, Adapter.status == "active")
        )


class ProcessedEvents:
    def __init__(self, session: Session) -> None:
        self.session = session

    def claim(self, event_id: str, kind: str) -> bool:
        """Mark an event processed in the caller's transaction; False if it already was."""
        stmt = (
            _insert_for(self.session, ProcessedEvent)
            .values(event_id=event_id, kind=kind, processed_at=utcnow())
            .on_conflict_do_nothing()
            .returning(ProcessedEvent.event_id)
        )
        return self.session.execute(stmt).scalar() is not None

    def claim_many(self, event_ids: list[str], kind: str) -> set[str]:
        """``claim`` for several events in one statement; returns the ids newly claimed."""
        if not event_ids:
            return set()
        now = utcnow()
        ids = dict.fromkeys(event_ids)
        rows = [{"event_id": e, "kind": kind, "processed_at": now} for e in ids]
        table = cast(Table, ProcessedEvent.__table__)
        claimed = insert_rows(self.session, table, rows, ("event_id",), skip_conflicts=True)
        return {event_id for (event_id,) in claimed}


class Outbox:
    def __init__(self, session: Session) -> None:
        self.session = session

    def publish(self, topic: str, payload: dict[str, Any]) -> OutboxEvent:
        event = OutboxEvent(topic=topic, payload=payload)
        self.session.add(event)
        self.session.flush()
        return event

    def claim_pending(self, limit: int = 50) -> list[OutboxEvent]:
        """Undelivered events (not dead letters), locked on PostgreSQL so two consumers never
        take the same one."""
        stmt = (
            select(OutboxEvent)
            .where(OutboxEvent.delivered_at.is_(None), OutboxEvent.dead_at.is_(None))
            .order_by(OutboxEvent.id)
            .limit(limit)
        )
        if self.session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        return list(self.session.scalars(stmt))

    def mark_delivered(self, event_ids: Iterable[int]) -> None:
        ids = list(event_ids)
        if ids:
            self.session.execute(
                update(OutboxEvent).where(OutboxEvent.id.in_(ids)).values(delivered_at=utcnow())
            )


class Audit:
    """The audit log. ``details`` must hold ids, counts and hashes, never message text."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def record(
        self,
        action: str,
        *,
        actor: str | None = None,
        dataset_id: int | None = None,
        example_id: int | None = None,
        content_hash: str | None = None,
        **details: Any,
    ) -> None:
        self.session.add(
            AuditEntry(
                action=action,
                actor=actor,
                dataset_id=dataset_id,
                example_id=example_id,
                content_hash=content_hash,
                details=details,
            )
        )

    def record_many(self, action: str, entries: list[dict[str, Any]]) -> None:
        """``record`` for several entries of one action, as one batched INSERT. Each entry
        holds ``actor``, ``dataset_id``, ``example_id``, ``content_hash`` and ``details``."""
        rows = [{"action": action, **e} for e in entries]
        insert_rows(self.session, cast(Table, AuditEntry.__table__), rows)

    def entries(self, dataset_id: int | None = None) -> list[AuditEntry]:
        stmt = select(AuditEntry).order_by(AuditEntry.id)
        if dataset_id is not None:
            stmt = stmt.where(AuditEntry.dataset_id == dataset_id)
        return list(self.session.scalars(stmt))
