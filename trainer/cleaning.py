"""Example cleaning that needs no model: normalising, content hashes and the held-out split.

The split is a pure function of a stable key (a Slack message's identity, or an imported
example's first content hash), so it can be computed once, stored, and never moved by an edit.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache

HELDOUT_FRACTION = 0.15
_SPACE = re.compile(r"\s+")
_NON_WORD = re.compile(r"[^\w\s]")


def normalize_text(text: str) -> str:
    """NFKC, collapsed whitespace, stripped. What is stored and trained on."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


@lru_cache(maxsize=1024)
def dedup_key(text: str) -> str:
    """Case- and punctuation-insensitive form used to spot near-duplicates. Cached: a text's
    content hash, text key and shingles each start from it."""
    folded = _NON_WORD.sub(" ", normalize_text(text).casefold())
    return _SPACE.sub(" ", folded).strip()


def content_hash(task: str, prompt: str | None, text: str, label: str | None = None) -> str:
    """SHA-256 over the example's normalized content; equal hashes mean the same example."""
    parts = [task, dedup_key(prompt or ""), dedup_key(text), label or ""]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def text_key(text: str) -> str:
    """SHA-256 of the dedup form of a text alone, to keep held-out text out of train."""
    return hashlib.sha256(dedup_key(text).encode()).hexdigest()


def split_for(key: str, heldout_fraction: float = HELDOUT_FRACTION) -> str:
    """``"heldout"`` for about ``heldout_fraction`` of keys, else ``"train"``; deterministic."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "heldout" if bucket < heldout_fraction else "train"


def slack_message_key(workspace: str, channel: str, ts: str) -> str:
    """The stable identity of a Slack message, used as its split key."""
    return f"slack:{workspace}:{channel}:{ts}"
