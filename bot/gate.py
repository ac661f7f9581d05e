"""The one gate every example passes through, whichever way it comes in.

Reactions, label emoji, ``/brandbot label``, classify buttons, posted drafts and replies, edits
and deletes of approved messages, imports and briefs all write examples here and nowhere else.
The gate normalizes (NFKC, no zero-width, bidi or other invisible characters), scrubs personal
data with the configured rules, hashes (``example_hash``), refuses exact and near duplicates,
assigns the split, records who approved, and audits with ids and hashes only.

An example is trained on only when it is ``active``: an approver created or approved it. What
anyone else contributes is ``pending`` until an approver approves it; an edit of an approved
message waits in ``pending_text`` while the approved text stays.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Table, delete, func, select
from sqlalchemy.orm import Session

from bot.near_dups import near_candidates
from bot.storage.bulk import insert_rows
from bot.storage.models import Approval, Dataset, Example, NearDupKey, OptOut
from bot.storage.repositories import Audit
from trainer.cleaning import (
    HELDOUT_FRACTION,
    content_hash,
    dedup_key,
    normalize_text,
    split_for,
    strip_invisible,
    text_key,
)

MAX_TEXT_CHARS = 20_000
MIN_TEXT_CHARS = 3
MAX_PROMPT_CHARS = 20_000
PII_KINDS = ("email", "phone", "card", "iban", "slack_token", "api_key", "url_credentials")

Scrubber = Callable[[str], str]

EXAMPLES = cast(Table, Example.__table__)
APPROVALS = cast(Table, Approval.__table__)
NEAR_DUP_KEYS = cast(Table, NearDupKey.__table__)


def example_hash(task: str, prompt: str | None, text_: str, label: str | None) -> str:
    """The content hash of an example: equal hashes mean the same example."""
    return content_hash(task, prompt, text_, label)


def pair_hash(task: str, prompt: str, chosen: str, rejected: str) -> str:
    """The content hash of a preference pair: equal hashes mean the same pair (never equal to
    an ``example_hash``, which has four parts)."""
    parts = ["preference", task, dedup_key(prompt), dedup_key(chosen), dedup_key(rejected)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def rehash(example: Example) -> None:
    """Recompute a stored example's hash after its prompt, text or label changed."""
    if example.kind == "preference" and example.rejected_text is not None:
        example.content_hash = pair_hash(
            example.task, example.prompt or "", example.text, example.rejected_text
        )
        return
    example.content_hash = example_hash(example.task, example.prompt, example.text, example.label)


@lru_cache(maxsize=16)
def _scrubber(config_json: str) -> Scrubber:
    from trainer.pii import CustomPattern, ScrubConfig, scrub

    config = json.loads(config_json)
    keep = set(config.get("keep_pii") or ())
    custom = tuple(
        CustomPattern(kind=name, pattern=pattern, placeholder=f"[{name.upper()}]")
        for name, pattern in (config.get("extra_pii_patterns") or {}).items()
    )
    scrub_config = ScrubConfig(**{k: k not in keep for k in PII_KINDS}, custom=custom)
    return lambda value: scrub(value, scrub_config).text


def scrubber_from(config: Mapping[str, Any] | None = None) -> Scrubber:
    """The PII scrubber of ``[plugins.collect]`` (``keep_pii``, ``extra_pii_patterns``); every
    rule is on when nothing is configured."""
    wanted = {k: (config or {}).get(k) for k in ("keep_pii", "extra_pii_patterns")}
    return _scrubber(json.dumps(wanted, sort_keys=True, default=list))


def scrubber_for_settings(settings: Any) -> Scrubber:
    """``scrubber_from`` the settings' ``[plugins.collect]`` section."""
    plugins = getattr(settings, "plugins", None) or {}
    section = plugins.get("collect") if isinstance(plugins, dict) else None
    return scrubber_from(section if isinstance(section, dict) else None)


def default_scrubber() -> Scrubber:
    return scrubber_from(None)


