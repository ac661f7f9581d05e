"""Turning approved chat messages into examples, and taking them back.

Every change is audited with ids and hashes only. Text is cleaned on the way in (normalized,
PII scrubbed, length-checked); the split is computed once from the message's identity and
stored, except that a text already in the dataset keeps that text's split, so held-out text
never enters train. Nothing here talks to chat: callers fetch the message and tell people.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import Table, bindparam, case, delete, func, select, text, update
from sqlalchemy.orm import Session

from bot.importer import MAX_TEXT_CHARS
from bot.plugin import ChatMessage
from bot.storage.bulk import insert_rows
from bot.storage.models import (
    Adapter,
    Approval,
    Dataset,
    Draft,
    Example,
    NearDupKey,
    OptOut,
    Prediction,
    Suggestion,
    TrainingRun,
)
from bot.storage.repositories import Audit
from trainer.cleaning import content_hash, normalize_text, slack_message_key, split_for, text_key

MIN_TEXT_CHARS = 3
TICKET_PROMPTS = ("ticket", "suggestion")  # prompt sources that hold a support ticket's text

Scrubber = Callable[[str], str]
_T = TypeVar("_T")


def default_scrubber() -> Scrubber:
    """The trainer's PII scrubber (emails, phones, cards, IBANs, tokens, credential URLs)."""
    from trainer.pii import scrub

    return lambda text: scrub(text).text


def near_dup_keys(text: str) -> list[str]:
    from trainer.near_dup import lsh_keys, minhash_signature

    keys: list[str] = lsh_keys(minhash_signature(text))
    return keys


# The tables themselves: bulk inserts through them skip the ORM's per-row bookkeeping.
EXAMPLES = cast(Table, Example.__table__)
APPROVALS = cast(Table, Approval.__table__)
NEAR_DUP_KEYS = cast(Table, NearDupKey.__table__)
# The batch path's small queries, built once: SQLAlchemy then skips constructing them and
# computing their cache keys on every call (about a third of a small query's client time).
OPTED_OUT_AMONG = select(OptOut.user_id).where(
    OptOut.user_id.in_(bindparam("users", expanding=True))
)
SAME_OR_SPLIT = select(
    EXAMPLES.c.id, EXAMPLES.c.dataset_id, EXAMPLES.c.content_hash, EXAMPLES.c.text_key,
    EXAMPLES.c.split,
).where(
    EXAMPLES.c.dataset_id.in_(bindparam("datasets", expanding=True)),
    EXAMPLES.c.content_hash.in_(bindparam("digests", expanding=True))
    | EXAMPLES.c.text_key.in_(bindparam("tkeys", expanding=True)),
)  # fmt: skip
ACTIVE_TEXTS = select(EXAMPLES.c.id, EXAMPLES.c.text).where(
    EXAMPLES.c.id.in_(bindparam("ids", expanding=True)), EXAMPLES.c.status == "active"
)
EXAMPLES_AT = select(Example).where(
    Example.dataset_id.in_(bindparam("datasets", expanding=True)),
    Example.channel_id.in_(bindparam("channels", expanding=True)),
    Example.message_ts.in_(bindparam("stamps", expanding=True)),
)
_LAST_TRAINED = (
    select(func.max(TrainingRun.started_at))
    .where(TrainingRun.dataset_id == bindparam("dataset"), TrainingRun.status == "succeeded")
    .scalar_subquery()
)
TOTALS = select(
    func.count(),
    func.coalesce(func.sum(case(
        (_LAST_TRAINED.is_(None), 1), (EXAMPLES.c.created_at > _LAST_TRAINED, 1), else_=0
    )), 0),
).where(EXAMPLES.c.dataset_id == bindparam("dataset"), EXAMPLES.c.status == "active")  # fmt: skip
NEAR_CANDIDATES_PG = text("""
    SELECT c.idx, c.example_id, e.text
    FROM (
        SELECT w.idx, k.example_id
        FROM json_to_recordset(CAST(:wanted AS json)) AS w(idx integer, ds bigint, key varchar)
        CROSS JOIN LATERAL (
            SELECT example_id FROM near_dup_keys
            WHERE dataset_id = w.ds AND band_key = w.key OFFSET 0
        ) AS k
        GROUP BY w.idx, k.example_id
        HAVING count(*) >= 2
    ) AS c
    CROSS JOIN LATERAL (
        SELECT text FROM examples WHERE id = c.example_id AND status = 'active' OFFSET 0
    ) AS e
""")


