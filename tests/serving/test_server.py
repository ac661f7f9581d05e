"""`brandbot serve`'s HTTP API on a real port, driven by the official openai client and ours."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import cast

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from serving.client import HttpClient, InferenceError, LocalClient
from serving.engine import LocalEngine
from tests.serving.conftest import API_KEY, SERVED, unique_name

AUTH = {"Authorization": f"Bearer {API_KEY}"}

MESSAGES = [{"role": "user", "content": "Is this ticket about billing or a bug?"}]
# The same list as the openai client types a chat (its message TypedDicts are plain dicts).
OAI_MESSAGES = cast("list[ChatCompletionMessageParam]", MESSAGES)
LABELS = ["billing", "bill", "bug", "other"]


@pytest.fixture
def oai(server_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture
def client(server_url: str) -> HttpClient:
    return HttpClient(server_url, api_key=API_KEY, retries=0)


def test_openai_chat_completion(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model=SERVED, messages=OAI_MESSAGES, max_tokens=8, temperature=0, logprobs=True,
        top_logprobs=2,
    )  # fmt: skip
    choice = out.choices[0]
    assert choice.finish_reason in {"stop", "length"}
    assert out.usage is not None
    assert out.usage.completion_tokens <= 8
    assert choice.logprobs is not None
    assert choice.logprobs.content
    assert len(choice.logprobs.content[0].top_logprobs) == 2


def test_openai_streaming(oai: openai.OpenAI, client: HttpClient) -> None:
    stream = oai.chat.completions.create(
        model=SERVED, messages=OAI_MESSAGES, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None
    full = oai.chat.completions.create(
        model=SERVED, messages=OAI_MESSAGES, max_tokens=16, temperature=0
    )
    assert text == full.choices[0].message.content
    ours = "".join(client.stream_chat(MESSAGES, max_tokens=16, temperature=0))
    assert ours == text


def test_n_choices(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(
        model=SERVED, messages=OAI_MESSAGES, max_tokens=4, temperature=1.0, n=3
    )
    assert [c.index for c in out.choices] == [0, 1, 2]


def test_choice_constrained_answer(oai: openai.OpenAI, engine: LocalEngine) -> None:
    out = oai.chat.completions.create(
        model=SERVED, messages=OAI_MESSAGES, max_tokens=8, temperature=0,
        extra_body={"structured_outputs": {"choice": LABELS}},
    )  # fmt: skip
    scores = engine.score_labels(MESSAGES, LABELS)
    assert out.choices[0].message.content == LABELS[scores.index(max(scores))]


def test_classify_over_http_equals_in_process(client: HttpClient, engine: LocalEngine) -> None:
    remote = client.classify(MESSAGES, LABELS)
    local = LocalClient(engine).classify(MESSAGES, LABELS)
    assert remote.label == local.label
    assert remote.label in LABELS
    assert sum(remote.scores.values()) == pytest.approx(1.0)
    for label in LABELS:
        assert remote.scores[label] == pytest.approx(local.scores[label], abs=1e-4)
    assert remote.scores["bill"] != pytest.approx(remote.scores["billing"])


def test_unknown_model_is_404_listing_names(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="nope-v9", messages=OAI_MESSAGES, max_tokens=2)
    assert SERVED in str(err.value)
    assert err.value.status_code == 404


def test_malformed_request_names_the_field(server_url: str) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = f"{server_url}/v1/chat/completions"
    r = httpx.post(url, json={"model": SERVED}, headers=headers)
    assert r.status_code == 400
    assert "messages" in r.json()["error"]["message"]
    r = httpx.post(
        url, json={"model": SERVED, "messages": MESSAGES, "temperature": "hot"}, headers=headers
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "temperature"
    r = httpx.post(url, content=b"{not json", headers=headers)
    assert r.status_code == 400


def test_over_long_prompt_states_the_limit(oai: openai.OpenAI) -> None:
    long: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 700}]
    with pytest.raises(openai.BadRequestError, match="512"):
        oai.chat.completions.create(model=SERVED, messages=long, max_tokens=2)


def test_api_key_required(server_url: str) -> None:
    assert httpx.get(f"{server_url}/v1/models").status_code == 401
    bad = openai.OpenAI(base_url=f"{server_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(f"{server_url}/health").status_code == 200


def test_every_route_but_health_needs_the_key(server_url: str) -> None:
    tokenize = {"prompt": "hello"}
    near = {"Authorization": f"Bearer {API_KEY[:-1]}x"}  # same length, one byte off
    for headers in ({}, near, {"Authorization": API_KEY}):
        assert (
            httpx.post(f"{server_url}/tokenize", json=tokenize, headers=headers).status_code == 401
        )
        assert httpx.get(f"{server_url}/metrics", headers=headers).status_code == 401
        assert httpx.get(f"{server_url}/nowhere", headers=headers).status_code == 401
    assert httpx.post(f"{server_url}/tokenize", json=tokenize, headers=AUTH).status_code == 200
    assert httpx.get(f"{server_url}/metrics", headers=AUTH).status_code == 200


def test_adapter_lifecycle_over_http(
    oai: openai.OpenAI, client: HttpClient, good_adapter: Path, server_url: str
) -> None:
    name = unique_name()
    client.load_adapter(name, str(good_adapter))
    try:
        listed = {m.id: m for m in oai.models.list().data}
        extra = listed[name].model_extra
        assert extra is not None
        assert extra["parent"] == SERVED
        assert extra["root"] == str(good_adapter)
        with pytest.raises(InferenceError) as again:
            client.load_adapter(name, str(good_adapter))
        assert again.value.status == 400
        with pytest.raises(InferenceError):
            client.load_adapter(SERVED, str(good_adapter))
        out = client.chat(MESSAGES, model=name, max_tokens=4, temperature=0)
        assert out.usage.completion_tokens >= 1
    finally:
        client.unload_adapter(name)
    assert name not in {m.id for m in client.models()}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(
        f"{server_url}/v1/unload_lora_adapter", json={"lora_name": name}, headers=headers
    )
    assert r.status_code == 404


def test_eight_concurrent_http_requests_are_batched(
    client: HttpClient, engine: LocalEngine
) -> None:
    results: list[str] = []
    barrier = threading.Barrier(8)
    engine.metrics.reset_peak()

    def one(i: int) -> None:
        barrier.wait()
        messages = [{"role": "user", "content": f"Write tagline {i}"}]
        results.append(client.chat(messages, max_tokens=150, temperature=0.9).finish_reason)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    metrics = httpx.get(f"{client.url}/metrics", headers=AUTH).text
    peak = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("brandbot_engine_batch_size_max ")
    )
    assert peak >= 4
    assert engine.metrics.max_batch_seen >= 4
    assert "brandbot_engine_step_batch_size_bucket" in metrics


def test_completions_prompt_logprobs_shape(server_url: str, engine: LocalEngine) -> None:
    ids = engine.chat_prompt(MESSAGES)
    r = httpx.post(
        f"{server_url}/v1/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": SERVED, "prompt": [ids, ids[:-1]], "max_tokens": 1, "temperature": 0,
              "prompt_logprobs": 1},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    first = choices[0]["prompt_logprobs"]
    assert first[0] is None
    assert len(first) == len(ids)
    assert str(ids[1]) in first[1]
    assert len(choices[1]["prompt_logprobs"]) == len(ids) - 1
