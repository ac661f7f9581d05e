"""Ticket classification: every new top-level human message in a classify dataset's ticket
channels is classified (constrained to the label set) and answered in its thread with the label,
the confidence and buttons to confirm or pick another; below the confidence threshold it asks
instead of asserting. ``/classify <text>`` does the same on demand. Confirmations and
corrections become labelled examples. Each classified ticket publishes ``ticket.classified``
(label None when the model could not be reached), which the replies plugin waits for.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.access import is_approver
from bot.gate import Gate, scrubber_for_settings
from bot.plugin import (
    ActionEvent,
    Button,
    CommandEvent,
    Context,
    InternalEvent,
    MessageEvent,
    Plugin,
    Services,
    command,
    on_action,
    on_event,
    on_message,
)
from bot.ratelimit import admit
from bot.reply_prompts import fit_ticket
from bot.storage.models import Dataset, Prediction, utcnow
from bot.storage.repositories import Adapters, Outbox
from serving.client import InferenceError, InferenceUnavailable

log = logging.getLogger("brandbot.classify")
MAX_TICKET = 8000


class ClassifySettings(BaseModel):
    confidence_threshold: float = Field(default=0.5, ge=0.0, le=1.0)


def gate(ctx: Context) -> Gate:
    """The example gate, with the configured PII rules."""
    return Gate(ctx.session, scrubber=scrubber_for_settings(ctx.services.settings))


def ticket_messages(dataset: Dataset, text: str) -> list[dict[str, str]]:
    out = []
    if dataset.system_prompt:
        out.append({"role": "system", "content": dataset.system_prompt})
    out.append({"role": "user", "content": text})
    return out


def verdict(prediction: Prediction, threshold: float) -> str:
    pct = f"{prediction.confidence:.0%}"
    if prediction.confidence >= threshold:
        return f"Label: *{prediction.label}* ({pct} sure)."
    return f"I'm not sure about this one: maybe *{prediction.label}* ({pct}). Which label is it?"


def label_buttons(prediction: Prediction, labels: list[str]) -> list[Button]:
    buttons = [Button(f"✓ {prediction.label}", "classify_confirm", str(prediction.id), "primary")]
    buttons += [
        Button(label, "classify_pick", f"{prediction.id}:{label}")
        for label in labels
        if label != prediction.label
    ]
    return buttons


class ClassifyPlugin(Plugin):
    """Classifies support tickets."""

    Settings = ClassifySettings

    @property
    def cfg(self) -> ClassifySettings:
        assert isinstance(self.settings, ClassifySettings)
        return self.settings

    @on_message()
    def ticket(self, event: MessageEvent, ctx: Context) -> None:
        if event.thread_ts or event.bot_id or event.subtype or not event.text.strip():
            return  # replies, bots and system messages are not tickets
        if event.user_id == ctx.chat.bot_user_id():
            return
        for dataset in ctx.session.scalars(select(Dataset).where(Dataset.task == "classify")):
            if event.channel_id not in dataset.ticket_channels or not dataset.labels:
                continue
            exists = ctx.session.scalar(
                select(Prediction.id).where(
                    Prediction.dataset_id == dataset.id,
                    Prediction.channel_id == event.channel_id,
                    Prediction.message_ts == event.ts,
                )
            )
            if exists is not None:
                continue
            prediction = Prediction(
                dataset_id=dataset.id, channel_id=event.channel_id, message_ts=event.ts,
                author_id=event.user_id, text=gate(ctx).scrub_text(event.text)[:MAX_TICKET],
                label="", confidence=0.0, status="queued",
            )  # fmt: skip
            ctx.session.add(prediction)
            ctx.session.flush()
            ctx.publish("ticket.classify", {"prediction_id": prediction.id})

    @on_event("ticket.classify")
    def queue(self, event: InternalEvent, ctx: Context) -> None:
        """Classification runs on the job queue, after the ticket's transaction committed."""
        prediction_id = int(event.payload["prediction_id"])
        ctx.submit_after_commit(self.classify_ticket, ctx.services, prediction_id,
                        name="classify.ticket")  # fmt: skip

    def _classify(self, services: Services, dataset: Dataset, text: str) -> tuple[Any, str | None]:
        with services.db.session() as session:
            adapter = Adapters(session).active(dataset.id)
            model = adapter.name if adapter else None
        messages = ticket_messages(dataset, text)
        inference = services.require_inference()
        limit = inference.max_model_len()
        if limit:  # a ticket longer than the context is judged on its start and end
            longest = max(len(label) for label in dataset.labels) + 8
            fitted, _ = fit_ticket(
                text, None,
                lambda t: int(inference.count_tokens(ticket_messages(dataset, t))),
                limit - longest, fixed_bytes=len(dataset.system_prompt.encode()),
            )  # fmt: skip
            messages = ticket_messages(dataset, fitted)
        result = inference.classify(messages, dataset.labels, model=model)
        return result, model

    def classify_ticket(self, services: Services, prediction_id: int) -> None:
        with services.db.session() as session:
            prediction = session.get(Prediction, prediction_id)
            dataset = session.get(Dataset, prediction.dataset_id) if prediction else None
            if prediction is None or dataset is None or prediction.status != "queued":
                return
            session.expunge_all()
        try:
            result, model = self._classify(services, dataset, prediction.text or "")
        except (InferenceUnavailable, InferenceError) as exc:
            log.warning("ticket %s not classified: %s", prediction_id, exc)
            with services.db.session() as session:
                self._classified(session, prediction, None)
            return
        with services.db.session() as session:
            row = session.get(Prediction, prediction_id)
            if row is None or row.status != "queued":
                return
            row.label, row.confidence, row.scores = result.label, result.confidence, result.scores
            row.adapter_name, row.status = model, "pending"
            text = verdict(row, self.cfg.confidence_threshold)
            buttons = label_buttons(row, dataset.labels)
            channel, ts = row.channel_id or "", row.message_ts
            self._classified(session, row, result.label)
        services.chat.post(channel, text, thread_ts=ts, buttons=buttons)

    @staticmethod
    def _classified(session: Session, prediction: Prediction, label: str | None) -> None:
        """Tell other plugins (suggested replies) the ticket's label; None: it has none."""
        Outbox(session).publish(
            "ticket.classified",
            {"prediction_id": prediction.id, "channel": prediction.channel_id,
             "ts": prediction.message_ts, "label": label},
        )  # fmt: skip

    @command("/classify")
    def classify_now(self, event: CommandEvent, ctx: Context) -> None:
        """Classify a ticket: `/classify <ticket text>`."""
        text = event.text.strip()
        if not text:
            ctx.respond("Usage: `/classify <ticket text>`")
            return
        if len(text) > MAX_TICKET:
            ctx.respond(f"That is {len(text)} characters; I classify up to {MAX_TICKET}.")
            return
        admit(ctx, event.user_id, "classify")
        datasets = [
            d for d in ctx.session.scalars(select(Dataset).where(Dataset.task == "classify"))
            if d.labels
        ]  # fmt: skip
        here = [d for d in datasets if event.channel_id in d.ticket_channels]
        if not datasets:
            ctx.respond("There is no classify dataset with labels yet.")
            return
        dataset = (here or datasets)[0]
        text = gate(ctx).scrub_text(text)  # what the model sees and what is kept
        try:
            result, model = self._classify(ctx.services, dataset, text)
        except InferenceUnavailable as exc:
            ctx.respond(f"The model server is unreachable right now ({exc}). Try again soon.")
            return
        except InferenceError as exc:
            ctx.respond(f"The model server refused this ticket: {exc}")
            return
        prediction = Prediction(
            dataset_id=dataset.id, author_id=event.user_id, text=text, label=result.label,
            confidence=result.confidence, scores=result.scores, adapter_name=model,
            status="pending",
        )  # fmt: skip
        ctx.session.add(prediction)
        ctx.session.flush()
        note = "" if model else " (base model: no tuned adapter yet)"
        ctx.respond(
            verdict(prediction, self.cfg.confidence_threshold) + note,
            buttons=label_buttons(prediction, dataset.labels),
        )

    def _resolve(
        self, ctx: Context, event: ActionEvent, prediction_id: str, label: str | None
    ) -> None:
        prediction = (
            ctx.session.get(Prediction, int(prediction_id)) if prediction_id.isdigit() else None
        )
        dataset = ctx.session.get(Dataset, prediction.dataset_id) if prediction else None
        if prediction is None or dataset is None:
            ctx.respond("That prediction is gone.")
            return
        approver = is_approver(dataset, event.user_id, ctx.chat, ctx.services.settings.admins)
        if prediction.status in ("confirmed", "corrected"):
            final = prediction.corrected_label or prediction.label
            if approver and self._approve_pending(ctx, event, prediction, dataset, label):
                final = label or final
                ctx.respond(f"Approved *{final}* by <@{event.user_id}>: it's training data now.",
                            replace_original=True)  # fmt: skip
                return
            ctx.respond(f"Already recorded as *{final}*.", replace_original=True)
            return
        if label is not None and label not in dataset.labels:
            ctx.respond(f"`{label}` is not one of the labels.")
            return
        corrected = label is not None and label != prediction.label
        final = label or prediction.label
        prediction.status = "corrected" if corrected else "confirmed"
        prediction.corrected_label = final if corrected else None
        prediction.resolved_by, prediction.resolved_at = event.user_id, utcnow()
        outcome = None
        if prediction.text:
            outcome = gate(ctx).add(
                dataset, text=prediction.text, source="correction", actor=event.user_id,
                approved=approver, workspace=event.team_id or "", channel=prediction.channel_id,
                ts=prediction.message_ts, author=prediction.author_id, label=final,
            )  # fmt: skip
            if outcome.status == "pending":
                ctx.publish("example.pending", {"example_id": outcome.example_id})
        verb = f"Corrected to *{final}*" if corrected else f"Confirmed *{final}*"
        if outcome is not None and outcome.status == "pending":
            note = f"Thanks: an approver of `{dataset.name}` checks it before it's training data."
        elif outcome is not None and outcome.status == "refused":
            note = f"Not training data: {outcome.reason}."
        else:
            note = "Thanks, it's training data now."
        ctx.respond(f"{verb} by <@{event.user_id}>. {note}", replace_original=True)

    @staticmethod
    def _approve_pending(
        ctx: Context, event: ActionEvent, prediction: Prediction, dataset: Dataset,
        label: str | None,
    ) -> bool:  # fmt: skip
        """An approver pressing a label on a ticket someone else labelled: approve it."""
        if not prediction.text or not prediction.channel_id or not prediction.message_ts:
            return False
        g = gate(ctx)
        example = g.example_for(dataset, prediction.channel_id, prediction.message_ts)
        if example is None or example.status != "pending":
            return False
        final = label or prediction.corrected_label or prediction.label
        g.approve(example, event.user_id, "correction", "label", final)
        return True

    @on_action("classify_confirm")
    def confirm(self, event: ActionEvent, ctx: Context) -> None:
        self._resolve(ctx, event, event.value, None)

    @on_action("classify_pick")
    def pick(self, event: ActionEvent, ctx: Context) -> None:
        prediction_id, _, label = event.value.partition(":")
        self._resolve(ctx, event, prediction_id, label)
