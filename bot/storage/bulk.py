"""Bulk INSERTs for hot paths: many rows in one short statement.

On PostgreSQL the rows travel as one JSON document that the server turns into records
(``json_to_recordset``), so the statement's text is the same whatever the number of rows:
psycopg parses it once and PostgreSQL prepares it. A multi-row ``VALUES`` list is instead a
new, long statement for each batch size (parsing it client-side cost about a tenth of the
collect path's CPU), and one array per column costs psycopg a quoting check per element (the
near-dup keys of a batch are hundreds); ``json.dumps`` writes the whole batch in C.
Elsewhere (SQLite) the rows go as an ordinary batched executemany.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import JSON, Executable, Table, Text, bindparam, cast, column, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_rows(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    returning: Sequence[str] = (),
    *,
    skip_conflicts: bool = False,
) -> list[tuple[Any, ...]]:
    """Insert ``rows`` (dicts with the same keys) into ``table`` in one round trip where the
    database allows; returns the ``returning`` columns of the inserted rows, in no particular
    order (match them to the rows by a unique key). Columns left out get their Python-side
    defaults (on PostgreSQL computed once per call). With ``skip_conflicts`` a row that
    violates a unique constraint is left out (ON CONFLICT DO NOTHING) and returns nothing."""
    if not rows:
        return []
    columns = tuple(rows[0])
    dialect = session.get_bind().dialect.name
    if dialect != "postgresql":
        stmt: Any = sqlite.insert(table) if dialect == "sqlite" else insert(table)
        if skip_conflicts:
            stmt = stmt.on_conflict_do_nothing()
        if returning:
            stmt = stmt.returning(*[table.c[name] for name in returning])
            return [tuple(row) for row in session.execute(stmt, list(rows))]
        session.execute(stmt, list(rows))
        return []
    statement = _recordset_insert(table, columns, tuple(returning), skip_conflicts)
    result = session.execute(statement, {"rows": json.dumps(rows, default=_json_value)})
    return [tuple(row) for row in result] if returning else []


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.date):  # datetimes too; PostgreSQL reads ISO 8601
        return value.isoformat()
    raise TypeError(f"a {type(value).__name__} cannot go into a bulk insert")


@lru_cache(maxsize=64)
def _recordset_insert(
    table: Table, columns: tuple[str, ...], returning: tuple[str, ...], skip_conflicts: bool
) -> Executable:
    document = cast(bindparam("rows", type_=Text), JSON)
    records = (
        func.json_to_recordset(document)
        .table_valued(*[column(name, table.c[name].type) for name in columns])
        .render_derived(name="r", with_types=True)
    )
    statement = postgresql.insert(table).from_select(
        list(columns), select(*[records.c[name] for name in columns])
    )
    if skip_conflicts:
        statement = statement.on_conflict_do_nothing()
    if returning:
        return statement.returning(*[table.c[name] for name in returning])
    return statement
