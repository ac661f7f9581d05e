"""Posting a draft exactly once, and settling a post a crash cut off.

A Post press claims the draft (``pending`` to ``posting``, one conditional update that also
stores the text, the presser, the variant and the time), posts it once that has committed, then
records it (example and pairs) in a transaction of its own. A crash between the claim and the
record leaves the draft ``posting``: it is never posted twice, but nobody could post it and, if
Slack had it, it never became training data. A sweep (every five minutes, in one replica) looks
at claims older than ``posting_stuck_after_minutes`` in the channel's history: a message of the
bot's with the claimed text since the claim means the post went out, so it is recorded with that
message's ts; none means it did not, so the claim is released and the presser is offered Post
again. A channel the bot cannot read is left alone (it cannot tell, and posting twice is worse).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence

from sqlalchemy import and_, or_, select, update

from bot.access import is_approver
from bot.draft_pairs import record_posted
from bot.gate import Gate, scrubber_for_settings
from bot.plugin import (
    Button,
    ChatError,
    ChatMessage,
    Context,
    InternalEvent,
    Plugin,
    Services,
    schedule,
)
from bot.storage.models import Dataset, Draft, utcnow
from bot.storage.repositories import Outbox
from trainer.rules import edit_distance

log = logging.getLogger("brandbot.draft")
POSTING = "This draft is being posted."
#: how far before the claim the channel's history is read (clocks differ between hosts and Slack)
CLOCK_MARGIN = dt.timedelta(minutes=2)
HISTORY_LIMIT = 1000
#: what Slack escapes in a message's text
_ESCAPES = (("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&"))
UNCLAIMED = {"status": "pending", "final_text": None, "posted_by": None, "claimed_at": None,
             "claim_index": None, "claim_team": None}  # fmt: skip


def slack_ts(when: dt.datetime) -> str:
    """A datetime (naive ones are UTC, as SQLite returns them) as a Slack ts."""
    aware = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return f"{aware.timestamp():.6f}"


def _channel(draft: Draft, dataset: Dataset | None) -> str:
    """Where a draft is posted: where it was requested, else its dataset's first channel."""
    return draft.channel_id or (dataset.channels[0] if dataset and dataset.channels else "")


def _shown(text: str) -> str:
    for escaped, plain in _ESCAPES:
        text = text.replace(escaped, plain)
    return text.strip()


def posted_message(
    messages: Sequence[ChatMessage], texts: Sequence[str], bot_user: str, taken: set[str]
) -> tuple[str, int] | None:
    """(ts, index into ``texts``) of the earliest of the bot's ``messages`` showing one of
    ``texts``, skipping messages another draft already recorded (``taken``); None if none does.
    A text Slack clipped (ending in an ellipsis) matches the text it begins."""
    for message in sorted(messages, key=lambda m: float(m.ts)):
        mine = message.user_id == bot_user or (message.user_id is None and message.bot_id)
        if not mine or message.ts in taken or message.thread_ts not in (None, message.ts):
            continue
        shown = _shown(message.text)
        for index, text in enumerate(texts):
            wanted = text.strip()
            clipped = shown.endswith("…") and len(shown) > 100 and wanted.startswith(shown[:-1])
            if wanted and (shown == wanted or clipped):
                return message.ts, index
    return None


