"""Prefix caching in generation: prompts that share a start (a dataset's system prompt) reuse its
KV cache, and the results equal an engine that computes every prompt in full."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.engine import GenerationResult, LocalEngine, SamplingParams
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
    """The reference: the same model with every prompt computed in full."""
    with LocalEngine(tiny_model_dir, served_name=SERVED, prefix_caching=False) as eng:
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


def test_prompt_logprobs_reuse_the_shared_start_and_equal_full_computation(
    engine: LocalEngine, plain: LocalEngine
) -> None:
    """``/v1/completions``' prompt_logprobs path (HTTP label scoring) reuses a prompt's start,
    scores included; an extended prompt, another ``top`` and a fresh start all stay exact."""
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
            got = engine.prompt_logprobs(prompt, labels, top=top, with_prefix=with_prefix)
            want = plain.prompt_logprobs(prompt, labels, top=top, with_prefix=with_prefix)
            assert len(got.prefix) == len(want.prefix) == (len(prompt) - 1 if with_prefix else 0)
            got_all = [*got.prefix, *(s for row in got.rows for s in row)]
            want_all = [*want.prefix, *(s for row in want.rows for s in row)]
            for a, b in zip(got_all, want_all, strict=True):
                assert a.token_id == b.token_id
                assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
                assert a.rank == b.rank
                assert [t for t, _ in a.top] == [t for t, _ in b.top]
            assert got.next_token == want.next_token
        # cases 2 and 3 reuse at least the system prompt, with or without the prompt's scores
        assert (
            engine.metrics.prefix_tokens_reused - before
            >= 2 * len(engine.chat_prompt(brief(8)[:1])) - 4
        )
