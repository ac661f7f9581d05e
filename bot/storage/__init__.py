"""Storage: SQLAlchemy 2 models, the engine and session factory, Alembic migrations, repositories.

SQLite (WAL, foreign keys on) is the embedded default; PostgreSQL is selected by
``BRANDBOT_DATABASE_URL``. Message text lives only in examples, drafts and predictions; the audit
log holds ids and hashes.
"""

from bot.storage.db import Database, DatabaseUnavailable
from bot.storage.models import (
    Adapter,
    AuditEntry,
    Base,
    Dataset,
    Draft,
    Example,
    OptOut,
    OutboxEvent,
    Prediction,
    ProcessedEvent,
    TrainingRun,
)

__all__ = [
    "Adapter",
    "AuditEntry",
    "Base",
    "Database",
    "DatabaseUnavailable",
    "Dataset",
    "Draft",
    "Example",
    "OptOut",
    "OutboxEvent",
    "Prediction",
    "ProcessedEvent",
    "TrainingRun",
]
