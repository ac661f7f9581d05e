"""Held-out evaluation: the same examples for the base, the current adapter and the new one.

Every metric is kept *per example* in a :class:`Scorecard`, so two scorecards over the same
examples can be compared with a paired bootstrap (:func:`paired_bootstrap`), which is what the
promotion rule does.

- Draft: answer-only perplexity (per-example NLL sums and answer-token counts, computed with the
  trainer's own answer-only loss, so it is the held-out version of the training loss); chrF of a
  generated draft against the approved text; brand-rule compliance of that draft (maximum length,
  banned words, required words). Drafts are generated through serving's client (the local engine
  or a vLLM server), greedy, so they are what ``/draft`` would produce; each model's drafts are
  requested at once (:func:`evaluate_drafts`), so the server batches them, one model after the
  other.
- Preference pairs (either task): preference accuracy and mean margin on held-out pairs
  (length-normalised log-probabilities; :mod:`trainer.pair_metrics`).
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
from trainer.data import PreferencePair, TrainExample
from trainer.drafts import (
    Progress,
    draft_token_cap,
    generate_drafts,
    generate_drafts_for,
    limit_tokens,
)
from trainer.likelihood import answer_nll, answer_nll_many
from trainer.pair_metrics import (
    PairItem,
    mean_margin,
    pair_key,
    pair_sides,
    preference_accuracy,
)
from trainer.rules import rule_violations

T = TypeVar("T")
# re-exported: callers import the held-out helpers from here
__all__ = ["answer_nll", "answer_nll_many", "draft_token_cap", "generate_drafts",
           "generate_drafts_for", "limit_tokens"]  # fmt: skip
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
    label set), ``gold``, ``predicted`` (None = invalid answer). Held-out preference pairs
    (either task; empty when there are none): ``pair_keys`` and each side's answer NLL sum and
    token count.
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
    pair_keys: list[str] = field(default_factory=list)
    chosen_nll: list[float] = field(default_factory=list)
    chosen_tokens: list[int] = field(default_factory=list)
    rejected_nll: list[float] = field(default_factory=list)
    rejected_tokens: list[int] = field(default_factory=list)
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

    # preference pairs
    @property
    def pair_items(self) -> list[PairItem]:
        cols = self.chosen_nll, self.chosen_tokens, self.rejected_nll, self.rejected_tokens
        return list(zip(*cols, strict=True))

    @property
    def preference_accuracy(self) -> float | None:
        return preference_accuracy(self.pair_items) if self.pair_keys else None

    @property
    def preference_margin(self) -> float | None:
        return mean_margin(self.pair_items) if self.pair_keys else None

    def add_pairs(self, keys: Sequence[str], items: Sequence[tuple[float, int]]) -> None:
        """Record the held-out pairs' scores: ``items`` = per side, chosen then rejected."""
        self.pair_keys = list(keys)
        self.chosen_nll = [n for n, _ in items[0::2]]
        self.chosen_tokens = [t for _, t in items[0::2]]
        self.rejected_nll = [n for n, _ in items[1::2]]
        self.rejected_tokens = [t for _, t in items[1::2]]

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
        if self.pair_keys:
            out |= {
                "preference_pairs": len(self.pair_keys),
                "preference_accuracy": self.preference_accuracy,
                "preference_margin": self.preference_margin,
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


def score_pairs(
    cards: Sequence[Scorecard],
    pairs: Sequence[PreferencePair],
    adapter_dirs: Sequence[Path | None],
    *,
    base_dir: Path,
) -> None:
    """Add held-out ``pairs``' scores to each card (one per adapter dir, None = the base)."""
    if pairs:
        items = answer_nll_many(base_dir, pair_sides(pairs), adapter_dirs)
        for card, scored in zip(cards, items, strict=True):
            card.add_pairs([pair_key(p) for p in pairs], scored)


# --- running the models --------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One model to evaluate: ``name`` on its scorecard, ``model`` its served name (None = the
    base model), ``adapter_dir`` its weights for perplexity (None = the base)."""

    name: str
    model: str | None
    adapter_dir: Path | None


def evaluate_drafts(
    examples: Sequence[TrainExample],
    candidates: Sequence[Candidate],
    *,
    base_dir: Path,
    client: InferenceClient | None,
    rules: BrandRules,
    max_new_tokens: int = 96,
    progress: Callable[[str, int, int], None] | None = None,
    pairs: Sequence[PreferencePair] = (),
) -> list[Scorecard]:
    """Score several models on the same held-out draft examples; scorecards in their order.

    Perplexity uses the weights directly, all models in one load (:func:`answer_nll_many`).
    Drafts of every model are generated through ``client`` greedily, each model's in one batch
    (:func:`generate_drafts_for`), each capped by :func:`draft_token_cap` at the dataset's
    length limit in tokens; with ``client=None`` drafts are skipped (perplexity only, e.g.
    while a server is unavailable). A scorecard's ``seconds`` is its own perplexity pass plus
    its share of the drafts generated together (split by the number of models).
    ``progress(name, done, total)`` follows each model's drafts. Held-out ``pairs`` are
    scored in the same pass (:meth:`Scorecard.add_pairs`).
    """
    import time

    seconds: list[float] = []
    sides = pair_sides(pairs)
    scored = answer_nll_many(base_dir, [*examples, *sides], [c.adapter_dir for c in candidates],
                             seconds=seconds)  # fmt: skip
    items = [nll[: len(examples)] for nll in scored]
    keys = [example_key("draft", e) for e in examples]
    cards = [
        Scorecard(name=c.name, task="draft", keys=list(keys), nll=[n for n, _ in nll],
                  tokens=[t for _, t in nll], seconds=spent)
        for c, nll, spent in zip(candidates, items, seconds, strict=True)
    ]  # fmt: skip
    for card, nll in zip(cards, scored, strict=True):
        if pairs:
            card.add_pairs([pair_key(p) for p in pairs], nll[len(examples) :])
    if client is None or not candidates:
        return cards
    tokens = cards[0].tokens
    references = [(e.answer, t) for e, t in zip(examples, tokens, strict=True)]
    limit = limit_tokens(rules.max_length, references)
    caps = [draft_token_cap(t, max_new_tokens, limit) for t in tokens]
    names = {c.model: c.name for c in candidates}

    def step(model: str | None, done: int, total: int) -> None:
        if progress is not None:
            progress(names[model], done, total)

    started = time.perf_counter()
    drafts = generate_drafts_for(
        client, examples, caps, [c.model for c in candidates], progress=step
    )
    share = (time.perf_counter() - started) / len(candidates)
    for card, texts in zip(cards, drafts, strict=True):
        for example, text in zip(examples, texts, strict=True):
            card.drafts.append(text)
            card.chrf.append(chrf(text, example.answer))
            card.compliant.append(not rules.violations(text))
        card.seconds += share
    return cards


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
    """:func:`evaluate_drafts` for one model (``adapter_dir=None`` scores the base)."""

    def step(_name: str, done: int, total: int) -> None:
        if progress is not None:
            progress(done, total)

    [card] = evaluate_drafts(
        examples, [Candidate(name, model, adapter_dir)], base_dir=base_dir, client=client,
        rules=rules, max_new_tokens=max_new_tokens, progress=step,
    )  # fmt: skip
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
