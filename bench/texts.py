"""Realistic benchmark texts: human-written CLINC150 queries (23,695 distinct utterances,
bench/data/clinc150_utterances.txt.gz, CC BY 3.0) made into sentences and brand-post-like
paragraphs, so hashing, scrubbing and near-duplicate lookups meet a real vocabulary rather than
a handful of words that every text shares."""

from __future__ import annotations

import gzip
import itertools
import random
from functools import lru_cache
from pathlib import Path

TEXTS = Path(__file__).resolve().parent / "data" / "clinc150_utterances.txt.gz"
QUESTION = frozenset(
    (
        "what",
        "how",
        "who",
        "when",
        "where",
        "why",
        "which",
        "can",
        "could",
        "is",
        "are",
        "do",
        "does",
        "did",
        "will",
        "would",
        "should",
        "may",
        "am",
        "was",
        "have",
        "has",
    )
)


@lru_cache(maxsize=1)
def utterances() -> tuple[str, ...]:
    return tuple(gzip.decompress(TEXTS.read_bytes()).decode().splitlines())


def sentence(utterance: str) -> str:
    stop = "?" if utterance.split(" ", 1)[0] in QUESTION else "."
    return utterance[0].upper() + utterance[1:] + stop


def posts(count: int, seed: int = 7) -> list[str]:
    """``count`` distinct paragraphs of three utterances each, no two sharing a pair of them
    (so none is a near-duplicate of another); deterministic for a seed."""
    rng = random.Random(seed)
    used: set[frozenset[str]] = set()
    out: list[str] = []
    while len(out) < count:
        order = list(utterances())
        rng.shuffle(order)
        for i in range(0, len(order) - 2, 3):
            group = order[i : i + 3]
            pairs = {frozenset(p) for p in itertools.combinations(group, 2)}
            if pairs & used:
                continue
            used |= pairs
            out.append(" ".join(map(sentence, group)))
            if len(out) == count:
                break
    return out
