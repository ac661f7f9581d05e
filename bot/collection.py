"""Turning approved chat messages into examples, and taking them back.

Every change is audited with ids and hashes only. Text is cleaned on the way in (normalized,
PII scrubbed, length-checked); the split is computed once from the message's identity and
stored, except that a text already in the dataset keeps that text's split, so held-out text
never enters train. Nothing here talks to chat: callers fetch the message and tell people.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.orm import Session

from bot.importer import MAX_TEXT_CHARS
from bot.plugin import ChatMessage
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


def default_scrubber() -> Scrubber:
    """The trainer's PII scrubber (emails, phones, cards, IBANs, tokens, credential URLs)."""
    from trainer.pii import scrub

    return lambda text: scrub(text).text


def near_dup_keys(text: str) -> list[str]:
    from trainer.near_dup import lsh_keys, minhash_signature

    keys: list[str] = lsh_keys(minhash_signature(text))
    return keys


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

    def datasets_for_channel(self, channel: str) -> list[Dataset]:
        datasets = self.session.scalars(select(Dataset).order_by(Dataset.name)).all()
        return [d for d in datasets if channel in d.channels or channel in d.ticket_channels]

    def opted_out(self, user_id: str | None) -> bool:
        return bool(user_id) and self.session.get(OptOut, user_id) is not None

    def opted_out_among(self, *user_ids: str | None) -> set[str]:
        """Which of these people opted out, in one query."""
        wanted = {u for u in user_ids if u}
        if not wanted:
            return set()
        return set(self.session.scalars(select(OptOut.user_id).where(OptOut.user_id.in_(wanted))))

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

    def _same_and_splits(
        self, dataset: Dataset, digest: str, tkey: str
    ) -> tuple[int | None, set[str]]:
        """(id of an example with this exact content, splits of examples with this text), in
        one query."""
        rows = self.session.execute(
            select(Example.id, Example.content_hash, Example.text_key, Example.split).where(
                Example.dataset_id == dataset.id,
                (Example.content_hash == digest) | (Example.text_key == tkey),
            )
        ).all()
        same = next((int(r.id) for r in rows if r.content_hash == digest), None)
        return same, {r.split for r in rows if r.text_key == tkey}

    def _near_duplicate(self, dataset: Dataset, text: str, exclude: int | None) -> int | None:
        """An active example of the dataset whose text is nearly the same, if any.

        Candidates share at least two LSH band keys (one shared band is mostly chance at the
        similarities that matter); their texts are then compared exactly, in one query.
        """
        from trainer.near_dup import is_near_duplicate

        keys = near_dup_keys(text)
        shared = (
            select(NearDupKey.example_id)
            .where(NearDupKey.dataset_id == dataset.id, NearDupKey.band_key.in_(keys))
            .group_by(NearDupKey.example_id)
            .having(func.count() >= 2)
        )
        rows = self.session.execute(
            select(Example.id, Example.text).where(
                Example.id.in_(shared), Example.status == "active"
            )
        )
        for example_id, other in rows:
            if example_id != exclude and is_near_duplicate(other, text):
                return int(example_id)
        return None

    def _store_keys(self, example: Example, *, new: bool = False) -> None:
        if not new:
            self.session.execute(delete(NearDupKey).where(NearDupKey.example_id == example.id))
        rows = [
            {"example_id": example.id, "band_key": key, "dataset_id": example.dataset_id}
            for key in dict.fromkeys(near_dup_keys(example.text))
        ]
        if rows:  # one multi-row INSERT, not one statement per key
            self.session.execute(insert(NearDupKey).values(rows))

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
        existing = self.example_for(dataset, message.channel_id, message.ts)
        if existing is not None:
            return self._reapprove(dataset, existing, approver, emoji, kind, label)
        text, refused = self.clean(message.text, dataset)
        if refused:
            return Outcome(dataset.name, "refused", reason=refused)
        if prompt is None and dataset.task == "draft" and message.parent is not None:
            parent_text, parent_refused = self.clean(message.parent.text, dataset)
            if not parent_refused or len(parent_text) >= MIN_TEXT_CHARS:
                prompt, prompt_source = parent_text[:MAX_TEXT_CHARS], "thread"
        if prompt is not None:
            prompt = normalize_text(self.scrub(prompt))
        digest = content_hash(dataset.task, prompt, text, label)
        tkey = text_key(text)
        same, splits = self._same_and_splits(dataset, digest, tkey)
        if same is not None:
            return Outcome(dataset.name, "duplicate", same, "the same text is already an example")
        near = self._near_duplicate(dataset, text, None)
        if near is not None and kind != "label":
            return Outcome(dataset.name, "duplicate", near, "a near-identical example exists")
        identity = slack_message_key(workspace, message.channel_id, message.ts)
        example = Example(
            dataset_id=dataset.id, task=dataset.task, prompt=prompt, prompt_source=prompt_source,
            text=text, label=label, kind="negative" if kind == "reject" else "positive",
            status="active", content_hash=digest, text_key=tkey, source="reaction",
            split=self._choose_split(splits, identity),
            workspace_id=workspace, channel_id=message.channel_id, message_ts=message.ts,
            thread_ts=message.thread_ts, author_id=message.user_id, approver_id=approver,
        )  # fmt: skip
        self.session.add(example)
        self.session.flush()
        self.session.add(Approval(example_id=example.id, user_id=approver, emoji=emoji, kind=kind))
        self._store_keys(example, new=True)
        self.audit.record(
            "example.add", actor=approver, dataset_id=dataset.id, example_id=example.id,
            content_hash=digest, kind=example.kind, split=example.split,
        )  # fmt: skip
        needs_brief = dataset.task == "draft" and prompt is None and kind == "approve"
        return Outcome(dataset.name, "added", example.id, needs_brief=needs_brief)

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
        last = (
            select(func.max(TrainingRun.started_at))
            .where(TrainingRun.dataset_id == dataset.id, TrainingRun.status == "succeeded")
            .scalar_subquery()
        )
        is_new = case((last.is_(None), 1), (Example.created_at > last, 1), else_=0)
        total, new = self.session.execute(
            select(func.count(), func.coalesce(func.sum(is_new), 0)).where(
                Example.dataset_id == dataset.id, Example.status == "active"
            )
        ).one()
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