def near_dup_keys(text_: str) -> list[str]:
    from trainer.near_dup import lsh_keys, minhash_signature

    keys: list[str] = lsh_keys(minhash_signature(text_))
    return keys


@dataclass
class ExampleOutcome:
    """What happened to one dataset's example; ``reason`` is shown to people when refused."""

    dataset: str
    # added | pending | reactivated | updated | unchanged | duplicate | refused | withdrawn
    status: str
    example_id: int | None = None
    reason: str = ""
    needs_brief: bool = False


@dataclass(frozen=True)
class NewExample:
    """An example to insert, cleaned and hashed (``Gate.prepare``)."""

    dataset: Dataset
    text: str
    prompt: str | None
    prompt_source: str | None
    label: str | None
    digest: str
    tkey: str
    keys: tuple[str, ...]


def with_band_keys(new: NewExample) -> NewExample:
    """``new`` with its near-duplicate band keys (see ``Gate.prepare(band_keys=False)``)."""
    return replace(new, keys=tuple(dict.fromkeys(near_dup_keys(new.text))))


class Gate:
    """Writes examples. Subclassed by the collector, which batches reactions through it."""

    def __init__(self, session: Session, *, scrubber: Scrubber | None = None) -> None:
        self.session = session
        self.scrub = scrubber or default_scrubber()
        self.audit = Audit(session)

    # ---- cleaning -----------------------------------------------------------------------

    def scrub_text(self, text_: str) -> str:
        """Scrubbed text with its line breaks kept (ticket text kept with predictions and
        suggestions): invisible characters go first, so they cannot hide PII from the rules."""
        return self.scrub(strip_invisible(text_))

    def clean(self, text_: str, dataset: Dataset) -> tuple[str, str | None]:
        """(clean text, reason it is refused or None)."""
        cleaned = normalize_text(self.scrub(normalize_text(text_)))
        if len(cleaned) < MIN_TEXT_CHARS:
            return cleaned, "the message has no text to learn from"
        limit = MAX_TEXT_CHARS
        if dataset.task == "draft" and dataset.max_length:
            limit = min(limit, dataset.max_length)
        if len(cleaned) > limit:
            return cleaned, f"the text is {len(cleaned)} characters; the limit is {limit}"
        return cleaned, None

    def clean_prompt(self, prompt: str | None) -> str | None:
        if prompt is None:
            return None
        cleaned = normalize_text(self.scrub(normalize_text(prompt)))[:MAX_PROMPT_CHARS]
        return cleaned or None

    def prepare(
        self,
        dataset: Dataset,
        text_: str,
        prompt: str | None,
        prompt_source: str | None,
        label: str | None,
        *,
        band_keys: bool = True,
    ) -> NewExample | str:
        """Clean and hash an example's parts, or say why it is refused. Without ``band_keys``
        the near-duplicate keys (most of the cost) are left for :func:`with_band_keys`."""
        cleaned, refused = self.clean(text_, dataset)
        if refused:
            return refused
        prompt = self.clean_prompt(prompt)
        digest = example_hash(dataset.task, prompt, cleaned, label)
        source = prompt_source if prompt else None
        new = NewExample(dataset, cleaned, prompt, source, label, digest, text_key(cleaned), ())
        return with_band_keys(new) if band_keys else new

    # ---- lookups ------------------------------------------------------------------------

    def opted_out(self, *user_ids: str | None) -> bool:
        return any(u and self.session.get(OptOut, u) is not None for u in user_ids)

    def example_for(self, dataset: Dataset, channel: str, ts: str) -> Example | None:
        return self.session.scalar(
            select(Example).where(
                Example.dataset_id == dataset.id,
                Example.channel_id == channel,
                Example.message_ts == ts,
            )
        )

    @staticmethod
    def choose_split(splits: set[str], identity: str, fraction: float = HELDOUT_FRACTION) -> str:
        """A text already in the dataset keeps its split (held-out wins); else the identity's."""
        if "heldout" in splits:
            return "heldout"
        if "train" in splits:
            return "train"
        return split_for(identity, fraction)

    def split(
        self, dataset: Dataset, tkey: str, identity: str, fraction: float = HELDOUT_FRACTION
    ) -> str:
        existing = self.session.execute(
            select(Example.split).where(Example.dataset_id == dataset.id, Example.text_key == tkey)
        ).scalars()
        return self.choose_split(set(existing), identity, fraction)

    @property
    def on_postgres(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    def near_candidates(
        self, wanted: list[tuple[int, int, tuple[str, ...]]]
    ) -> tuple[dict[int, list[int]], dict[int, str]]:
        """See ``bot.near_dups.near_candidates``."""
        return near_candidates(self.session, wanted)

    def near_duplicate(self, new: NewExample) -> int | None:
        """An active example of the same dataset nearly identical to ``new``, if any."""
        from trainer.near_dup import is_near_duplicate

        found, texts = self.near_candidates([(0, new.dataset.id, new.keys)])
        return next((c for c in found[0] if is_near_duplicate(texts[c], new.text)), None)

    # ---- writing ------------------------------------------------------------------------

    def insert(self, rows: list[dict[str, Any]], keys: list[tuple[str, ...]]) -> list[int]:
        """Insert example rows (each a full ``examples`` row but its id) with their near-dup
        keys; returns their ids in order (a row's content hash is unique in its dataset). Rows
        name their approver in ``approver_id`` and, when approved, the approval in
        ``_approval`` (emoji, kind)."""
        approvals = [row.pop("_approval", None) for row in rows]
        if not rows:
            return []
        returned = insert_rows(self.session, EXAMPLES, rows, ("id", "dataset_id", "content_hash"))
        by_key = {(int(ds), digest): int(example_id) for example_id, ds, digest in returned}
        ids = [by_key[(int(row["dataset_id"]), row["content_hash"])] for row in rows]
        approval_rows, key_rows = [], []
        for example_id, row, approval, band_keys in zip(ids, rows, approvals, keys, strict=True):
            if approval is not None:
                emoji, kind = approval
                approval_rows.append(
                    {"example_id": example_id, "user_id": row["approver_id"], "emoji": emoji,
                     "kind": kind}
                )  # fmt: skip
            key_rows += [
                {"example_id": example_id, "band_key": k, "dataset_id": row["dataset_id"]}
                for k in band_keys
            ]
        insert_rows(self.session, APPROVALS, approval_rows)
        insert_rows(self.session, NEAR_DUP_KEYS, key_rows)
        return ids

    def add(
        self,
        dataset: Dataset,
        *,
        text: str,
        source: str,
        actor: str,
        approved: bool,
        workspace: str,
        channel: str | None,
        ts: str | None,
        author: str | None,
        prompt: str | None = None,
        prompt_source: str | None = None,
        label: str | None = None,
        subject: str | None = None,
        emoji: str | None = None,
    ) -> ExampleOutcome:
        """One example from the product's own feedback (a posted draft or reply, a confirmed
        or corrected ticket label): active when ``actor`` is an approver, else pending."""
        if self.opted_out(author, subject):
            return ExampleOutcome(dataset.name, "refused", reason="the author opted out")
        emoji = emoji or source
        if channel and ts:
            existing = self.example_for(dataset, channel, ts)
            if existing is not None:
                if (
                    label is not None
                    and existing.label != label
                    and (approved or existing.status != "active")
                ):
                    existing.label = label
                    rehash(existing)
                if approved:
                    return self.approve(existing, actor, emoji, "label" if label else "approve")
                return ExampleOutcome(dataset.name, "unchanged", existing.id)
        new = self.prepare(dataset, text, prompt, prompt_source or source, label)
        if isinstance(new, str):
            return ExampleOutcome(dataset.name, "refused", reason=new)
        same = self.session.scalar(
            select(Example).where(
                Example.dataset_id == dataset.id, Example.content_hash == new.digest
            )
        )
        if same is not None:
            if approved and same.status == "pending":
                return self.approve(same, actor, emoji, "label" if label else "approve")
            return ExampleOutcome(
                dataset.name, "duplicate", same.id, "the same text is already an example"
            )
        if dataset.task != "classify" and (near := self.near_duplicate(new)) is not None:
            return ExampleOutcome(
                dataset.name, "duplicate", near, "a near-identical example exists"
            )
        identity = f"slack:{workspace}:{channel}:{ts}" if channel and ts else new.digest
        status = "active" if approved else "pending"
        row = dict(
            dataset_id=dataset.id, task=dataset.task, prompt=new.prompt,
            prompt_source=new.prompt_source, text=new.text, label=label, kind="positive",
            status=status, content_hash=new.digest, text_key=new.tkey, source=source,
            split=self.split(dataset, new.tkey, identity), workspace_id=workspace,
            channel_id=channel, message_ts=ts, thread_ts=None, author_id=author,
            approver_id=actor if approved else None, subject_id=subject, pending_text=None,
            _approval=(emoji, "label" if label else "approve") if approved else None,
        )  # fmt: skip
        (example_id,) = self.insert([row], [new.keys])
        self.audit.record(
            "example.add" if approved else "example.propose", actor=actor,
            dataset_id=dataset.id, example_id=example_id, content_hash=new.digest,
            source=source, split=row["split"],
        )  # fmt: skip
        return ExampleOutcome(dataset.name, "added" if approved else "pending", example_id)

    def approve(
        self, example: Example, approver: str, emoji: str, kind: str, label: str | None = None
    ) -> ExampleOutcome:
        """An approver vouches for ``example``: it becomes active, with any edit waiting in
        ``pending_text`` applied (unless the edited text is refused or duplicates another)."""
        dataset = self.session.get(Dataset, example.dataset_id)
        assert dataset is not None
        present = self.session.get(Approval, (example.id, approver, emoji))
        if present is None:
            self.session.add(
                Approval(example_id=example.id, user_id=approver, emoji=emoji, kind=kind)
            )
            self.session.flush()
        was = example.status
        if label is not None and label != example.label:
            example.label = label
            rehash(example)
        if example.pending_text is not None:
            refused = self._apply_text(dataset, example, example.pending_text, approver)
            if refused:
                self.audit.record(
                    "example.edit_refused", actor=approver, dataset_id=dataset.id,
                    example_id=example.id, reason=refused,
                )  # fmt: skip
            example.pending_text = None
        example.status = "active"
        example.approver_id = approver
        self.recompute_kind(example)
        self.audit.record(
            "example.reactivate" if was != "active" else "example.approve",
            actor=approver, dataset_id=dataset.id, example_id=example.id,
            content_hash=example.content_hash,
        )  # fmt: skip
        status = "reactivated" if was != "active" else "unchanged"
        return ExampleOutcome(dataset.name, status, example.id)

    def recompute_kind(self, example: Example) -> None:
        if example.kind == "preference":  # a pair stays a pair whoever approves it
            return
        kinds = set(
            self.session.scalars(select(Approval.kind).where(Approval.example_id == example.id))
        )
        example.kind = "negative" if kinds == {"reject"} else "positive"

    def withdraw(self, example: Example, actor: str | None, why: str) -> ExampleOutcome:
        dataset = self.session.get(Dataset, example.dataset_id)
        name = dataset.name if dataset else ""
        if example.status != "withdrawn":
            example.status = "withdrawn"
            self.audit.record(
                "example.withdraw", actor=actor, dataset_id=example.dataset_id,
                example_id=example.id, content_hash=example.content_hash, reason=why,
            )  # fmt: skip
        return ExampleOutcome(name, "withdrawn", example.id)

    def remove_approval(
        self, example: Example, user: str, emoji: str, *, is_admin: bool
    ) -> ExampleOutcome:
        """A reaction removed. Removing one's own approval withdraws the example when it was
        the last one; an admin who had none there withdraws it outright (a deliberate act);
        anyone else's removal changes nothing."""
        dataset = self.session.get(Dataset, example.dataset_id)
        name = dataset.name if dataset else ""
        had = self.session.execute(
            delete(Approval).where(
                Approval.example_id == example.id, Approval.user_id == user, Approval.emoji == emoji
            )
        ).rowcount  # type: ignore[attr-defined]
        if not had:
            if is_admin:
                return self.withdraw(example, user, "withdrawn by an admin")
            return ExampleOutcome(name, "unchanged", example.id)
        left = self.session.scalar(
            select(func.count()).select_from(Approval).where(Approval.example_id == example.id)
        )
        if left:
            self.recompute_kind(example)
            return ExampleOutcome(name, "unchanged", example.id)
        return self.withdraw(example, user, "reaction_removed")

    def change_text(
        self, dataset: Dataset, example: Example, new_text: str, actor: str | None, *,
        by_approver: bool,
    ) -> ExampleOutcome:  # fmt: skip
        """The example's message was edited. An approver's edit (or one of a pending example)
        applies; anyone else's edit of an active example makes it pending, keeping the
        approved text until an approver approves the edit."""
        cleaned, refused = self.clean(new_text, dataset)
        if not refused and cleaned == example.text and example.pending_text is None:
            return ExampleOutcome(dataset.name, "unchanged", example.id)
        waiting = example.pending_text is not None  # an approved text's edit, not yet approved
        if not by_approver and (example.status == "active" or waiting):
            example.pending_text = cleaned if not refused else new_text[:MAX_TEXT_CHARS]
            example.status = "pending"
            self.audit.record(
                "example.edit_pending", actor=actor, dataset_id=dataset.id,
                example_id=example.id, content_hash=example.content_hash,
            )  # fmt: skip
            return ExampleOutcome(dataset.name, "pending", example.id)
        if refused:
            return self.withdraw(example, actor, "edited text refused")
        problem = self._apply_text(dataset, example, cleaned, actor)
        if problem:
            return self.withdraw(example, actor, problem)
        example.pending_text = None
        return ExampleOutcome(dataset.name, "updated", example.id)

    def _apply_text(
        self, dataset: Dataset, example: Example, new_text: str, actor: str | None
    ) -> str | None:
        """Replace the example's text (cleaning it again); a reason when it cannot be."""
        cleaned, refused = self.clean(new_text, dataset)
        if refused:
            return "edited text refused"
        digest = example_hash(dataset.task, example.prompt, cleaned, example.label)
        if digest == example.content_hash:
            return None
        clash = self.session.scalar(
            select(Example.id).where(
                Example.dataset_id == dataset.id, Example.content_hash == digest
            )
        )
        if clash is not None:
            return "edit duplicates another"
        old = example.content_hash
        example.text, example.content_hash, example.text_key = cleaned, digest, text_key(cleaned)
        self.session.execute(delete(NearDupKey).where(NearDupKey.example_id == example.id))
        self.session.flush()
        insert_rows(self.session, NEAR_DUP_KEYS, [
            {"example_id": example.id, "band_key": k, "dataset_id": example.dataset_id}
            for k in dict.fromkeys(near_dup_keys(cleaned))
        ])  # fmt: skip
        self.audit.record(
            "example.edit", actor=actor, dataset_id=dataset.id, example_id=example.id,
            content_hash=digest, previous_hash=old,
        )  # fmt: skip
        return None

    def set_prompt(
        self, example: Example, brief: str, actor: str | None, *, source: str = "edited"
    ) -> str | None:
        """Set a copy example's brief (scrubbed like everything else); None when it is empty."""
        prompt = self.clean_prompt(brief[:2000])
        if not prompt:
            return None
        example.prompt, example.prompt_source = prompt, source
        rehash(example)
        self.audit.record(
            "example.brief", actor=actor, dataset_id=example.dataset_id, example_id=example.id,
            content_hash=example.content_hash, source=source,
        )  # fmt: skip
        return prompt
