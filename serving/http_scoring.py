"""Label log-probabilities over HTTP, by one of two request shapes.

A label's score is the summed log-probability of its answer tokens (the label and the
end-of-turn token, :func:`serving.tokens.answer_tokens`), the same on every server.

- ``brandbot serve`` scores all answers in ONE ``/v1/completions`` request with
  ``prompt_logprobs`` (:func:`score_by_prompt_logprobs`): the local engine runs the shared prompt
  once, so this is the fast way there.
- vLLM must never get that request: with ``--enable-lora`` (which serving adapters needs) a
  ``prompt_logprobs`` request batched with any other sequence kills vLLM's engine core, and an
  lm_head LoRA delta can be missing from prompt log-probabilities. :func:`score_by_reads`
  therefore asks only for next-token reads, an ordinary generation request: the log-probability
  of chosen tokens at each generated position (``logprob_token_ids``, raw, before sampling
  constraints), while ``allowed_token_ids`` steers the generation along the label's tokens. No
  request carries ``prompt_logprobs``, so none can hit that crash.

The reads are exact, not an approximation: a generated position contributes only while every
token before it was the label's own; where the model strays, the next read starts from there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

Post = Callable[[str, dict[str, Any]], Any]
"""``post(path, body) -> JSON``; raises the client's errors."""

#: the oldest vLLM with ``logprob_token_ids`` on ``/v1/completions``
MIN_VLLM = (0, 32)


class ScoringUnsupported(Exception):
    """The server cannot score labels safely; the message says why and what to do."""


def score_by_prompt_logprobs(
    post: Post, model: str, prompt: list[int], answers: Sequence[list[int]]
) -> list[float]:
    """Every answer in one request (``brandbot serve`` only; see the module docstring)."""
    sequences = [prompt + answer for answer in answers]
    data = post(
        "/v1/completions",
        {
            "model": model,
            "prompt": sequences,
            "max_tokens": 1,
            "temperature": 0,
            "prompt_logprobs": 0,
        },
    )
    by_index = {c["index"]: c for c in data["choices"]}
    summed = []
    for i, full in enumerate(sequences):
        entries = by_index[i]["prompt_logprobs"]
        summed.append(
            sum(
                float(entries[pos][str(full[pos])]["logprob"])
                for pos in range(len(prompt), len(full))
            )
        )
    return summed


def score_by_reads(
    post: Post,
    model: str,
    prompt: list[int],
    answers: Sequence[list[int]],
    pool: Executor,
) -> list[float]:
    """Each answer's log-probability from next-token reads, without ``prompt_logprobs``.

    The first read, at the prompt, gives every answer's first token (and leaves the prompt in
    the server's prefix cache); then each answer's remaining tokens are read concurrently, one
    generation request per answer, continued where the model strayed from the answer.
    """
    firsts = sorted({answer[0] for answer in answers})
    _, steps = _read(post, model, prompt, firsts, max_tokens=1, force=False)
    head = steps[0]
    rests = list(pool.map(lambda answer: _rest(post, model, prompt, answer), answers))
    return [head[answer[0]] + rest for answer, rest in zip(answers, rests, strict=True)]


def _rest(post: Post, model: str, prompt: list[int], answer: list[int]) -> float:
    """Summed log-probability of ``answer[1:]`` given the prompt and ``answer[0]``."""
    total, done = 0.0, 1
    while done < len(answer):
        remaining = answer[done:]
        wanted = sorted(set(remaining))
        generated, steps = _read(
            post, model, prompt + answer[:done], wanted, max_tokens=len(remaining), force=True
        )
        if not steps:
            raise ScoringUnsupported("the model server returned no log-probabilities")
        for k, step in enumerate(steps):
            total += step[remaining[k]]
            done += 1
            if k >= len(generated) or generated[k] != remaining[k]:
                break  # later positions followed another token: read on from here
    return total


_TOKEN_ID = re.compile(r"^token_id:(\d+)$")


def _read(
    post: Post, model: str, prompt: list[int], wanted: list[int], *, max_tokens: int, force: bool
) -> tuple[list[int], list[dict[int, float]]]:
    """Generate greedily from ``prompt``; per position, the log-probability of each ``wanted``
    token. With ``force`` the generation may only pick ``wanted`` tokens."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logprobs": 1,
        "logprob_token_ids": wanted,
        "return_tokens_as_token_ids": True,
    }
    if force:
        body["allowed_token_ids"] = wanted
    data = post("/v1/completions", body)
    logprobs = data["choices"][0].get("logprobs") or {}
    generated = [_token_id(t) for t in logprobs.get("tokens") or []]
    steps = []
    for step in logprobs.get("top_logprobs") or []:
        read = {_token_id(k): float(v) for k, v in (step or {}).items()}
        if any(t not in read for t in wanted):
            raise ScoringUnsupported(
                "the model server ignored logprob_token_ids; label scoring over HTTP needs "
                "vLLM 0.32 or newer, or brandbot serve"
            )
        steps.append(read)
    return generated, steps


def _token_id(token: str) -> int:
    match = _TOKEN_ID.match(token)
    if match is None:
        raise ScoringUnsupported(
            f"the model server ignored return_tokens_as_token_ids (token {token!r})"
        )
    return int(match.group(1))


def check_vllm_version(version: str) -> None:
    """Refuse a vLLM too old to score labels without ``prompt_logprobs``."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    if len(parts) == 2 and tuple(parts) < MIN_VLLM:
        raise ScoringUnsupported(
            f"vLLM {version} cannot score labels safely: it lacks logprob_token_ids, and its "
            "prompt_logprobs path crashes the engine when LoRA is enabled; use vLLM "
            f"{MIN_VLLM[0]}.{MIN_VLLM[1]} or newer"
        )
