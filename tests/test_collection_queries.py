"""The collection path's PostgreSQL queries stay index lookups as a dataset grows."""

from __future__ import annotations

import json
import random

from sqlalchemy import text

from bot.collection import NEAR_CANDIDATES_PG, ApproveRequest, Collector, near_dup_keys
from bot.plugin import ChatMessage
from bot.storage import Database
from bot.storage.repositories import Datasets


def test_near_duplicate_candidates_are_index_probes_not_a_scan_of_every_key(
    postgres_url: str,
) -> None:
    db = Database(postgres_url)
    db.upgrade()
    rng = random.Random(3)
    words = ["".join(rng.choices("abcdefghijklmnop", k=rng.randint(3, 8))) for _ in range(12)]
    posts = [f"Post {i}: " + " ".join(rng.choices(words, k=24)) for i in range(301)]
    try:
        with db.session() as s:
            dataset = Datasets(s).create("copy", "draft", channels=["C1"], approvers=["U1"])
            outcomes = Collector(s).approve_many([
                ApproveRequest(dataset, ChatMessage("C1", f"1.{i}", "U2", post), approver="U1",
                               emoji="white_check_mark", kind="approve", workspace="T1")
                for i, post in enumerate(posts[:300])
            ])  # fmt: skip
            assert {o.status for o in outcomes} == {"added"}
            dataset_id = dataset.id
        wanted = [{"idx": i, "ds": dataset_id, "key": k} for i in range(2) for k in near_dup_keys(
            posts[299] if i == 0 else posts[300])]  # fmt: skip
        with db.engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            query = NEAR_CANDIDATES_PG.text
            plan = "\n".join(
                row[0]
                for row in conn.execute(text(f"EXPLAIN {query}"), {"wanted": json.dumps(wanted)})
            )
            rows = conn.execute(NEAR_CANDIDATES_PG, {"wanted": json.dumps(wanted)}).all()
        assert "Seq Scan on near_dup_keys" not in plan, plan
        assert "ix_near_dup_keys_lookup" in plan, plan
        assert [(idx, body) for idx, _, body in rows] == [(0, posts[299])]  # itself; 300 is new
    finally:
        db.dispose()
