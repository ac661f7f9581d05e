"""From examples to token sequences and micro-batches.

Each example becomes the base model's chat template rendering of
``system`` (the brand prompt) → ``user`` (the brief or ticket) → ``assistant`` (the approved text
or label). Only the assistant's answer is learned: the answer tokens *and* the end-of-turn token
that closes it (so the tuned model learns to stop); whatever the template puts after the
end-of-turn token (a newline) is dropped. A sequence is stored as its ids plus the index where
the answer starts, which is all the trainer needs to compute the loss on answer positions only.

Micro-batches are length-bucketed: sequences sorted by length are cut into groups whose computed
size stays within ``batch_tokens``, so padding is a few percent and memory is bounded.
(Padding-free packing into one long row would need a block-diagonal attention mask, which on the
CPU's SDPA kernels costs attention over the whole packed row; bucketing is cheaper there.)

Shared prefixes: every example of a dataset starts with the same brand system prompt, often
most of its tokens. A micro-batch runs that prefix once and lets every row attend to its keys
and values (the gradient sums over the rows, exactly as if each row had run it), so the
computed size of a micro-batch is ``prefix + rows x (longest - prefix)``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from serving.tokens import as_ids

IGNORE_INDEX = -100
#: end-of-turn tokens of common chat templates, tried when the tokenizer's EOS is not in the turn
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>")


class TooFewExamples(ValueError):
    """The dataset has fewer usable examples than training needs; says how many are needed."""

    def __init__(self, have: int, need: int, dropped: int = 0) -> None:
        extra = f" ({dropped} more were too long for max_length)" if dropped else ""
        super().__init__(
            f"training needs at least {need} examples; this dataset has {have}{extra}. "
            f"Approve {need - have} more, then retrain"
        )
        self.have = have
        self.need = need


@dataclass(frozen=True)
class TrainExample:
    """One training pair: the brand system prompt, the brief or ticket, the approved answer."""

    system: str
    prompt: str
    answer: str

    def messages(self, *, with_answer: bool = True) -> list[dict[str, str]]:
        """The chat messages, as the serving layer and the chat template take them."""
        out = []
        if self.system:
            out.append({"role": "system", "content": self.system})
        out.append({"role": "user", "content": self.prompt})
        if with_answer:
            out.append({"role": "assistant", "content": self.answer})
        return out


@dataclass(frozen=True)
class PreferencePair:
    """What people preferred for one prompt: the ``chosen`` answer (what was posted) over the
    ``rejected`` one (what the model wrote, or a variant not posted)."""

    system: str
    prompt: str
    chosen: str
    rejected: str

    def as_example(self, answer: str) -> TrainExample:
        """The pair's prompt with one of its answers, for scoring that answer."""
        return TrainExample(system=self.system, prompt=self.prompt, answer=answer)


@dataclass(frozen=True)
class TokenizedExample:
    """``input_ids`` = prompt tokens then answer tokens; ``answer_start`` indexes the first answer
    token. ``index`` is the example's position in the input list (to map results back)."""

    input_ids: tuple[int, ...]
    answer_start: int
    index: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def answer_tokens(self) -> int:
        return len(self.input_ids) - self.answer_start

    @property
    def labels(self) -> list[int]:
        """The classic form: ``-100`` on every prompt token, the token id on answer tokens."""
        n = self.answer_start
        return [IGNORE_INDEX] * n + list(self.input_ids[n:])


@dataclass(frozen=True)
class MicroBatch:
    """Rows of a micro-batch, by index into the tokenized list; padded size within the budget."""

    rows: tuple[int, ...]
    width: int

    @property
    def padded_tokens(self) -> int:
        return len(self.rows) * self.width


