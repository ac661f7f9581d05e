"""Alembic environment: runs on a connection handed in by ``Database.upgrade`` or on the URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from bot.storage.models import Base

config = context.config
target_metadata = Base.metadata

# Tables that other libraries own (APScheduler's job store, which creates its own table in the
# scheduler leader: bot/bootstrap.py JOBS_TABLE) are not ours to migrate or to check.
FOREIGN_TABLES = {"apscheduler_jobs"}


def include_name(name, type_, parent_names):  # type: ignore[no-untyped-def]
    """Not even reflected: ``alembic check`` and autogenerate never see foreign tables."""
    return not (type_ == "table" and name in FOREIGN_TABLES)


def include_object(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    if type_ == "table":
        return name not in FOREIGN_TABLES
    table = getattr(obj, "table", None)  # an index or constraint of a foreign table
    return table is None or table.name not in FOREIGN_TABLES


def run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=include_name,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = config.get_main_option("sqlalchemy.url") or ""
    if config.config_file_name and os.environ.get("BRANDBOT_DATABASE_URL"):
        # Run from the command line with alembic.ini: follow the deployment's setting.
        from bot.settings import load_settings

        url = load_settings().resolved_database_url
    engine = create_engine(url, hide_parameters=True)
    with engine.begin() as conn:
        run(conn)
    engine.dispose()
