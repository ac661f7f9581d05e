"""Brand rules (length, banned and required words) and the edit distance used for the draft
revision rate. Pure functions shared by generation-time checks and evaluation."""

from __future__ import annotations

import re
from collections.abc import Sequence


def _has_word(text: str, word: str) -> bool:
    pattern = r"(?<!\w)" + re.escape(word.casefold()) + r"(?!\w)"
    return re.search(pattern, text.casefold()) is not None


def rule_violations(
    text: str,
    *,
    max_length: int | None = None,
    banned_words: Sequence[str] = (),
    required_words: Sequence[str] = (),
) -> list[str]:
    """Human-readable reasons the text breaks the brand rules; empty when it complies.

    Words match whole words, case-insensitively ("cheap" matches "Cheap," not "cheapest").
    """
    problems = []
    if max_length is not None and len(text) > max_length:
        problems.append(f"{len(text)} characters, over the {max_length} limit")
    banned = [w for w in banned_words if _has_word(text, w)]
    if banned:
        problems.append("uses banned " + ", ".join(f"“{w}”" for w in banned))
    missing = [w for w in required_words if not _has_word(text, w)]
    if missing:
        problems.append("lacks required " + ", ".join(f"“{w}”" for w in missing))
    return problems


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance in characters (insertions, deletions, substitutions)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
