"""Held-out drafts for evaluation: every model's drafts requested at once, so the server batches
them, each capped at the dataset's length limit in tokens."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from serving.client import InferenceClient
from trainer.data import TrainExample

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called as held-out drafts finish."""

CONCURRENT_REQUESTS = 32  # the local engine's default batch; vLLM batches as many


def limit_tokens(max_length: int | None, references: Sequence[tuple[str, int]]) -> int | None:
    """A dataset's length limit (``max_length`` characters) in tokens: as many tokens as the
    densest of the ``(approved text, its tokens)`` references would need for ``max_length``
    characters, plus one. ``None`` without a limit or references."""
    densities = [tokens / len(text) for text, tokens in references if text]
    if not max_length or not densities:
        return None
    return math.ceil(max_length * max(densities)) + 1


def draft_token_cap(reference_tokens: int, max_new_tokens: int, limit: int | None = None) -> int:
    """New tokens allowed for one held-out draft, at most ``max_new_tokens``; a batch takes as
    long as its longest draft.

    With the dataset's length limit in tokens (:func:`limit_tokens`) the cap is that limit: a
    draft that reaches it is as long as the densest approved text would be at the limit, so it
    is over the limit in practice and fails the length rule as it would in ``/draft``, and a
    draft that stops before it is judged whole. Without a limit: twice the reference's tokens
    plus a few, by when chrF has judged a draft (any longer and it only loses precision)."""
    if limit:
        return max(1, min(max_new_tokens, limit))
    return max(1, min(max_new_tokens, 2 * reference_tokens + 8))


def generate_drafts(
    client: InferenceClient,
    examples: Sequence[TrainExample],
    caps: Sequence[int],
    *,
    model: str | None,
    progress: Progress | None = None,
) -> list[str]:
    """Greedy drafts of one model for every example; see :func:`generate_drafts_for`."""

    def step(_model: str | None, done: int, total: int) -> None:
        if progress is not None:
            progress(done, total)

    return generate_drafts_for(client, examples, caps, [model], progress=step)[0]


def generate_drafts_for(
    client: InferenceClient,
    examples: Sequence[TrainExample],
    caps: Sequence[int],
    models: Sequence[str | None],
    *,
    progress: Callable[[str | None, int, int], None] | None = None,
) -> list[list[str]]:
    """Greedy drafts of every model (served names; None = base) for every example; per model, in
    the examples' order. Each model's drafts are requested at once, so the server batches them,
    one model after the other: a batch of one adapter decodes with the LoRA merged into the
    weights on the local engine, while a batch mixing models runs the LoRA per row in every
    step, which costs more than the wider batch saves. ``progress(model, done, total)`` follows
    each model's drafts."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    if not examples or not models:
        return [[] for _ in models]

    def draft(example: TrainExample, cap: int, model: str | None) -> str:
        reply = client.chat(
            example.messages(with_answer=False), model=model, max_tokens=cap, temperature=0.0
        )
        return reply.text.strip()

    out: list[list[str]] = []
    workers = min(len(examples), CONCURRENT_REQUESTS)
    with ThreadPoolExecutor(workers, thread_name_prefix="brandbot-eval") as pool:
        for model in models:
            futures = [pool.submit(draft, e, c, model) for e, c in zip(examples, caps, strict=True)]
            for done, _ in enumerate(as_completed(futures), 1):
                if progress is not None:
                    progress(model, done, len(examples))
            out.append([f.result() for f in futures])
    return out