class DraftPosting(Plugin):
    """The Post button's claim, post and record, and the sweep that settles cut-off posts."""

    def stuck_after(self) -> dt.timedelta:
        """How long a claim stays ``posting`` before the sweep looks at it."""
        return dt.timedelta(minutes=10)

    @staticmethod
    def _say(ctx: Context, draft: Draft, user: str, text: str) -> None:
        """Answer a button (through its response_url) or a modal (ephemerally)."""
        if getattr(ctx.event, "response_url", None):
            ctx.respond(text, replace_original=True)
        elif draft.channel_id:
            ctx.chat.ephemeral(draft.channel_id, user, text)

    @staticmethod
    def _approves(services: Services, dataset: Dataset) -> Callable[[str], bool]:
        """Whether a person approves ``dataset``: only approvers' choices become pairs."""
        return lambda user: is_approver(dataset, user, services.chat, services.settings.admins)

    def _publish(
        self, ctx: Context, draft: Draft, final: str, user: str, team: str | None, index: int
    ) -> None:
        """Claim the draft in the handler's transaction, and post it once that has committed
        (:meth:`_post_claimed`). Two presses at once claim it once: the other is told it is
        being posted. Nothing is posted for a transaction that rolled back."""
        if draft.status == "posted":
            self._say(ctx, draft, user, "This draft was already posted.")
            return
        if draft.status == "discarded":
            self._say(ctx, draft, user, "This draft was discarded; run `/draft` again.")
            return
        channel = _channel(draft, ctx.session.get(Dataset, draft.dataset_id))
        claim = update(Draft).where(Draft.id == draft.id, Draft.status == "pending")
        claimed = ctx.session.execute(claim.values(
            status="posting", final_text=final, posted_by=user, claimed_at=utcnow(),
            claim_index=index, claim_team=team, channel_id=channel or None,
        ))  # fmt: skip
        if getattr(claimed, "rowcount", 0) != 1:
            self._say(ctx, draft, user, POSTING)
            return
        ctx.after_commit(self._post_claimed, ctx, draft, channel, final, user, team, index)

    def _post_claimed(
        self, ctx: Context, draft: Draft, channel: str, final: str, user: str,
        team: str | None, index: int,
    ) -> None:  # fmt: skip
        """Post a claimed draft, then record it. A post Slack refuses gives the claim back, so
        Post can be pressed again."""
        draft_id = draft.id
        try:
            ts = ctx.chat.post(channel, final)
        except Exception as exc:
            with ctx.services.db.session() as session:
                session.execute(
                    update(Draft)
                    .where(Draft.id == draft_id, Draft.status == "posting")
                    .values(**UNCLAIMED)
                )
            log.warning("posting draft %s failed: %s", draft_id, exc)
            self._say(ctx, draft, user, f"Couldn't post the draft ({exc}). Press Post again.")
            return
        note = self._record_or_log(ctx.services, draft_id, final, user, team, index, channel, ts)
        self._say(ctx, draft, user, f"Posted in <#{channel}>.{note}")

    def _record_or_log(
        self, services: Services, draft_id: int, final: str, user: str, team: str | None,
        index: int, channel: str, ts: str,
    ) -> str:  # fmt: skip
        try:
            return self._record_posted(services, draft_id, final, user, team, index, channel, ts)
        except Exception:
            log.exception("draft %s was posted (ts %s) but recording it failed", draft_id, ts)
            return " Recording it failed, so it is not training data; the error is logged."

    def _record_posted(
        self, services: Services, draft_id: int, final: str, user: str, team: str | None,
        index: int, channel: str, ts: str,
    ) -> str:  # fmt: skip
        """Record a posted draft, its example and its pairs, once; the note for the poster."""
        note = ""
        with services.db.session() as session:
            draft = session.get(Draft, draft_id, with_for_update=True)
            if draft is None or draft.status == "posted":  # forgotten, or recorded already
                return note
            dataset = session.get(Dataset, draft.dataset_id)
            generated = draft.variants[index] if index < len(draft.variants) else (draft.text or "")
            draft.status, draft.final_text, draft.posted_by = "posted", final, user
            draft.message_ts, draft.channel_id, draft.posted_at = ts, channel, utcnow()
            draft.edit_distance = edit_distance(generated, final)
            if dataset is not None:
                approved = is_approver(dataset, user, services.chat, services.settings.admins)
                gate = Gate(session, scrubber=scrubber_for_settings(services.settings))
                outcome = gate.add(
                    dataset, text=final, source="draft", actor=user, approved=approved,
                    workspace=team or "", channel=channel, ts=ts, author=user,
                    prompt=draft.brief,
                )  # fmt: skip
                if outcome.status == "pending":
                    Outbox(session).publish("example.pending", {"example_id": outcome.example_id})
                    note = " An approver's ✅ on it makes it training data."
                if approved:
                    approves = self._approves(services, dataset)
                    record_posted(gate, dataset, draft, index, team, approves)
        return note

    # ---- the sweep ---------------------------------------------------------------------

    @schedule("*/5 * * * *")
    def settle_stuck(self, event: InternalEvent, ctx: Context) -> None:
        """Queue :meth:`settle` for every claim older than :meth:`stuck_after` (and drafts left
        ``posting`` before claims were timed, by their request time)."""
        cutoff = utcnow() - self.stuck_after()
        stuck = ctx.session.scalars(
            select(Draft.id).where(
                Draft.status == "posting",
                or_(
                    Draft.claimed_at < cutoff,
                    and_(Draft.claimed_at.is_(None), Draft.requested_at < cutoff),
                ),
            )
        ).all()
        for draft_id in stuck:
            log.info("draft %s has been posting since before %s; settling it", draft_id, cutoff)
            ctx.submit_after_commit(self.settle, ctx.services, draft_id, name="draft.settle")

    def settle(self, services: Services, draft_id: int) -> None:
        """Record the draft if the channel shows the bot posted it since the claim, else give
        the claim back and tell the presser. Safe to repeat."""
        with services.db.session() as session:
            draft = session.get(Draft, draft_id)
            if draft is None or draft.status != "posting":
                return
            channel = _channel(draft, session.get(Dataset, draft.dataset_id))
            variants, claimed_text = list(draft.variants), draft.final_text
            texts = [claimed_text] if claimed_text else variants
            claimed_at, since = draft.claimed_at, draft.claimed_at or draft.requested_at
            user, team = draft.posted_by or draft.requested_by, draft.claim_team
            index = draft.claim_index or 0
            taken = {ts for ts in session.scalars(select(Draft.message_ts).where(
                Draft.channel_id == channel, Draft.message_ts.is_not(None),
            )) if ts}  # fmt: skip
        found = None
        if channel:
            try:
                history = services.chat.history(channel, slack_ts(since - CLOCK_MARGIN),
                                                HISTORY_LIMIT)  # fmt: skip
            except ChatError as exc:
                log.warning(
                    "draft %s: cannot read <#%s> (%s), so it stays posting (posting it again "
                    "could post it twice)", draft_id, channel, exc.code,
                )  # fmt: skip
                return
            found = posted_message(history, texts, services.chat.bot_user_id(), taken)
        if found is not None:
            ts, matched = found
            index = index if claimed_text else matched
            note = self._record_or_log(services, draft_id, texts[matched], user, team, index,
                                       channel, ts)  # fmt: skip
            log.info("draft %s was posted (ts %s) before a restart; recorded it", draft_id, ts)
            self._note(services, channel, user, f"Your draft was posted in <#{channel}> before a "
                       f"restart; it is recorded now.{note}")  # fmt: skip
            return
        same_claim = (
            Draft.claimed_at.is_(None) if claimed_at is None else (Draft.claimed_at == claimed_at)
        )
        with services.db.session() as session:
            released = session.execute(
                update(Draft)
                .where(Draft.id == draft_id, Draft.status == "posting", same_claim)
                .values(**UNCLAIMED)
            )
        if getattr(released, "rowcount", 0) != 1 or not channel:
            return
        log.info("draft %s never reached <#%s>; released its claim", draft_id, channel)
        text = texts[min(index, len(texts) - 1)] if texts else ""
        edited = index >= len(variants) or variants[index] != text
        how = (
            "Press Edit and paste it to post your edit, or Post to post the model's version."
            if edited
            else "Press Post to post it now, or Edit to change it first."
        )
        self._note(
            services, channel, user,
            f"Posting your draft to <#{channel}> was cut off by a restart, and it is not in the "
            f"channel. It was:\n>{text[:2500]}\n{how}",
            buttons=[Button("Post to channel", "draft_post", f"{draft_id}:{index}", "primary"),
                     Button("Edit", "draft_edit", f"{draft_id}:{index}")],
        )  # fmt: skip

    @staticmethod
    def _note(
        services: Services, channel: str, user: str, text: str, buttons: Sequence[Button] = ()
    ) -> None:
        """An ephemeral note to the presser; one that cannot be delivered is only logged (the
        draft is settled either way)."""
        try:
            services.chat.ephemeral(channel, user, text, buttons=buttons)
        except ChatError as exc:
            log.warning("could not tell %s in <#%s> (%s): %s", user, channel, exc.code, text[:200])
