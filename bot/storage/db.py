"""The engine, sessions and migrations for either database.

``Database(url)`` is cheap to make and owns one engine. ``upgrade()`` runs the Alembic
migrations shipped in ``bot/migrations``; every start calls it so a deployment never runs on an
old schema. Connection failures become ``DatabaseUnavailable`` with one readable line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

# PostgreSQL advisory lock key held while migrating, so replicas starting together migrate once.
MIGRATION_LOCK_KEY = 0x6D69677261  # "migra"; apart from the scheduler and run locks


class DatabaseUnavailable(Exception):
    """The database cannot be reached or opened; the message is one line for a person."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def migrations_config(url: str) -> Config:
    """An Alembic config for our migrations against ``url`` (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(files("bot") / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _ping_idle_connections(engine: Engine, after: float) -> None:
    """Check a pooled connection before use only when it sat idle for ``after`` seconds.

    ``pool_pre_ping`` pings on every checkout: a round trip per transaction, a tenth of a busy
    batch of events. A connection in steady use is alive; one idle long enough for the server
    to have restarted (or a proxy to have cut it) is pinged, and replaced when it is gone. Under
    load, a restart then fails at most the transactions already under way, and the pool is
    renewed by the first of those errors, as SQLAlchemy does for any disconnect.
    """

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < after:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"connection lost while idle: {exc}") from exc


class Database:
    """One database: an engine, a session factory, and its migrations."""

    def __init__(self, url: str, *, echo: bool = False, ping_after_idle: float = 10.0) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        # hide_parameters: errors and echo never carry the bound values (message text)
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            # Enough connections for the handler threads, the outbox pump and the scheduler lock.
            kwargs.update(
                pool_size=20,
                max_overflow=20,
                connect_args={"connect_timeout": 5},
            )
        self.engine: Engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            _ping_idle_connections(self.engine, ping_after_idle)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise self._unavailable(exc) from exc

    def check_connection(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except OperationalError as exc:
            raise self._unavailable(exc) from exc

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema up to ``revision`` (default: the newest).

        On PostgreSQL a transaction-level advisory lock serialises concurrent callers (bot
        replicas and the worker starting together): the first migrates, the others wait for its
        commit and then find nothing to do."""
        self.check_connection()
        cfg = migrations_config(self.url)
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def dispose(self) -> None:
        self.engine.dispose()

    def _unavailable(self, exc: OperationalError) -> DatabaseUnavailable:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return DatabaseUnavailable(f"cannot reach the database {safe_url(self.url)}: {reason}")
