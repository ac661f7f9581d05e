"""Preference pairs: what people preferred for one brief, kept in the example store.

A pair is an ``Example`` of kind ``preference``: ``prompt`` is the brief (or the ticket of a reply
dataset), ``text`` the chosen answer (what was posted) and ``rejected_text`` the rejected one
(what the model wrote, a variant not posted, a text a regeneration replaced, a discarded draft).
Pairs pass the same gate as every example: scrubbed with the dataset's scrubber, size-checked
(the chosen side like any example; the rejected side may break the brand's length rule, that is
often the point), content-hashed on (brief, chosen, rejected), audited with ids and hashes only,
and given a split the way every example gets one (a chosen text already in the dataset keeps its
split, so held-out text never enters train).

Only approvers' actions make pairs, and they are active at once. A pair whose two sides differ
only in whitespace, punctuation or case teaches nothing and is skipped. A pair has no message
timestamp, so it never collides with the positive example the posted message also becomes, and
no near-duplicate keys, so it never makes that positive (or any later one) a "near duplicate".
Inserting skips a pair already stored (same hash): a replayed button press adds nothing.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from bot.gate import EXAMPLES, MAX_TEXT_CHARS, MIN_TEXT_CHARS, ExampleOutcome, Gate, pair_hash
from bot.storage.bulk import insert_rows
from bot.storage.models import Dataset, utcnow
from trainer.cleaning import normalize_text, split_for, text_key

__all__ = [
    "TRIVIAL", "PairCandidate", "PairGate", "PreparedPair", "import_split", "pair_hash",
    "pair_row", "trivial_edit",
]  # fmt: skip

TRIVIAL = "the two answers differ only in whitespace, punctuation or case"

#: Pairs of their own (a chosen text not already in the dataset) are held out more often than
#: examples: a team has far fewer pairs than examples, and preference accuracy on a handful of
#: held-out pairs cannot show a difference.
PAIR_HELDOUT_FRACTION = 0.25


def _bare(text: str) -> str:
    kept = (c for c in unicodedata.normalize("NFKC", text) if not _ignorable(c))
    return "".join(kept).casefold()


def _ignorable(char: str) -> bool:
    category = unicodedata.category(char)
    return char.isspace() or category[0] in ("P", "Z") or category in ("Cf", "Cc")


def trivial_edit(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ only in whitespace, punctuation or letter case."""
    return _bare(a) == _bare(b)


@dataclass(frozen=True)
class PairCandidate:
    """One pair to store. ``source`` says where it came from (``PAIR_SOURCES``)."""

    prompt: str
    chosen: str
    rejected: str
    source: str


@dataclass(frozen=True)
class PreparedPair:
    prompt: str
    chosen: str
    rejected: str
    digest: str
    tkey: str


class PairGate:
    """Cleans, checks and stores pairs through a ``Gate`` (its session, scrubber and audit)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.session = gate.session

    def prepare(self, dataset: Dataset, pair: PairCandidate) -> PreparedPair | str:
        """The pair cleaned and hashed, or why it is refused."""
        prompt = self.gate.clean_prompt(pair.prompt)
        if not prompt:
            return "a preference pair needs a brief"
        chosen, refused = self.gate.clean(pair.chosen, dataset)
        if refused:
            return f"chosen: {refused}"
        rejected = normalize_text(self.gate.scrub(normalize_text(pair.rejected)))
        if len(rejected) < MIN_TEXT_CHARS:
            return "rejected: the text is empty"
        if len(rejected) > MAX_TEXT_CHARS:
            return (
                f"rejected: the text is {len(rejected)} characters; the limit is {MAX_TEXT_CHARS}"
            )
        if trivial_edit(chosen, rejected):
            return TRIVIAL
        digest = pair_hash(dataset.task, prompt, chosen, rejected)
        return PreparedPair(prompt, chosen, rejected, digest, text_key(chosen))

    def add_many(
        self,
        dataset: Dataset,
        pairs: list[PairCandidate],
        *,
        actor: str,
        workspace: str | None,
        channel: str | None,
        identity: str | None,
        author: str | None,
        subject: str | None = None,
        thread_ts: str | None = None,
        prompt_source: str = "draft",
    ) -> list[ExampleOutcome]:
        """Store an approver's pairs (all about one posted message, ``identity`` naming it
        for the split). People who opted out are never stored."""
        if self.gate.opted_out(author, subject, actor):
            return [ExampleOutcome(dataset.name, "refused", reason="opted out") for _ in pairs]
        outcomes: list[ExampleOutcome] = []
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for pair in pairs:
            prepared = self.prepare(dataset, pair)
            if isinstance(prepared, str):
                outcomes.append(ExampleOutcome(dataset.name, "refused", reason=prepared))
                continue
            if prepared.digest in seen:
                outcomes.append(ExampleOutcome(dataset.name, "duplicate", reason="same pair"))
                continue
            seen.add(prepared.digest)
            split = self.gate.split(
                dataset, prepared.tkey, identity or prepared.digest, PAIR_HELDOUT_FRACTION
            )
            rows.append(
                pair_row(dataset, prepared, pair.source, split, actor=actor, author=author,
                         subject=subject, workspace=workspace, channel=channel,
                         thread_ts=thread_ts, prompt_source=prompt_source)
            )  # fmt: skip
            outcomes.append(ExampleOutcome(dataset.name, "added"))
        inserted = self.insert(rows)
        added = iter(rows)
        for outcome in outcomes:
            if outcome.status != "added":
                continue
            row = next(added)
            example_id = inserted.get(row["content_hash"])
            if example_id is None:
                outcome.status, outcome.reason = "duplicate", "the same pair is already stored"
                continue
            outcome.example_id = example_id
            self.gate.audit.record(
                "pair.add", actor=actor, dataset_id=dataset.id, example_id=example_id,
                content_hash=row["content_hash"], source=row["source"], split=row["split"],
            )  # fmt: skip
        return outcomes

    def insert(self, rows: list[dict[str, Any]]) -> dict[str, int]:
        """Insert pair rows, skipping any whose hash the dataset already holds; returns the
        new rows' ids by content hash."""
        returned = insert_rows(
            self.session, EXAMPLES, rows, ("id", "content_hash"), skip_conflicts=True
        )
        return {str(digest): int(example_id) for example_id, digest in returned}


def pair_row(
    dataset: Dataset,
    pair: PreparedPair,
    source: str,
    split: str,
    *,
    actor: str | None,
    author: str | None = None,
    subject: str | None = None,
    workspace: str | None = None,
    channel: str | None = None,
    thread_ts: str | None = None,
    prompt_source: str = "draft",
) -> dict[str, Any]:
    """A full ``examples`` row for an active pair (no message timestamp: see the module)."""
    now = utcnow()
    return dict(
        dataset_id=dataset.id, task=dataset.task, prompt=pair.prompt, prompt_source=prompt_source,
        text=pair.chosen, rejected_text=pair.rejected, label=None, kind="preference",
        status="active", split=split, content_hash=pair.digest, text_key=pair.tkey,
        source=source, workspace_id=workspace, channel_id=channel, message_ts=None,
        thread_ts=thread_ts, author_id=author, approver_id=actor, subject_id=subject,
        pending_text=None, created_at=now, updated_at=now,
    )  # fmt: skip


def import_split(splits: dict[str, str], pair: PreparedPair) -> str:
    """An imported pair's split: its chosen text's split if the dataset has it, else by hash."""
    split = splits.get(pair.tkey) or split_for(pair.digest, PAIR_HELDOUT_FRACTION)
    splits.setdefault(pair.tkey, split)
    return split
