"""Tiny models for tests: a LLaMA-architecture model with random weights and a real tokenizer.

The tokenizer (with its chat template) is the bundled SmolLM2's, read from its GGUF file, so
chat templating, special tokens and detokenisation behave like the real default model while a
forward pass costs milliseconds. Nothing here downloads anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from serving.base_model import FINGERPRINT_FILE, find_bundled_gguf, weights_fingerprint

#: a folder an earlier extraction wrote (the test suite sets it for the processes it starts)
EXTRACTED_ENV = "TESTKIT_BUNDLED_TOKENIZER"
_SOURCE = "bundled-gguf.json"


def extract_bundled_tokenizer(target: Path) -> Path:
    """Save the bundled SmolLM2 tokenizer (from its GGUF file) into ``target``; return it.

    Reading the tokenizer out of the GGUF file takes seconds; when ``$TESTKIT_BUNDLED_TOKENIZER``
    names a folder extracted from the same file (path, size and time), it is copied instead."""
    from transformers import AutoTokenizer

    gguf = find_bundled_gguf()
    stat = gguf.stat()
    source = {"gguf": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    earlier = Path(os.environ.get(EXTRACTED_ENV) or "/nonexistent")
    with contextlib.suppress(OSError, ValueError):
        if json.loads((earlier / _SOURCE).read_text(encoding="utf-8")) == source:
            shutil.copytree(earlier, target, dirs_exist_ok=True)
            return target
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(target))
    (target / _SOURCE).write_text(json.dumps(source), encoding="utf-8")
    return target


def build_tiny_llama(
    target: Path,
    tokenizer_dir: Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 512,
    seed: int = 0,
) -> Path:
    """Write a random-weight ``LlamaForCausalLM`` plus tokenizer and fingerprint into ``target``.

    The vocabulary matches the tokenizer's, so any text round-trips; ``max_positions`` is the
    context limit the server enforces. The same seed gives the same weights (and fingerprint).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.train(False)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    meta = {"fingerprint": weights_fingerprint(target), "source": "tiny-llama-test"}
    (target / FINGERPRINT_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return target


def build_tiny_adapter(
    base_dir: Path,
    target: Path,
    *,
    served_name: str,
    rank: int = 4,
    scale: float = 0.5,
    seed: int = 1,
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    **lora_options: Any,
) -> Path:
    """A peft LoRA adapter for ``base_dir`` saved to ``target``, with its fingerprint file.

    Its B matrices are random (``scale`` > 0), so it visibly changes the model; ``scale=0``
    keeps peft's zero init, an adapter that changes nothing (the canary must catch it).
    Extra ``lora_options`` go to ``LoraConfig`` (e.g. ``use_dora=True``).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from serving.adapters import write_adapter_meta
    from serving.base_model import read_fingerprint

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), **lora_options)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale) if scale else param.zero_()
    peft_model.peft_config["default"].base_model_name_or_path = served_name
    peft_model.save_pretrained(str(target), save_embedding_layers=False)
    write_adapter_meta(
        target, base_fingerprint=read_fingerprint(base_dir) or "", base_name=served_name
    )
    return target
