"""Base-model resolution: the bundled GGUF converted once, folders, the local cache, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.testkit.plugin import require_in_ci
from serving.base_model import (
    FINGERPRINT_FILE,
    BaseModelMissing,
    file_sha256,
    find_bundled_gguf,
    read_fingerprint,
    resolve_base_model,
    weights_fingerprint,
)


def test_file_hash_is_cached_by_path_size_and_mtime(tmp_path: Path) -> None:
    data = tmp_path / "weights.bin"
    data.write_bytes(b"a" * 1000)
    cache = tmp_path / "cache"
    first = file_sha256(data, cache)
    assert len(first) == 64
    cache_file = next(cache.iterdir())
    key = next(iter(json.loads(cache_file.read_text())))
    # a cached value is trusted while (path, size, mtime) are unchanged …
    cache_file.write_text(json.dumps({key: "cached"}))
    assert file_sha256(data, cache) == "cached"
    # … and recomputed when the file changes
    data.write_bytes(b"b" * 1000)
    os.utime(data, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert file_sha256(data, cache) not in {"cached", first}


def test_folder_resolution_and_fingerprint(tiny_model_dir: Path, tmp_path: Path) -> None:
    resolved = resolve_base_model(str(tiny_model_dir), tmp_path / "models")
    assert resolved.path == tiny_model_dir
    assert resolved.fingerprint == read_fingerprint(tiny_model_dir)
    assert resolved.fingerprint == weights_fingerprint(tiny_model_dir)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    (copy / FINGERPRINT_FILE).unlink()
    again = resolve_base_model(str(copy), tmp_path / "models")
    assert again.fingerprint == resolved.fingerprint  # same weights, same fingerprint
    assert read_fingerprint(copy) == resolved.fingerprint  # and now recorded


def test_missing_models_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(BaseModelMissing, match="does not exist"):
        resolve_base_model(str(tmp_path / "nope"), tmp_path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelMissing, match="huggingface-cli download"):
        resolve_base_model("no-such-org/no-such-model", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelMissing, match="not a model folder"):
        resolve_base_model(str(tmp_path / "empty"), tmp_path)


@pytest.mark.slow
def test_bundled_gguf_converts_once_and_atomically(tmp_path: Path) -> None:
    """The one SmolLM2 test (~25 s): a killed conversion leaves nothing; a finished one is reused."""
    try:
        gguf = find_bundled_gguf()
    except BaseModelMissing as exc:
        require_in_ci(str(exc))
    models = tmp_path / "models"
    code = "import sys; from pathlib import Path; from serving.base_model import resolve_base_model; resolve_base_model(None, Path(sys.argv[1]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(models)], cwd=Path(__file__).parents[2]
    )
    try:  # kill it mid-conversion: once its temporary folder exists, before the rename
        while not (half := list(models.glob(f".*-{proc.pid}-*"))):
            assert proc.poll() is None, "the conversion ended before it began writing"
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    digest = file_sha256(gguf, models)
    assert not (models / digest).exists()
    assert all(p.is_dir() for p in half)  # what the killed conversion left behind
    resolved = resolve_base_model(None, models)
    assert resolved.path == models / digest
    assert resolved.name == "SmolLM2-135M-Instruct"
    meta = json.loads((resolved.path / FINGERPRINT_FILE).read_text())
    assert meta["fingerprint"] == resolved.fingerprint
    assert meta["source"].startswith("gguf:")
    assert (resolved.path / "model.safetensors").is_file()
    assert (resolved.path / "tokenizer.json").is_file()
    assert [p for p in models.iterdir() if p.is_dir()] == [resolved.path]  # no half folder
    written = {p: p.stat().st_mtime_ns for p in [models, *models.rglob("*")]}
    assert resolve_base_model(None, models) == resolved
    # no re-hash (the hash cache is rewritten on a miss), no re-conversion (no new folder)
    assert {p: p.stat().st_mtime_ns for p in [models, *models.rglob("*")]} == written
