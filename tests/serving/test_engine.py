"""The local engine on a tiny real model: batching, sampling, scoring, adapters."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from serving.engine import (
    AdapterError,
    LocalEngine,
    PromptTooLong,
    SamplingParams,
    UnknownModel,
    pick_device,
    softmax,
)
from tests.serving.conftest import SERVED, AdapterFactory, unique_name

GREEDY = SamplingParams(max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)


def prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": "word " * (i * 3) + f"Write tagline {i}."}]


def test_pick_device_uses_fp32_on_cpu() -> None:
    device, dtype = pick_device("cpu")
    assert device.type == "cpu"
    assert dtype == torch.float32


def test_batched_generation_equals_one_at_a_time(engine: LocalEngine) -> None:
    singles = [engine.chat(prompt(i), GREEDY).result() for i in range(5)]
    handles = [engine.chat(prompt(i), GREEDY) for i in range(5)]
    batched = [h.result() for h in handles]
    for one, many in zip(singles, batched, strict=True):
        assert one.text == many.text
        assert one.completion_tokens == many.completion_tokens == 12
        assert one.logprobs is not None
        assert many.logprobs is not None
        for a, b in zip(one.logprobs, many.logprobs, strict=True):
            assert a.token_id == b.token_id
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
            assert len(a.top) == 3


def test_one_row_decode_steps_run_on_one_thread(tiny_model_dir: Path) -> None:
    """A lone sequence decodes on one thread; prefills and batched steps keep them all, and
    the engine's thread count is back afterwards."""
    before = torch.get_num_threads()
    steps: list[tuple[tuple[int, ...], int]] = []
    try:
        with LocalEngine(tiny_model_dir, served_name=SERVED, threads=2) as eng:
            assert eng.packed_linears > 0  # the CPU fast path the switch belongs to

            def record(_m: object, args: tuple[torch.Tensor, ...]) -> None:
                steps.append((tuple(args[0].shape), torch.get_num_threads()))

            # every step embeds its ids, through transformers' forward or the lean step
            eng._base.model.embed_tokens.register_forward_pre_hook(record)
            eng.chat(prompt(1), GREEDY).result()
            eng.run(lambda: steps.append(((0, 0), torch.get_num_threads())))
            handles = [eng.chat(prompt(i), GREEDY) for i in range(4)]
            for h in handles:
                h.result()
    finally:
        torch.set_num_threads(before)
    one_row = [t for shape, t in steps if shape == (1, 1)]
    batched = [t for shape, t in steps if shape[0] > 1 and shape[1] == 1]
    prefills = [t for shape, t in steps if shape[1] > 1]
    assert one_row and batched and prefills
    assert set(one_row) == {1}
    assert set(batched) == set(prefills) == {2}
    assert ((0, 0), 2) in steps  # restored between steps


