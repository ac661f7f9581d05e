"""Import and export of preference pairs as the usual ``{"prompt", "chosen", "rejected"}`` JSONL.

``prompt`` is the brief (or a list of chat messages holding exactly one user message; a system
message is allowed and left out, the dataset has its own); ``chosen`` and ``rejected`` are the
answers (or lists holding exactly one assistant message). Import is idempotent (pairs are
identified by their content hash) and goes through the same pair gate as the pairs the bot
collects (``bot.preferences``): scrubbed, size-checked, trivial edits skipped. A bad line is
reported with its number and reason and skipped; the rest goes in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from bot.gate import Gate, Scrubber
from bot.importer import (
    CONTROL_CHARACTERS,
    ImportResult,
    Rejected,
    RowError,
    iter_jsonl_records,
    message_content,
)
from bot.preferences import PairCandidate, PairGate, import_split, pair_row
from bot.storage.models import Dataset, Example
from bot.storage.repositories import Audit, Examples

INSERT_BATCH = 500
PAIR_KEYS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PairLine:
    line: int
    pair: PairCandidate


def _one(value: Any, field: str, role: str) -> str:
    """A string, or the one ``role`` message of a list of chat messages."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise RowError(f'"{field}" must be a string or a non-empty list of chat messages')
    messages = [message_content(m, i) for i, m in enumerate(value)]
    wanted = [c for r, c in messages if r == role]
    others = {r for r, _ in messages} - {role, "system"}
    if len(wanted) != 1 or others:
        raise RowError(f'"{field}" as messages must hold exactly one {role} message')
    return wanted[0]


def parse_pair_record(record: Any, line: int) -> PairLine:
    """One JSON object as a pair, or RowError with why."""
    if not isinstance(record, dict):
        raise RowError("not a JSON object")
    missing = [k for k in PAIR_KEYS if k not in record]
    if missing:
        raise RowError("missing " + ", ".join(f'"{k}"' for k in missing))
    prompt = _one(record["prompt"], "prompt", "user")
    chosen = _one(record["chosen"], "chosen", "assistant")
    rejected = _one(record["rejected"], "rejected", "assistant")
    for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        found = CONTROL_CHARACTERS.search(value)
        if found:
            raise RowError(
                f"the {name} contains a control character (U+{ord(found.group()):04X}) at "
                f"character {found.start() + 1}"
            )
    return PairLine(line, PairCandidate(prompt, chosen, rejected, "import"))


def read_pairs(stream: BinaryIO) -> Iterator[PairLine | Rejected]:
    """Pair lines of a binary JSONL file, one at a time."""
    for item in iter_jsonl_records(stream):
        if isinstance(item, Rejected):
            yield item
            continue
        number, record = item
        try:
            yield parse_pair_record(record, number)
        except RowError as exc:
            yield Rejected(number, str(exc))


def iter_pairs_file(path: Path) -> Iterator[PairLine | Rejected]:
    with path.open("rb") as stream:
        yield from read_pairs(stream)


def is_pairs_file(path: Path) -> bool:
    """Whether a JSONL file holds pairs: its first JSON object line has a "chosen" key."""
    if path.suffix.lower() == ".csv":
        return False
    with path.open("rb") as stream:
        for item in iter_jsonl_records(stream):
            if isinstance(item, Rejected):
                continue
            _number, record = item
            return isinstance(record, dict) and "chosen" in record
    return False


def import_pairs(
    session: Session,
    dataset: Dataset,
    rows: Iterable[PairLine | Rejected],
    *,
    actor: str | None = None,
    scrubber: Scrubber | None = None,
) -> ImportResult:
    """Insert the valid, new pairs (active: the person importing vouches for them) in the
    caller's transaction, and count the rest."""
    if dataset.task != "draft":
        result = ImportResult()
        result.rejected.append(Rejected(0, "preference pairs are for draft datasets"))
        return result
    pairs = PairGate(Gate(session, scrubber=scrubber))
    result = ImportResult()
    repo = Examples(session)
    seen = repo.existing_hashes(dataset.id)
    splits = repo.split_by_text_key(dataset.id)
    new_rows: list[dict[str, Any]] = []
    for row in rows:
        if isinstance(row, Rejected):
            result.rejected.append(row)
            continue
        prepared = pairs.prepare(dataset, row.pair)
        if isinstance(prepared, str):
            result.rejected.append(Rejected(row.line, prepared))
            continue
        if prepared.digest in seen:
            result.duplicate += 1
            continue
        seen.add(prepared.digest)
        split = import_split(splits, prepared)
        new_rows.append(pair_row(dataset, prepared, "import", split, actor=actor))
        result.added_by_split[split] = result.added_by_split.get(split, 0) + 1
    for start in range(0, len(new_rows), INSERT_BATCH):
        pairs.insert(new_rows[start : start + INSERT_BATCH])
    result.added = len(new_rows)
    if new_rows:
        Audit(session).record(
            "pairs.import", actor=actor, dataset_id=dataset.id, added=result.added,
            duplicate=result.duplicate, rejected=len(result.rejected),
        )  # fmt: skip
    return result


def export_pair_records(examples: Iterable[Example]) -> Iterator[dict[str, str]]:
    """Stored pairs as ``{"prompt", "chosen", "rejected"}`` records."""
    for ex in examples:
        if ex.kind == "preference" and ex.prompt and ex.rejected_text:
            yield {"prompt": ex.prompt, "chosen": ex.text, "rejected": ex.rejected_text}
