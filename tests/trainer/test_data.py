"""Tokenizing with the chat template, answer-only labels, and length bucketing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainer.data import (
    IGNORE_INDEX,
    TooFewExamples,
    TrainExample,
    bucket_batches,
    collate,
    common_prefix,
    encode_example,
    epoch_order,
    tokenize_examples,
)

EXAMPLE = TrainExample("You write posts.", "Announce the chai", "Our chai lands Thursday.")


@pytest.fixture(scope="module")
def tokenizer(bundled_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_tokenizer_dir))


def test_the_answer_is_the_assistant_turn_and_ends_with_end_of_turn(tokenizer: Any) -> None:
    ids, start = encode_example(tokenizer, EXAMPLE)
    prompt = tokenizer.apply_chat_template(
        EXAMPLE.messages(with_answer=False), add_generation_prompt=True, tokenize=False
    )
    assert tokenizer.decode(ids[:start]) == prompt
    assert "<|im_start|>system\nYou write posts." in prompt
    assert tokenizer.decode(ids[start:]) == "Our chai lands Thursday.<|im_end|>"
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_labels_mask_everything_but_the_answer(tokenizer: Any) -> None:
    data = tokenize_examples(tokenizer, [EXAMPLE], max_length=512)
    example = data.examples[0]
    labels = example.labels
    assert labels[: example.answer_start] == [IGNORE_INDEX] * example.answer_start
    assert labels[example.answer_start :] == list(example.input_ids[example.answer_start :])
    assert data.answer_tokens == example.answer_tokens == len(labels) - example.answer_start


def test_collate_gathers_the_positions_that_predict_answer_tokens(tokenizer: Any) -> None:
    short = TrainExample("S", "hi", "Yes.")
    data = tokenize_examples(tokenizer, [EXAMPLE, short], max_length=512)
    [batch] = bucket_batches([len(e) for e in data.examples], 4096)
    ids, mask, positions, targets, prefix = collate(data, batch)
    assert ids.shape == (2, batch.width)
    assert int(mask.sum()) == data.real_tokens
    flat = ids.reshape(-1)
    # each gathered position's *next* token is the target, and only answer tokens are targets
    assert flat[positions + 1].tolist() == targets.tolist()
    assert len(targets) == data.answer_tokens
    # both start with "<|im_start|>system\n"; the shared prefix stops before any answer position
    assert 0 < prefix < min(e.answer_start for e in data.examples)
    assert collate(data, batch, share_prefix=False).prefix == 0


def test_long_examples_are_truncated_or_dropped(tokenizer: Any) -> None:
    long_answer = TrainExample("S", "brief", "word " * 200)
    long_prompt = TrainExample("S", "brief " * 200, "ok")
    data = tokenize_examples(tokenizer, [EXAMPLE, long_answer, long_prompt], max_length=64)
    assert data.truncated == 1
    assert data.dropped == [2]
    assert max(len(e) for e in data.examples) == 64
    assert [e.index for e in data.examples] == [0, 1]


def test_too_few_examples_says_how_many_are_needed(tokenizer: Any) -> None:
    with pytest.raises(TooFewExamples, match="at least 10 examples; this dataset has 3") as info:
        tokenize_examples(tokenizer, [EXAMPLE] * 3, max_length=512, min_examples=10)
    assert (info.value.have, info.value.need) == (3, 10)
    assert "Approve 7 more" in str(info.value)


def test_a_shared_prefix_lets_more_rows_share_the_budget() -> None:
    lengths = [100, 100, 100, 100]
    assert len(bucket_batches(lengths, 200)) == 2
    assert len(bucket_batches(lengths, 200, shared=80)) == 1  # 80 + 4 x 20 = 160 computed
    assert common_prefix([(1, 2, 3), (1, 2, 4), (1, 2)]) == 2
    assert common_prefix([]) == 0


def test_buckets_respect_the_budget_and_cover_every_sequence() -> None:
    lengths = [5, 90, 12, 40, 41, 300, 7, 88, 60, 3]
    batches = bucket_batches(lengths, 128)
    assert sorted(r for b in batches for r in b.rows) == list(range(len(lengths)))
    for b in batches:
        assert b.width == max(lengths[r] for r in b.rows)
        assert b.padded_tokens <= 128 or len(b.rows) == 1
    assert bucket_batches(lengths, 128) == batches  # deterministic
    padding = sum(b.padded_tokens for b in batches) - sum(lengths)
    assert padding < 0.3 * sum(lengths)


def test_epoch_order_is_a_seeded_permutation() -> None:
    assert sorted(epoch_order(10, 0, 0)) == list(range(10))
    assert epoch_order(10, 0, 1) == epoch_order(10, 0, 1)
    assert epoch_order(10, 0, 0) != epoch_order(10, 0, 1)
