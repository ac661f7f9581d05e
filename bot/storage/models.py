"""The whole data model (docs/architecture.md walks through it) as SQLAlchemy 2 typed models.

Lists and maps (channels, labels, emoji) are JSON columns: they are read and written whole and
never queried inside. Times are timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TASKS = ("draft", "classify")
EXAMPLE_STATUSES = ("active", "pending", "withdrawn")
EXAMPLE_KINDS = ("positive", "negative", "preference")
EXAMPLE_SOURCES = ("reaction", "draft", "correction", "import", "suggestion")
# Where a preference pair came from; "discard" pairs are weak (a discarded draft of a brief
# another draft of which was posted).
PAIR_SOURCES = ("edit", "variant", "regenerate", "discard", "reply_edit", "import")
SPLITS = ("train", "heldout")
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ADAPTER_STATUSES = ("candidate", "active", "rejected", "retired")
REPLY_MODES = ("off", "thread", "ephemeral")
SUGGESTION_STATUSES = (
    "waiting", "queued", "offered", "generating", "ready", "posted", "dismissed", "failed",
)  # fmt: skip

# An integer key that is BIGINT on PostgreSQL and the rowid alias on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        list[str]: JSON,
        dict[str, str]: JSON,
        dt.datetime: DateTime(timezone=True),
    }


class Dataset(Base):
    """A named collection of examples for one task, with everything the bot needs to run it."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)
    task: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    channels: Mapped[list[str]] = mapped_column(default=list)
    approve_emoji: Mapped[list[str]] = mapped_column(default=lambda: ["white_check_mark"])
    reject_emoji: Mapped[list[str]] = mapped_column(default=lambda: ["x"])
    labels: Mapped[list[str]] = mapped_column(default=list)
    label_emoji: Mapped[dict[str, str]] = mapped_column(default=dict)
    approvers: Mapped[list[str]] = mapped_column(default=list)
    approver_groups: Mapped[list[str]] = mapped_column(default=list)
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    max_length: Mapped[int | None] = mapped_column(Integer, default=None)
    banned_words: Mapped[list[str]] = mapped_column(default=list)
    required_words: Mapped[list[str]] = mapped_column(default=list)
    ticket_channels: Mapped[list[str]] = mapped_column(default=list)
    reply_mode: Mapped[str] = mapped_column(String(16), default="off")
    reply_channel_modes: Mapped[dict[str, str]] = mapped_column(default=dict)
    report_channel: Mapped[str | None] = mapped_column(String(64), default=None)
    schedule_cron: Mapped[str] = mapped_column(String(64), default="0 6 * * 1")
    schedule_timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    min_new_examples: Mapped[int] = mapped_column(Integer, default=10)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    examples: Mapped[list[Example]] = relationship(back_populates="dataset", lazy="raise")


class Example(Base):
    """One training pair (or labelled ticket) with its provenance and its stored split."""

    __tablename__ = "examples"
    __table_args__ = (
        UniqueConstraint("dataset_id", "content_hash"),
        UniqueConstraint("dataset_id", "channel_id", "message_ts"),
        Index("ix_examples_dataset_status_split", "dataset_id", "status", "split"),
        Index("ix_examples_dataset_text_key", "dataset_id", "text_key"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(16))
    prompt: Mapped[str | None] = mapped_column(Text, default=None)
    prompt_source: Mapped[str | None] = mapped_column(String(16), default=None)
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(64), default=None)
    kind: Mapped[str] = mapped_column(String(16), default="positive")
    status: Mapped[str] = mapped_column(String(16), default="active")
    split: Mapped[str] = mapped_column(String(8))
    content_hash: Mapped[str] = mapped_column(String(64))
    text_key: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    workspace_id: Mapped[str | None] = mapped_column(String(32), default=None)
    channel_id: Mapped[str | None] = mapped_column(String(32), default=None)
    message_ts: Mapped[str | None] = mapped_column(String(32), default=None)
    thread_ts: Mapped[str | None] = mapped_column(String(32), default=None)
    author_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    approver_id: Mapped[str | None] = mapped_column(String(32), default=None)
    # The person the prompt came from (a ticket's customer, a thread's author), for erasure.
    subject_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    # An edit of an approved message, waiting for an approver; ``text`` stays the approved one.
    pending_text: Mapped[str | None] = mapped_column(Text, default=None)
    # A preference pair (``kind="preference"``): ``text`` is the chosen (posted) answer to
    # ``prompt`` and this the rejected one (what the model wrote).
    rejected_text: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="examples", lazy="raise")


