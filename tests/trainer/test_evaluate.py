"""Evaluation metrics: chrF, brand rules, paired bootstrap, classify metrics, and the model paths
(label scoring through serving's client, drafts through the local engine)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from serving.client import (
    ChatResult,
    Classification,
    InferenceClient,
    InferenceError,
    LocalClient,
    ModelInfo,
    Usage,
)
from serving.engine import LocalEngine
from trainer.data import TrainExample
from trainer.evaluate import (
    BrandRules,
    Scorecard,
    accuracy,
    answer_nll,
    chrf,
    draft_token_cap,
    evaluate_classify,
    evaluate_draft,
    generate_drafts,
    macro_f1,
    mean,
    paired_bootstrap,
    per_label_scores,
    perplexity,
)

# --- chrF -----------------------------------------------------------------------------------


def test_chrf_of_identical_texts_is_100_and_ignores_whitespace() -> None:
    assert chrf("Brew it hot.", "Brew it hot.") == pytest.approx(100.0)
    assert chrf("a b", "ab") == pytest.approx(100.0)


def test_chrf_hand_computed_values() -> None:
    # "abc" vs "abd": P=R=2/3 (unigrams), 1/2 (bigrams), 0 (trigrams) -> mean 7/18, F = 7/18
    assert chrf("abc", "abd") == pytest.approx(100 * 7 / 18)
    # "aab" vs "ab": n=1 P=2/3 R=1; n=2 P=1/2 R=1; n=3 skipped (the reference is too short)
    # P=7/12, R=1, F2 = 5PR/(4P+R) = 0.875
    assert chrf("aab", "ab") == pytest.approx(87.5)


def test_chrf_weighs_recall_more_than_precision() -> None:
    reference = "the kettle is back on"
    assert chrf("the kettle is back on and more words", reference) > chrf("kettle", reference)
    assert chrf("", reference) == 0.0
    assert chrf("xyz", "abc") == 0.0


# --- brand rules ----------------------------------------------------------------------------


def test_brand_rules_use_the_shared_rule_check() -> None:
    rules = BrandRules(max_length=40, banned_words=("cheap", "hurry"), required_words=("tea",))
    assert rules.violations("Our autumn tea lands Thursday.") == []
    found = " | ".join(rules.violations("Hurry, CHEAP kettles today, what a deal, act fast"))
    assert "cheap" in found
    assert "hurry" in found
    assert "tea" in found
    assert "over the 40 limit" in found
    # whole words only: "cheapest" and "steam" are not "cheap" and "tea"
    assert BrandRules(banned_words=("cheap",)).violations("the cheapest tea") == []
    assert BrandRules(required_words=("tea",)).violations("steam") != []


# --- bootstrap ------------------------------------------------------------------------------


def test_paired_bootstrap_of_identical_systems_is_zero() -> None:
    values = [float(i % 7) for i in range(50)]
    interval = paired_bootstrap(values, values, mean)
    assert (interval.diff, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert not interval.excludes_zero()


def test_paired_bootstrap_sees_a_consistent_improvement_despite_noisy_examples() -> None:
    a = [float((i * 37) % 11) for i in range(40)]  # very different examples
    b = [x + 0.5 for x in a]  # every example improves by 0.5
    interval = paired_bootstrap(a, b, mean, n=500, confidence=0.9, seed=3)
    assert interval.diff == pytest.approx(0.5)
    assert interval.low == pytest.approx(0.5)
    assert interval.excludes_zero()
    noisy = paired_bootstrap(a, list(reversed(a)), mean, seed=3)
    assert noisy.low < 0 < noisy.high


def test_paired_bootstrap_is_deterministic_and_checks_its_input() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 5.0]
    assert paired_bootstrap(a, b, mean, seed=1) == paired_bootstrap(a, b, mean, seed=1)
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap(a, b[:3], mean)
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap([], [], mean)


# --- classify metrics -----------------------------------------------------------------------


def test_classify_metrics_by_hand() -> None:
    pairs: list[tuple[str, str | None]] = [
        ("billing", "billing"),
        ("billing", "refund"),
        ("refund", "refund"),
        ("refund", None),
    ]
    assert accuracy(pairs) == 0.5
    scores = per_label_scores(pairs)
    assert scores["billing"].precision == 1.0
    assert scores["billing"].recall == 0.5
    assert scores["refund"].precision == 0.5
    assert scores["refund"].recall == 0.5
    assert macro_f1(pairs) == pytest.approx((2 / 3 + 0.5) / 2)
    card = Scorecard(
        name="base",
        task="classify",
        keys=["a", "b", "c", "d"],
        labels=["billing", "refund"],
        gold=[g for g, _ in pairs],
        predicted=[p for _, p in pairs],
    )
    assert card.invalid_rate == 0.25
    assert card.confusion()["refund"] == {"billing": 0, "refund": 1, "(invalid)": 1}
    assert card.summary()["macro_f1"] == pytest.approx(macro_f1(pairs))
    assert Scorecard.from_dict(card.to_dict()) == card


def test_perplexity_is_token_weighted() -> None:
    assert perplexity([(2.0, 1), (0.0, 1)]) == pytest.approx(math.exp(1.0))
    assert perplexity([(4.0, 4)]) == pytest.approx(math.e)


# --- model paths ----------------------------------------------------------------------------


class FakeClient(InferenceClient):
    """Answers classify from a fixed table; refuses one ticket like a server would."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str | None]] = []

    def classify(
        self, messages: Sequence[dict[str, Any]], labels: Sequence[str], *, model: str | None = None
    ) -> Classification:
        text = messages[-1]["content"]
        self.calls.append((text, model))
        if text == "too long":
            raise InferenceError("the prompt has 9000 tokens", 400)
        label = self.answers[text]
        return Classification(label, 1.0, {label: 1.0})

    def chat(self, *args: Any, **kwargs: Any) -> ChatResult:
        return ChatResult("Brew it hot.", "stop", Usage())

    def stream_chat(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        yield ""

    def models(self) -> list[ModelInfo]:
        return []

    def count_tokens(self, messages: Sequence[dict[str, Any]]) -> int:
        return sum(len(m["content"].split()) for m in messages)

    def load_adapter(self, name: str, path: str) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def health(self) -> bool:
        return True


def test_evaluate_classify_goes_through_the_client_and_counts_refusals_as_invalid() -> None:
    examples = [
        TrainExample("sys", "charged twice", "billing"),
        TrainExample("sys", "where is my parcel", "shipping"),
        TrainExample("sys", "too long", "billing"),
    ]
    client = FakeClient({"charged twice": "billing", "where is my parcel": "billing"})
    card = evaluate_classify(
        examples,
        ["billing", "shipping"],
        name="kk_tickets-v1",
        client=client,
        model="kk_tickets-v1",
    )
    assert card.predicted == ["billing", "billing", None]
    assert card.invalid_rate == pytest.approx(1 / 3)
    assert {m for _, m in client.calls} == {"kk_tickets-v1"}
    assert card.summary()["accuracy"] == pytest.approx(1 / 3)


def test_evaluate_classify_through_the_local_engine(tiny_model_dir: Path) -> None:
    examples = [TrainExample("Classify.", "I was charged twice", "billing")] * 2
    with LocalEngine(tiny_model_dir, served_name="tiny", threads=1) as engine:
        card = evaluate_classify(
            examples, ["billing", "refund"], name="base", client=LocalClient(engine), model=None
        )
    assert card.predicted[0] in {"billing", "refund"}
    assert card.predicted[0] == card.predicted[1]  # deterministic label scoring


def test_answer_nll_matches_the_model_loss(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data import encode_example

    example = TrainExample("You write posts.", "Announce the chai", "Our chai lands Thursday.")
    [(nll, tokens)] = answer_nll(tiny_model_dir, [example])
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids, start = encode_example(tokenizer, example)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    labels = [-100] * start + ids[start:]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
    assert tokens == len(ids) - start
    assert nll / tokens == pytest.approx(float(out.loss), rel=1e-5)


def test_evaluate_draft_generates_through_the_engine(tiny_model_dir: Path) -> None:
    examples = [
        TrainExample("You write posts.", "Announce the chai", "Our chai lands Thursday."),
        TrainExample("You write posts.", "Sencha is back", "The Kyoto sencha is back."),
    ]
    rules = BrandRules(max_length=280, banned_words=("cheap",))
    with LocalEngine(tiny_model_dir, served_name="tiny", threads=1) as engine:
        card = evaluate_draft(
            examples, name="base", base_dir=tiny_model_dir, adapter_dir=None,
            client=LocalClient(engine), model=None, rules=rules, max_new_tokens=4,
        )  # fmt: skip
    assert len(card.drafts) == len(card.chrf) == len(card.compliant) == 2
    assert card.perplexity > 1
    summary = card.summary()
    assert set(summary) >= {"answer_perplexity", "chrf", "rule_compliance"}
    only_ppl = evaluate_draft(
        examples, name="base", base_dir=tiny_model_dir, adapter_dir=None, client=None,
        model=None, rules=rules,
    )  # fmt: skip
    assert only_ppl.nll == card.nll
    assert only_ppl.chrf_mean is None


class WaitingClient(FakeClient):
    """Answers a chat only once ``together`` chats are waiting at once: sequential callers
    would time out on the barrier."""

    def __init__(self, together: int) -> None:
        super().__init__({})
        self.barrier = threading.Barrier(together, timeout=10)
        self.max_tokens: dict[str, int] = {}

    def chat(self, messages: Sequence[dict[str, Any]], **kwargs: Any) -> ChatResult:
        self.max_tokens[messages[-1]["content"]] = kwargs["max_tokens"]
        self.barrier.wait()
        return ChatResult(f"draft for {messages[-1]['content']}", "stop", Usage())


def test_drafts_are_requested_all_at_once_in_order_with_progress() -> None:
    examples = [TrainExample("sys", f"brief {i}", "x") for i in range(5)]
    client = WaitingClient(together=5)
    seen: list[tuple[int, int]] = []
    drafts = generate_drafts(
        client,
        examples,
        [10, 20, 30, 40, 50],
        model=None,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert drafts == [f"draft for brief {i}" for i in range(5)]
    assert client.max_tokens == {f"brief {i}": 10 * (i + 1) for i in range(5)}
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_draft_token_cap_follows_the_reference_or_the_length_limit() -> None:
    assert draft_token_cap(10, 96) == 28
    assert draft_token_cap(60, 96) == 96
    assert draft_token_cap(0, 96) == 8
    assert draft_token_cap(10, 96, limit=50) == 50  # a long draft still breaks the rule
    assert draft_token_cap(40, 96, limit=70) == 70  # not 2 x 40 + 8: past the limit anyway
    assert draft_token_cap(10, 96, limit=280) == 96


def test_batched_evaluation_equals_drafting_one_by_one(tiny_model_dir: Path) -> None:
    examples = [
        TrainExample("You write posts.", f"Announce tea number {i}", "Our tea lands.")
        for i in range(6)
    ]
    with LocalEngine(tiny_model_dir, served_name="tiny", threads=1) as engine:
        client = LocalClient(engine)
        engine.metrics.reset_peak()
        card = evaluate_draft(
            examples, name="base", base_dir=tiny_model_dir, adapter_dir=None, client=client,
            model=None, rules=BrandRules(), max_new_tokens=12,
        )  # fmt: skip
        assert engine.metrics.max_batch_seen > 1  # the drafts shared decode steps
        caps = [draft_token_cap(t, 12) for t in card.tokens]
        one_by_one = [
            client.chat(e.messages(with_answer=False), max_tokens=c, temperature=0.0).text.strip()
            for e, c in zip(examples, caps, strict=True)
        ]
    assert card.drafts == one_by_one
    assert card.chrf == [chrf(d, "Our tea lands.") for d in one_by_one]
