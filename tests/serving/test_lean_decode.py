"""The CPU fast path's lean decode step against transformers' forward on the tiny Llama."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from serving.engine import LocalEngine, SamplingParams
from serving.engine.cpu_pack import pack_linears
from serving.engine.kv_cache import new_cache, slots
from serving.engine.lean_decode import LeanDecoder
from tests.serving.conftest import SERVED

GREEDY = SamplingParams(max_tokens=10, temperature=0, logprobs=True, top_logprobs=2)


def packed_model(model_dir: Path) -> Any:
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    assert pack_linears(model) > 0
    return model


def prefilled(model: Any, rows: list[list[int]]) -> tuple[Any, torch.Tensor]:
    """A slot cache and mask after a left-padded prefill of ``rows``."""
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    cache = new_cache(model.config.num_hidden_layers)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache)
    return cache, mask


def copy_cache(model: Any, cache: Any) -> Any:
    twin = new_cache(model.config.num_hidden_layers)
    for mine, theirs in zip(slots(twin), slots(cache), strict=True):
        keys, values = theirs.kv()
        mine.set(keys.clone(), values.clone())
    return twin


def decode_both(model: Any, lean: LeanDecoder, forward: Any, steps: int = 4) -> None:
    """Decode ``steps`` tokens of three padded rows twice, by ``lean`` and by ``forward``;
    logits and caches must agree at every step."""
    rows = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    cache, mask = prefilled(model, rows)
    twin = copy_cache(model, cache)
    tokens = torch.tensor([[3], [4], [5]])
    for _ in range(steps):
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        positions = mask.sum(-1, keepdim=True) - 1
        with torch.inference_mode():
            got = lean.step(tokens, mask, positions, cache)
            want = forward(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=positions,
                cache=twin,
                logits_to_keep=1,
            ).logits
        assert got.shape == want.shape
        torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=1e-4)
        tokens = got[:, -1].argmax(-1, keepdim=True)
    for mine, theirs in zip(slots(cache), slots(twin), strict=True):
        torch.testing.assert_close(mine.kv()[0], theirs.kv()[0])
        torch.testing.assert_close(mine.kv()[1], theirs.kv()[1])


def test_lean_step_equals_the_forward_pass(tiny_model_dir: Path) -> None:
    model = packed_model(tiny_model_dir)
    assert model.config.num_attention_heads != model.config.num_key_value_heads  # GQA covered
    lean = LeanDecoder.build(model)
    assert lean is not None
    decode_both(model, lean, model)


def test_lean_step_is_the_base_model_under_lora_layers(tiny_model_dir: Path) -> None:
    """With peft's LoRA layers inside, the lean step computes the base model (LoRA off)."""
    model = packed_model(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
    peft_model = get_peft_model(model, config).eval()
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    lean = LeanDecoder.build(model)
    assert lean is not None
    with peft_model.disable_adapter():
        decode_both(model, lean, peft_model)


def test_build_refuses_unpacked_weights(tiny_model_dir: Path) -> None:
    model: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model.eval()
    assert LeanDecoder.build(model) is None


def test_engine_decodes_alike_with_and_without_the_fast_path(tiny_model_dir: Path) -> None:
    prompts = [[{"role": "user", "content": "word " * (3 * i) + f"tagline {i}"}] for i in range(4)]
    results = {}
    for packed in (True, False):
        with LocalEngine(tiny_model_dir, served_name=SERVED, pack_weights=packed) as eng:
            assert (eng.packed_linears > 0) is packed
            handles = [eng.chat(p, GREEDY) for p in prompts]
            results[packed] = [h.result() for h in handles]
            assert (eng._lean is not None) is packed  # built at the first step, used since
    for fast, plain in zip(results[True], results[False], strict=True):
        assert fast.text == plain.text
        assert fast.logprobs is not None
        assert plain.logprobs is not None
        for a, b in zip(fast.logprobs, plain.logprobs, strict=True):
            assert a.token_id == b.token_id
            assert abs(a.logprob - b.logprob) < 1e-3