def test_staggered_requests_share_decode_steps(engine: LocalEngine) -> None:
    params = SamplingParams(max_tokens=200, temperature=0.8, seed=3, ignore_eos=True)
    engine.metrics.reset_peak()
    handles = []
    results = []

    def arrive(i: int) -> None:
        time.sleep(0.01 * i)
        handles.append(engine.chat(prompt(i), params))

    threads = [threading.Thread(target=arrive, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = [h.result(timeout=60) for h in handles]
    assert all(r.completion_tokens == 200 for r in results)
    assert engine.metrics.max_batch_seen >= 4


def test_streaming_deltas_make_the_text(engine: LocalEngine) -> None:
    handle = engine.chat(prompt(1), SamplingParams(max_tokens=20, temperature=1.0, seed=7))
    deltas = list(handle.deltas())
    assert "".join(deltas) == handle.result().text
    assert len(deltas) >= 1


def test_same_seed_same_sample(engine: LocalEngine) -> None:
    params = SamplingParams(max_tokens=15, temperature=1.0, top_p=0.9, seed=11)
    a = engine.chat(prompt(2), params).result().text
    b = engine.chat(prompt(2), params).result().text
    assert a == b


def test_stop_string_cuts_the_text(engine: LocalEngine) -> None:
    free = engine.chat(prompt(3), SamplingParams(max_tokens=30, temperature=0)).result()
    assert len(free.text) > 2
    stop = free.text[2:4]
    cut = engine.chat(prompt(3), SamplingParams(max_tokens=30, temperature=0, stop=(stop,)))
    result = cut.result()
    assert result.finish_reason == "stop"
    assert result.text == free.text[: free.text.find(stop)]


def test_label_scores_match_a_full_forward_pass(engine: LocalEngine, tiny_model_dir: Path) -> None:
    messages = prompt(1)
    labels = ["bill", "billing", "tech support"]
    scores = engine.score_labels(messages, labels)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    prefix, continuations = engine.label_continuations(messages, labels)
    eot = engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for score, cont in zip(scores, continuations, strict=True):
        assert eot in cont  # the end of turn is part of the answer
        with torch.no_grad():
            logits = model(torch.tensor([prefix + cont])).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        expected = sum(logprobs[len(prefix) + j - 1, t].item() for j, t in enumerate(cont))
        assert score == pytest.approx(expected, abs=1e-3)
    assert scores[0] != pytest.approx(scores[1])  # bill vs billing
    assert sum(softmax(scores)) == pytest.approx(1.0)


def test_prompt_too_long_and_unknown_model(engine: LocalEngine) -> None:
    with pytest.raises(PromptTooLong, match="maximum context length is 512"):
        engine.generate([5] * 600, GREEDY)
    with pytest.raises(UnknownModel, match=SERVED):
        engine.chat(prompt(1), GREEDY, model="nope-v1")


def test_adapters_resident_together_and_batched(
    engine: LocalEngine, make_adapter: AdapterFactory
) -> None:
    first, second = unique_name(), unique_name()
    engine.load_adapter(first, make_adapter(seed=21))
    engine.load_adapter(second, make_adapter(seed=22))
    try:
        with pytest.raises(AdapterError, match="already loaded"):
            engine.load_adapter(first, engine.adapters[first])
        alone = {
            m: engine.chat(prompt(1), GREEDY, model=m).result() for m in (SERVED, first, second)
        }
        handles = {m: engine.chat(prompt(1), GREEDY, model=m) for m in (SERVED, first, second)}
        mixed = {m: h.result() for m, h in handles.items()}
        for m in alone:
            assert alone[m].text == mixed[m].text
        lp = {}
        for m, out in alone.items():
            assert out.logprobs is not None
            lp[m] = out.logprobs[0].logprob
        assert len({round(v, 4) for v in lp.values()}) == 3  # three different models
    finally:
        engine.unload_adapter(first)
        engine.unload_adapter(second)
    assert first not in engine.model_names
    with pytest.raises(AdapterError, match="not loaded"):
        engine.unload_adapter(first)
    # a name can come back after an unload (a rollback reloads the previous version)
    engine.load_adapter(first, make_adapter(seed=21))
    engine.unload_adapter(first)


def test_one_adapter_batch_decodes_merged_like_the_per_row_path(
    engine: LocalEngine, make_adapter: AdapterFactory
) -> None:
    """A batch of one adapter decodes with the LoRA merged into the weights; the same requests
    in one batch with base rows take peft's per-row path. Greedy tokens are the same."""
    name = unique_name()
    engine.load_adapter(name, make_adapter(seed=41, targets=("q_proj", "v_proj", "up_proj")))
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, logprobs=True)
    try:
        merged = [engine.chat(prompt(i), params, model=name) for i in range(3)]
        merged_results = [h.result() for h in merged]
        assert engine.check_model(name) in engine._merged  # only generation ran it
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            release.wait(30)

        holder = threading.Thread(target=engine.run, args=(hold,))
        holder.start()
        assert held.wait(30)
        # the scheduler waits in ``hold``: all six requests are admitted in one batch
        per_row = [engine.chat(prompt(i), params, model=name) for i in range(3)]
        base = [engine.chat(prompt(i), params) for i in range(3)]
        release.set()
        holder.join()
        per_row_results = [h.result() for h in per_row]
        base_results = [h.result() for h in base]
    finally:
        release.set()
        engine.unload_adapter(name)
    for one, other, plain in zip(merged_results, per_row_results, base_results, strict=True):
        assert one.logprobs is not None
        assert other.logprobs is not None
        assert plain.logprobs is not None
        assert [t.token_id for t in one.logprobs] == [t.token_id for t in other.logprobs]
        for a, b in zip(one.logprobs, other.logprobs, strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert one.logprobs[0].logprob != pytest.approx(plain.logprobs[0].logprob, abs=1e-3)


def test_fast_label_scoring_equals_the_general_path(
    engine: LocalEngine, make_adapter: AdapterFactory
) -> None:
    """The fast path (cached prompt, token tree, merged LoRA) against ``prompt_logprobs``."""
    system = {"role": "system", "content": "Answer with one of: bill, billing, tech support."}
    tickets = [
        [system, {"role": "user", "content": "my bill is wrong"}],
        [system, {"role": "user", "content": "my bill is wrong"}],  # the whole prompt cached
        [system, {"role": "user", "content": "my bill is wrong again, twice"}],
        [system, {"role": "user", "content": "the router keeps dropping"}],
        [{"role": "user", "content": "no system prompt at all"}],
    ]
    labels = ["bill", "billing", "tech support", "tech", "bill"]  # shared first tokens
    merged, biased = unique_name(), unique_name()
    engine.load_adapter(merged, make_adapter(seed=31, targets=("q_proj", "v_proj", "up_proj")))
    engine.load_adapter(biased, make_adapter(seed=32, lora_bias=True))  # not merged: peft path
    try:
        for model in (SERVED, merged, biased):
            for messages in tickets:
                engine.fast_scoring = False
                slow = engine.score_labels(messages, labels, model)
                engine.fast_scoring = True
                fast = engine.score_labels(messages, labels, model)
                assert fast == pytest.approx(slow, abs=1e-4)
                prefix, conts = engine.label_continuations(messages, labels)
                http = engine.prompt_logprobs(prefix, conts, model, with_prefix=True)
                sums = [sum(s.logprob for s in row) for row in http.rows]
                assert sums == pytest.approx(slow, abs=1e-4)  # brandbot serve's path
            prefix, conts = engine.label_continuations(tickets[0], labels)
            odd = [[], conts[0][:1], conts[1], conts[1]]  # empty, one token, a duplicate
            engine.fast_scoring = False
            slow = engine.score_continuations(prefix[:-3], odd, model)
            engine.fast_scoring = True
            engine.score_continuations(prefix, conts, model)  # cached: a longer prompt
            assert engine.score_continuations(prefix[:-3], odd, model) == pytest.approx(
                slow, abs=1e-4
            )
            assert engine.score_continuations(prefix, [], model) == []
        assert engine.check_model(merged) in engine._merged
        assert engine.check_model(biased) not in engine._merged
    finally:
        engine.fast_scoring = True
        engine.unload_adapter(merged)
        engine.unload_adapter(biased)
    assert not engine._merged
    assert set(engine._prefixes) == {"__base__"}
