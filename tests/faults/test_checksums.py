"""Adapter checksums: training writes a sha256 manifest; promotion, rollback and the loading of
active adapters refuse an adapter whose files were corrupted or written only partly, and the
active adapter stays."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.reconciler import reconcile
from bot.registry import promote, roll_back
from bot.settings import Settings
from bot.storage import Database
from bot.storage.models import Adapter
from bot.storage.repositories import Datasets
from serving.adapter_checksums import MANIFEST, manifest_checksum, verify_adapter_files
from serving.adapters import ADAPTER_WEIGHTS
from serving.base_model import read_fingerprint
from serving.client import LocalClient
from serving.engine import LocalEngine
from trainer.config import defaults_for
from trainer.data import TrainExample
from trainer.lora import train_lora

ROOT = Path(__file__).resolve().parents[2]
SERVED = "brandbot-base"


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real adapter trained on the tiny model (shared: tests copy it before damaging it)."""
    lines = (ROOT / "bot" / "sample_brand" / "copy.jsonl").read_text(encoding="utf-8")
    examples = []
    for line in lines.splitlines()[:12]:
        messages = json.loads(line)["messages"]
        examples.append(TrainExample("You write copy.", messages[0]["content"],
                                     messages[-1]["content"]))  # fmt: skip
    config = defaults_for("draft", epochs=2, threads=1, max_length=192, batch_tokens=256,
                          learning_rate=1e-2, checkpoint_every=0, min_examples=4, rank=4,
                          alpha=8)  # fmt: skip
    out = tmp_path_factory.mktemp("trained") / "kk_copy-v1"
    train_lora(tiny_model_dir, examples, config, out, served_model_name=SERVED,
               base_fingerprint=read_fingerprint(tiny_model_dir) or "")  # fmt: skip
    return out


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[LocalClient]:
    with LocalEngine(tiny_model_dir, served_name=SERVED) as engine:
        yield LocalClient(engine)


def register(db: Database, trained: Path, tmp_path: Path, versions: int) -> list[str]:
    """``versions`` copies of the trained adapter as kk_copy-v1..vN, with their checksums."""
    names = []
    with db.session() as s:
        ds = Datasets(s).create("kk_copy", "draft")
        for version in range(1, versions + 1):
            name = f"kk_copy-v{version}"
            folder = tmp_path / name
            shutil.copytree(trained, folder)
            s.add(Adapter(dataset_id=ds.id, name=name, version=version, path=str(folder),
                          base_fingerprint=json.loads((folder / "brandbot_adapter.json")
                                                      .read_text())["base_fingerprint"],
                          weights_fingerprint=manifest_checksum(folder)))  # fmt: skip
            names.append(name)
    return names


def statuses(db: Database) -> dict[str, str]:
    with db.session() as s:
        return {name: status for name, status in s.execute(select(Adapter.name, Adapter.status))}


def try_promote(db: Database, settings: Settings, client: LocalClient, name: str) -> str | None:
    with db.session() as s:
        row = s.scalars(select(Adapter).where(Adapter.name == name)).one()
        outcome = promote(s, settings, client, row, actor="test")
    return None if outcome.ok else outcome.reason


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def test_training_writes_a_manifest_of_every_file(trained: Path) -> None:
    manifest = json.loads((trained / MANIFEST).read_text())
    assert {"adapter_config.json", ADAPTER_WEIGHTS, "brandbot_adapter.json"} <= set(
        manifest["files"]
    )
    checksum = manifest_checksum(trained)
    assert checksum is not None and len(checksum) == 64
    assert verify_adapter_files(trained, checksum) == []


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda f: flip_a_byte(f / ADAPTER_WEIGHTS), "does not match its sha256"),
        (lambda f: cut(f / ADAPTER_WEIGHTS), "cut short or partially written"),
        (lambda f: (f / "adapter_config.json").unlink(), "adapter_config.json is missing"),
        (lambda f: (f / MANIFEST).unlink(), "written or copied only partly"),
        (lambda f: (f / MANIFEST).write_text('{"format": 1, "files": {}}\n'),
         "does not match the checksum recorded"),
    ],
    ids=["flipped-byte", "cut-weights", "missing-config", "missing-manifest", "other-manifest"],
)  # fmt: skip
def test_promotion_refuses_a_damaged_adapter_and_the_active_one_stays(
    db: Database, trained: Path, tmp_path: Path, client: LocalClient, damage: object,
    expected: str,
) -> None:  # fmt: skip
    settings = Settings(data_dir=tmp_path / "data", served_model_name=SERVED)
    v1, v2 = register(db, trained, tmp_path, 2)
    assert try_promote(db, settings, client, v1) is None
    damage(tmp_path / v2)  # type: ignore[operator]
    reason = try_promote(db, settings, client, v2)
    assert reason is not None and expected in reason, reason
    assert statuses(db) == {v1: "active", v2: "candidate"}
    assert v2 not in {m.id for m in client.models()}
    assert v1 in {m.id for m in client.models()}
    client.unload_adapter(v1)


def test_a_damaged_adapter_is_neither_loaded_again_nor_rolled_back_to(
    db: Database, trained: Path, tmp_path: Path, client: LocalClient,
) -> None:  # fmt: skip
    settings = Settings(data_dir=tmp_path / "data", served_model_name=SERVED)
    v1, v2 = register(db, trained, tmp_path, 2)
    assert try_promote(db, settings, client, v1) is None
    assert try_promote(db, settings, client, v2) is None
    flip_a_byte(tmp_path / v1 / ADAPTER_WEIGHTS)  # the rollback target
    with db.session() as s:
        back = roll_back(s, Datasets(s).get("kk_copy"), actor="test")
    assert not back.ok and "does not match its sha256" in back.reason
    assert statuses(db) == {v1: "retired", v2: "active"}
    client.unload_adapter(v2)  # as after a restart of the model server
    client.unload_adapter(v1)
    cut(tmp_path / v2 / ADAPTER_WEIGHTS)
    with db.session() as s:
        done = reconcile(s, settings, client)
    assert done.loaded == [] and "cut short" in done.problems[0]  # not loaded half-written
    assert v2 not in {m.id for m in client.models()}
