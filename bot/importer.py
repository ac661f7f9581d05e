"""Import and export of examples in the common chat JSONL format (and CSV for classify).

Import is idempotent: an example is identified by its content hash, so the same content twice is
one example. A bad line is reported with its number and reason and skipped; the rest goes in.
Splits are computed once, from the first content hash, except that a text already in the dataset
keeps that text's split, so held-out text never enters train.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from bot.gate import MAX_TEXT_CHARS, Gate, NewExample, Scrubber, with_band_keys
from bot.near_dups import shared_twice
from bot.storage.models import Dataset, Example, utcnow
from bot.storage.repositories import Audit, Examples
from trainer.cleaning import normalize_text, split_for

NEAR_CHUNK = 200  # rows whose near-duplicates are looked up in one query
INSERT_BATCH = 500  # rows per INSERT: a large import never becomes one huge statement
ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Candidate:
    """One parsed input row, before deduplication."""

    line: int
    prompt: str | None
    text: str
    label: str | None
    kind: str = "positive"


@dataclass
class Rejected:
    line: int
    reason: str


@dataclass
class ImportResult:
    added: int = 0
    duplicate: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    added_by_split: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "duplicate": self.duplicate,
            "rejected": len(self.rejected),
            "added_by_split": self.added_by_split,
            "rejections": [{"line": r.line, "reason": r.reason} for r in self.rejected],
        }


class RowError(ValueError):
    pass


def message_content(msg: Any, index: int) -> tuple[str, str]:
    """``(role, content)`` of chat message ``index``, or RowError with why."""
    if not isinstance(msg, dict):
        raise RowError(f"messages[{index}] is not an object")
    role, content = msg.get("role"), msg.get("content")
    if role not in ROLES:
        raise RowError(f"messages[{index}].role must be one of system, user, assistant")
    if not isinstance(content, str):
        raise RowError(f"messages[{index}].content must be a string")
    return role, content


def parse_chat_record(record: Any, task: str, line: int) -> Candidate:
    """Turn one chat-format object into a candidate example, or raise RowError with why."""
    if not isinstance(record, dict):
        raise RowError("not a JSON object")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RowError('missing "messages" (a non-empty list)')
    pairs = [message_content(m, i) for i, m in enumerate(messages)]
    users = [c for r, c in pairs if r == "user"]
    answers = [c for r, c in pairs if r == "assistant"]
    if len(answers) != 1:
        raise RowError(f"expected exactly one assistant message, found {len(answers)}")
    if len(users) > 1:
        raise RowError(f"expected at most one user message, found {len(users)}")
    kind = record.get("kind", "positive")
    if kind not in ("positive", "negative"):
        raise RowError('"kind" must be "positive" or "negative"')
    if task == "classify":
        if not users:
            raise RowError("a classify example needs the ticket as a user message")
        label = record.get("label")
        answer = answers[0].strip()
        if label is None:
            label = answer
        if not isinstance(label, str):
            raise RowError('"label" must be a string')
        if label.strip() != answer:
            raise RowError(f'"label" {label!r} and the assistant message {answer!r} differ')
        return Candidate(line, None, users[0], label.strip(), kind)
    return Candidate(line, users[0] if users else None, answers[0], None, kind)


MAX_LINE_BYTES = 1 << 20
# control characters that are not whitespace (whitespace is collapsed by normalize_text)
CONTROL_CHARACTERS = re.compile(
    "[" + "".join(re.escape(c) for c in map(chr, range(0xA0))
                  if unicodedata.category(c) == "Cc" and not c.isspace()) + "]"
)  # fmt: skip


def _lines(stream: BinaryIO) -> Iterator[tuple[int, str, str | None]]:
    """Every line of a binary stream as ``(number, text, why it is unusable or None)``.

    Read one line at a time (never the whole file); a line over ``MAX_LINE_BYTES`` is skipped
    unread (its text is a bare newline) and a line that is not UTF-8 is decoded with
    replacement characters, both with their reason, so the caller can reject just that line.
    """
    number = 0
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        number += 1
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = stream.readline(MAX_LINE_BYTES)
            yield number, "\n", f"the line is over {MAX_LINE_BYTES // 1024} KiB"
            continue
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            text = raw.decode("utf-8", errors="replace")
            yield number, text, f"not UTF-8 (byte {exc.start + 1} of the line)"


def _control_character(candidate: Candidate) -> str | None:
    """Why a candidate's text cannot be stored, if it holds a control character (NUL: PostgreSQL
    refuses it; the others are binary junk in copy or tickets)."""
    for what, value in (("brief", candidate.prompt), ("text", candidate.text),
                        ("label", candidate.label)):  # fmt: skip
        found = CONTROL_CHARACTERS.search(value) if value else None
        if found:
            char = found.group()
            name = "a NUL character" if char == "\x00" else "a control character"
            return (
                f"the {what} contains {name} (U+{ord(char):04X}) at character {found.start() + 1}"
            )
    return None


def _screened(candidate: Candidate) -> Candidate | Rejected:
    reason = _control_character(candidate)
    return Rejected(candidate.line, reason) if reason else candidate


def iter_jsonl_records(stream: BinaryIO) -> Iterator[tuple[int, Any] | Rejected]:
    """Every JSON value of a binary JSONL stream as ``(line number, value)``, one line at a time.

    Blank lines are skipped. A line that is too long, not UTF-8 or not valid JSON is a
    ``Rejected`` with its number and reason, and reading goes on with the next line; what the
    value must look like is the caller's to check.
    """
    for number, raw, problem in _lines(stream):
        if problem:
            yield Rejected(number, problem)
            continue
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw)
        except json.JSONDecodeError as exc:
            yield Rejected(number, f"malformed JSON: {exc.msg} (column {exc.colno})")


def read_jsonl(stream: BinaryIO, task: str) -> Iterator[Candidate | Rejected]:
    """Chat-format lines of a binary file, one at a time."""
    for item in iter_jsonl_records(stream):
        if isinstance(item, Rejected):
            yield item
            continue
        number, record = item
        try:
            yield _screened(parse_chat_record(record, task, number))
        except RowError as exc:
            yield Rejected(number, str(exc))


def read_csv(stream: BinaryIO) -> Iterator[Candidate | Rejected]:
    """CSV ``text,label`` rows (a header row with exactly those names is skipped).

    A row is rejected with its (last) line number when it has the wrong column count, a field
    over the csv module's limit (128 KiB), a line that is not UTF-8 or too long, or a control
    character; the rows after it are read as usual.
    """
    problems: dict[int, str] = {}

    def text() -> Iterator[str]:
        for number, line, problem in _lines(stream):
            if problem:
                problems[number] = problem
            yield line

    reader = csv.reader(text())
    first, start = True, 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            start = reader.line_num + 1
            yield Rejected(reader.line_num, _csv_reason(exc))
            continue
        number = reader.line_num
        problem = next((problems[n] for n in range(start, number + 1) if n in problems), None)
        start = number + 1
        if problem:
            yield Rejected(number, problem)
            continue
        if first and [c.strip().lower() for c in row] == ["text", "label"]:
            first = False
            continue
        first = False
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            yield Rejected(number, f"expected 2 columns (text,label), found {len(row)}")
            continue
        yield _screened(Candidate(number, None, row[0], row[1].strip() or None))


def _csv_reason(exc: csv.Error) -> str:
    if "field limit" in str(exc):
        return f"a field is over {csv.field_size_limit() // 1024} KiB (the CSV field limit)"
    return f"malformed CSV: {exc}"


def iter_file(path: Path, task: str) -> Iterator[Candidate | Rejected]:
    """Parse a .jsonl/.json or .csv file as it is read (one line at a time); CSV is only for
    classify datasets. Every bad line is a ``Rejected`` with its number and reason."""
    if path.suffix.lower() == ".csv" and task != "classify":
        yield Rejected(0, "CSV (text,label) is for classify datasets; use chat JSONL")
        return
    with path.open("rb") as stream:
        if path.suffix.lower() == ".csv":
            yield from read_csv(stream)
        else:
            yield from read_jsonl(stream, task)


def read_file(path: Path, task: str) -> list[Candidate | Rejected]:
    """``iter_file`` as a list (small files: the sample brand, tests)."""
    return list(iter_file(path, task))


def _check(candidate: Candidate, dataset: Dataset) -> str | None:
    text = normalize_text(candidate.text)
    if not text:
        return "empty text"
    if len(text) > MAX_TEXT_CHARS:
        return f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
    if dataset.task == "draft" and dataset.max_length and len(text) > dataset.max_length:
        return f"text is {len(text)} characters; the dataset's max_length is {dataset.max_length}"
    if candidate.prompt is not None and len(candidate.prompt) > MAX_TEXT_CHARS:
        return f"prompt is over {MAX_TEXT_CHARS} characters"
    if dataset.task == "classify":
        if not dataset.labels:
            return "the dataset has no labels yet (set them with `datasets update --labels`)"
        if candidate.label not in dataset.labels:
            return f"label {candidate.label!r} is not one of the dataset's labels"
    return None


def import_candidates(
    session: Session,
    dataset: Dataset,
    rows: Iterable[Candidate | Rejected],
    *,
    actor: str | None = None,
    scrubber: Scrubber | None = None,
) -> ImportResult:
    """Insert the valid, new candidates in one transaction (the caller's) and count the rest.

    Rows go through the gate like every other example: normalized, scrubbed with ``scrubber``
    (every PII rule when None), hashed, and kept out when they duplicate a stored example or
    an earlier row exactly or (copy datasets) nearly."""
    from trainer.near_dup import is_near_duplicate

    gate = Gate(session, scrubber=scrubber)
    result = ImportResult()
    repo = Examples(session)
    seen = repo.existing_hashes(dataset.id)
    splits = repo.split_by_text_key(dataset.id)
    fresh: list[tuple[Candidate, NewExample]] = []
    for row in rows:
        if isinstance(row, Rejected):
            result.rejected.append(row)
            continue
        reason = _check(row, dataset)
        new = reason or gate.prepare(
            dataset, row.text, row.prompt, "import", row.label, band_keys=False
        )
        if isinstance(new, str):
            result.rejected.append(Rejected(row.line, new))
            continue
        if new.digest in seen:  # a re-import skips the band keys of what it already has
            result.duplicate += 1
            continue
        seen.add(new.digest)
        fresh.append((row, with_band_keys(new)))
    kept: list[tuple[Candidate, NewExample]] = []
    holders: dict[tuple[int, str], list[int]] = {}
    for start in range(0, len(fresh), NEAR_CHUNK):
        chunk = fresh[start : start + NEAR_CHUNK]
        found: dict[int, list[int]] = {}
        texts: dict[int, str] = {}
        if dataset.task != "classify":
            found, texts = gate.near_candidates(
                [(i, dataset.id, new.keys) for i, (_, new) in enumerate(chunk)]
            )
        for i, (row, new) in enumerate(chunk):
            if dataset.task != "classify":
                earlier = [kept[k][1].text for k in shared_twice(dataset.id, new.keys, holders)]
                stored = [texts[c] for c in found.get(i, ())]
                if any(is_near_duplicate(t, new.text) for t in [*stored, *earlier]):
                    result.duplicate += 1
                    continue
                for key in new.keys:
                    holders.setdefault((dataset.id, key), []).append(len(kept))
            kept.append((row, new))
    now = utcnow()
    new_rows: list[dict[str, Any]] = []
    for row, new in kept:
        split = splits.get(new.tkey) or split_for(new.digest)
        splits.setdefault(new.tkey, split)
        new_rows.append(
            dict(
                dataset_id=dataset.id, task=dataset.task, prompt=new.prompt,
                prompt_source=new.prompt_source, text=new.text, label=row.label, kind=row.kind,
                status="active", split=split, content_hash=new.digest, text_key=new.tkey,
                source="import", approver_id=actor, created_at=now, updated_at=now,
                _approval=None,
            )
        )  # fmt: skip
        result.added_by_split[split] = result.added_by_split.get(split, 0) + 1
    keys = [new.keys for _, new in kept]
    for start in range(0, len(new_rows), INSERT_BATCH):
        end = start + INSERT_BATCH
        gate.insert(new_rows[start:end], keys[start:end])
    result.added = len(new_rows)
    if new_rows:
        Audit(session).record(
            "examples.import",
            actor=actor,
            dataset_id=dataset.id,
            added=result.added,
            duplicate=result.duplicate,
            rejected=len(result.rejected),
        )
    return result


def export_records(dataset: Dataset, examples: Iterable[Example]) -> Iterator[dict[str, Any]]:
    """Examples as chat-format records; the dataset's brand prompt is the system message."""
    for ex in examples:
        messages: list[dict[str, str]] = []
        if dataset.system_prompt:
            messages.append({"role": "system", "content": dataset.system_prompt})
        if dataset.task == "classify":
            messages.append({"role": "user", "content": ex.text})
            messages.append({"role": "assistant", "content": ex.label or ""})
            record: dict[str, Any] = {"messages": messages, "label": ex.label}
        else:
            if ex.prompt:
                messages.append({"role": "user", "content": ex.prompt})
            messages.append({"role": "assistant", "content": ex.text})
            record = {"messages": messages}
        if ex.kind != "positive":
            record["kind"] = ex.kind
        yield record
