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


_ZWJ = "\u200d"
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_KEEPS_ZWJ = ("So", "Sk", "Mn", "Me")  # emoji, skin tones and variation selectors: 👩‍💻


def strip_invisible(text: str) -> str:
    """NFKC, then drop format and control characters (zero-width spaces and joiners, bidi
    overrides, soft hyphens, tag characters, NUL...); tabs and newlines are kept. A joiner
    between emoji stays, so emoji sequences survive. Hidden characters must not split a card
    number away from the PII rules, nor make two equal texts look different."""
    if text.isascii():
        return _ASCII_CONTROL.sub("", text)
    text = unicodedata.normalize("NFKC", text)
    out: list[str] = []
    for i, ch in enumerate(text):
        category = unicodedata.category(ch)
        if category == "Cf" or (category == "Cc" and ch not in "\t\n\r"):
            if _joins_emoji(ch, out, text, i):
                out.append(ch)
            continue
        out.append(ch)
    return "".join(out)


def _joins_emoji(ch: str, out: list[str], text: str, i: int) -> bool:
    """A zero-width joiner between an emoji (or its modifier) and another emoji."""
    return (
        ch == _ZWJ
        and bool(out)
        and i + 1 < len(text)
        and unicodedata.category(out[-1]) in _KEEPS_ZWJ
        and unicodedata.category(text[i + 1]) in ("So", "Sk")
    )


def normalize_text(text: str) -> str:
    """NFKC without invisible characters, collapsed whitespace, stripped. What is stored and
    trained on."""
    return _SPACE.sub(" ", strip_invisible(text)).strip()


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
