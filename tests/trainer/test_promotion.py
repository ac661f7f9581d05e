"""decide_promotion: one test per branch of the rule."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from trainer.evaluate import Scorecard
from trainer.promotion import decide_promotion

KEYS = [f"k{i}" for i in range(40)]


def draft_card(
    name: str, nll_per_token: list[float], compliant: list[bool] | None = None
) -> Scorecard:
    return Scorecard(
        name=name,
        task="draft",
        keys=KEYS[: len(nll_per_token)],
        nll=[10 * v for v in nll_per_token],
        tokens=[10] * len(nll_per_token),
        compliant=compliant or [],
        chrf=[50.0] * len(compliant or []),
    )


def classify_card(name: str, gold: list[str], predicted: Sequence[str | None]) -> Scorecard:
    return Scorecard(
        name=name,
        task="classify",
        keys=KEYS[: len(gold)],
        labels=sorted(set(gold)),
        gold=gold,
        predicted=list(predicted),
    )


def test_clearly_lower_perplexity_is_promoted_over_the_base() -> None:
    base = draft_card("base", [2.6 + 0.01 * i for i in range(30)])
    new = draft_card("kk_copy-v1", [2.2 + 0.01 * i for i in range(30)])
    decision = decide_promotion(None, new, base=base)
    assert decision.promote
    assert decision.reason.startswith("new adapter kk_copy-v1 lowers answer perplexity from ")
    assert "90% CI of the difference" in decision.reason
    assert decision.reason.endswith("; promoted")
    assert decision.details["after"] < decision.details["before"]


def test_a_difference_within_noise_is_not_promoted() -> None:
    current = draft_card("kk_copy-v1", [2.0 + (0.3 if i % 2 else -0.3) for i in range(30)])
    new = draft_card("kk_copy-v2", [2.0 + (-0.3 if i % 2 else 0.3) - 0.01 for i in range(30)])
    decision = decide_promotion(current, new)
    assert not decision.promote
    assert "not clearly better than kk_copy-v1" in decision.reason
    assert decision.reason.endswith("kept kk_copy-v1")


def test_higher_perplexity_is_not_promoted() -> None:
    current = draft_card("kk_copy-v1", [2.0] * 20)
    new = draft_card("kk_copy-v2", [2.5] * 20)
    assert not decide_promotion(current, new).promote


def test_lower_rule_compliance_blocks_promotion() -> None:
    current = draft_card("kk_copy-v1", [2.6] * 20, [True] * 20)
    new = draft_card("kk_copy-v2", [2.0] * 20, [True] * 15 + [False] * 5)
    decision = decide_promotion(current, new)
    assert not decision.promote
    assert "follow the brand rules less often (75% vs 100%)" in decision.reason


def test_equal_rule_compliance_allows_promotion() -> None:
    current = draft_card("kk_copy-v1", [2.6] * 20, [True] * 18 + [False] * 2)
    new = draft_card("kk_copy-v2", [2.0] * 20, [True] * 18 + [False] * 2)
    assert decide_promotion(current, new).promote


LABELS = ["billing", "refund", "shipping"]


def test_clearly_higher_macro_f1_is_promoted() -> None:
    gold = [LABELS[i % 3] for i in range(30)]
    current = classify_card("kk_tickets-v1", gold, ["billing"] * 30)
    new = classify_card("kk_tickets-v2", gold, gold[:27] + ["billing"] * 3)
    decision = decide_promotion(current, new)
    assert decision.promote, decision.reason
    assert decision.reason.startswith("new adapter kk_tickets-v2 raises macro-F1 from 0.17 to ")


def test_a_label_regressing_beyond_the_margin_blocks_promotion() -> None:
    four = [*LABELS, "damaged"]
    gold = [four[i % 4] for i in range(48)]  # 12 of each label
    current_pred: list[str | None] = [g if g in ("billing", "refund") else "billing" for g in gold]
    new_pred: list[str | None] = [g if g != "refund" else "billing" for g in gold]
    current = classify_card("kk_tickets-v1", gold, current_pred)
    new = classify_card("kk_tickets-v2", gold, new_pred)
    decision = decide_promotion(current, new, margin=0.05)
    assert not decision.promote
    assert new.macro_f1 > current.macro_f1
    assert "raises macro-F1 from 0.38 to 0.67" in decision.reason
    assert "F1 drops by more than the 0.05 margin on refund from 1.00 to 0.00" in decision.reason
    assert "refund" in decision.details["regressions"]


def test_labels_with_few_examples_do_not_block() -> None:
    gold = ["billing"] * 30 + ["refund"] * 3
    current = classify_card("v1", gold, ["shipping"] * 30 + ["refund"] * 3)
    new = classify_card("v2", gold, ["billing"] * 30 + ["billing"] * 3)
    assert decide_promotion(current, new).promote


def test_invalid_answers_count_as_wrong() -> None:
    gold = [LABELS[i % 3] for i in range(30)]
    current = classify_card("v1", gold, list(gold))
    new = classify_card("v2", gold, [None] * 30)
    decision = decide_promotion(current, new)
    assert not decision.promote
    assert new.invalid_rate == 1.0


def test_scorecards_must_cover_the_same_examples() -> None:
    a = draft_card("base", [2.0] * 10)
    b = draft_card("v1", [1.0] * 11)
    with pytest.raises(ValueError, match="different held-out examples"):
        decide_promotion(a, b)
    with pytest.raises(ValueError, match="needs the base's scorecard"):
        decide_promotion(None, b)
    with pytest.raises(ValueError, match="cannot compare"):
        decide_promotion(classify_card("v1", ["billing"], ["billing"]), draft_card("v2", [1.0]))


def _pair_card(name: str, rejected_nll: list[float]) -> Scorecard:
    """Draft scorecard with equal supervised numbers; each pair's chosen side costs 10 nats
    over 10 tokens, so the per-token margin is ``(rejected_nll - 10) / 10``."""
    n = len(rejected_nll)
    return Scorecard(
        name, "draft", [f"k{i}" for i in range(8)], nll=[20.0] * 8, tokens=[10] * 8,
        compliant=[True] * 8, pair_keys=[f"p{i}" for i in range(n)], chosen_nll=[10.0] * n,
        chosen_tokens=[10] * n, rejected_nll=rejected_nll, rejected_tokens=[10] * n,
    )  # fmt: skip


def test_at_full_preference_accuracy_a_clearly_wider_margin_is_promoted() -> None:
    """Accuracy saturates at 100%: a candidate can only be better there by its margin."""
    current = _pair_card("v1", [12.0 + 0.1 * i for i in range(12)])
    wider = _pair_card("v2", [16.0 + 0.1 * i for i in range(12)])
    decision = decide_promotion(current, wider)
    assert decision.promote, decision.reason
    assert "keeps preference accuracy at 100%" in decision.reason
    same = _pair_card("v2", [12.0 + 0.1 * i for i in range(12)])
    assert not decide_promotion(current, same).promote
    narrower = _pair_card("v2", [11.0 + 0.1 * i for i in range(12)])
    assert not decide_promotion(current, narrower).promote