@dataclass(frozen=True)
class ApproveRequest:
    """One reaction to record (``Collector.approve``'s arguments)."""

    dataset: Dataset
    message: ChatMessage
    approver: str
    emoji: str
    kind: str  # approve | reject | label
    workspace: str
    label: str | None = None
    prompt: str | None = None
    prompt_source: str | None = None

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.dataset.id, self.message.channel_id, self.message.ts)


@dataclass(frozen=True)
class _Prepared:
    index: int
    request: ApproveRequest
    text: str
    prompt: str | None
    prompt_source: str | None
    digest: str
    tkey: str
    keys: tuple[str, ...]


class _New:
    """An example this batch adds; ``id`` is set once it is inserted."""

    def __init__(self, prepared: _Prepared, split: str) -> None:
        self.prepared = prepared
        self.split = split
        self.kind = "negative" if prepared.request.kind == "reject" else "positive"
        self.id = 0


@dataclass
class Outcome:
    """What happened to one dataset's example; ``reason`` is shown to people when refused."""

    dataset: str
    status: str  # added | reactivated | updated | unchanged | duplicate | refused | withdrawn
    example_id: int | None = None
    reason: str = ""
    needs_brief: bool = False


def parse_ts(ts: str) -> float:
    try:
        return float(ts)
    except ValueError:
        return 0.0