class Approval(Base):
    """One person's approve or reject reaction on an example's message.

    An example stays active while it has at least one; the last one removed withdraws it.
    """

    __tablename__ = "approvals"

    example_id: Mapped[int] = mapped_column(
        ForeignKey("examples.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    emoji: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # approve | reject | label
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class NearDupKey(Base):
    """Locality-sensitive band keys of an example's text, to find near-duplicates by lookup."""

    __tablename__ = "near_dup_keys"
    __table_args__ = (Index("ix_near_dup_keys_lookup", "dataset_id", "band_key"),)

    example_id: Mapped[int] = mapped_column(
        ForeignKey("examples.id", ondelete="CASCADE"), primary_key=True
    )
    band_key: Mapped[str] = mapped_column(String(40), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(BigId)


class ChannelNotice(Base):
    """The consent notice the bot posts once when it joins a dataset channel."""

    __tablename__ = "channel_notices"

    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    posted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    message_ts: Mapped[str | None] = mapped_column(String(32), default=None)


class TrainingRun(Base):
    """A training run: queued, claimed by one worker, finished with metrics or an error."""

    __tablename__ = "training_runs"
    __table_args__ = (
        UniqueConstraint("dataset_id", "scheduled_for"),
        Index("ix_training_runs_status", "status"),
        # One running run per dataset: two workers never train a dataset at once.
        Index(
            "uq_training_runs_one_running",
            "dataset_id",
            unique=True,
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    trigger: Mapped[str] = mapped_column(String(16), default="manual")
    requested_by: Mapped[str | None] = mapped_column(String(32), default=None)
    scheduled_for: Mapped[dt.datetime | None] = mapped_column(default=None)
    example_ids: Mapped[list[Any]] = mapped_column(default=list)
    hyperparams: Mapped[dict[str, Any]] = mapped_column(default=dict)
    base_model: Mapped[str | None] = mapped_column(String(512), default=None)
    base_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    losses: Mapped[list[Any]] = mapped_column(default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    checkpoint_dir: Mapped[str | None] = mapped_column(String(1024), default=None)
    duration_s: Mapped[float | None] = mapped_column(Float, default=None)
    tokens_per_s: Mapped[float | None] = mapped_column(Float, default=None)
    peak_memory_mb: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    # Until when the worker owns the run; its heartbeat extends it (bot/run_claims.py).
    lease_until: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class AdapterVersion(Base):
    """The adapter version sequence: one row per version ever handed out, never reused.

    A table with an autoincrement key is a sequence on both databases (SQLite's AUTOINCREMENT
    guarantees no reuse even after deletes), so ``<dataset>-v<N>`` names stay immutable.
    """

    __tablename__ = "adapter_versions"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Adapter(Base):
    """A trained LoRA adapter ``<dataset>-v<N>`` with its metrics and promotion state."""

    __tablename__ = "adapters"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version"),
        # At most one active adapter per dataset, whoever promotes or rolls back.
        Index(
            "uq_adapters_one_active",
            "dataset_id",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64), unique=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL"), default=None
    )
    path: Mapped[str] = mapped_column(String(1024))
    weights_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    base_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    decision: Mapped[str | None] = mapped_column(Text, default=None)
    needs_retrain: Mapped[bool] = mapped_column(default=False)
    # The Home tab's chart of the metric history up to this version, as uploaded to chat
    # (a Slack file id), so it is uploaded once and reused.
    chart_file: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Draft(Base):
    """A ``/draft`` request, what the model wrote, and what was finally posted."""

    __tablename__ = "drafts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    adapter_name: Mapped[str | None] = mapped_column(String(64), default=None)
    brief: Mapped[str] = mapped_column(Text)
    variants: Mapped[list[str]] = mapped_column(default=list)
    # Texts a regeneration replaced, oldest first: the posted text is preferred over them.
    replaced: Mapped[list[str]] = mapped_column(default=list)
    text: Mapped[str | None] = mapped_column(Text, default=None)
    final_text: Mapped[str | None] = mapped_column(Text, default=None)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    requested_by: Mapped[str] = mapped_column(String(32), index=True)
    posted_by: Mapped[str | None] = mapped_column(String(32), default=None)
    discarded_by: Mapped[str | None] = mapped_column(String(32), default=None)
    channel_id: Mapped[str | None] = mapped_column(String(32), default=None)
    message_ts: Mapped[str | None] = mapped_column(String(32), default=None)
    edit_distance: Mapped[int | None] = mapped_column(Integer, default=None)
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    posted_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # A Post press's claim (status ``posting``): when, which variant, from which workspace; the
    # text and the presser are in final_text and posted_by. A crash before the post is recorded
    # leaves these for the sweep that settles the draft.
    claimed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    claim_index: Mapped[int | None] = mapped_column(Integer, default=None)
    claim_team: Mapped[str | None] = mapped_column(String(32), default=None)


class Prediction(Base):
    """A ticket classification shown in chat, and whether a person confirmed or corrected it."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("dataset_id", "channel_id", "message_ts"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    adapter_name: Mapped[str | None] = mapped_column(String(64), default=None)
    channel_id: Mapped[str | None] = mapped_column(String(32), default=None)
    message_ts: Mapped[str | None] = mapped_column(String(32), default=None)
    author_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    text: Mapped[str | None] = mapped_column(Text, default=None)
    label: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    corrected_label: Mapped[str | None] = mapped_column(String(64), default=None)
    resolved_by: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Suggestion(Base):
    """A suggested reply to one support ticket, from a reply dataset's adapter.

    One row per (dataset, ticket), so a ticket never gets two suggestions, retries and restarts
    included. ``status``: waiting (for the ticket's label) -> queued -> offered (ephemeral mode:
    an agent must ask) -> generating -> ready -> posted | dismissed; failed when the model could
    not be reached. ``ticket_text`` is purged by retention and by ``forget``.
    """

    __tablename__ = "suggestions"
    __table_args__ = (UniqueConstraint("dataset_id", "channel_id", "ticket_ts"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    channel_id: Mapped[str] = mapped_column(String(32))
    ticket_ts: Mapped[str] = mapped_column(String(32))
    author_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    ticket_text: Mapped[str | None] = mapped_column(Text, default=None)
    label: Mapped[str | None] = mapped_column(String(64), default=None)
    mode: Mapped[str] = mapped_column(String(16), default="thread")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    adapter_name: Mapped[str | None] = mapped_column(String(64), default=None)
    text: Mapped[str | None] = mapped_column(Text, default=None)
    final_text: Mapped[str | None] = mapped_column(Text, default=None)
    cut_chars: Mapped[int] = mapped_column(Integer, default=0)
    message_ts: Mapped[str | None] = mapped_column(String(32), default=None)
    reply_ts: Mapped[str | None] = mapped_column(String(32), default=None)
    requested_by: Mapped[str | None] = mapped_column(String(32), default=None)
    resolved_by: Mapped[str | None] = mapped_column(String(32), default=None)
    edit_distance: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    suggested_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class ProcessedEvent(Base):
    """A chat event that took effect; written in the handler's own transaction."""

    __tablename__ = "processed_events"

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    processed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class OutboxEvent(Base):
    """An internal event written with the state change that caused it, delivered once.

    A delivery that fails is tried again from ``available_at`` (later after each attempt);
    after the last allowed attempt ``dead_at`` is set and the row waits for a person.
    """

    __tablename__ = "outbox_events"
    __table_args__ = (Index("ix_outbox_events_pending", "delivered_at", "dead_at", "available_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    topic: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    available_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    dead_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)


class Job(Base):
    """Slow work queued by a handler (a classification, a draft, a brief), written in the
    handler's transaction so a restart cannot lose it (bot/durable.py).

    ``target`` names the callable (``module:Class.method`` of a loaded plugin, or
    ``module:function``); ``args`` are its JSON arguments after the services. ``status``:
    queued -> running (leased until ``lease_until``) -> deleted when done; dead after the last
    allowed attempt.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_due", "status", "available_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(256))
    args: Mapped[list[Any]] = mapped_column(default=list)
    with_services: Mapped[bool] = mapped_column(default=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[dt.datetime | None] = mapped_column(default=None)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """Who did what to which example or dataset. Ids and hashes only, never message text."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str | None] = mapped_column(String(32), default=None)
    action: Mapped[str] = mapped_column(String(64))
    dataset_id: Mapped[int | None] = mapped_column(BigId, default=None)
    example_id: Mapped[int | None] = mapped_column(BigId, default=None)
    content_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class OptOut(Base):
    """A person who asked that their messages not be collected."""

    __tablename__ = "opt_outs"

    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


__all__ = [
    "ADAPTER_STATUSES",
    "EXAMPLE_KINDS",
    "EXAMPLE_SOURCES",
    "EXAMPLE_STATUSES",
    "PAIR_SOURCES",
    "REPLY_MODES",
    "RUN_STATUSES",
    "SPLITS",
    "SUGGESTION_STATUSES",
    "TASKS",
    "Adapter",
    "AdapterVersion",
    "Approval",
    "AuditEntry",
    "Base",
    "ChannelNotice",
    "Dataset",
    "Draft",
    "Example",
    "Job",
    "NearDupKey",
    "OptOut",
    "OutboxEvent",
    "Prediction",
    "ProcessedEvent",
    "Suggestion",
    "TrainingRun",
]
