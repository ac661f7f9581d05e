"""Held-out preference pairs as numbers: how strongly a model prefers the chosen answer.

A pair's margin is the chosen answer's mean log-probability per answer token minus the rejected
answer's (answer + end-of-turn tokens, as trained; :mod:`trainer.likelihood`). Per token, not
summed: an edit that adds or cuts words would otherwise move the margin by its length alone,
and a base model would "prefer" whichever side is shorter. Preference accuracy is the share of
pairs with a margin > 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainer.cleaning import content_hash
from trainer.data import PreferencePair, TrainExample

PairItem = tuple[float, int, float, int]
"""Per pair: (chosen NLL sum, chosen answer tokens, rejected NLL sum, rejected answer tokens)."""


def pair_margins(items: Sequence[PairItem]) -> list[float]:
    """Per pair: mean log-probability per token of the chosen answer minus the rejected one's."""
    return [rn / max(rt, 1) - cn / max(ct, 1) for cn, ct, rn, rt in items]


def preference_accuracy(items: Sequence[PairItem]) -> float:
    """Share of pairs whose margin is > 0 (a tie counts as wrong); 0 for no pairs."""
    margins = pair_margins(items)
    return sum(1.0 for m in margins if m > 0) / len(margins) if margins else 0.0


def mean_margin(items: Sequence[PairItem]) -> float:
    margins = pair_margins(items)
    return sum(margins) / len(margins) if margins else 0.0


def pair_key(pair: PreferencePair) -> str:
    return content_hash("preference", pair.prompt, pair.chosen, pair.rejected)


def pair_sides(pairs: Sequence[PreferencePair]) -> list[TrainExample]:
    """Each pair's chosen then rejected answer, as examples to score."""
    return [p.as_example(a) for p in pairs for a in (p.chosen, p.rejected)]
