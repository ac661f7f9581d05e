"""The preference pairs a ``/draft`` gives when an approver posts (or discards) one.

The posted text is chosen over: the model's text it was edited from (``edit``), the variants not
posted (``variant``), the texts a regeneration replaced (``regenerate``), and, as a weak
negative, the texts of a discarded draft of the same brief in the same dataset (``discard``),
whichever of the post and the discard came first. Both people must approve the dataset for a
discard pair. Storing goes through ``bot.preferences.PairGate``.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from bot.gate import ExampleOutcome, Gate
from bot.preferences import PairCandidate, PairGate
from bot.storage.models import Dataset, Draft
from trainer.cleaning import dedup_key

RECENT_DRAFTS = 500  # drafts of a dataset searched for the same brief


def model_texts(draft: Draft) -> list[str]:
    """Everything the model wrote for a draft: its variants, then the texts they replaced."""
    return [t for t in dict.fromkeys([*draft.variants, *draft.replaced]) if t and t.strip()]


def posted_pairs(draft: Draft, final: str, index: int) -> list[PairCandidate]:
    """The pairs of a draft posted as ``final`` from variant ``index``."""
    brief = draft.brief
    out: list[PairCandidate] = []
    generated = draft.variants[index] if index < len(draft.variants) else (draft.text or "")
    if generated.strip():
        out.append(PairCandidate(brief, final, generated, "edit"))
    for i, text in enumerate(draft.variants):
        if i != index and text.strip():
            out.append(PairCandidate(brief, final, text, "variant"))
    for text in draft.replaced:
        if text.strip():
            out.append(PairCandidate(brief, final, text, "regenerate"))
    return out


def same_brief(gate: Gate, draft: Draft, status: str) -> list[Draft]:
    """Other recent drafts of ``draft``'s dataset with the same brief (compared case- and
    punctuation-insensitively) and ``status``."""
    rows = gate.session.scalars(
        select(Draft)
        .where(Draft.dataset_id == draft.dataset_id, Draft.status == status, Draft.id != draft.id)
        .order_by(Draft.id.desc())
        .limit(RECENT_DRAFTS)
    )
    key = dedup_key(draft.brief)
    return [d for d in rows if dedup_key(d.brief) == key]


def _identity(team: str | None, draft: Draft) -> str | None:
    if draft.channel_id and draft.message_ts:
        return f"slack:{team or ''}:{draft.channel_id}:{draft.message_ts}"
    return None


def record_posted(
    gate: Gate,
    dataset: Dataset,
    draft: Draft,
    index: int,
    team: str | None,
    approves: Callable[[str], bool],
) -> list[ExampleOutcome]:
    """Pairs for a draft an approver just posted (``draft.final_text``, by ``posted_by``)."""
    final, poster = draft.final_text or "", draft.posted_by or ""
    pairs = posted_pairs(draft, final, index)
    weak = [
        (other, PairCandidate(draft.brief, final, text, "discard"))
        for other in same_brief(gate, draft, "discarded")
        if other.discarded_by and approves(other.discarded_by)
        for text in model_texts(other)
    ]
    subject = draft.requested_by if draft.requested_by != poster else None
    identity = _identity(team, draft)
    outcomes = PairGate(gate).add_many(
        dataset, pairs, actor=poster, author=poster, subject=subject, workspace=team,
        channel=draft.channel_id, identity=identity,
    )  # fmt: skip
    for other, pair in weak:  # the posted draft's brief and text; the discarder approves it
        outcomes += PairGate(gate).add_many(
            dataset, [pair], actor=other.discarded_by or poster, author=poster, subject=subject,
            workspace=team, channel=draft.channel_id, identity=identity,
        )  # fmt: skip
    return outcomes


def record_discarded(
    gate: Gate,
    dataset: Dataset,
    draft: Draft,
    team: str | None,
    approves: Callable[[str], bool],
) -> list[ExampleOutcome]:
    """Weak pairs for a draft an approver just discarded (``discarded_by``): each draft of the
    same brief already posted by an approver is chosen over each of its texts."""
    discarder = draft.discarded_by or ""
    outcomes: list[ExampleOutcome] = []
    for posted in same_brief(gate, draft, "posted"):
        poster = posted.posted_by or ""
        if not posted.final_text or not poster or not approves(poster):
            continue
        pairs = [PairCandidate(posted.brief, posted.final_text, t, "discard")
                 for t in model_texts(draft)]  # fmt: skip
        outcomes += PairGate(gate).add_many(
            dataset, pairs, actor=discarder, author=poster,
            subject=posted.requested_by if posted.requested_by != poster else None,
            workspace=team, channel=posted.channel_id, identity=_identity(team, posted),
        )  # fmt: skip
    return outcomes
