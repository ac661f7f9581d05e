"""Answer-only negative log-likelihood of held-out examples, for the base and any adapters.

The numbers are the trainer's own answer-only loss (:func:`trainer.lora.answer_loss`) per
example, so answer perplexity is the held-out version of the training loss. The tokenizer, the
tokenized examples and the base weights are loaded once for every model scored: each adapter is
loaded beside the others into one peft model and switched on in turn (the base runs with
adapters switched off).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.data import MicroBatch, TrainExample, collate, tokenize_examples

NllItems = list[tuple[float, int]]
"""Per example: (sum of the answer tokens' negative log-likelihoods, answer tokens)."""


def eval_batches(lengths: Sequence[int], shared: int, batch_tokens: int) -> list[MicroBatch]:
    """Micro-batches of the sequences (by index) that compute the fewest tokens in all.

    A batch of several rows runs their common ``shared``-token prefix once and pads the rest of
    every row to its longest, so it computes ``shared + rows x (longest - shared)`` tokens (a
    single row: its length). Rows sorted by length are cut into contiguous batches by dynamic
    programming, each within ``batch_tokens`` (one longer sequence gets a batch of its own), so
    one long outlier no longer pads every other row to its length.
    """

    def cost(rows: int, width: int) -> int:
        return width if rows == 1 else shared + rows * (width - shared)

    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0] + [-1] * n  # best[j]: fewest tokens for the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]
        for i in range(j - 1, -1, -1):
            c = cost(j - i, width)
            if c > batch_tokens and j - i > 1:
                break  # more rows only cost more
            total = best[i] + c
            if best[j] < 0 or total < best[j]:
                best[j], cut[j] = total, i
    batches: list[MicroBatch] = []
    j = n
    while j > 0:
        i = cut[j]
        batches.append(MicroBatch(tuple(order[i:j]), lengths[order[j - 1]]))
        j = i
    return batches[::-1]


def answer_nll_many(
    base_dir: Path,
    examples: Sequence[TrainExample],
    adapter_dirs: Sequence[Path | None],
    *,
    max_length: int = 2048,
    batch_tokens: int = 2048,
    device: str = "cpu",
    seconds: list[float] | None = None,
) -> list[NllItems]:
    """For each entry of ``adapter_dirs`` (``None`` = the base model): per example, the sum of
    the answer tokens' negative log-likelihoods and the number of answer tokens (answer +
    end-of-turn, exactly what training learns). Results in the order of ``adapter_dirs``.

    ``seconds``, when given, receives each model's scoring time (its forward passes; the one
    load of tokenizer, examples and weights is not in it). On the CPU the base weights are
    prepacked for oneDNN as the local engine's are (the same numbers, computed faster).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.lora import answer_loss

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    data = tokenize_examples(tokenizer, examples, max_length=max_length, min_examples=0)
    if data.dropped or data.truncated:
        raise ValueError(f"held-out examples longer than max_length={max_length}")
    loader: Any = AutoModelForCausalLM
    model: Any = loader.from_pretrained(str(base_dir), dtype=torch.float32)
    if device == "cpu":
        from serving.engine.cpu_pack import pack_linears

        pack_linears(model)  # oneDNN-prepacked weights: the engine's faster CPU products
    names: dict[int, str] = {}
    for at, folder in enumerate(adapter_dirs):
        if folder is None:
            continue
        names[at] = f"eval{at}"
        model = _with_adapter(model, folder, names[at])
    model.to(device)
    model.eval()
    lengths = [len(e) for e in data.examples]
    batches = eval_batches(lengths, data.shared_prefix, batch_tokens)
    results: list[NllItems] = []
    for at in range(len(adapter_dirs)):
        started = time.perf_counter()
        if at in names:
            model.set_adapter(names[at])
            results.append(_score(model, data, batches, len(examples), answer_loss))
        elif names:
            with warnings.catch_warnings(), model.disable_adapter():
                warnings.simplefilter("ignore", FutureWarning)  # as in _with_adapter
                results.append(_score(model, data, batches, len(examples), answer_loss))
        else:
            results.append(_score(model, data, batches, len(examples), answer_loss))
        if seconds is not None:
            seconds.append(time.perf_counter() - started)
    return results


def answer_nll(
    base_dir: Path,
    examples: Sequence[TrainExample],
    *,
    adapter_dir: Path | None = None,
    max_length: int = 2048,
    batch_tokens: int = 2048,
    device: str = "cpu",
) -> NllItems:
    """:func:`answer_nll_many` for one model: the base, or the base with ``adapter_dir``."""
    return answer_nll_many(
        base_dir, examples, [adapter_dir],
        max_length=max_length, batch_tokens=batch_tokens, device=device,
    )[0]  # fmt: skip


def _with_adapter(model: Any, folder: Path, name: str) -> Any:
    from peft import PeftModel

    with warnings.catch_warnings():  # peft asks transformers a deprecated question
        warnings.simplefilter("ignore", FutureWarning)
        if isinstance(model, PeftModel):
            model.load_adapter(str(folder), adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, str(folder), adapter_name=name)


def _score(model: Any, data: Any, batches: list[MicroBatch], n: int, loss: Any) -> NllItems:
    import torch

    out: NllItems = [(0.0, 0)] * n
    with torch.inference_mode():
        for batch in batches:
            losses = loss(model, *collate(data, batch), reduction="none").tolist()
            at = 0
            for row in batch.rows:
                example = data.examples[row]
                tokens = example.answer_tokens
                out[example.index] = (float(sum(losses[at : at + tokens])), tokens)
                at += tokens
    return out
