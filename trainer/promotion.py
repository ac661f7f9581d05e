"""The promotion rule: a new adapter replaces the current one only when it is clearly better.

Without held-out preference pairs, "clearly" means: better on the task's primary metric, with
the 90% paired-bootstrap interval of the difference excluding zero, and no guard regressing —

- draft: answer perplexity lower; brand-rule compliance of the generated drafts not lower;
- classify: macro-F1 higher; no label with at least ``min_support`` held-out examples losing
  more than ``margin`` of F1.

With held-out preference pairs, what people preferred is the measure: the candidate must be
clearly better on preference accuracy (higher, the interval of the difference above zero; or,
as accuracy saturates, not lower with the mean margin's interval above zero) and not worse on
the supervised metrics (the primary metric not clearly worse, i.e. its interval
not wholly on the worse side, and the same guards as above).

With no current adapter the candidate is compared against the base model's scorecard. The
``reason`` is one sentence for people (it goes into the Slack report as it is); ``details``
holds the numbers for the run record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainer.evaluate import Interval, Scorecard, macro_f1, paired_bootstrap, perplexity
from trainer.pair_metrics import mean_margin, preference_accuracy


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _ci(interval: Interval) -> str:
    return (
        f"{100 * interval.confidence:.0f}% CI of the difference "
        f"{interval.low:.3g} to {interval.high:.3g}"
    )


def decide_promotion(
    current: Scorecard | None,
    candidate: Scorecard,
    *,
    margin: float = 0.05,
    base: Scorecard | None = None,
    min_support: int = 10,
    confidence: float = 0.9,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Decision:
    """Promote ``candidate`` over ``current`` (or, when there is none, over ``base``)?

    The rule, exactly. Without held-out pairs (``candidate.pair_keys`` empty): draft — answer
    perplexity lower with the bootstrap interval of the difference below zero, and rule
    compliance not lower; classify — macro-F1 higher with its interval above zero, and no label
    of ``min_support`` or more examples losing more than ``margin`` F1. With held-out pairs:
    preference accuracy higher with its interval above zero (or not lower, with the interval of
    the mean pair margin above zero), AND not worse on the supervised
    metrics: draft — the perplexity interval not wholly above zero, and rule compliance not
    lower; classify — the macro-F1 interval not wholly below zero, and no label regression as
    above. Intervals are ``confidence`` paired-bootstrap intervals over the held-out examples
    (pairs for preference accuracy).

    The scorecards must cover the same held-out examples and pairs in the same order
    (``ValueError`` otherwise, and when neither ``current`` nor ``base`` is given).
    """
    reference = current if current is not None else base
    if reference is None:
        raise ValueError("decide_promotion needs the base's scorecard when there is no current")
    if reference.task != candidate.task:
        raise ValueError(f"cannot compare a {reference.task} with a {candidate.task} scorecard")
    if reference.keys != candidate.keys or reference.pair_keys != candidate.pair_keys:
        raise ValueError("the scorecards were computed on different held-out examples")
    if not candidate.keys:
        return Decision(False, f"new adapter {candidate.name} has no held-out examples to judge")
    ref_name = reference.name if current is not None else "the base model"
    kwargs: dict[str, Any] = {"n": n_bootstrap, "confidence": confidence, "seed": seed}
    if candidate.pair_keys:
        return _with_pairs(reference, candidate, ref_name, kwargs, margin, min_support)
    if candidate.task == "draft":
        return _draft(reference, candidate, ref_name, kwargs)
    return _classify(reference, candidate, ref_name, kwargs, margin, min_support)


def _draft(ref: Scorecard, cand: Scorecard, ref_name: str, kwargs: dict[str, Any]) -> Decision:
    before, after = ref.perplexity, cand.perplexity
    interval = paired_bootstrap(ref.nll_items, cand.nll_items, perplexity, **kwargs)
    details: dict[str, Any] = {
        "metric": "answer_perplexity",
        "reference": ref.name,
        "before": before,
        "after": after,
        "interval": [interval.diff, interval.low, interval.high],
        "compliance_before": ref.compliance_rate,
        "compliance_after": cand.compliance_rate,
    }
    who = f"new adapter {cand.name}"
    if not (after < before and interval.high < 0):
        return Decision(
            False,
            f"{who} is not clearly better than {ref_name}: answer perplexity {after:.3g} vs "
            f"{before:.3g} ({_ci(interval)} includes zero or favours {ref_name}); "
            f"kept {ref_name}",
            details,
        )
    gain = f"{who} lowers answer perplexity from {before:.3g} to {after:.3g} ({_ci(interval)})"
    c_before, c_after = ref.compliance_rate, cand.compliance_rate
    if c_before is not None and c_after is not None and c_after < c_before:
        return Decision(
            False,
            f"{gain}, but its drafts follow the brand rules less often ({_pct(c_after)} vs "
            f"{_pct(c_before)}); kept {ref_name}",
            details,
        )
    return Decision(True, f"{gain}; promoted", details)


def _classify(
    ref: Scorecard,
    cand: Scorecard,
    ref_name: str,
    kwargs: dict[str, Any],
    margin: float,
    min_support: int,
) -> Decision:
    before, after = ref.macro_f1, cand.macro_f1
    interval = paired_bootstrap(ref.pairs, cand.pairs, macro_f1, **kwargs)
    ref_labels, cand_labels = ref.per_label(), cand.per_label()
    regressions = {
        label: (scores.f1, cand_labels[label].f1 if label in cand_labels else 0.0)
        for label, scores in ref_labels.items()
        if scores.support >= min_support
        and (cand_labels[label].f1 if label in cand_labels else 0.0) < scores.f1 - margin
    }
    details: dict[str, Any] = {
        "metric": "macro_f1",
        "reference": ref.name,
        "before": before,
        "after": after,
        "interval": [interval.diff, interval.low, interval.high],
        "regressions": regressions,
        "margin": margin,
    }
    who = f"new adapter {cand.name}"
    if not (after > before and interval.low > 0):
        return Decision(
            False,
            f"{who} is not clearly better than {ref_name}: macro-F1 {after:.2f} vs {before:.2f} "
            f"({_ci(interval)} includes zero or favours {ref_name}); kept {ref_name}",
            details,
        )
    gain = f"{who} raises macro-F1 from {before:.2f} to {after:.2f} ({_ci(interval)})"
    if regressions:
        worst = ", ".join(f"{k} from {a:.2f} to {b:.2f}" for k, (a, b) in regressions.items())
        return Decision(
            False,
            f"{gain}, but F1 drops by more than the {margin:.2f} margin on {worst}; "
            f"kept {ref_name}",
            details,
        )
    return Decision(True, f"{gain}; promoted", details)


def _with_pairs(
    ref: Scorecard,
    cand: Scorecard,
    ref_name: str,
    kwargs: dict[str, Any],
    margin: float,
    min_support: int,
) -> Decision:
    """Preference accuracy clearly better and the supervised metrics not worse."""
    if cand.task == "draft":
        supervised = _draft(ref, cand, ref_name, kwargs)
        low, high = supervised.details["interval"][1:]
        c_before, c_after = ref.compliance_rate, cand.compliance_rate
        worse = [f"answer perplexity {supervised.details['after']:.3g} vs "
                 f"{supervised.details['before']:.3g}"] if low > 0 else []  # fmt: skip
        if c_before is not None and c_after is not None and c_after < c_before:
            worse.append(f"rule compliance {_pct(c_after)} vs {_pct(c_before)}")
    else:
        supervised = _classify(ref, cand, ref_name, kwargs, margin, min_support)
        low, high = supervised.details["interval"][1:]
        worse = [f"macro-F1 {supervised.details['after']:.2f} vs "
                 f"{supervised.details['before']:.2f}"] if high < 0 else []  # fmt: skip
        worse += [f"{k} F1 from {a:.2f} to {b:.2f}"
                  for k, (a, b) in supervised.details["regressions"].items()]  # fmt: skip
    before, after = preference_accuracy(ref.pair_items), preference_accuracy(cand.pair_items)
    interval = paired_bootstrap(ref.pair_items, cand.pair_items, preference_accuracy, **kwargs)
    details = {
        **supervised.details,
        "preference": {
            "pairs": len(cand.pair_keys),
            "before": before,
            "after": after,
            "interval": [interval.diff, interval.low, interval.high],
            "margin_before": ref.preference_margin,
            "margin_after": cand.preference_margin,
        },
        "supervised_worse": worse,
    }
    who, n = f"new adapter {cand.name}", len(cand.pair_keys)
    margins = paired_bootstrap(ref.pair_items, cand.pair_items, mean_margin, **kwargs)
    details["preference"]["margin_interval"] = [margins.diff, margins.low, margins.high]
    if after > before and interval.low > 0:
        gain = (
            f"{who} raises preference accuracy from {_pct(before)} to {_pct(after)} on {n} "
            f"held-out pairs ({_ci(interval)})"
        )
    elif after >= before and margins.low > 0:
        # Accuracy saturates (at 100% nothing could beat it): the same accuracy with a clearly
        # wider margin for what people chose is better on the same measure.
        gain = (
            f"{who} keeps preference accuracy at {_pct(after)} (was {_pct(before)}) on {n} "
            f"held-out pairs and prefers the posted texts more strongly: mean margin "
            f"{margins.diff:+.3g} ({_ci(margins)})"
        )
    else:
        return Decision(
            False,
            f"{who} is not clearly better than {ref_name} at what people preferred: preference "
            f"accuracy {_pct(after)} vs {_pct(before)} on {n} held-out pairs ({_ci(interval)} "
            f"includes zero or favours {ref_name}); kept {ref_name}",
            details,
        )
    if worse:
        return Decision(False, f"{gain}, but is worse on {'; '.join(worse)}; kept {ref_name}",
                        details)  # fmt: skip
    return Decision(True, f"{gain}, and is not worse on the other metrics; promoted", details)
