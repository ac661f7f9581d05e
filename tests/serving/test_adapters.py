"""Adapter lint, deployment with canary, and rollback against a real server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from serving.adapters import (
    ADAPTER_META,
    VLLM_LORA_RANKS,
    deploy_adapter,
    lint_adapter,
    rollback,
    vllm_lora_rank,
)
from serving.client import HttpClient
from tests.serving.conftest import API_KEY, SERVED, AdapterFactory, unique_name


@pytest.fixture
def client(server_url: str) -> HttpClient:
    return HttpClient(server_url, api_key=API_KEY, retries=0)


def lint(folder: Path, fingerprint: str, max_rank: int = 16) -> list[str]:
    result = lint_adapter(
        folder, served_model_name=SERVED, base_fingerprint=fingerprint, max_lora_rank=max_rank
    )
    assert result.ok == (not result.reasons)
    return result.reasons


def test_good_adapter_passes_lint(good_adapter: Path, base_fingerprint: str) -> None:
    assert lint(good_adapter, base_fingerprint) == []


def test_lint_refusals(make_adapter: AdapterFactory, base_fingerprint: str, tmp_path: Path) -> None:
    wrong_base = make_adapter(served_name="someone-else")
    assert any("trained for another base" in r for r in lint(wrong_base, base_fingerprint))
    assert any("another base" in r for r in lint(make_adapter(), "0" * 64))
    assert any(
        "above the server's --max-lora-rank 8" in r
        for r in lint(make_adapter(rank=16), base_fingerprint, 8)
    )
    assert any("DoRA" in r for r in lint(make_adapter(use_dora=True), base_fingerprint))
    saved = make_adapter(modules_to_save=["lm_head"])
    assert any("modules_to_save" in r for r in lint(saved, base_fingerprint))
    mlp = make_adapter(targets=("q_proj", "embed_tokens"))
    assert any("not LoRA targets vLLM supports" in r for r in lint(mlp, base_fingerprint))
    damaged = tmp_path / "damaged"
    shutil.copytree(make_adapter(), damaged)
    weights = damaged / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert any("damaged" in r for r in lint(damaged, base_fingerprint))
    no_meta = tmp_path / "no-meta"
    shutil.copytree(make_adapter(), no_meta)
    (no_meta / ADAPTER_META).unlink()
    assert any("fingerprint" in r for r in lint(no_meta, base_fingerprint))


def test_vllm_rank_values() -> None:
    assert vllm_lora_rank(4) == 8
    assert vllm_lora_rank(16) == 16
    assert vllm_lora_rank(17) == 32
    assert set(VLLM_LORA_RANKS) >= {8, 16, 32, 64}
    with pytest.raises(ValueError, match="exceeds"):
        vllm_lora_rank(1024)


def test_deploy_canary_and_rollback(
    client: HttpClient, good_adapter: Path, make_adapter: AdapterFactory, base_fingerprint: str
) -> None:
    first = unique_name("ops")
    result = deploy_adapter(
        client, first, good_adapter, served_model_name=SERVED,
        base_fingerprint=base_fingerprint, max_lora_rank=16,
    )  # fmt: skip
    assert result.ok, result.reasons
    assert result.canary is not None
    assert result.canary.ok
    assert result.in_use == first
    listed = {m.id: m for m in client.models()}
    assert listed[first].parent == SERVED

    # an adapter that changes nothing (zero B matrices) fails the canary and is unloaded
    inert = make_adapter(scale=0.0)
    second = unique_name("ops")
    failed = deploy_adapter(
        client, second, inert, served_model_name=SERVED, base_fingerprint=base_fingerprint,
        max_lora_rank=16, previous=first,
    )  # fmt: skip
    assert not failed.ok
    assert any("canary" in r for r in failed.reasons)
    assert failed.in_use == first
    assert second not in {m.id for m in client.models()}

    # a lint failure never reaches the server
    third = unique_name("ops")
    refused = deploy_adapter(
        client, third, make_adapter(use_dora=True), served_model_name=SERVED,
        base_fingerprint=base_fingerprint, max_lora_rank=16, previous=first,
    )  # fmt: skip
    assert not refused.ok
    assert any("DoRA" in r for r in refused.reasons)

    # a good new version, then roll back to the first
    fourth = unique_name("ops")
    newer = deploy_adapter(
        client, fourth, make_adapter(seed=5), served_model_name=SERVED,
        base_fingerprint=base_fingerprint, max_lora_rank=16, previous=first,
    )  # fmt: skip
    assert newer.ok, newer.reasons
    back = rollback(client, current=fourth, previous=first)
    assert back.ok
    assert back.in_use == first
    names = {m.id for m in client.models()}
    assert first in names
    assert fourth not in names
    # the same name is never deployed twice
    again = deploy_adapter(
        client, first, good_adapter, served_model_name=SERVED,
        base_fingerprint=base_fingerprint, max_lora_rank=16,
    )  # fmt: skip
    assert not again.ok
    assert "never reused" in again.reasons[0]
    client.unload_adapter(first)
    unversioned = deploy_adapter(
        client, "Brand", good_adapter, served_model_name=SERVED,
        base_fingerprint=base_fingerprint, max_lora_rank=16,
    )  # fmt: skip
    assert not unversioned.ok
    assert "<dataset>-v<N>" in unversioned.reasons[0]


def test_adapter_meta_is_json(good_adapter: Path, base_fingerprint: str) -> None:
    meta = json.loads((good_adapter / ADAPTER_META).read_text())
    assert meta["base_fingerprint"] == base_fingerprint