class Collector:
    def __init__(self, session: Session, *, scrubber: Scrubber | None = None) -> None:
        self.session = session
        self.scrub = scrubber or default_scrubber()
        self.audit = Audit(session)

    # ---- lookups ------------------------------------------------------------------------

    def datasets(self) -> list[Dataset]:
        """Every dataset, by name."""
        return list(self.session.scalars(select(Dataset).order_by(Dataset.name)))

    @staticmethod
    def in_channel(datasets: list[Dataset], channel: str) -> list[Dataset]:
        """Those of ``datasets`` that collect in ``channel`` (a copy or a ticket channel)."""
        return [d for d in datasets if channel in d.channels or channel in d.ticket_channels]

    def datasets_for_channel(self, channel: str) -> list[Dataset]:
        return self.in_channel(self.datasets(), channel)

    def opted_out(self, user_id: str | None) -> bool:
        return bool(user_id) and self.session.get(OptOut, user_id) is not None

    def opted_out_among(self, *user_ids: str | None) -> set[str]:
        """Which of these people opted out, in one query."""
        wanted = {u for u in user_ids if u}
        if not wanted:
            return set()
        rows = self.session.connection().execute(OPTED_OUT_AMONG, {"users": list(wanted)})
        return set(rows.scalars())

    def example_for(self, dataset: Dataset, channel: str, ts: str) -> Example | None:
        return self.session.scalar(
            select(Example).where(
                Example.dataset_id == dataset.id,
                Example.channel_id == channel,
                Example.message_ts == ts,
            )
        )

    # ---- cleaning -----------------------------------------------------------------------

    def clean(self, text: str, dataset: Dataset) -> tuple[str, str | None]:
        """(clean text, reason it is refused or None)."""
        cleaned = normalize_text(self.scrub(normalize_text(text)))
        if len(cleaned) < MIN_TEXT_CHARS:
            return cleaned, "the message has no text to learn from"
        limit = MAX_TEXT_CHARS
        if dataset.task == "draft" and dataset.max_length:
            limit = min(limit, dataset.max_length)
        if len(cleaned) > limit:
            return cleaned, f"the text is {len(cleaned)} characters; the limit is {limit}"
        return cleaned, None

    def _split(self, dataset: Dataset, tkey: str, identity: str) -> str:
        existing = self.session.execute(
            select(Example.split).where(Example.dataset_id == dataset.id, Example.text_key == tkey)
        ).scalars()
        return self._choose_split(set(existing), identity)

    @staticmethod
    def _choose_split(splits: set[str], identity: str) -> str:
        """A text already in the dataset keeps its split (held-out wins); else the identity's."""
        if "heldout" in splits:
            return "heldout"
        if "train" in splits:
            return "train"
        return split_for(identity)

    def _store_keys(self, example: Example, *, new: bool = False) -> None:
        if not new:
            self.session.execute(delete(NearDupKey).where(NearDupKey.example_id == example.id))
        rows = [
            {"example_id": example.id, "band_key": key, "dataset_id": example.dataset_id}
            for key in dict.fromkeys(near_dup_keys(example.text))
        ]
        insert_rows(self.session, NEAR_DUP_KEYS, rows)

    @property
    def _on_postgres(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    # ---- approving ----------------------------------------------------------------------

    def approve(
        self,
        dataset: Dataset,
        message: ChatMessage,
        *,
        approver: str,
        emoji: str,
        kind: str,
        workspace: str,
        label: str | None = None,
        prompt: str | None = None,
        prompt_source: str | None = None,
    ) -> Outcome:
        """Record an approve/reject/label reaction on ``message`` for ``dataset``."""
        request = ApproveRequest(
            dataset, message, approver=approver, emoji=emoji, kind=kind, workspace=workspace,
            label=label, prompt=prompt, prompt_source=prompt_source,
        )  # fmt: skip
        return self.approve_many([request])[0]

    def approve_many(self, requests: list[ApproveRequest]) -> list[Outcome]:
        """``approve`` for several reactions, in a handful of queries however many there are.

        The outcome is what ``approve`` would give for each in turn: a later request for the
        same message re-approves the example an earlier one created, and a text the batch
        already added is a duplicate (or, when near-identical, a near duplicate) for the rest.
        """
        outcomes: list[Outcome | None] = [None] * len(requests)
        todo = list(range(len(requests)))
        while todo:  # one request per message each round; repeats wait for the next round
            seen: set[tuple[int, str, str]] = set()
            now: list[int] = []
            later: list[int] = []
            for i in todo:
                key = requests[i].key
                (later if key in seen else now).append(i)
                seen.add(key)
            self._approve_round([(i, requests[i]) for i in now], outcomes)
            todo = later
        assert all(o is not None for o in outcomes)
        return [o for o in outcomes if o is not None]

    def _approve_round(
        self, items: list[tuple[int, ApproveRequest]], outcomes: list[Outcome | None]
    ) -> None:
        from trainer.near_dup import is_near_duplicate

        existing = self._examples_for([r.key for _, r in items])
        fresh: list[_Prepared] = []
        for i, r in items:
            example = existing.get(r.key)
            if example is not None:
                outcomes[i] = self._reapprove(
                    r.dataset, example, r.approver, r.emoji, r.kind, r.label
                )
                continue
            prepared = self._prepare(i, r)
            if isinstance(prepared, Outcome):
                outcomes[i] = prepared
            else:
                fresh.append(prepared)
        if not fresh:
            return
        dataset_ids = {p.request.dataset.id for p in fresh}
        same: dict[tuple[int, str], int | _New] = {}
        splits: dict[tuple[int, str], set[str]] = {}
        for row in self.session.connection().execute(SAME_OR_SPLIT, {
            "datasets": list(dataset_ids), "digests": list({p.digest for p in fresh}),
            "tkeys": list({p.tkey for p in fresh}),
        }):  # fmt: skip
            same.setdefault((row.dataset_id, row.content_hash), int(row.id))
            splits.setdefault((row.dataset_id, row.text_key), set()).add(row.split)
        candidates, stored = self._near_candidates(fresh)
        texts: dict[int | _New, str] = {example_id: t for example_id, t in stored.items()}
        batch_holders: dict[tuple[int, str], list[_New]] = {}
        added: list[_New] = []
        twins_added: list[tuple[Outcome, _New]] = []  # their ids are known after the insert

        def duplicate(p: _Prepared, of: int | _New, reason: str) -> None:
            outcome = Outcome(p.request.dataset.name, "duplicate", None, reason)
            if isinstance(of, _New):
                twins_added.append((outcome, of))
            else:
                outcome.example_id = of
            outcomes[p.index] = outcome

        for p in fresh:
            r, ds = p.request, p.request.dataset.id
            twin = same.get((ds, p.digest))
            if twin is not None:
                duplicate(p, twin, "the same text is already an example")
                continue
            if r.kind != "label":
                near: list[int | _New] = [
                    *candidates[p.index],
                    *self._shared_twice(p, batch_holders),
                ]
                hit = next(
                    (c for c in near if c in texts and is_near_duplicate(texts[c], p.text)), None
                )
                if hit is not None:
                    duplicate(p, hit, "a near-identical example exists")
                    continue
            identity = slack_message_key(r.workspace, r.message.channel_id, r.message.ts)
            new = _New(p, self._choose_split(splits.get((ds, p.tkey), set()), identity))
            same[(ds, p.digest)] = new
            splits.setdefault((ds, p.tkey), set()).add(new.split)
            texts[new] = p.text
            for key in p.keys:
                batch_holders.setdefault((ds, key), []).append(new)
            added.append(new)
        if added:
            self._insert_added(added, outcomes)
        for outcome, new in twins_added:
            outcome.example_id = new.id

    def _insert_added(self, added: list[_New], outcomes: list[Outcome | None]) -> None:
        """Insert the batch's new examples with their approvals, near-dup keys and audit
        entries (bulk statements), and record each one's outcome."""
        rows = []
        for new in added:
            p, r = new.prepared, new.prepared.request
            rows.append(
                dict(
                    dataset_id=r.dataset.id, task=r.dataset.task, prompt=p.prompt,
                    prompt_source=p.prompt_source, text=p.text, label=r.label, kind=new.kind,
                    status="active", content_hash=p.digest, text_key=p.tkey, source="reaction",
                    split=new.split, workspace_id=r.workspace, channel_id=r.message.channel_id,
                    message_ts=r.message.ts, thread_ts=r.message.thread_ts,
                    author_id=r.message.user_id, approver_id=r.approver,
                )
            )  # fmt: skip
        ids = {
            (ds, channel, ts): int(example_id)
            for example_id, ds, channel, ts in insert_rows(
                self.session, EXAMPLES, rows, ("id", "dataset_id", "channel_id", "message_ts")
            )
        }
        approvals, key_rows, audits = [], [], []
        for new in added:
            new.id = ids[new.prepared.request.key]
            p, r = new.prepared, new.prepared.request
            approvals.append(
                {"example_id": new.id, "user_id": r.approver, "emoji": r.emoji, "kind": r.kind}
            )
            key_rows += [
                {"example_id": new.id, "band_key": k, "dataset_id": r.dataset.id} for k in p.keys
            ]
            audits.append(
                {"actor": r.approver, "dataset_id": r.dataset.id, "example_id": new.id,
                 "content_hash": p.digest, "details": {"kind": new.kind, "split": new.split}}
            )  # fmt: skip
            needs_brief = r.dataset.task == "draft" and p.prompt is None and r.kind == "approve"
            outcomes[p.index] = Outcome(r.dataset.name, "added", new.id, needs_brief=needs_brief)
        insert_rows(self.session, APPROVALS, approvals)
        insert_rows(self.session, NEAR_DUP_KEYS, key_rows)
        self.audit.record_many("example.add", audits)

    def _near_candidates(
        self, fresh: list[_Prepared]
    ) -> tuple[dict[int, list[int]], dict[int, str]]:
        """For each prepared text (by index): the active stored examples that share at least
        two of its LSH band keys (one shared band is mostly chance at the similarities that
        matter); and those examples' texts.

        PostgreSQL counts the shared keys itself and returns candidates with their texts in
        one query. It probes the lookup index once per wanted key (``LATERAL ... OFFSET 0``):
        a join let the planner scan every stored key, which grows with the dataset. Elsewhere
        the matching keys are fetched and counted here.
        """
        found: dict[int, list[int]] = {p.index: [] for p in fresh}
        texts: dict[int, str] = {}
        if self._on_postgres:
            wanted: list[dict[str, Any]] = []
            for p in fresh:
                wanted += [{"idx": p.index, "ds": p.request.dataset.id, "key": k} for k in p.keys]
            rows = self.session.execute(NEAR_CANDIDATES_PG, {"wanted": json.dumps(wanted)})
            for index, example_id, text_ in rows:
                found[int(index)].append(int(example_id))
                texts[int(example_id)] = text_
            return found, texts
        holders: dict[tuple[int, str], list[int]] = {}
        for example_id, dataset_id, band_key in self.session.execute(
            select(NearDupKey.example_id, NearDupKey.dataset_id, NearDupKey.band_key).where(
                NearDupKey.dataset_id.in_({p.request.dataset.id for p in fresh}),
                NearDupKey.band_key.in_({k for p in fresh for k in p.keys}),
            )
        ):
            holders.setdefault((dataset_id, band_key), []).append(int(example_id))
        shared = {p.index: self._shared_twice(p, holders) for p in fresh}
        ids = {c for found_ in shared.values() for c in found_}
        if ids:
            rows = self.session.connection().execute(ACTIVE_TEXTS, {"ids": list(ids)})
            texts = {int(example_id): text_ for example_id, text_ in rows}
        for index, candidates in shared.items():
            found[index] = [c for c in candidates if c in texts]
        return found, texts

    @staticmethod
    def _shared_twice(prepared: _Prepared, holders: dict[tuple[int, str], list[_T]]) -> list[_T]:
        """The holders of at least two of the prepared text's band keys, in first-seen order."""
        counts: dict[_T, int] = {}
        ds = prepared.request.dataset.id
        for key in prepared.keys:
            for holder in holders.get((ds, key), ()):
                counts[holder] = counts.get(holder, 0) + 1
        return [holder for holder, n in counts.items() if n >= 2]

    def _prepare(self, index: int, r: ApproveRequest) -> _Prepared | Outcome:
        """Clean the text (and the prompt) and compute its hashes, or say why it is refused."""
        text, refused = self.clean(r.message.text, r.dataset)
        if refused:
            return Outcome(r.dataset.name, "refused", reason=refused)
        prompt, prompt_source = r.prompt, r.prompt_source
        if prompt is None and r.dataset.task == "draft" and r.message.parent is not None:
            parent_text, parent_refused = self.clean(r.message.parent.text, r.dataset)
            if not parent_refused or len(parent_text) >= MIN_TEXT_CHARS:
                prompt, prompt_source = parent_text[:MAX_TEXT_CHARS], "thread"
        if prompt is not None:
            prompt = normalize_text(self.scrub(prompt))
        digest = content_hash(r.dataset.task, prompt, text, r.label)
        keys = tuple(dict.fromkeys(near_dup_keys(text)))
        return _Prepared(index, r, text, prompt, prompt_source, digest, text_key(text), keys)

    def _examples_for(
        self, keys: list[tuple[int, str, str]]
    ) -> dict[tuple[int, str, str], Example]:
        """The examples of these (dataset id, channel, ts), in one query."""
        if not keys:
            return {}
        rows = self.session.scalars(EXAMPLES_AT, {
            "datasets": list({k[0] for k in keys}), "channels": list({k[1] for k in keys}),
            "stamps": list({k[2] for k in keys}),
        })  # fmt: skip
        wanted = set(keys)
        found = {}
        for example in rows:
            key = (example.dataset_id, example.channel_id or "", example.message_ts or "")
            if key in wanted:
                found[key] = example
        return found

    def add_feedback(
        self,
        dataset: Dataset,
        *,
        text: str,
        source: str,
        approver: str,
        workspace: str,
        channel: str | None,
        ts: str | None,
        author: str | None,
        prompt: str | None = None,
        label: str | None = None,
    ) -> Outcome:
        """An example from the product's own feedback: a posted draft (with its /draft brief)
        or a confirmed or corrected ticket label."""
        if self.opted_out(author):
            return Outcome(dataset.name, "refused", reason="the author opted out")
        if channel and ts:
            existing = self.example_for(dataset, channel, ts)
            if existing is not None:
                if label is not None and existing.label != label:
                    existing.label = label
                    existing.content_hash = content_hash(
                        dataset.task, existing.prompt, existing.text, label
                    )
                existing.status = "active"
                return Outcome(dataset.name, "updated", existing.id)
        cleaned, refused = self.clean(text, dataset)
        if refused:
            return Outcome(dataset.name, "refused", reason=refused)
        prompt = normalize_text(self.scrub(prompt)) if prompt else None
        digest = content_hash(dataset.task, prompt, cleaned, label)
        same = self.session.scalar(
            select(Example.id).where(
                Example.dataset_id == dataset.id, Example.content_hash == digest
            )
        )
        if same is not None:
            return Outcome(dataset.name, "duplicate", same, "the same text is already an example")
        tkey = text_key(cleaned)
        identity = slack_message_key(workspace, channel, ts) if channel and ts else digest
        example = Example(
            dataset_id=dataset.id, task=dataset.task, prompt=prompt,
            prompt_source=source if prompt else None, text=cleaned, label=label,
            kind="positive", status="active", content_hash=digest, text_key=tkey,
            source=source, split=self._split(dataset, tkey, identity), workspace_id=workspace,
            channel_id=channel, message_ts=ts, author_id=author, approver_id=approver,
        )  # fmt: skip
        self.session.add(example)
        self.session.flush()
        self._store_keys(example)
        self.audit.record(
            "example.add", actor=approver, dataset_id=dataset.id, example_id=example.id,
            content_hash=digest, source=source, split=example.split,
        )  # fmt: skip
        return Outcome(dataset.name, "added", example.id)

    def _reapprove(
        self,
        dataset: Dataset,
        example: Example,
        approver: str,
        emoji: str,
        kind: str,
        label: str | None,
    ) -> Outcome:
        present = self.session.get(Approval, (example.id, approver, emoji))
        if present is None:
            self.session.add(
                Approval(example_id=example.id, user_id=approver, emoji=emoji, kind=kind)
            )
            self.session.flush()
        was = example.status
        example.status = "active"
        if label is not None and label != example.label:
            example.label = label
            example.content_hash = content_hash(example.task, example.prompt, example.text, label)
        self._recompute_kind(example)
        self.audit.record(
            "example.reactivate" if was != "active" else "example.approve",
            actor=approver, dataset_id=dataset.id, example_id=example.id,
            content_hash=example.content_hash,
        )  # fmt: skip
        status = "reactivated" if was != "active" else "unchanged"
        return Outcome(dataset.name, status, example.id)

    def _recompute_kind(self, example: Example) -> None:
        kinds = set(
            self.session.scalars(select(Approval.kind).where(Approval.example_id == example.id))
        )
        example.kind = "negative" if kinds == {"reject"} else "positive"

    def unapprove(self, dataset: Dataset, channel: str, ts: str, user: str, emoji: str) -> Outcome:
        """A reaction removed; the last one withdraws the example."""
        example = self.example_for(dataset, channel, ts)
        if example is None:
            return Outcome(dataset.name, "unchanged")
        self.session.execute(
            delete(Approval).where(
                Approval.example_id == example.id, Approval.user_id == user, Approval.emoji == emoji
            )
        )
        left = self.session.scalar(
            select(func.count()).select_from(Approval).where(Approval.example_id == example.id)
        )
        if left:
            self._recompute_kind(example)
            return Outcome(dataset.name, "unchanged", example.id)
        return self._withdraw(dataset, example, user, "reaction_removed")

    def _withdraw(self, dataset: Dataset, example: Example, actor: str | None, why: str) -> Outcome:
        if example.status != "withdrawn":
            example.status = "withdrawn"
            self.audit.record(
                "example.withdraw", actor=actor, dataset_id=dataset.id, example_id=example.id,
                content_hash=example.content_hash, reason=why,
            )  # fmt: skip
        return Outcome(dataset.name, "withdrawn", example.id)

    def message_changed(
        self, channel: str, ts: str, new_text: str, actor: str | None
    ) -> list[Outcome]:
        outcomes = []
        for dataset in self.datasets_for_channel(channel):
            example = self.example_for(dataset, channel, ts)
            if example is None:
                continue
            text, refused = self.clean(new_text, dataset)
            if refused:
                outcomes.append(self._withdraw(dataset, example, actor, "edited text refused"))
                continue
            digest = content_hash(dataset.task, example.prompt, text, example.label)
            if digest == example.content_hash:
                outcomes.append(Outcome(dataset.name, "unchanged", example.id))
                continue
            clash = self.session.scalar(
                select(Example.id).where(
                    Example.dataset_id == dataset.id, Example.content_hash == digest
                )
            )
            if clash is not None:
                outcomes.append(self._withdraw(dataset, example, actor, "edit duplicates another"))
                continue
            old = example.content_hash
            example.text, example.content_hash, example.text_key = text, digest, text_key(text)
            self._store_keys(example)
            self.audit.record(
                "example.edit", actor=actor, dataset_id=dataset.id, example_id=example.id,
                content_hash=digest, previous_hash=old,
            )  # fmt: skip
            outcomes.append(Outcome(dataset.name, "updated", example.id))
        return outcomes

    def message_deleted(self, channel: str, ts: str, actor: str | None) -> list[Outcome]:
        outcomes = []
        for dataset in self.datasets_for_channel(channel):
            example = self.example_for(dataset, channel, ts)
            if example is not None:
                outcomes.append(self._withdraw(dataset, example, actor, "message_deleted"))
        return outcomes

    # ---- numbers people see -------------------------------------------------------------

    def last_training(self, dataset: Dataset) -> dt.datetime | None:
        return self.session.scalar(
            select(func.max(TrainingRun.started_at)).where(
                TrainingRun.dataset_id == dataset.id, TrainingRun.status == "succeeded"
            )
        )

    def totals(self, dataset: Dataset) -> tuple[int, int]:
        """(active examples, of which new since the last successful training run), in one
        query: the notice after every approval must stay cheap."""
        total, new = self.session.connection().execute(TOTALS, {"dataset": dataset.id}).one()
        return int(total), int(new)

    def summary_line(self, dataset: Dataset) -> str:
        total, new = self.totals(dataset)
        return (
            f"Added to {dataset.name}: {total} example{'s' if total != 1 else ''}, "
            f"{new} new since the last training."
        )


def forget_user(session: Session, user_id: str, actor: str | None) -> dict[str, int]:
    """Erase a person's examples, drafts and stored ticket text; flag adapters trained on them.

    The audit log records the erasure with counts and ids only.
    """
    example_ids = list(session.scalars(select(Example.id).where(Example.author_id == user_id)))
    flagged = 0
    if example_ids:
        wanted = set(example_ids)
        for run in session.scalars(select(TrainingRun)).all():
            if wanted & set(run.example_ids or []):
                flagged += session.execute(
                    update(Adapter).where(Adapter.run_id == run.id).values(needs_retrain=True)
                ).rowcount  # type: ignore[attr-defined]
        session.execute(delete(Example).where(Example.id.in_(example_ids)))
    drafts = session.execute(
        delete(Draft).where((Draft.requested_by == user_id) | (Draft.posted_by == user_id))
    ).rowcount  # type: ignore[attr-defined]
    predictions = session.execute(
        update(Prediction).where(Prediction.author_id == user_id).values(text=None)
    ).rowcount  # type: ignore[attr-defined]
    session.execute(delete(Approval).where(Approval.user_id == user_id))
    tickets = session.execute(
        update(Suggestion)
        .where(Suggestion.author_id == user_id)
        .values(ticket_text=None, text=None, final_text=None)
    ).rowcount  # type: ignore[attr-defined]
    tickets += session.execute(
        update(Suggestion).where(Suggestion.resolved_by == user_id).values(final_text=None)
    ).rowcount  # type: ignore[attr-defined]
    counts = {
        "examples": len(example_ids),
        "drafts": int(drafts or 0),
        "predictions": int(predictions or 0),
        "suggestions": int(tickets or 0),
        "adapters_flagged": int(flagged),
    }
    Audit(session).record(
        "user.forget", actor=actor, subject=user_id, examples=counts["examples"],
        drafts=counts["drafts"], predictions=counts["predictions"],
        suggestions=counts["suggestions"], adapters_flagged=counts["adapters_flagged"],
    )  # fmt: skip
    return counts


def purge_ticket_text(session: Session, older_than: dt.datetime) -> dict[str, int]:
    """Delete ticket text older than the retention cut-off: classify examples, reply examples
    (their prompt is the ticket), and the ticket text kept with predictions and suggestions."""
    holds_ticket = (Example.task == "classify") | Example.prompt_source.in_(TICKET_PROMPTS)
    old_ids = list(
        session.scalars(select(Example.id).where(holds_ticket, Example.created_at < older_than))
    )
    if old_ids:
        session.execute(delete(Example).where(Example.id.in_(old_ids)))
    predictions = session.execute(
        update(Prediction)
        .where(Prediction.created_at < older_than, Prediction.text.is_not(None))
        .values(text=None)
    ).rowcount  # type: ignore[attr-defined]
    suggestions = session.execute(
        update(Suggestion)
        .where(Suggestion.created_at < older_than, Suggestion.ticket_text.is_not(None))
        .values(ticket_text=None)
    ).rowcount  # type: ignore[attr-defined]
    counts = {
        "examples": len(old_ids),
        "predictions": int(predictions or 0),
        "suggestions": int(suggestions or 0),
    }
    if any(counts.values()):
        Audit(session).record(
            "retention.purge", before=older_than.isoformat(), examples=counts["examples"],
            predictions=counts["predictions"], suggestions=counts["suggestions"],
        )  # fmt: skip
    return counts


def dataset_stats(session: Session, dataset: Dataset) -> dict[str, Any]:
    """Counts for `datasets show` and `/brandbot datasets NAME`."""
    from bot.storage.repositories import Examples

    counts = Examples(session).counts(dataset.id)
    collector_totals = Collector(session, scrubber=lambda t: t).totals(dataset)
    top = session.execute(
        select(Approval.user_id, func.count())
        .join(Example, Example.id == Approval.example_id)
        .where(Example.dataset_id == dataset.id, Example.status == "active")
        .group_by(Approval.user_id)
        .order_by(func.count().desc())
        .limit(5)
    ).all()
    by_label = counts["by_label"]
    balance = None
    if by_label:
        balance = round(min(by_label.values()) / max(by_label.values()), 3)
    counts.update(
        new_since_last_training=collector_totals[1],
        top_approvers=[{"user": u, "approvals": int(n)} for u, n in top],
        label_balance=balance,
        missing_labels=[lbl for lbl in dataset.labels if lbl not in by_label],
    )
    return counts
