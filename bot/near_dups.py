"""Finding near-duplicate examples by their stored MinHash band keys (``near_dup_keys``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TypeVar, cast

from sqlalchemy import Table, bindparam, select, text
from sqlalchemy.orm import Session

from bot.storage.models import Example, NearDupKey

_T = TypeVar("_T")
EXAMPLES = cast(Table, Example.__table__)
ACTIVE_TEXTS = select(EXAMPLES.c.id, EXAMPLES.c.text).where(
    EXAMPLES.c.id.in_(bindparam("ids", expanding=True)), EXAMPLES.c.status == "active"
)
NEAR_CANDIDATES_PG = text("""
    SELECT c.idx, c.example_id, e.text
    FROM (
        SELECT w.idx, k.example_id
        FROM json_to_recordset(CAST(:wanted AS json)) AS w(idx integer, ds bigint, key varchar)
        CROSS JOIN LATERAL (
            SELECT example_id FROM near_dup_keys
            WHERE dataset_id = w.ds AND band_key = w.key OFFSET 0
        ) AS k
        GROUP BY w.idx, k.example_id
        HAVING count(*) >= 2
    ) AS c
    CROSS JOIN LATERAL (
        SELECT text FROM examples WHERE id = c.example_id AND status = 'active' OFFSET 0
    ) AS e
""")

NEAR_KEYS_SQLITE = text("""
    SELECT example_id, dataset_id, band_key FROM near_dup_keys
    WHERE dataset_id IN (SELECT value FROM json_each(:datasets))
      AND band_key IN (SELECT value FROM json_each(:keys))
""")


def near_candidates(
    session: Session, wanted: list[tuple[int, int, tuple[str, ...]]]
) -> tuple[dict[int, list[int]], dict[int, str]]:
    """For each (index, dataset id, band keys): the active stored examples that share at
    least two of its LSH band keys (one shared band is mostly chance at the similarities
    that matter); and those examples' texts.

    PostgreSQL counts the shared keys itself and returns candidates with their texts in
    one query, probing the lookup index once per wanted key (``LATERAL ... OFFSET 0``).
    Elsewhere the matching keys are fetched and counted here.
    """
    found: dict[int, list[int]] = {index: [] for index, _, _ in wanted}
    texts: dict[int, str] = {}
    if not wanted:
        return found, texts
    if session.get_bind().dialect.name == "postgresql":
        rows_in = [{"idx": index, "ds": ds, "key": k} for index, ds, keys in wanted for k in keys]
        rows = session.execute(NEAR_CANDIDATES_PG, {"wanted": json.dumps(rows_in)})
        for index, example_id, text_ in rows:
            found[int(index)].append(int(example_id))
            texts[int(example_id)] = text_
        return found, texts
    holders: dict[tuple[int, str], list[int]] = {}
    datasets = sorted({ds for _, ds, _ in wanted})
    band_keys = sorted({k for _, _, keys in wanted for k in keys})
    held: Iterable[Any]
    if session.get_bind().dialect.name == "sqlite":  # one JSON parameter, not one per key
        held = session.execute(
            NEAR_KEYS_SQLITE, {"datasets": json.dumps(datasets), "keys": json.dumps(band_keys)}
        )
    else:
        held = session.execute(
            select(NearDupKey.example_id, NearDupKey.dataset_id, NearDupKey.band_key).where(
                NearDupKey.dataset_id.in_(datasets), NearDupKey.band_key.in_(band_keys)
            )
        )
    for example_id, dataset_id, band_key in held:
        holders.setdefault((dataset_id, band_key), []).append(int(example_id))
    shared = {index: shared_twice(ds, keys, holders) for index, ds, keys in wanted}
    ids = {c for found_ in shared.values() for c in found_}
    if ids:
        rows = session.connection().execute(ACTIVE_TEXTS, {"ids": list(ids)})
        texts = {int(example_id): text_ for example_id, text_ in rows}
    for index, candidates in shared.items():
        found[index] = [c for c in candidates if c in texts]
    return found, texts


def shared_twice(
    dataset_id: int, keys: tuple[str, ...], holders: dict[tuple[int, str], list[_T]]
) -> list[_T]:
    """The holders of at least two of these band keys, in first-seen order."""
    counts: dict[_T, int] = {}
    for key in keys:
        for holder in holders.get((dataset_id, key), ()):
            counts[holder] = counts.get(holder, 0) + 1
    return [holder for holder, n in counts.items() if n >= 2]
