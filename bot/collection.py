"""Turning approved chat messages into examples, and taking them back.

The collector batches reactions and message events and hands every write to the gate
(``bot.gate``), which cleans, hashes, de-duplicates, splits, records approvals and audits. A
text already in the dataset keeps that text's split, so held-out text never enters train.
Nothing here talks to chat: callers fetch the message and tell people.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import bindparam, select

from bot.gate import (
    EXAMPLES,
    MAX_TEXT_CHARS,
    MIN_TEXT_CHARS,
    ExampleOutcome,
    Gate,
    NewExample,
    Scrubber,
    default_scrubber,
    near_dup_keys,
)
from bot.near_dups import NEAR_CANDIDATES_PG, shared_twice
from bot.plugin import ChatMessage
from bot.privacy import TICKET_PROMPTS, forget_user, purge_ticket_text
from bot.storage.models import Dataset, Example, OptOut
from trainer.cleaning import slack_message_key

__all__ = [
    "NEAR_CANDIDATES_PG", "TICKET_PROMPTS", "ApproveRequest", "Collector", "ExampleOutcome",
    "Scrubber", "default_scrubber", "forget_user", "near_dup_keys", "purge_ticket_text",
]  # fmt: skip

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
EXAMPLES_AT = select(Example).where(
    Example.dataset_id.in_(bindparam("datasets", expanding=True)),
    Example.channel_id.in_(bindparam("channels", expanding=True)),
    Example.message_ts.in_(bindparam("stamps", expanding=True)),
)


@dataclass(frozen=True)
class ApproveRequest:
    """One reaction to record (``Collector.approve``'s arguments). ``subject`` is the person
    the prompt came from (a ticket's customer)."""

    dataset: Dataset
    message: ChatMessage
    approver: str
    emoji: str
    kind: str  # approve | reject | label
    workspace: str
    label: str | None = None
    prompt: str | None = None
    prompt_source: str | None = None
    subject: str | None = None

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.dataset.id, self.message.channel_id, self.message.ts)


@dataclass(frozen=True)
class _Prepared:
    index: int
    request: ApproveRequest
    new: NewExample
    subject: str | None

    @property
    def text(self) -> str:
        return self.new.text

    @property
    def digest(self) -> str:
        return self.new.digest

    @property
    def tkey(self) -> str:
        return self.new.tkey

    @property
    def keys(self) -> tuple[str, ...]:
        return self.new.keys


class _New:
    """An example this batch adds; ``id`` is set once it is inserted."""

    def __init__(self, prepared: _Prepared, split: str) -> None:
        self.prepared = prepared
        self.split = split
        self.kind = "negative" if prepared.request.kind == "reject" else "positive"
        self.id = 0


class Collector(Gate):
    """Reactions and message events, batched, through the gate."""

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

    def opted_out_among(self, *user_ids: str | None) -> set[str]:
        """Which of these people opted out, in one query."""
        wanted = {u for u in user_ids if u}
        if not wanted:
            return set()
        rows = self.session.connection().execute(OPTED_OUT_AMONG, {"users": list(wanted)})
        return set(rows.scalars())

    # ---- approving ----------------------------------------------------------------------

    def approve_reaction(
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
    ) -> ExampleOutcome:
        """Record an approver's approve/reject/label reaction on ``message`` for ``dataset``."""
        request = ApproveRequest(
            dataset, message, approver=approver, emoji=emoji, kind=kind, workspace=workspace,
            label=label, prompt=prompt, prompt_source=prompt_source,
        )  # fmt: skip
        return self.approve_many([request])[0]

    def approve_many(self, requests: list[ApproveRequest]) -> list[ExampleOutcome]:
        """``approve_reaction`` for several reactions, in a handful of queries however many.

        The outcome is what ``approve_reaction`` would give for each in turn: a later request
        for the same message re-approves the example an earlier one created, and a text the
        batch already added is a duplicate (or, when near-identical, a near duplicate).
        """
        outcomes: list[ExampleOutcome | None] = [None] * len(requests)
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
        self, items: list[tuple[int, ApproveRequest]], outcomes: list[ExampleOutcome | None]
    ) -> None:
        from trainer.near_dup import is_near_duplicate

        existing = self._examples_for([r.key for _, r in items])
        fresh: list[_Prepared] = []
        for i, r in items:
            example = existing.get(r.key)
            if example is not None:
                outcomes[i] = self.approve(example, r.approver, r.emoji, r.kind, r.label)
                continue
            prepared = self._prepare(i, r)
            if isinstance(prepared, ExampleOutcome):
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
        candidates, stored = self.near_candidates(
            [(p.index, p.request.dataset.id, p.keys) for p in fresh]
        )
        texts: dict[int | _New, str] = {example_id: t for example_id, t in stored.items()}
        batch_holders: dict[tuple[int, str], list[_New]] = {}
        added: list[_New] = []
        twins_added: list[tuple[ExampleOutcome, _New]] = []  # their ids are known after the insert

        def duplicate(p: _Prepared, of: int | _New, reason: str) -> None:
            outcome = ExampleOutcome(p.request.dataset.name, "duplicate", None, reason)
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
                    *shared_twice(ds, p.keys, batch_holders),
                ]
                hit = next(
                    (c for c in near if c in texts and is_near_duplicate(texts[c], p.text)), None
                )
                if hit is not None:
                    duplicate(p, hit, "a near-identical example exists")
                    continue
            identity = slack_message_key(r.workspace, r.message.channel_id, r.message.ts)
            new = _New(p, self.choose_split(splits.get((ds, p.tkey), set()), identity))
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

    def _insert_added(self, added: list[_New], outcomes: list[ExampleOutcome | None]) -> None:
        """Insert the batch's new examples through the gate (approvals and near-dup keys
        with them), audit them, and record each one's outcome."""
        rows = []
        for new in added:
            p, r = new.prepared, new.prepared.request
            rows.append(
                dict(
                    dataset_id=r.dataset.id, task=r.dataset.task, prompt=p.new.prompt,
                    prompt_source=p.new.prompt_source, text=p.text, label=r.label,
                    kind=new.kind, status="active", content_hash=p.digest, text_key=p.tkey,
                    source="reaction", split=new.split, workspace_id=r.workspace,
                    channel_id=r.message.channel_id, message_ts=r.message.ts,
                    thread_ts=r.message.thread_ts, author_id=r.message.user_id,
                    approver_id=r.approver, subject_id=p.subject, pending_text=None,
                    _approval=(r.emoji, r.kind),
                )
            )  # fmt: skip
        ids = self.insert(rows, [new.prepared.keys for new in added])
        audits = []
        for new, example_id in zip(added, ids, strict=True):
            new.id = example_id
            p, r = new.prepared, new.prepared.request
            audits.append(
                {"actor": r.approver, "dataset_id": r.dataset.id, "example_id": new.id,
                 "content_hash": p.digest, "details": {"kind": new.kind, "split": new.split}}
            )  # fmt: skip
            prompt = p.new.prompt
            needs_brief = r.dataset.task == "draft" and prompt is None and r.kind == "approve"
            outcomes[p.index] = ExampleOutcome(
                r.dataset.name, "added", new.id, needs_brief=needs_brief
            )
        self.audit.record_many("example.add", audits)

    def _prepare(self, index: int, r: ApproveRequest) -> _Prepared | ExampleOutcome:
        """Clean the text (and the prompt) and compute its hashes, or say why it is refused."""
        prompt, prompt_source, subject = r.prompt, r.prompt_source, r.subject
        parent = r.message.parent
        if prompt is None and r.dataset.task == "draft" and parent is not None:
            parent_text, _ = self.clean(parent.text, r.dataset)
            if len(parent_text) >= MIN_TEXT_CHARS:
                prompt, prompt_source = parent_text[:MAX_TEXT_CHARS], "thread"
                subject = subject or parent.user_id
        new = self.prepare(r.dataset, r.message.text, prompt, prompt_source, r.label)
        if isinstance(new, str):
            return ExampleOutcome(r.dataset.name, "refused", reason=new)
        return _Prepared(index, r, new, subject if new.prompt else None)

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

    def unapprove(
        self, dataset: Dataset, channel: str, ts: str, user: str, emoji: str, *,
        is_admin: bool = False,
    ) -> ExampleOutcome:  # fmt: skip
        """A reaction removed: see ``Gate.remove_approval``."""
        example = self.example_for(dataset, channel, ts)
        if example is None:
            return ExampleOutcome(dataset.name, "unchanged")
        return self.remove_approval(example, user, emoji, is_admin=is_admin)

    def message_changed(
        self,
        channel: str,
        ts: str,
        new_text: str,
        actor: str | None,
        approver_of: Callable[[Dataset], bool] | None = None,
    ) -> list[ExampleOutcome]:
        """An edited message: see ``Gate.change_text``; ``approver_of(dataset)`` says whether
        the editor approves that dataset."""
        outcomes = []
        for dataset in self.datasets_for_channel(channel):
            example = self.example_for(dataset, channel, ts)
            if example is None:
                continue
            by_approver = approver_of(dataset) if approver_of and actor else False
            outcomes.append(
                self.change_text(dataset, example, new_text, actor, by_approver=by_approver)
            )
        return outcomes

    def message_deleted(self, channel: str, ts: str, actor: str | None) -> list[ExampleOutcome]:
        """A deleted message's example is withdrawn, and so are the preference pairs that
        chose its text (they have no timestamp of their own: same channel, same text)."""
        outcomes = []
        for dataset in self.datasets_for_channel(channel):
            example = self.example_for(dataset, channel, ts)
            if example is None:
                continue
            outcomes.append(self.withdraw(example, actor, "message_deleted"))
            pairs = self.session.scalars(
                select(Example).where(
                    Example.dataset_id == dataset.id, Example.kind == "preference",
                    Example.channel_id == channel, Example.text_key == example.text_key,
                    Example.status == "active",
                )
            )  # fmt: skip
            outcomes += [self.withdraw(pair, actor, "message_deleted") for pair in pairs]
        return outcomes
