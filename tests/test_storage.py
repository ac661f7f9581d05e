"""The storage layer on SQLite and on a real PostgreSQL server (``db_url`` runs both)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import delete, inspect, select, text
from sqlalchemy.exc import IntegrityError

from bot.storage import Database, DatabaseUnavailable
from bot.storage.db import migrations_config
from bot.storage.models import Adapter, AuditEntry, Example, ProcessedEvent
from bot.storage.repositories import (
    Adapters,
    Audit,
    Datasets,
    Examples,
    Outbox,
    ProcessedEvents,
    Runs,
    UnknownDataset,
)

TABLES = {
    "datasets",
    "examples",
    "training_runs",
    "adapters",
    "adapter_versions",
    "drafts",
    "predictions",
    "processed_events",
    "outbox_events",
    "audit_log",
    "opt_outs",
}


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    yield database
    database.dispose()


def test_migrations_create_every_table_and_alembic_check_is_clean(db: Database) -> None:
    assert set(inspect(db.engine).get_table_names()) >= TABLES
    assert db.current_revision() is not None
    command.check(migrations_config(db.url))  # raises if models and migrations differ


def test_upgrade_twice_is_harmless(db: Database) -> None:
    rev = db.current_revision()
    db.upgrade()
    assert db.current_revision() == rev


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    db.upgrade()
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(
            Example(
                dataset_id=999, task="draft", text="x", split="train",
                content_hash="h", text_key="k", source="import",
            )
        )  # fmt: skip
        s.flush()


def test_datasets_create_get_and_unknown_lists_known(db: Database) -> None:
    with db.session() as s:
        Datasets(s).create("kk_copy", "draft", channels=["C1AAA"], max_length=280)
        Datasets(s).create("kk_tickets", "classify", labels=["a", "b"], label_emoji={"x": "a"})
    with db.session() as s:
        ds = Datasets(s).get("kk_copy")
        assert ds.channels == ["C1AAA"]
        assert ds.max_length == 280
        assert ds.approve_emoji == ["white_check_mark"]
        assert ds.reject_emoji == ["x"]
        assert Datasets(s).get("kk_tickets").label_emoji == {"x": "a"}
        with pytest.raises(UnknownDataset) as info:
            Datasets(s).get("nope")
        assert "kk_copy" in str(info.value)
        assert "kk_tickets" in str(info.value)


def _example(dataset_id: int, digest: str, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "dataset_id": dataset_id, "task": "draft", "text": f"text {digest}", "split": "train",
        "content_hash": digest, "text_key": digest, "source": "import",
    }  # fmt: skip
    row.update(kw)
    return row


def test_examples_bulk_insert_skips_existing_hashes_and_counts(db: Database) -> None:
    with db.session() as s:
        ds = Datasets(s).create("d", "draft")
        Examples(s).insert_many([_example(ds.id, "a"), _example(ds.id, "b", split="heldout")])
    with db.session() as s:
        Examples(s).insert_many([_example(ds.id, "a"), _example(ds.id, "c")])
    with db.session() as s:
        counts = Examples(s).counts(ds.id)
        assert counts["total"] == 3
        assert counts["by_split"] == {"train": 2, "heldout": 1}
        assert counts["by_source"] == {"import": 3}
        assert Examples(s).existing_hashes(ds.id) == {"a", "b", "c"}


def test_one_example_per_slack_message(db: Database) -> None:
    with db.session() as s:
        ds = Datasets(s).create("d", "draft")
        Examples(s).insert_many([_example(ds.id, "a", channel_id="C1", message_ts="1.1")])
    with db.session() as s:
        Examples(s).insert_many([_example(ds.id, "b", channel_id="C1", message_ts="1.1")])
        assert Examples(s).counts(ds.id)["total"] == 1


def test_adapter_versions_come_from_a_sequence_and_are_never_reused(db: Database) -> None:
    with db.session() as s:
        ds = Datasets(s).create("d", "draft")
        first = Adapters(s).create(ds, "/a/1")
        second = Adapters(s).create(ds, "/a/2")
    assert second.version > first.version
    assert second.name == f"d-v{second.version}"
    with db.session() as s:
        s.execute(delete(Adapter).where(Adapter.id == second.id))
    with db.session() as s:
        third = Adapters(s).create(Datasets(s).get("d"), "/a/3")
    assert third.version > second.version


def test_failed_transaction_leaves_no_processed_event(db: Database) -> None:
    with db.session() as s:
        assert ProcessedEvents(s).claim("Ev1", "reaction_added") is True
    with db.session() as s:
        assert ProcessedEvents(s).claim("Ev1", "reaction_added") is False
    with pytest.raises(RuntimeError), db.session() as s:
        assert ProcessedEvents(s).claim("Ev2", "message") is True
        raise RuntimeError("handler failed")
    with db.session() as s:
        ids = set(s.scalars(select(ProcessedEvent.event_id)))
        assert ids == {"Ev1"}
        assert ProcessedEvents(s).claim("Ev2", "message") is True


def test_outbox_publish_claim_and_deliver_once(db: Database) -> None:
    with db.session() as s:
        Outbox(s).publish("run.finished", {"run_id": 1})
        Outbox(s).publish("adapter.promoted", {"adapter": "d-v1"})
    with db.session() as s:
        pending = Outbox(s).claim_pending()
        assert [e.topic for e in pending] == ["run.finished", "adapter.promoted"]
        Outbox(s).mark_delivered([pending[0].id])
    with db.session() as s:
        assert [e.topic for e in Outbox(s).claim_pending()] == ["adapter.promoted"]


def test_scheduled_run_is_unique_per_dataset_and_slot(db: Database) -> None:
    slot = dt.datetime(2026, 11, 30, 6, 0, tzinfo=dt.UTC)
    with db.session() as s:
        ds = Datasets(s).create("d", "draft")
        assert Runs(s).enqueue(ds, trigger="schedule", scheduled_for=slot) is not None
    with db.session() as s:
        ds = Datasets(s).get("d")
        assert Runs(s).enqueue(ds, trigger="schedule", scheduled_for=slot) is None
        manual_1 = Runs(s).enqueue(ds)
        manual_2 = Runs(s).enqueue(ds)
        assert manual_1 is not None
        assert manual_2 is not None
        assert manual_1.id != manual_2.id
        latest = Runs(s).latest(ds.id)
        assert latest is not None
        assert latest.id == manual_2.id


def test_audit_log_keeps_ids_and_hashes(db: Database) -> None:
    with db.session() as s:
        Audit(s).record("examples.withdraw", actor="U1", dataset_id=1, example_id=2,
                        content_hash="ab" * 32, reason="reaction_removed")  # fmt: skip
    with db.session() as s:
        (entry,) = s.scalars(select(AuditEntry)).all()
        assert entry.action == "examples.withdraw"
        assert entry.details == {"reason": "reaction_removed"}
        columns = {c.name for c in AuditEntry.__table__.columns}
        assert not columns & {"text", "prompt", "message"}


def test_unreachable_database_is_one_clear_line() -> None:
    db = Database("postgresql+psycopg://bot:secret@127.0.0.1:1/brandbot")
    with pytest.raises(DatabaseUnavailable) as info:
        db.upgrade()
    message = str(info.value)
    assert message.startswith("cannot reach the database postgresql+psycopg://bot:***@127.0.0.1:1")
    assert "secret" not in message
    assert "\n" not in message


def test_postgres_is_really_postgres(postgres_url: str) -> None:
    db = Database(postgres_url)
    with db.engine.connect() as conn:
        assert "PostgreSQL" in conn.execute(text("select version()")).scalar_one()


def test_claim_many_claims_each_new_id_once(db: Database) -> None:
    with db.session() as s:
        assert ProcessedEvents(s).claim_many(["Ev1", "Ev2", "Ev1"], "reaction") == {"Ev1", "Ev2"}
    with db.session() as s:
        assert ProcessedEvents(s).claim_many(["Ev2", "Ev3"], "reaction") == {"Ev3"}
        assert ProcessedEvents(s).claim_many([], "reaction") == set()


def test_bulk_audit_entries_keep_their_details(db: Database) -> None:
    entries = [
        {"actor": f"U{i}", "dataset_id": None, "example_id": i, "content_hash": f"h{i}",
         "details": {"kind": "positive", "n": i}}
        for i in range(3)
    ]  # fmt: skip
    with db.session() as s:
        Audit(s).record_many("example.add", entries)
    with db.session() as s:
        got = [(e.actor, e.example_id, e.details) for e in Audit(s).entries()]
    assert got == [(f"U{i}", i, {"kind": "positive", "n": i}) for i in range(3)]


def _backend_pid(db: Database) -> int:
    with db.session() as s:
        return int(s.execute(text("select pg_backend_pid()")).scalar_one())


@pytest.mark.parametrize("ping_after_idle", [0.0, 3600.0])
def test_a_connection_lost_while_idle_is_replaced_when_it_was_idle_long_enough(
    postgres_url: str, ping_after_idle: float
) -> None:
    db, admin = Database(postgres_url, ping_after_idle=ping_after_idle), Database(postgres_url)
    try:
        pid = _backend_pid(db)  # the pool keeps this connection
        with admin.session() as s:
            assert s.execute(text("select pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
        if ping_after_idle:  # in steady use nothing pings: the dead connection fails once
            with pytest.raises(DatabaseUnavailable):
                _backend_pid(db)
        assert _backend_pid(db) != pid
    finally:
        db.dispose()
        admin.dispose()
