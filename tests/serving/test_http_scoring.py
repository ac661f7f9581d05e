"""Label scores over HTTP on a server that only offers next-token reads (vLLM's request shape),
against a small deterministic stand-in for vLLM: the sums must be exact where the greedy
generation strays from a label, each request must run one model, and none may carry
``prompt_logprobs``. The real vLLM agreement test is tests/vllm/test_vllm_classify.py."""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from serving.client import HttpClient
from serving.http_scoring import score_by_reads

VOCAB = 24
EOS = 2


def model_logprobs(context: list[int], model: str) -> list[float]:
    """A fixed next-token distribution for every context (and model)."""
    rng = random.Random(f"{model}:{context}")
    logits = [rng.gauss(0.0, 2.0) for _ in range(VOCAB)]
    top = max(logits)
    norm = top + math.log(sum(math.exp(x - top) for x in logits))
    return [x - norm for x in logits]


def exact(prompt: list[int], answer: list[int], model: str) -> float:
    return sum(model_logprobs(prompt + answer[:k], model)[answer[k]] for k in range(len(answer)))


class FakeVllm:
    """``/v1/completions`` as vLLM answers it for these reads: greedy generation restricted to
    ``allowed_token_ids``, raw log-probabilities of ``logprob_token_ids`` at each position,
    tokens as ``token_id:N``."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.bodies.append(body)
        assert "prompt_logprobs" not in body
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        allowed = body.get("allowed_token_ids") or list(range(VOCAB))
        choices = []
        for index, prompt in enumerate(prompts):
            context, tokens, tops = list(prompt), [], []
            for _ in range(body["max_tokens"]):
                lp = model_logprobs(context, body["model"])
                tops.append({f"token_id:{t}": lp[t] for t in body["logprob_token_ids"]})
                chosen = max(allowed, key=lambda t: lp[t])
                tokens.append(f"token_id:{chosen}")
                context.append(chosen)
                if chosen == EOS:
                    break
            choices.append({"index": index, "logprobs": {"tokens": tokens, "top_logprobs": tops}})
        return {"choices": choices}

    def post(self, path: str, body: dict[str, Any]) -> Any:
        assert path == "/v1/completions"
        return self.complete(json.loads(json.dumps(body)))


ANSWERS = [
    [5, 9, 7, 11, EOS],
    [6, 9, 7, EOS],
    [8, 7, 9, 11, 13, EOS],
    [10, 13, EOS],
    [12, EOS],
    [14, 9, 9, 9, 7, EOS],
]


@pytest.mark.parametrize("model", ["base", "tickets-v3"])
def test_reads_sum_exactly_where_the_generation_strays(model: str) -> None:
    fake = FakeVllm()
    prompt = [1, 3, 4, 15, 16, 17]
    with ThreadPoolExecutor(4) as pool:
        scores = score_by_reads(fake.post, model, prompt, ANSWERS, pool)
    for answer, score in zip(ANSWERS, scores, strict=True):
        assert score == pytest.approx(exact(prompt, answer, model), abs=1e-9)
    assert {b["model"] for b in fake.bodies} == {model}
    # the head read, one read per answer, and more where the generation strayed
    assert len(fake.bodies) > 1 + len(ANSWERS)


def fake_vllm_transport(
    fake: FakeVllm, render: Callable[[list[dict[str, str]], bool], list[int]], paths: list[str]
) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "base", "owned_by": "vllm"}]})
        if request.url.path == "/version":
            return httpx.Response(200, json={"version": "0.32.0"})
        body = json.loads(request.content)
        if request.url.path == "/tokenize":
            return httpx.Response(
                200, json={"tokens": render(body["messages"], body["add_generation_prompt"])}
            )
        if request.url.path == "/v1/completions":
            return httpx.Response(200, json=fake.complete(body))
        return httpx.Response(404, json={"error": {"message": request.url.path}})

    return httpx.MockTransport(handle)


LABEL_TOKENS = {"billing": [5, 9], "bug": [6], "shipping": [8, 7, 9], "other": [10]}


def chatml(messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    """A ChatML-like template over a toy vocabulary: 0 opens a turn, EOS ends it, 3 is the
    newline after it; an assistant's label is its tokens, any other text one token."""
    ids: list[int] = []
    for message in messages:
        if message["role"] == "assistant":
            content = LABEL_TOKENS.get(message["content"], [])
        else:
            content = [15 + len(message["content"]) % 8]
        ids += [0, *content, EOS, 3]
    return ids + [0] * generation_prompt


def test_label_tokens_are_learned_once_per_label_set() -> None:
    fake = FakeVllm()
    paths: list[str] = []
    transport = fake_vllm_transport(fake, chatml, paths)
    client = HttpClient("http://vllm.test", transport=transport, retries=0)
    labels = list(LABEL_TOKENS)
    for ticket in ["refund please", "my parcel is late", "hello"]:
        chat = [{"role": "system", "content": "sort"}, {"role": "user", "content": ticket}]
        result = client.classify(chat, labels)
        prompt = chatml(chat, True)
        for label in labels:
            assert result.logprobs[label] == pytest.approx(
                exact(prompt, [*LABEL_TOKENS[label], EOS], "base"), abs=1e-9
            )
    # 2 + 4 renders for the first ticket (prompt, empty answer, each label), 2 for the others
    assert paths.count("/tokenize") == 6 + 2 + 2


def test_a_template_whose_answers_depend_on_the_chat_is_tokenized_every_time() -> None:
    def numbered(messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        ids = chatml(messages, generation_prompt)
        if messages[-1]["role"] == "assistant":  # the answer carries the turn count
            ids = [*ids[:-2], 16 + len(messages) % 4, *ids[-2:]]
        return ids

    fake = FakeVllm()
    paths: list[str] = []
    client = HttpClient(
        "http://vllm.test", transport=fake_vllm_transport(fake, numbered, paths), retries=0
    )
    labels = list(LABEL_TOKENS)
    for turns in (1, 2):
        chat = [{"role": "user", "content": f"ticket {i}"} for i in range(turns)]
        result = client.classify(chat, labels)
        prompt = numbered(chat, True)
        for label in labels:
            answer = [*LABEL_TOKENS[label], 16 + (turns + 1) % 4]  # up to the closing's first
            assert result.logprobs[label] == pytest.approx(exact(prompt, answer, "base"))
    assert paths.count("/tokenize") == 2 * (2 + len(labels))
