"""Loading the sample brand (Kettle & Kite, package data in ``bot/sample_brand``).

Idempotent: datasets that exist are left as they are, and their examples (and preference pairs,
``pairs`` in brand.toml) import by content hash, so running it twice adds nothing.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from bot.datasets import parse_spec
from bot.importer import ImportResult, import_candidates, read_file
from bot.pairs_io import import_pairs, iter_pairs_file
from bot.storage.db import Database
from bot.storage.repositories import Datasets


def sample_dir() -> Path:
    return Path(str(files("bot") / "sample_brand"))


def brand_definition() -> dict[str, Any]:
    with (sample_dir() / "brand.toml").open("rb") as fh:
        return tomllib.load(fh)


def workspace() -> dict[str, Any]:
    """The console workspace: team, users and channels."""
    data: dict[str, Any] = json.loads((sample_dir() / "workspace.json").read_text("utf-8"))
    return data


def channel_messages() -> list[dict[str, str]]:
    """The sample brand's plain channel messages: {"channel": name, "user": id, "text": ...}."""
    text = (sample_dir() / "messages.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class LoadedDataset:
    name: str
    task: str
    created: bool
    result: ImportResult
    pairs: ImportResult = field(default_factory=ImportResult)


def load_sample_brand(db: Database) -> list[LoadedDataset]:
    """Create the sample brand's datasets (if missing) and import their examples."""
    loaded: list[LoadedDataset] = []
    for raw in brand_definition().get("datasets", []):
        raw = dict(raw)
        examples_file = raw.pop("examples", None)
        pairs_file = raw.pop("pairs", None)
        spec = parse_spec(raw)
        with db.session() as session:
            repo = Datasets(session)
            dataset = repo.find(spec.name)
            created = dataset is None
            if dataset is None:
                dataset = repo.create(**spec.model_dump(exclude_none=True))
            result = ImportResult()
            if examples_file:
                rows = read_file(sample_dir() / examples_file, dataset.task)
                result = import_candidates(session, dataset, rows, actor="sample_brand")
            pairs = ImportResult()
            if pairs_file:
                lines = list(iter_pairs_file(sample_dir() / pairs_file))
                pairs = import_pairs(session, dataset, lines, actor="sample_brand")
        loaded.append(LoadedDataset(spec.name, spec.task, created, result, pairs))
    return loaded
