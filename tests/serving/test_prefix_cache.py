"""Prefix caching in generation: prompts that share a start (a dataset's system prompt) reuse its
KV cache, and the results equal an engine that computes every prompt in full."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from serving.engine import GenerationResult, LocalEngine, SamplingParams
from serving.inference_types import TokenScore
from tests.serving.conftest import SERVED, AdapterFactory, unique_name

GREEDY = SamplingParams(max_tokens=10, temperature=0, logprobs=True, top_logprobs=2)
SYSTEM = "You write for Kettle & Kiln, a pottery studio. " * 6


def brief(i: int, system: str = SYSTEM) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Write a tagline for mug number {i}." + " please" * i},
    ]


@pytest.fixture(scope="module")
def plain(tiny_model_dir: Path) -> Iterator[LocalEngine]:
    """The reference: the same model with every prompt computed in full, scored the plain way."""
    with LocalEngine(
        tiny_model_dir, served_name=SERVED, prefix_caching=False, fast_scoring=False
    ) as eng:
        yield eng


def same(a: GenerationResult, b: GenerationResult) -> None:
    assert a.text == b.text
    assert a.completion_tokens == b.completion_tokens
    assert a.prompt_tokens == b.prompt_tokens
    assert a.logprobs is not None
    assert b.logprobs is not None
    for x, y in zip(a.logprobs, b.logprobs, strict=True):
        assert x.token_id == y.token_id
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4)


def test_a_shared_system_prompt_is_computed_once_and_results_do_not_change(
    engine: LocalEngine, plain: LocalEngine
) -> None:
    engine.chat(brief(0), GREEDY).result()  # computes the system prompt
    before = engine.metrics.prefix_tokens_reused
    one = engine.chat(brief(1), GREEDY).result()
    reused_one = engine.metrics.prefix_tokens_reused - before
    system_tokens = len(engine.chat_prompt(brief(1)[:1]))
    assert reused_one >= system_tokens - 2  # the template's end of turn may differ
    same(one, plain.chat(brief(1), GREEDY).result())

    # a batch mixing reuse lengths: full reuse, another system prompt (no reuse), a repeat
    prompts = [brief(2), brief(3, system="Short other brand voice."), brief(1), brief(7)]
    handles = [engine.chat(p, GREEDY) for p in prompts]
    for p, handle in zip(prompts, handles, strict=True):
        same(handle.result(), plain.chat(p, GREEDY).result())
    assert plain.metrics.prefix_tokens_reused == 0


def test_prompts_admitted_together_compute_their_shared_start_once(
    engine: LocalEngine, plain: LocalEngine
) -> None:
    system = "You write for Tide & Thread, a sail loft. " * 6  # never seen by this engine
    prompts = [brief(i, system) for i in range(4)]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(30)

    holder = threading.Thread(target=engine.run, args=(hold,))
    holder.start()
    try:
        assert held.wait(30)
        before = engine.metrics.prefix_tokens_reused
        handles = [engine.chat(p, GREEDY) for p in prompts]  # admitted in one step
    finally:
        release.set()
        holder.join()
    results = [h.result() for h in handles]
    system_tokens = len(engine.chat_prompt(prompts[0][:1]))
    assert engine.metrics.prefix_tokens_reused - before >= 4 * (system_tokens - 2)
    for p, result in zip(prompts, results, strict=True):
        same(result, plain.chat(p, GREEDY).result())


def test_a_prompt_cached_for_one_adapter_is_not_reused_for_another(
    engine: LocalEngine, plain: LocalEngine, make_adapter: AdapterFactory
) -> None:
    name = unique_name()
    path = make_adapter(seed=31, scale=2.0)
    engine.load_adapter(name, path)
    plain.load_adapter(name, path)
    try:
        engine.chat(brief(4), GREEDY).result()  # the base model's cache of this prompt
        before = engine.metrics.prefix_tokens_reused
        first = engine.chat(brief(4), GREEDY, model=name).result()
        assert engine.metrics.prefix_tokens_reused == before  # nothing of the base's reused
        same(first, plain.chat(brief(4), GREEDY, model=name).result())
        mixed = [engine.chat(brief(5), GREEDY, model=m) for m in (name, SERVED, name)]
        for model, handle in zip((name, SERVED, name), mixed, strict=True):
            same(handle.result(), plain.chat(brief(5), GREEDY, model=model).result())
        assert engine.metrics.prefix_tokens_reused > before
    finally:
        engine.unload_adapter(name)
        plain.unload_adapter(name)
    internal_names = set(engine._prompt_kv)
    assert internal_names <= {"__base__"}  # the unloaded adapter's cache went with it


def same_score(score: TokenScore, reference: torch.Tensor, top: int) -> None:
    """``score`` against the reference log-probabilities of its position. The random tiny model
    predicts almost uniformly, so tokens tie within float rounding: a rank or an alternative is
    right if it is right for some reading of the reference within 1e-4."""
    value = float(reference[score.token_id])
    assert score.logprob == pytest.approx(value, abs=1e-4)
    lowest = int((reference > value + 1e-4).sum()) + 1
    highest = int((reference >= value - 1e-4).sum())
    assert lowest <= score.rank <= highest
    assert len(score.top) == top
    if top:
        floor = float(torch.topk(reference, top).values[-1])
        for token, logprob in score.top:
            assert logprob == pytest.approx(float(reference[token]), abs=1e-4)
            assert logprob >= floor - 1e-4


def test_prompt_logprobs_reuse_the_shared_start_and_equal_full_computation(
    engine: LocalEngine, plain: LocalEngine, tiny_model_dir: Path
) -> None:
    """``/v1/completions``' prompt_logprobs path (HTTP label scoring) reuses a prompt's start,
    scores included; an extended prompt, another ``top`` and a fresh start all stay exact: the
    fast path (token tree, cached prompt) and the general one (a padded row per label, every
    prompt in full) both equal a plain transformers forward pass of each whole sequence."""
    assert engine.fast_scoring
    assert not plain.fast_scoring
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    base = engine.chat_prompt(brief(8))
    labels = [engine.tokenizer.encode(w, add_special_tokens=False) for w in ("billing", "bug")]
    cases = [
        (base, 0),
        (engine.chat_prompt(brief(9)), 0),  # shares the system prompt
        (base + labels[0], 0),  # the previous prompt extended: its last token's score is new
        (engine.chat_prompt(brief(9)), 2),  # other ``top``: scores cannot be reused
        (engine.chat_prompt(brief(9, system="Another brand entirely.")), 0),
    ]
    for with_prefix in (True, False):
        before = engine.metrics.prefix_tokens_reused
        for prompt, top in cases:
            with torch.no_grad():
                references = [
                    torch.log_softmax(model(torch.tensor([prompt + label])).logits[0], dim=-1)
                    for label in labels
                ]
            for scoring in (engine, plain):
                got = scoring.prompt_logprobs(prompt, labels, top=top, with_prefix=with_prefix)
                assert len(got.prefix) == (len(prompt) - 1 if with_prefix else 0)
                for position, score in enumerate(got.prefix):
                    assert score.token_id == prompt[position + 1]
                    same_score(score, references[0][position], top)
                for label, row, reference in zip(labels, got.rows, references, strict=True):
                    assert [s.token_id for s in row] == label
                    for j, score in enumerate(row):
                        same_score(score, reference[len(prompt) - 1 + j], top)
                for token, reference in zip(got.next_token, references, strict=True):
                    assert float(reference[-1][token]) >= float(reference[-1].max()) - 1e-4
        # cases 2 and 3 reuse at least the system prompt, with or without the prompt's scores
        assert (
            engine.metrics.prefix_tokens_reused - before
            >= 2 * len(engine.chat_prompt(brief(8)[:1])) - 4
        )
