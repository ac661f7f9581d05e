"""Ticket classification on the real vLLM server through the product's HTTP client: the same
labels (and scores) as the local engine on the sample brand's tickets, with and without an
adapter, and no request that can take the engine down."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bot.samples import brand_definition, sample_dir
from serving.base_model import ResolvedModel
from serving.client import Classification, HttpClient, InferenceError, LocalClient
from serving.engine import LocalEngine
from tests.vllm.conftest import SERVED, VllmServer

pytestmark = pytest.mark.smollm2


def sample_tickets(count: int) -> tuple[list[list[dict[str, str]]], list[str]]:
    """``count`` tickets of the sample brand spread over all labels, as the classify plugin
    sends them (the dataset's system prompt, then the ticket), and the label set."""
    dataset = next(d for d in brand_definition()["datasets"] if d["name"] == "kk_tickets")
    lines = (sample_dir() / dataset["examples"]).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    step = max(1, len(records) // count)
    chosen = records[::step][:count]
    assert len(chosen) == count
    system = {"role": "system", "content": dataset["system_prompt"]}
    return [[system, r["messages"][0]] for r in chosen], list(dataset["labels"])


def classify_all(
    client: HttpClient | LocalClient,
    tickets: list[list[dict[str, str]]],
    labels: list[str],
    model: str | None,
    workers: int,
) -> list[Classification]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda m: client.classify(m, labels, model=model), tickets))


def classify_locally(
    model: ResolvedModel,
    adapter_path: Path,
    adapter: str,
    tickets: list[list[dict[str, str]]],
    labels: list[str],
) -> dict[str | None, list[Classification]]:
    """The same tickets on the local engine, in process, base and adapter."""
    with LocalEngine(model.path, served_name=SERVED) as engine:
        engine.load_adapter(adapter, adapter_path)
        client = LocalClient(engine)
        return {m: classify_all(client, tickets, labels, m, 4) for m in (None, adapter)}


def test_vllm_picks_the_local_engines_label_on_30_tickets(
    vllm: VllmServer, smollm2_model: ResolvedModel, smollm2_adapter: Path
) -> None:
    """Thirty tickets, every label among them (the 60 this test once read had no
    wholesale_inquiry), base and adapter: 600 label scores compared, each within 0.05 of the
    local engine's. More tickets take no other path, only more of vLLM-CPU's computing core.
    The adapter's tickets go 20 at a time (each a first read and ten label reads), and vLLM
    must stay healthy through them and answer a chat after."""
    tickets, labels = sample_tickets(30)
    adapter = "kk_tickets-v901"
    # vLLM-CPU computes on one core and keeps the other for its API server: the local engine
    # classifies the same tickets meanwhile, instead of after.
    with ThreadPoolExecutor(1) as side:
        local_run = side.submit(
            classify_locally, smollm2_model, smollm2_adapter, adapter, tickets, labels
        )
        http = vllm.client()
        try:
            http.load_adapter(adapter, str(smollm2_adapter))
            remote: dict[str | None, list[Classification]] = {
                None: classify_all(http, tickets, labels, None, 8)
            }
            remote[adapter] = classify_all(http, tickets, labels, adapter, 20)
            assert vllm.healthy()
            after = http.chat(tickets[0], model=adapter, max_tokens=4, temperature=0)
            assert after.usage.completion_tokens > 0
        finally:
            http.close()
        local = local_run.result()
    for model in (None, adapter):
        assert all(
            r.label in labels and sum(r.scores.values()) == pytest.approx(1) for r in remote[model]
        )
        pairs = list(zip(remote[model], local[model], strict=True))
        agree = sum(r.label == loc.label for r, loc in pairs)
        assert agree >= 29, f"{model or 'base'}: {agree}/30 labels agree"
        worst = max(abs(r.logprobs[x] - loc.logprobs[x]) for r, loc in pairs for x in labels)
        assert worst < 0.05, f"{model or 'base'}: label log-probabilities differ by {worst}"
    moved = sum(
        abs(b.logprobs[x] - a.logprobs[x]) > 0.01
        for b, a in zip(remote[None], remote[adapter], strict=True)
        for x in labels[:1]
    )
    assert moved > 22  # the adapter was applied on vLLM, not silently dropped


def test_a_vllm_too_old_for_safe_scoring_is_refused() -> None:
    """vLLM before 0.32 could only score labels with prompt_logprobs, which crashes its engine
    with LoRA enabled: the client refuses to classify there instead of sending it."""
    sent: list[str] = []

    def old_vllm(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": SERVED, "owned_by": "vllm"}]})
        if request.url.path == "/version":
            return httpx.Response(200, json={"version": "0.31.1"})
        if request.url.path == "/tokenize":
            body = json.loads(request.content)
            ids: list[int] = []
            for message in body["messages"]:
                text = [ord(c) for c in message["content"]]
                ids += [0, *text, 1, 2] if message["role"] == "assistant" else [*text, 3]
            return httpx.Response(200, json={"tokens": ids + [0] * body["add_generation_prompt"]})
        return httpx.Response(500, json={"error": {"message": "must not be called"}})

    client = HttpClient("http://vllm.test", transport=httpx.MockTransport(old_vllm), retries=0)
    with pytest.raises(InferenceError, match=r"vLLM 0\.31\.1 cannot score labels safely.*0\.32"):
        client.classify([{"role": "user", "content": "where is my parcel"}], ["a", "b"])
    assert "/v1/completions" not in sent
