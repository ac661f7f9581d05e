"""Measuring the scrubber on a labelled corpus (``tests/data/pii_corpus.jsonl``): the share of
labelled spans fully removed, and the share of clean words changed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.pii.scrubber import ScrubConfig, scrub


@dataclass(frozen=True)
class LabelledSpan:
    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class LabelledMessage:
    text: str
    spans: tuple[LabelledSpan, ...] = ()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LabelledMessage:
        spans = tuple(
            LabelledSpan(str(s["kind"]), int(s["start"]), int(s["end"]))
            for s in obj.get("spans", ())
        )
        return cls(str(obj["text"]), spans)


@dataclass(frozen=True)
class KindReport:
    spans: int
    removed: int

    @property
    def recall(self) -> float:
        return self.removed / self.spans if self.spans else 1.0


@dataclass(frozen=True)
class Report:
    """Scrubber quality on a labelled corpus.

    ``span_recall``: share of labelled spans none of whose (non-space) characters survive.
    ``clean_token_change_rate``: share of whitespace-separated tokens that touch no labelled
    span but were altered or removed anyway.
    """

    span_recall: float
    clean_token_change_rate: float
    per_kind: dict[str, KindReport]
    messages: int = 0
    spans: int = 0
    clean_tokens: int = 0
    changed_clean_tokens: int = 0
    missed: list[tuple[str, str]] = field(default_factory=list)  # (kind, value)
    changed: list[str] = field(default_factory=list)  # clean tokens that were changed


def load_corpus(path: str | Path) -> list[LabelledMessage]:
    """Read a JSONL corpus of ``{"text": ..., "spans": [{"kind", "start", "end"}]}`` lines."""
    with Path(path).open(encoding="utf-8") as fh:
        return [LabelledMessage.from_json(json.loads(line)) for line in fh if line.strip()]


_TOKEN = re.compile(r"\S+")


def evaluate(
    corpus: Iterable[LabelledMessage | Mapping[str, Any]],
    config: ScrubConfig | None = None,
) -> Report:
    """Scrub every message of ``corpus`` and compare with its labels (see :class:`Report`)."""
    per_kind_total: dict[str, int] = {}
    per_kind_removed: dict[str, int] = {}
    messages = n_clean = n_changed = 0
    missed: list[tuple[str, str]] = []
    changed: list[str] = []
    for item in corpus:
        msg = item if isinstance(item, LabelledMessage) else LabelledMessage.from_json(item)
        messages += 1
        result = scrub(msg.text, config)
        covered = bytearray(len(msg.text))
        for s in result.spans:
            covered[s.start : s.end] = b"\x01" * (s.end - s.start)
        labelled = bytearray(len(msg.text))
        for ls in msg.spans:
            labelled[ls.start : ls.end] = b"\x01" * (ls.end - ls.start)
            per_kind_total[ls.kind] = per_kind_total.get(ls.kind, 0) + 1
            removed = all(covered[i] or msg.text[i].isspace() for i in range(ls.start, ls.end))
            if removed:
                per_kind_removed[ls.kind] = per_kind_removed.get(ls.kind, 0) + 1
            else:
                missed.append((ls.kind, msg.text[ls.start : ls.end]))
        for tok in _TOKEN.finditer(msg.text):
            a, b = tok.span()
            if any(labelled[a:b]):
                continue
            n_clean += 1
            if any(covered[a:b]):
                n_changed += 1
                changed.append(tok.group())
    total = sum(per_kind_total.values())
    removed_total = sum(per_kind_removed.values())
    per_kind = {
        kind: KindReport(per_kind_total[kind], per_kind_removed.get(kind, 0))
        for kind in sorted(per_kind_total)
    }
    return Report(
        span_recall=removed_total / total if total else 1.0,
        clean_token_change_rate=n_changed / n_clean if n_clean else 0.0,
        per_kind=per_kind,
        messages=messages,
        spans=total,
        clean_tokens=n_clean,
        changed_clean_tokens=n_changed,
        missed=missed,
        changed=changed,
    )
