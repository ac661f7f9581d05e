"""At most one active adapter per dataset, enforced by the database: a second active row is
refused, while promotion, rollback and forgetting (which retire before they activate) work."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bot.reconciler import reconcile
from bot.registry import promote, roll_back
from bot.settings import Settings
from bot.storage import Database
from bot.storage.models import Adapter
from bot.storage.repositories import Adapters, Datasets
from bot.testkit.models import build_tiny_adapter
from serving.client import LocalClient
from serving.engine import LocalEngine


def statuses(db: Database) -> dict[str, str]:
    with db.session() as s:
        return {name: status for name, status in s.execute(select(Adapter.name, Adapter.status))}


def test_a_second_active_adapter_of_a_dataset_is_refused(db: Database) -> None:
    with db.session() as s:
        ds = Datasets(s).create("kk_copy", "draft")
        other = Datasets(s).create("kk_other", "draft")
        Adapters(s).create(ds, "/a/1", status="active")
        Adapters(s).create(other, "/a/2", status="active")  # another dataset may have one
    with pytest.raises(IntegrityError), db.session() as s:
        ds = Datasets(s).get("kk_copy")
        Adapters(s).create(ds, "/a/3", status="active")
    assert sorted(statuses(db).values()) == ["active", "active"]


def test_promotion_and_rollback_keep_one_active_adapter(
    db: Database, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", base_model=str(tiny_model_dir),
                        served_model_name="brandbot-base")  # fmt: skip
    with db.session() as s:
        ds = Datasets(s).create("kk_copy", "draft")
        for seed in (1, 2):
            version = Adapters(s).next_version()
            name = f"kk_copy-v{version}"
            folder = build_tiny_adapter(tiny_model_dir, tmp_path / name,
                                        served_name="brandbot-base", seed=seed)  # fmt: skip
            s.add(Adapter(dataset_id=ds.id, name=name, version=version, path=str(folder)))
    with LocalEngine(tiny_model_dir, served_name="brandbot-base") as engine:
        client = LocalClient(engine)
        v1, v2 = sorted(statuses(db))
        for name in (v1, v2):
            with db.session() as s:
                row = s.scalars(select(Adapter).where(Adapter.name == name)).one()
                outcome = promote(s, settings, client, row, actor="test")
            assert outcome.ok, outcome.reason
        assert statuses(db) == {v1: "retired", v2: "active"}
        with db.session() as s:
            back = roll_back(s, Datasets(s).get("kk_copy"), actor="test")
        assert back.ok and back.active == v1, back.reason
        with db.session() as s:  # committed: the server follows the registry
            reconcile(s, settings, client)
        assert {m.id for m in client.models()} >= {v1} and v2 not in {m.id for m in client.models()}
    assert statuses(db) == {v1: "active", v2: "retired"}
