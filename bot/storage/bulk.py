"""Bulk INSERTs for hot paths: many rows in one short statement.

On PostgreSQL every column travels as one array that the server unnests (a JSON column as one
JSON document), so the statement's text is the same whatever the number of rows: psycopg parses
it once and PostgreSQL prepares it. A multi-row ``VALUES`` list is instead a new, long statement
for each batch size, and parsing it client-side cost about a tenth of the collect path's CPU.
Elsewhere (SQLite) the rows go as an ordinary batched executemany.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import JSON, Executable, Table, Text, bindparam, cast, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
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
    statement = _unnest_insert(table, columns, tuple(returning), skip_conflicts)
    as_json = _json_columns(table)
    params = {
        f"a_{c}": json.dumps([row[c] for row in rows]) if c in as_json else [row[c] for row in rows]
        for c in columns
    }
    result = session.execute(statement, params)
    return [tuple(row) for row in result] if returning else []


@lru_cache(maxsize=64)
def _json_columns(table: Table) -> frozenset[str]:
    return frozenset(c.name for c in table.c if isinstance(c.type, JSON))


@lru_cache(maxsize=64)
def _unnest_insert(
    table: Table, columns: tuple[str, ...], returning: tuple[str, ...], skip_conflicts: bool
) -> Executable:
    arrays = []
    for name in columns:
        if name in _json_columns(table):  # one JSON array: no per-element quoting in an array
            document = cast(bindparam(f"a_{name}", type_=Text), JSON)
            arrays.append(func.json_array_elements(document))
            continue
        array_type = ARRAY(table.c[name].type)
        arrays.append(func.unnest(cast(bindparam(f"a_{name}", type_=array_type), array_type)))
    statement = postgresql.insert(table).from_select(list(columns), select(*arrays))
    if skip_conflicts:
        statement = statement.on_conflict_do_nothing()
    if returning:
        return statement.returning(*[table.c[name] for name in returning])
    return statement