@dataclass
class TokenizedDataset:
    """Tokenized examples plus what tokenizing dropped or cut (reported with the run)."""

    examples: list[TokenizedExample]
    pad_id: int
    truncated: int = 0
    dropped: list[int] = field(default_factory=list)

    @property
    def real_tokens(self) -> int:
        """Non-padding tokens: what throughput is measured in."""
        return sum(len(e) for e in self.examples)

    @property
    def answer_tokens(self) -> int:
        return sum(e.answer_tokens for e in self.examples)

    @property
    def shared_prefix(self) -> int:
        """Tokens every example starts with (the system prompt, when a dataset has one)."""
        return common_prefix([e.input_ids for e in self.examples])


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """The ids that close an assistant turn (the chat template's end-of-turn and EOS).

    Looked up token by token: ``get_vocab()`` copies the whole vocabulary (milliseconds per
    example with a fast tokenizer). A name the vocabulary lacks maps to the unknown token (or
    ``None``), which does not map back to the name."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for name in _END_OF_TURN:
        found = tokenizer.convert_tokens_to_ids(name)
        if found is not None and tokenizer.convert_ids_to_tokens(found) == name:
            ids.add(int(found))
    return ids


def encode_example(tokenizer: Any, example: TrainExample) -> tuple[list[int], int]:
    """``(ids, answer_start)`` for one example through the tokenizer's chat template.

    The answer is what the full rendering adds after the generation prompt, cut right after its
    end-of-turn token. A template whose full rendering does not start with the prompt rendering
    falls back to prompt + answer tokens + EOS.
    """
    prompt = as_ids(
        tokenizer.apply_chat_template(
            example.messages(with_answer=False), add_generation_prompt=True, tokenize=True
        )
    )
    full = as_ids(tokenizer.apply_chat_template(example.messages(), tokenize=True))
    eot = end_of_turn_ids(tokenizer)
    if full[: len(prompt)] == prompt and len(full) > len(prompt):
        answer = full[len(prompt) :]
        ends = [i for i, t in enumerate(answer) if t in eot]
        answer = answer[: ends[0] + 1] if ends else [*answer, int(tokenizer.eos_token_id)]
    else:
        answer = tokenizer.encode(example.answer, add_special_tokens=False)
        answer = [*answer, int(tokenizer.eos_token_id)]
    return prompt + answer, len(prompt)


def tokenize_examples(
    tokenizer: Any,
    examples: Sequence[TrainExample],
    *,
    max_length: int,
    min_examples: int = 1,
) -> TokenizedDataset:
    """Tokenize ``examples``. A sequence longer than ``max_length`` keeps its prompt and loses
    the end of its answer (counted in ``truncated``); one whose prompt alone leaves no room for
    an answer token is dropped. Raises :class:`TooFewExamples` if fewer than ``min_examples``
    remain.
    """
    out: list[TokenizedExample] = []
    truncated = 0
    dropped: list[int] = []
    for index, example in enumerate(examples):
        ids, start = encode_example(tokenizer, example)
        if start >= max_length:
            dropped.append(index)
            continue
        if len(ids) > max_length:
            ids = ids[:max_length]
            truncated += 1
        out.append(TokenizedExample(tuple(ids), start, index))
    if len(out) < min_examples:
        raise TooFewExamples(len(out), min_examples, len(dropped))
    pad = tokenizer.pad_token_id
    pad_id = int(pad if pad is not None else tokenizer.eos_token_id)
    return TokenizedDataset(out, pad_id, truncated, dropped)


def common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all ``sequences``."""
    if not sequences:
        return 0
    first, n = sequences[0], min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences):
            return i
    return n


def bucket_batches(lengths: Sequence[int], batch_tokens: int, shared: int = 0) -> list[MicroBatch]:
    """Group sequences (by index) into micro-batches of similar length.

    Sorted by length (ties by index, so the result is deterministic), then cut greedily so that
    the tokens a micro-batch computes stay within ``batch_tokens``: rows x longest row, or, when
    all sequences share a ``shared``-token prefix that is run once per micro-batch,
    ``shared + rows x (longest - shared)``. A single longer sequence gets a batch of its own.
    """

    def cost(rows: int, width: int) -> int:
        return rows * width if rows == 1 else shared + rows * (width - shared)

    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[MicroBatch] = []
    rows: list[int] = []
    width = 0
    for i in order:
        new_width = max(width, lengths[i])
        if rows and cost(len(rows) + 1, new_width) > batch_tokens:
            batches.append(MicroBatch(tuple(rows), width))
            rows, new_width = [], lengths[i]
        rows.append(i)
        width = new_width
    if rows:
        batches.append(MicroBatch(tuple(rows), width))
    return batches


def epoch_order(n_batches: int, seed: int, epoch: int) -> list[int]:
    """The order micro-batches are visited in ``epoch``: a shuffle fixed by (seed, epoch), so a
    resumed run can recompute it and check it against the checkpoint."""
    order = list(range(n_batches))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)  # noqa: S311 - not crypto
    return order


class Batch(NamedTuple):
    """Tensors of one micro-batch; see :func:`collate`."""

    input_ids: Any
    attention_mask: Any
    positions: Any
    targets: Any
    prefix: int


def collate(data: TokenizedDataset, batch: MicroBatch, *, share_prefix: bool = True) -> Batch:
    """Tensors for one micro-batch: ``input_ids`` and ``attention_mask`` ``[rows, width]``
    (right-padded), the flat indices of the hidden states that predict answer tokens, those
    target token ids, and ``prefix``: how many leading tokens all rows share (0 for one row or
    ``share_prefix=False``), which the loss runs once instead of once per row.

    Hidden position ``p`` predicts token ``p + 1``, so the answer tokens ``start..len-1`` of a row
    are predicted by positions ``start-1..len-2``. Only those rows of the hidden states ever go
    through the vocabulary projection.
    """
    import torch

    rows = [data.examples[i] for i in batch.rows]
    ids = torch.full((len(rows), batch.width), data.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), batch.width), dtype=torch.long)
    positions: list[int] = []
    targets: list[int] = []
    for r, example in enumerate(rows):
        n = len(example)
        ids[r, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        mask[r, :n] = 1
        positions.extend(r * batch.width + p for p in range(example.answer_start - 1, n - 1))
        targets.extend(example.input_ids[example.answer_start :])
    prefix = 0
    if share_prefix and len(rows) > 1:
        shared = common_prefix([e.input_ids for e in rows])
        prefix = min(shared, min(e.answer_start for e in rows) - 1)
    return Batch(
        ids,
        mask,
        torch.tensor(positions, dtype=torch.long),
        torch.tensor(targets, dtype=torch.long),
        max(prefix, 0),
    )
