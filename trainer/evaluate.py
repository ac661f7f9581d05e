"""Held-out evaluation: the same examples for the base, the current adapter and the new one.

Every metric is kept *per example* in a :class:`Scorecard`, so two scorecards over the same
examples can be compared with a paired bootstrap (:func:`paired_bootstrap`), which is what the
promotion rule does.

- Draft: answer-only perplexity (per-example NLL sums and answer-token counts, computed with the
  trainer's own answer-only loss, so it is the held-out version of the training loss); chrF of a
  generated draft against the approved text; brand-rule compliance of that draft (maximum length,
  banned words, required words). Drafts are generated through serving's client (the local engine
  or a vLLM server), greedy, so they are what ``/draft`` would produce.
- Classify: accuracy, macro-F1, per-label precision/recall/F1, the confusion matrix and the
  invalid-answer rate, with predictions from the client's ``classify`` — the same
  choice-constrained label scoring as production. A prediction is *invalid* when the server
  refuses the ticket (e.g. too long) or answers something outside the label set.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from serving.client import InferenceClient, InferenceError
from trainer.cleaning import content_hash
from trainer.data import TrainExample, bucket_batches, collate, tokenize_examples
from trainer.rules import rule_violations

T = TypeVar("T")
INVALID = "(invalid)"

# --- chrF ----------------------------------------------------------------------------------------


def _char_ngrams(text: str, n: int) -> Counter[str]:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def chrf(hypothesis: str, reference: str, *, order: int = 6, beta: float = 2.0) -> float:
    """chrF (Popović 2015) in 0..100: character n-gram precision and recall, n = 1..``order``,
    whitespace removed, each averaged over the orders both texts are long enough for, combined
    as F-beta (beta = 2 weighs recall twice as much as precision)."""
    hyp = re.sub(r"\s+", "", hypothesis)
    ref = re.sub(r"\s+", "", reference)
    precisions: list[float] = []
    recalls: list[float] = []
    for n in range(1, order + 1):
        h_grams, r_grams = _char_ngrams(hyp, n), _char_ngrams(ref, n)
        if not h_grams or not r_grams:
            continue
        match = sum((h_grams & r_grams).values())
        precisions.append(match / sum(h_grams.values()))
        recalls.append(match / sum(r_grams.values()))
    if not precisions:
        return 100.0 if hyp == ref else 0.0
    p = sum(precisions) / len(precisions)
    r = sum(recalls) / len(recalls)
    if p == 0 and r == 0:
        return 0.0
    b2 = beta * beta
    return 100.0 * (1 + b2) * p * r / (b2 * p + r)


# --- brand rules -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BrandRules:
    """A dataset's checkable rules (from its settings): at most ``max_length`` characters, none
    of ``banned_words`` and all of ``required_words`` (whole words, case-insensitive; the check
    is :func:`trainer.rules.rule_violations`, the same one generation uses)."""

    max_length: int | None = None
    banned_words: tuple[str, ...] = ()
    required_words: tuple[str, ...] = ()

    def violations(self, text: str) -> list[str]:
        """Each broken rule as a short phrase; an empty list means the text complies."""
        return rule_violations(
            text,
            max_length=self.max_length,
            banned_words=self.banned_words,
            required_words=self.required_words,
        )


# --- paired bootstrap ------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """``diff`` = statistic(b) - statistic(a) on all examples; ``low``/``high`` bound it."""

    diff: float
    low: float
    high: float
    confidence: float = 0.9

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(
    per_example_a: Sequence[T],
    per_example_b: Sequence[T],
    statistic: Callable[[Sequence[T]], float],
    n: int = 1000,
    confidence: float = 0.9,
    seed: int = 0,
) -> Interval:
    """Percentile interval of ``statistic(b) - statistic(a)`` under resampling of examples.

    The two sequences are per-example results of two systems on the *same* examples (same
    order); each resample draws example indices once and applies them to both, so the
    interval reflects the difference between the systems, not between example draws.
    """
    if len(per_example_a) != len(per_example_b):
        raise ValueError(
            f"paired samples differ in length ({len(per_example_a)} vs {len(per_example_b)})"
        )
    if not per_example_a:
        raise ValueError("the bootstrap needs at least one example")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    rng = random.Random(seed)  # noqa: S311 - not crypto
    size = len(per_example_a)
    diffs = []
    for _ in range(n):
        idx = [rng.randrange(size) for _ in range(size)]
        diffs.append(
            statistic([per_example_b[i] for i in idx]) - statistic([per_example_a[i] for i in idx])
        )
    diffs.sort()
    tail = (1 - confidence) / 2
    low = diffs[max(0, math.floor(tail * n))]
    high = diffs[min(n - 1, math.ceil((1 - tail) * n) - 1)]
    return Interval(statistic(per_example_b) - statistic(per_example_a), low, high, confidence)


# --- statistics over per-example items -------------------------------------------------------


def perplexity(items: Sequence[tuple[float, int]]) -> float:
    """exp(total NLL / total tokens) over ``(nll_sum, tokens)`` items (token-weighted)."""
    tokens = sum(t for _, t in items)
    return math.exp(sum(n for n, _ in items) / tokens) if tokens else math.inf


def mean(items: Sequence[float]) -> float:
    return sum(items) / len(items) if items else 0.0


@dataclass(frozen=True)
class LabelScores:
    precision: float
    recall: float
    f1: float
    support: int


def per_label_scores(pairs: Sequence[tuple[str, str | None]]) -> dict[str, LabelScores]:
    """Precision, recall, F1 and support for every label seen in gold or predictions."""
    labels = sorted({g for g, _ in pairs} | {p for _, p in pairs if p is not None})
    out = {}
    for label in labels:
        tp = sum(1 for g, p in pairs if g == label and p == label)
        predicted = sum(1 for _, p in pairs if p == label)
        support = sum(1 for g, _ in pairs if g == label)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = LabelScores(precision, recall, f1, support)
    return out


def macro_f1(pairs: Sequence[tuple[str, str | None]]) -> float:
    """Unweighted mean F1 over the labels present in gold or predictions (invalid = wrong)."""
    scores = per_label_scores(pairs)
    return mean([s.f1 for s in scores.values()])


def accuracy(pairs: Sequence[tuple[str, str | None]]) -> float:
    return mean([1.0 if g == p else 0.0 for g, p in pairs])


# --- the scorecard ---------------------------------------------------------------------------


@dataclass
class Scorecard:
    """Per-example results of one model (``name``: ``base`` or an adapter) on held-out examples.

    ``keys`` identify the examples (content hashes), so two scorecards are only compared on the
    same examples in the same order. Draft fields: ``nll``/``tokens`` (always), ``drafts``,
    ``chrf`` and ``compliant`` (when drafts were generated). Classify fields: ``labels`` (the
    label set), ``gold``, ``predicted`` (None = invalid answer).
    """

    name: str
    task: str
    keys: list[str]
    nll: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    drafts: list[str] = field(default_factory=list)
    chrf: list[float] = field(default_factory=list)
    compliant: list[bool] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    gold: list[str] = field(default_factory=list)
    predicted: list[str | None] = field(default_factory=list)
    seconds: float = 0.0

    # draft
    @property
    def nll_items(self) -> list[tuple[float, int]]:
        return list(zip(self.nll, self.tokens, strict=True))

    @property
    def perplexity(self) -> float:
        return perplexity(self.nll_items)

    @property
    def chrf_mean(self) -> float | None:
        return mean(self.chrf) if self.chrf else None

    @property
    def compliance_rate(self) -> float | None:
        return mean([1.0 if c else 0.0 for c in self.compliant]) if self.compliant else None

    # classify
    @property
    def pairs(self) -> list[tuple[str, str | None]]:
        return list(zip(self.gold, self.predicted, strict=True))

    @property
    def accuracy(self) -> float:
        return accuracy(self.pairs)

    @property
    def macro_f1(self) -> float:
        return macro_f1(self.pairs)

    @property
    def invalid_rate(self) -> float:
        return mean([1.0 if p is None else 0.0 for p in self.predicted])

    def per_label(self) -> dict[str, LabelScores]:
        return per_label_scores(self.pairs)

    def confusion(self) -> dict[str, dict[str, int]]:
        """``confusion[gold][predicted]`` counts; an invalid answer is the column ``(invalid)``."""
        columns = [*self.labels, INVALID]
        rows = {g: dict.fromkeys(columns, 0) for g in self.labels}
        for g, p in self.pairs:
            rows.setdefault(g, dict.fromkeys(columns, 0))
            rows[g][p if p is not None else INVALID] = rows[g].get(p or INVALID, 0) + 1
        return rows

    def summary(self) -> dict[str, Any]:
        """The headline numbers (for the run record, the report and ``brandbot eval --json``)."""
        out: dict[str, Any] = {"name": self.name, "task": self.task, "examples": len(self.keys)}
        if self.task == "draft":
            out |= {
                "answer_perplexity": self.perplexity,
                "chrf": self.chrf_mean,
                "rule_compliance": self.compliance_rate,
            }
        else:
            out |= {
                "accuracy": self.accuracy,
                "macro_f1": self.macro_f1,
                "invalid_rate": self.invalid_rate,
                "per_label": {k: asdict(v) for k, v in self.per_label().items()},
                "confusion": self.confusion(),
            }
        out["seconds"] = self.seconds
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scorecard:
        return cls(**data)


def example_key(task: str, example: TrainExample) -> str:
    return content_hash(task, example.prompt, example.answer)


# --- running the models --------------------------------------------------------------------


def answer_nll(
    base_dir: Path,
    examples: Sequence[TrainExample],
    *,
    adapter_dir: Path | None = None,
    max_length: int = 2048,
    batch_tokens: int = 2048,
    device: str = "cpu",
) -> list[tuple[float, int]]:
    """Per example: (sum of the answer tokens' negative log-likelihoods, answer tokens).

    The answer tokens are exactly the ones training learns (answer + end-of-turn); the model is
    the base, or the base with the adapter in ``adapter_dir``.
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
    if adapter_dir is not None:
        import warnings

        from peft import PeftModel

        with warnings.catch_warnings():  # peft asks transformers a deprecated question
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.to(device)
    model.eval()
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    with torch.inference_mode():
        lengths = [len(e) for e in data.examples]
        for batch in bucket_batches(lengths, batch_tokens, data.shared_prefix):
            losses = answer_loss(model, *collate(data, batch), reduction="none").tolist()
            at = 0
            for row in batch.rows:
                example = data.examples[row]
                n = example.answer_tokens
                out[example.index] = (float(sum(losses[at : at + n])), n)
                at += n
    return out


Progress = Callable[[int, int], None]
"""``progress(done, total)``: called as held-out drafts or predictions finish."""

CONCURRENT_REQUESTS = 32  # the local engine's default batch; vLLM batches as many


def draft_token_cap(
    reference_tokens: int, max_new_tokens: int, max_length: int | None = None
) -> int:
    """New tokens allowed for one held-out draft: twice its reference's tokens plus a few, at
    most ``max_new_tokens``; chrF has judged a draft by then (any longer and it only loses
    precision), and a batch takes as long as its longest draft. With a ``max_length`` (in
    characters) the cap is at least ``max_length / 2`` tokens, so a rambling draft is still cut
    past the limit (a token is two characters or more in practice) and rule compliance keeps
    its meaning."""
    floor = math.ceil(max_length / 2) if max_length else 0
    return max(1, min(max_new_tokens, max(2 * reference_tokens + 8, floor)))


def generate_drafts(
    client: InferenceClient,
    examples: Sequence[TrainExample],
    caps: Sequence[int],
    *,
    model: str | None,
    progress: Progress | None = None,
) -> list[str]:
    """Greedy drafts for every example, all requested at once so the server batches them (the
    local engine's continuous batching, or vLLM's); results in the examples' order."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    if not examples:
        return []

    def draft(example: TrainExample, cap: int) -> str:
        reply = client.chat(
            example.messages(with_answer=False), model=model, max_tokens=cap, temperature=0.0
        )
        return reply.text.strip()

    workers = min(len(examples), CONCURRENT_REQUESTS)
    with ThreadPoolExecutor(workers, thread_name_prefix="brandbot-eval") as pool:
        futures = [pool.submit(draft, e, c) for e, c in zip(examples, caps, strict=True)]
        for done, _ in enumerate(as_completed(futures), start=1):
            if progress is not None:
                progress(done, len(futures))
        return [f.result() for f in futures]


def evaluate_draft(
    examples: Sequence[TrainExample],
    *,
    name: str,
    base_dir: Path,
    adapter_dir: Path | None,
    client: InferenceClient | None,
    model: str | None,
    rules: BrandRules,
    max_new_tokens: int = 96,
    progress: Progress | None = None,
) -> Scorecard:
    """Score a model on held-out draft examples.

    ``adapter_dir=None`` scores the base. Perplexity uses the weights directly; drafts are
    generated through ``client`` under the served ``model`` name (None = base) greedily, all
    at once (:func:`generate_drafts`), each capped by :func:`draft_token_cap`; with
    ``client=None`` drafts are skipped (perplexity only, e.g. while a server is unavailable).
    """
    import time

    started = time.perf_counter()
    items = answer_nll(base_dir, examples, adapter_dir=adapter_dir)
    card = Scorecard(
        name=name,
        task="draft",
        keys=[example_key("draft", e) for e in examples],
        nll=[n for n, _ in items],
        tokens=[t for _, t in items],
    )
    if client is not None:
        caps = [draft_token_cap(t, max_new_tokens, rules.max_length) for t in card.tokens]
        drafts = generate_drafts(client, examples, caps, model=model, progress=progress)
        for example, text in zip(examples, drafts, strict=True):
            card.drafts.append(text)
            card.chrf.append(chrf(text, example.answer))
            card.compliant.append(not rules.violations(text))
    card.seconds = time.perf_counter() - started
    return card


def evaluate_classify(
    examples: Sequence[TrainExample],
    labels: Sequence[str],
    *,
    name: str,
    client: InferenceClient,
    model: str | None,
    progress: Progress | None = None,
) -> Scorecard:
    """Score a model on held-out tickets through ``client.classify`` (production's label scoring).

    Each example's ``answer`` is its gold label.
    """
    import time

    started = time.perf_counter()
    card = Scorecard(
        name=name,
        task="classify",
        keys=[example_key("classify", e) for e in examples],
        labels=list(labels),
        gold=[e.answer for e in examples],
    )
    for done, example in enumerate(examples, start=1):
        try:
            result = client.classify(example.messages(with_answer=False), labels, model=model)
            card.predicted.append(result.label if result.label in labels else None)
        except (InferenceError, ValueError):  # refused: an invalid answer, not a crash
            card.predicted.append(None)
        if progress is not None:
            progress(done, len(examples))
    card.seconds = time.perf_counter() - started
    return card
