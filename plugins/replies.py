"""Suggested replies: the reply dataset's adapter drafts an answer to each new support ticket.

Every new top-level human message in a reply dataset's ticket channels gets one suggestion row.
When a classify dataset also covers the channel, the suggestion waits for the ticket's label
(``ticket.classified``) and is conditioned on it. Then, by the channel's reply mode:

- ``thread``: the suggestion is posted in the ticket's thread, marked as a suggestion, with
  Post reply, Edit and post, Regenerate and Dismiss;
- ``ephemeral``: a "Suggest a reply" button is posted in the thread, and the suggestion is shown
  only to the agent who presses it.

A posted reply (after any edit) becomes a (ticket -> reply) example with its edit distance; an
approver's edit of the suggestion also becomes a preference pair (posted reply over suggestion).
Generation runs on the job queue. A suggestion is never posted twice for one ticket: the row is
unique per ticket and each step claims it with a conditional update.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select, update

from bot.access import is_approver
from bot.gate import Gate, scrubber_for_settings
from bot.modals import text_edit_modal
from bot.plugin import (
    ActionEvent,
    Button,
    Context,
    InternalEvent,
    MessageEvent,
    Plugin,
    Services,
    on_action,
    on_event,
    on_message,
    on_view_submission,
    schedule,
)
from bot.preferences import PairCandidate, PairGate
from bot.ratelimit import admit
from bot.reply_prompts import fit_ticket, reply_datasets, reply_mode, reply_prompt
from bot.storage.models import Dataset, Suggestion, utcnow
from bot.storage.repositories import Adapters
from serving.client import InferenceError, InferenceUnavailable
from trainer.rules import edit_distance

log = logging.getLogger("brandbot.replies")
MAX_TICKET = 40_000  # Slack's own message limit
UNPOSTED = ("offered", "generating", "ready", "dismissed", "failed")
OFFER = "A suggested reply can be drafted for this ticket (only you will see it)."


class RepliesSettings(BaseModel):
    max_tokens: int = Field(default=200, ge=16, le=2048)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    stuck_after_minutes: int = Field(
        default=15,
        ge=1,
        description="A suggestion still queued, waiting for its label, or (in thread mode) "
        "generating after this long is taken up again by the sweep every five minutes: a "
        "restart loses the in-memory job queue.",
    )


def suggestion_text(row: Suggestion, dataset: Dataset) -> str:
    """The suggestion as people see it: clearly marked, quoted, with any cut noted."""
    source = f"`{row.adapter_name}`" if row.adapter_name else "the base model (no tuned adapter)"
    about = f" for a *{row.label}* ticket" if row.label else ""
    lines = [f":bulb: *Suggested reply*{about}, not sent yet (from {source}, `{dataset.name}`):"]
    body = (row.text or "").strip()
    if body:
        lines += [f"> {line}" if line else ">" for line in body.splitlines()]
    else:
        lines.append("_(the model returned nothing: Edit and post to write one, or Regenerate)_")
    if row.cut_chars:
        lines.append(
            f"_Note: the ticket is longer than the model's context, so {row.cut_chars} characters "
            "were cut from its middle for this suggestion._"
        )
    return "\n".join(lines)


def suggestion_buttons(row: Suggestion) -> list[Button]:
    value = str(row.id)
    return [
        Button("Post reply", "reply_post", value, "primary"),
        Button("Edit and post", "reply_edit", value),
        Button("Regenerate", "reply_regenerate", value),
        Button("Dismiss", "reply_dismiss", value, "danger"),
    ]


class RepliesPlugin(Plugin):
    """Suggests replies to support tickets."""

    Settings = RepliesSettings

    @property
    def cfg(self) -> RepliesSettings:
        assert isinstance(self.settings, RepliesSettings)
        return self.settings

    # ---- new tickets -------------------------------------------------------------------

    @on_message()
    def ticket(self, event: MessageEvent, ctx: Context) -> None:
        if event.thread_ts or event.bot_id or event.subtype or not event.text.strip():
            return  # replies, bots, files without text and system messages get nothing
        channel = event.channel_id or ""
        datasets = list(ctx.session.scalars(select(Dataset)))
        targets = reply_datasets(datasets, channel)
        if not targets or event.user_id == ctx.chat.bot_user_id():
            return
        labelled = any(
            d.task == "classify" and channel in d.ticket_channels and d.labels for d in datasets
        )
        gate = Gate(ctx.session, scrubber=scrubber_for_settings(ctx.services.settings))
        for dataset in targets:
            exists = ctx.session.scalar(
                select(Suggestion.id).where(
                    Suggestion.dataset_id == dataset.id,
                    Suggestion.channel_id == channel,
                    Suggestion.ticket_ts == event.ts,
                )
            )
            if exists is not None:
                continue
            row = Suggestion(
                dataset_id=dataset.id, channel_id=channel, ticket_ts=event.ts,
                author_id=event.user_id, ticket_text=gate.scrub_text(event.text)[:MAX_TICKET],
                mode=reply_mode(dataset, channel), status="waiting" if labelled else "queued",
            )  # fmt: skip
            ctx.session.add(row)
            ctx.session.flush()
            if not labelled:
                ctx.submit_after_commit(self.advance, ctx.services, row.id, name="replies.advance")

    @on_event("ticket.classified")
    def classified(self, event: InternalEvent, ctx: Context) -> None:
        """The ticket has its label (or none, if classification failed): go on."""
        rows = ctx.session.scalars(
            select(Suggestion).where(
                Suggestion.channel_id == event.payload.get("channel"),
                Suggestion.ticket_ts == event.payload.get("ts"),
                Suggestion.status == "waiting",
            )
        )
        for row in rows:
            row.label, row.status = event.payload.get("label"), "queued"
            ctx.submit_after_commit(self.advance, ctx.services, row.id, name="replies.advance")

    def advance(self, services: Services, suggestion_id: int) -> None:
        """A queued suggestion: generate and post it (thread), or offer it (ephemeral)."""
        with services.db.session() as session:
            row = session.get(Suggestion, suggestion_id)
            if row is None:
                return
            mode, channel, ticket_ts = row.mode, row.channel_id, row.ticket_ts
            claimed = _claim(
                session, suggestion_id, ("queued",),
                "offered" if mode == "ephemeral" else "generating",
            )  # fmt: skip
        if not claimed:
            return
        if mode == "ephemeral":
            button = Button("Suggest a reply", "reply_ask", str(suggestion_id), "primary")
            ts = services.chat.post(channel, OFFER, thread_ts=ticket_ts, buttons=[button])
            with services.db.session() as session:
                offered = session.get(Suggestion, suggestion_id)
                if offered is not None:
                    offered.message_ts = ts
            return
        self.generate(services, suggestion_id, None, False)

    @schedule("*/5 * * * *")
    def sweep(self, event: InternalEvent, ctx: Context) -> None:
        """Take up suggestions a restart (or a lost label) left behind.

        Jobs live in the process's memory, so a restart drops a queued ``advance`` or cuts off a
        thread-mode generation; a ticket whose label never comes waits forever. Generation is
        idempotent (only the first result is shown), so a slow one taken up twice shows once.
        """
        cutoff = utcnow() - dt.timedelta(minutes=self.cfg.stuck_after_minutes)
        stuck = ctx.session.scalars(
            select(Suggestion).where(
                Suggestion.created_at < cutoff,
                (Suggestion.status.in_(("queued", "waiting")))
                | (
                    (Suggestion.status == "generating")
                    & (Suggestion.mode == "thread")
                    & Suggestion.message_ts.is_(None)
                ),
            )
        ).all()
        for row in stuck:
            log.info("suggestion %s was left %s; taking it up again", row.id, row.status)
            row.status = "queued"
            ctx.submit_after_commit(self.advance, ctx.services, row.id, name="replies.advance")

    # ---- generation (a queued job) -----------------------------------------------------

    def _max_tokens(self, dataset: Dataset) -> int:
        """At about four characters a token, stop soon after the dataset's length limit."""
        if dataset.max_length:
            return min(self.cfg.max_tokens, dataset.max_length // 3 + 8)
        return self.cfg.max_tokens

    def _messages(
        self, services: Services, dataset: Dataset, ticket: str, label: str | None
    ) -> tuple[list[dict[str, str]], int]:
        """The chat for a ticket, cut from the middle when it would not fit the context."""

        def build(text: str) -> list[dict[str, str]]:
            out = []
            if dataset.system_prompt:
                out.append({"role": "system", "content": dataset.system_prompt})
            out.append({"role": "user", "content": reply_prompt(text, label)})
            return out

        inference = services.require_inference()
        limit = inference.max_model_len()
        if not limit:
            return build(ticket), 0
        budget = limit - self._max_tokens(dataset)
        fitted, cut = fit_ticket(
            ticket, label, lambda text: int(inference.count_tokens(build(text))), budget,
            fixed_bytes=len(dataset.system_prompt.encode()),
        )  # fmt: skip
        return build(fitted), cut

    def generate(
        self, services: Services, suggestion_id: int, response_url: str | None, replace: bool
    ) -> None:
        """Write the suggestion and show it: in place of the pressed message (``replace``), as
        a new private answer (``response_url`` alone), or as a new thread message."""
        with services.db.session() as session:
            row = session.get(Suggestion, suggestion_id)
            dataset = session.get(Dataset, row.dataset_id) if row else None
            if row is None or dataset is None or row.status != "generating":
                return
            adapter = Adapters(session).active(dataset.id)
            model = adapter.name if adapter else None
            session.expunge_all()
        try:
            messages, cut = self._messages(services, dataset, row.ticket_text or "", row.label)
            result = services.require_inference().chat(
                messages, model=model, max_tokens=self._max_tokens(dataset),
                temperature=self.cfg.temperature,
            )  # fmt: skip
        except (InferenceUnavailable, InferenceError) as exc:
            log.warning("suggestion %s: %s", suggestion_id, exc)
            self._failed(services, row, response_url, replace, exc)
            return
        with services.db.session() as session:
            fresh = session.get(Suggestion, suggestion_id)
            if fresh is None or fresh.status != "generating":
                return
            fresh.text, fresh.adapter_name, fresh.cut_chars = result.text.strip(), model, cut
            fresh.status, fresh.suggested_at, fresh.error = "ready", utcnow(), None
            text, buttons = suggestion_text(fresh, dataset), suggestion_buttons(fresh)
            channel, ticket_ts, message_ts = fresh.channel_id, fresh.ticket_ts, fresh.message_ts
        if response_url:
            services.chat.respond(response_url, text, buttons=buttons, replace_original=replace)
        elif message_ts:
            services.chat.update(channel, message_ts, text, buttons=buttons)
        else:
            ts = services.chat.post(channel, text, thread_ts=ticket_ts, buttons=buttons)
            with services.db.session() as session:
                posted = session.get(Suggestion, suggestion_id)
                if posted is not None:
                    posted.message_ts = ts

    def _failed(
        self,
        services: Services,
        row: Suggestion,
        response_url: str | None,
        replace: bool,
        exc: Exception,
    ) -> None:
        reason = (
            "the model server is unreachable right now"
            if isinstance(exc, InferenceUnavailable)
            else f"the model server refused it ({exc})"
        )
        with services.db.session() as session:
            fresh = session.get(Suggestion, row.id)
            if fresh is None:
                return
            fresh.status, fresh.error = "failed", reason
        text = f"I couldn't suggest a reply: {reason}."
        retry = [Button("Retry", "reply_retry", str(row.id))]
        if response_url:
            services.chat.respond(response_url, text, buttons=retry, replace_original=replace)
        elif row.message_ts:
            services.chat.update(row.channel_id, row.message_ts, text, buttons=retry)
        else:
            ts = services.chat.post(row.channel_id, text, thread_ts=row.ticket_ts, buttons=retry)
            with services.db.session() as session:
                fresh = session.get(Suggestion, row.id)
                if fresh is not None:
                    fresh.message_ts = ts

    # ---- buttons -----------------------------------------------------------------------

    @staticmethod
    def _load(ctx: Context, value: str) -> tuple[Suggestion, Dataset] | None:
        row = ctx.session.get(Suggestion, int(value)) if value.isdigit() else None
        dataset = ctx.session.get(Dataset, row.dataset_id) if row else None
        if row is None or dataset is None:
            ctx.respond("That suggestion is gone.")
            return None
        return row, dataset

    def _open(self, ctx: Context, event: ActionEvent, *, replace: bool) -> Suggestion | None:
        """The pressed suggestion, unless it is gone or already posted (then say so)."""
        loaded = self._load(ctx, event.value)
        if loaded is None:
            return None
        row = loaded[0]
        if row.status == "posted":
            ctx.respond(f"<@{row.resolved_by}> already posted this reply.",
                        replace_original=replace)  # fmt: skip
            return None
        return row

    def _generate(self, ctx: Context, event: ActionEvent, row: Suggestion, replace: bool) -> None:
        row.status, row.requested_by = "generating", event.user_id
        ctx.submit_after_commit(self.generate, ctx.services, row.id, event.response_url, replace,
                                name="replies.generate")  # fmt: skip

    @on_action("reply_ask")
    def ask(self, event: ActionEvent, ctx: Context) -> None:
        """Ephemeral mode: the agent who asks gets a suggestion only they can see."""
        row = self._open(ctx, event, replace=False)
        if row is None:
            return
        if row.status == "generating":
            ctx.respond("A suggestion is being written right now; try again in a moment.")
            return
        admit(ctx, event.user_id, "regenerate")
        ctx.respond("Writing a suggested reply… (only you can see it)")
        self._generate(ctx, event, row, False)

    def _again(self, event: ActionEvent, ctx: Context) -> None:
        # Even while "generating": a run cut off by a restart must not leave it stuck, and two
        # concurrent runs only mean the later text wins.
        row = self._open(ctx, event, replace=True)
        if row is not None:
            admit(ctx, event.user_id, "regenerate")
            ctx.respond("Writing another suggestion…", replace_original=True)
            self._generate(ctx, event, row, True)

    @on_action("reply_regenerate")
    def regenerate(self, event: ActionEvent, ctx: Context) -> None:
        self._again(event, ctx)

    @on_action("reply_retry")
    def retry(self, event: ActionEvent, ctx: Context) -> None:
        self._again(event, ctx)

    @on_action("reply_dismiss")
    def dismiss(self, event: ActionEvent, ctx: Context) -> None:
        row = self._open(ctx, event, replace=True)
        if row is not None:
            row.status, row.resolved_by, row.resolved_at = "dismissed", event.user_id, utcnow()
            ctx.respond(f"Suggestion dismissed by <@{event.user_id}>.", replace_original=True)

    @on_action("reply_post")
    def post(self, event: ActionEvent, ctx: Context) -> None:
        loaded = self._load(ctx, event.value)
        if loaded is None:
            return
        row, dataset = loaded
        if not (row.text or "").strip() and row.status != "posted":
            ctx.respond("The suggestion is empty: press Edit and post to write one, or Regenerate.")
            return
        self._publish(ctx, row, dataset, row.text or "", event.user_id, event.team_id)

    @on_action("reply_edit")
    def edit(self, event: ActionEvent, ctx: Context) -> None:
        row = self._open(ctx, event, replace=False)
        if row is None:
            return
        if not event.trigger_id:
            ctx.respond("Slack sent no trigger to open the editor; press the button again.")
            return
        ctx.chat.open_modal(
            event.trigger_id,
            text_edit_modal("reply_edit", str(row.id), row.text or "", title="Edit the reply",
                            submit="Post reply", label="Reply (posted in the ticket's thread)"),
        )  # fmt: skip

    @on_view_submission("reply_edit")
    def edited(self, event: ActionEvent, ctx: Context) -> dict[str, str] | None:
        text = str(event.values.get("text.value") or "").strip()
        if not text:
            return {"text": "The reply can't be empty."}
        key = event.private_metadata
        row = ctx.session.get(Suggestion, int(key)) if key.isdigit() else None
        dataset = ctx.session.get(Dataset, row.dataset_id) if row else None
        if row is None or dataset is None:
            return {"text": "That suggestion is gone."}
        self._publish(ctx, row, dataset, text, event.user_id, event.team_id)
        return None

    def _publish(
        self,
        ctx: Context,
        row: Suggestion,
        dataset: Dataset,
        final: str,
        user: str,
        team: str | None,
    ) -> None:
        """Post the reply in the ticket's thread as the bot, once, and learn from it."""
        if row.status == "posted" or not _claim(ctx.session, row.id, UNPOSTED, "posted"):
            ctx.session.refresh(row)
            self._say(ctx, row, user, f"<@{row.resolved_by}> already posted this reply.")
            return
        reply_ts = ctx.chat.post(row.channel_id, final, thread_ts=row.ticket_ts)
        distance = edit_distance(row.text or "", final)
        row.status, row.final_text, row.reply_ts = "posted", final, reply_ts
        row.resolved_by, row.resolved_at, row.edit_distance = user, utcnow(), distance
        note = ""
        gate = Gate(ctx.session, scrubber=scrubber_for_settings(ctx.services.settings))
        if not row.ticket_text:
            note = " (the ticket's text is gone, so it is not training data)"
        elif gate.opted_out(row.author_id):
            note = " (the customer opted out, so it is not training data)"
        else:
            approved = is_approver(dataset, user, ctx.chat, ctx.services.settings.admins)
            prompt = reply_prompt(row.ticket_text, row.label)
            outcome = gate.add(
                dataset, text=final, source="suggestion", actor=user, approved=approved,
                workspace=team or "", channel=row.channel_id, ts=reply_ts, author=user,
                prompt=prompt, prompt_source="suggestion",
                subject=row.author_id,
            )  # fmt: skip
            if outcome.status == "refused":
                note = f" (not training data: {outcome.reason})"
            elif outcome.status == "pending":
                ctx.publish("example.pending", {"example_id": outcome.example_id})
                note = " (an approver's ✅ on it makes it training data)"
            if approved and (row.text or "").strip():  # what the agent changed: a pair
                where = f"slack:{team or ''}:{row.channel_id}:{reply_ts}"
                PairGate(gate).add_many(
                    dataset, [PairCandidate(prompt, final, row.text or "", "reply_edit")],
                    actor=user, author=user, subject=row.author_id, workspace=team,
                    channel=row.channel_id, identity=where, thread_ts=row.ticket_ts,
                    prompt_source="suggestion",
                )  # fmt: skip
        edited = "as suggested" if distance == 0 else f"edited ({distance} characters changed)"
        self._say(ctx, row, user, f"Reply posted by <@{user}>, {edited}{note}.")
        if row.mode == "ephemeral" and row.message_ts:
            ctx.chat.update(row.channel_id, row.message_ts, f"<@{user}> replied with a suggestion.")

    @staticmethod
    def _say(ctx: Context, row: Suggestion, user: str, text: str) -> None:
        """Answer a button (in place) or a modal (the suggestion message, or privately)."""
        if getattr(ctx.event, "response_url", None):
            ctx.respond(text, replace_original=True)
        elif row.mode == "thread" and row.message_ts:
            ctx.chat.update(row.channel_id, row.message_ts, text)
        else:
            ctx.chat.ephemeral(row.channel_id, user, text)


def _claim(session: Any, suggestion_id: int, states: tuple[str, ...], to: str) -> bool:
    """Move a suggestion on only from ``states``: one replica, one retry, wins."""
    done = session.execute(
        update(Suggestion)
        .where(Suggestion.id == suggestion_id, Suggestion.status.in_(states))
        .values(status=to)
    ).rowcount
    return bool(done)
