"""Collect: approved messages and tagged tickets become clean, audited training examples.

Reactions by a dataset's approvers in its channels add examples (approve emoji), negative
examples (reject emoji) or labelled tickets (label emoji); removing the last one, deleting the
message or editing it updates the example. People can opt out, and admins can erase a person.
In a reply dataset's ticket channels, an approved answer in a ticket's thread becomes a
(ticket -> answer) example whose prompt is built as the replies plugin asks (bot.reply_prompts).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from bot.access import is_approver, may_read
from bot.briefs import write_brief
from bot.collection import ApproveRequest, Collector
from bot.dataset_stats import summary_line
from bot.gate import scrubber_from
from bot.plugin import (
    ActionEvent,
    ChatMessage,
    CommandEvent,
    Context,
    InternalEvent,
    MemberJoinedEvent,
    MessageChangedEvent,
    MessageDeletedEvent,
    Plugin,
    ReactionEvent,
    command,
    on_action,
    on_event,
    on_member_joined,
    on_message_changed,
    on_message_deleted,
    on_reaction,
    require,
    schedule,
)
from bot.privacy import forget_user, purge_ticket_text
from bot.reply_prompts import reply_mode, reply_prompt
from bot.review import ask_approvers, decide
from bot.storage.models import (
    ChannelNotice,
    Dataset,
    Draft,
    Example,
    OptOut,
    Prediction,
    utcnow,
)
from bot.storage.repositories import Audit

log = logging.getLogger("brandbot.collect")
DRAFT_BRIEFS = select(Draft.channel_id, Draft.message_ts, Draft.brief).where(
    Draft.channel_id.in_(bindparam("channels", expanding=True)),
    Draft.message_ts.in_(bindparam("stamps", expanding=True)),
)  # built once: the batch path runs it for every batch of reactions
LINK = re.compile(r"archives/([CGD][A-Z0-9]+)/p(\d{10})(\d{6})")
NOTICE = (
    "Hi, I'm brandbot. In this channel I learn from messages that approvers mark with "
    "{emoji}: their text (with emails, phone numbers, card numbers and tokens removed) becomes "
    "training data for the team's writing model. Nothing else is collected. To keep your "
    "messages out, run `/brandbot optout`; admins can erase a person's data on request."
)


class CollectSettings(BaseModel):
    """``[plugins.collect]`` in brandbot.toml."""

    collect_bot_messages: bool = False
    keep_pii: list[Literal["email", "phone", "card", "iban", "slack_token", "api_key",
                           "url_credentials"]] = []  # fmt: skip
    extra_pii_patterns: dict[str, str] = {}
    ticket_retention_days: int | None = Field(default=365, ge=1)
    notify: Literal["ephemeral", "thread"] = "ephemeral"
    write_briefs: bool = Field(
        default=True,
        description="Ask the base model (a queued job) for a one-line brief when an approved "
        "post has none; off leaves briefs to people (/brandbot brief).",
    )


class CollectPlugin(Plugin):
    """Turns reactions into training examples."""

    Settings = CollectSettings

    @property
    def cfg(self) -> CollectSettings:
        assert isinstance(self.settings, CollectSettings)
        return self.settings

    def setup(self) -> None:
        self.scrubber = scrubber_from(self.cfg.model_dump())

    def collector(self, ctx: Context) -> Collector:
        return Collector(ctx.session, scrubber=self.scrubber)

    # ---- reactions ----------------------------------------------------------------------

    def _is_approver(
        self, ctx: Context, dataset: Dataset, user: str, groups: dict[str, set[str]] | None = None
    ) -> bool:
        """``groups`` caches user group members across the events of one batch."""
        return is_approver(dataset, user, ctx.chat, ctx.services.settings.admins, groups)

    @staticmethod
    def _role(dataset: Dataset, emoji: str, channel: str) -> tuple[str, str | None] | None:
        if dataset.task == "classify" and emoji in dataset.label_emoji:
            return "label", dataset.label_emoji[emoji]
        if channel not in dataset.channels and reply_mode(dataset, channel) == "off":
            return None
        if emoji in dataset.approve_emoji and dataset.task == "draft":
            return "approve", None
        if emoji in dataset.reject_emoji:
            return "reject", None
        return None

    def _send(self, notices: list[tuple[ReactionEvent, str]]) -> None:
        """Tell approvers what their reactions did: in the message's thread or privately. Runs
        right after the commit (``after_commit``), so nobody hears "Added" of a batch that
        rolled back, and a notice Slack refuses loses no example."""
        chat = self.services.chat
        for event, text in notices:
            if self.cfg.notify == "thread":
                chat.post(event.channel_id or "", text, thread_ts=event.message_ts)
            else:
                chat.ephemeral(event.channel_id or "", event.user_id, text)

    @on_reaction(batch=True)
    def reaction_added(self, events: list[ReactionEvent], ctx: Context) -> None:
        """React with a dataset's approve emoji (or a label emoji on a ticket) to add it.

        Reactions that arrive together are handled together: their messages are fetched
        concurrently, the database is asked a few questions for all of them, and an approver
        who approved several messages at once gets one summary per dataset (in ``thread`` mode,
        one per message)."""
        notices: list[tuple[ReactionEvent, str]] = []
        self._collect(events, ctx, notices)
        if notices:
            ctx.after_commit(self._send, notices)

    def _collect(
        self, events: list[ReactionEvent], ctx: Context, notices: list[tuple[ReactionEvent, str]]
    ) -> None:
        collector = self.collector(ctx)
        wanted = self._allowed(ctx, events, collector.datasets(), notices)
        if not wanted:
            return
        refs = [(event.channel_id or "", event.message_ts) for event, _ in wanted]
        messages = ctx.chat.fetch_messages(refs)
        people = [p for (e, _), m in zip(wanted, messages, strict=True)
                  for p in (e.user_id, m.user_id if m else None,
                            m.parent.user_id if m and m.parent else None)]  # fmt: skip
        opted_out = collector.opted_out_among(*people)
        briefs = self._draft_briefs(ctx, refs)
        known = self._known(ctx, refs)
        requests: list[tuple[ReactionEvent, ApproveRequest]] = []
        for (event, allowed), message in zip(wanted, messages, strict=True):
            problem = self._unusable(event, message, opted_out, known)
            if problem or message is None:
                notices.append((event, problem))
                continue
            channel = event.channel_id or ""
            draft_brief = briefs.get((channel, event.message_ts))
            for dataset, kind, label in allowed:
                prompt, source = draft_brief, "draft" if draft_brief else None
                subject = None
                if channel not in dataset.channels:  # a reply dataset, in a ticket channel
                    if message.parent is None:
                        hint = "react to a reply in the ticket's thread"
                        notices.append(
                            (
                                event,
                                f"In a ticket channel, {dataset.name} learns from answers: {hint}.",
                            )
                        )
                        continue
                    label_ = self._ticket_label(ctx, message.parent)
                    prompt, source = reply_prompt(message.parent.text, label_), "ticket"
                    subject = message.parent.user_id
                    if subject in opted_out:
                        notices.append((event, "The ticket's author opted out of collection, "
                                               "so nothing was added."))  # fmt: skip
                        continue
                request = ApproveRequest(
                    dataset, message, approver=event.user_id, emoji=event.reaction, kind=kind,
                    workspace=event.team_id or "", label=label, prompt=prompt,
                    prompt_source=source, subject=subject,
                )  # fmt: skip
                requests.append((event, request))
        outcomes = collector.approve_many([request for _, request in requests])
        summaries: dict[int, str] = {}
        told: set[tuple[str, str, int]] = set()
        for (event, request), outcome in zip(requests, outcomes, strict=True):
            dataset = request.dataset
            if outcome.status == "refused" or outcome.status == "duplicate":
                notices.append((event, f"Not added to {dataset.name}: {outcome.reason}."))
            elif outcome.status in ("added", "reactivated"):
                if outcome.status == "reactivated":  # pending (or withdrawn) until this ✅
                    decided = {"example_id": outcome.example_id, "by": event.user_id}
                    ctx.publish("example.decided", decided | {"approved": True})
                if outcome.needs_brief and self.cfg.write_briefs:
                    ctx.publish("example.needs_brief", {"example_id": outcome.example_id})
                once = (event.channel_id or "", event.user_id, dataset.id)
                if self.cfg.notify == "ephemeral" and once in told:
                    continue
                told.add(once)
                if dataset.id not in summaries:
                    summaries[dataset.id] = summary_line(collector.session, dataset)
                notices.append((event, summaries[dataset.id]))

    def _allowed(
        self,
        ctx: Context,
        events: list[ReactionEvent],
        datasets: list[Dataset],
        notices: list[tuple[ReactionEvent, str]],
    ) -> list[tuple[ReactionEvent, list[tuple[Dataset, str, str | None]]]]:
        """The events that mean something to a dataset and come from its approvers, each with
        (dataset, role, label) per dataset; the others are dropped, with a word to those who
        reacted with a dataset's emoji but may not approve."""
        groups: dict[str, set[str]] = {}
        wanted = []
        for event in events:
            channel = event.channel_id or ""
            matches = []
            for dataset in Collector.in_channel(datasets, channel):
                role = self._role(dataset, event.reaction, channel)
                if role is not None:
                    matches.append((dataset, *role))
            if not matches:
                continue
            allowed = [m for m in matches if self._is_approver(ctx, m[0], event.user_id, groups)]
            if not allowed:
                names = ", ".join(m[0].name for m in matches)
                notices.append(
                    (event, f"Only the approvers of {names} can add examples with that.")
                )
                continue
            wanted.append((event, allowed))
        return wanted

    def _unusable(
        self,
        event: ReactionEvent,
        message: ChatMessage | None,
        opted_out: set[str],
        known: set[tuple[str, str]],
    ) -> str:
        """Why a reacted-to message cannot become an example ("" when it can). A message that
        already is one (a draft or reply the bot posted for someone) can always be approved."""
        if event.user_id in opted_out:
            return "You opted out, so your reactions are not collected."
        if message is None:
            return ("I can't read that message (is it deleted, or am I not in this channel?), "
                    "so nothing was added.")  # fmt: skip
        if message.user_id in opted_out:
            return "Its author opted out of collection, so nothing was added."
        if (message.channel_id, message.ts) in known:
            return ""
        if message.bot_id and not self.cfg.collect_bot_messages:
            return "Bot messages are not collected."
        if not message.text.strip() and message.has_files:
            return "A message with only files has no text to learn from."
        return ""

    @staticmethod
    def _ticket_label(ctx: Context, ticket: ChatMessage) -> str | None:
        """The ticket's label as people confirmed or corrected it, else as predicted."""
        prediction = ctx.session.scalars(
            select(Prediction).where(
                Prediction.channel_id == ticket.channel_id,
                Prediction.message_ts == ticket.ts,
                Prediction.status != "queued",
            )
        ).first()
        if prediction is None:
            return None
        return prediction.corrected_label or prediction.label or None

    @staticmethod
    def _known(ctx: Context, refs: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Those of these (channel, ts) that already are examples, in one query."""
        rows = ctx.session.execute(
            select(Example.channel_id, Example.message_ts).where(
                Example.channel_id.in_({c for c, _ in refs}),
                Example.message_ts.in_({ts for _, ts in refs}),
            )
        )
        return {(c or "", ts or "") for c, ts in rows} & set(refs)

    @staticmethod
    def _draft_briefs(ctx: Context, refs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The /draft briefs of the posts among these (channel, ts), in one query."""
        rows = ctx.session.connection().execute(DRAFT_BRIEFS, {
            "channels": list({c for c, _ in refs}), "stamps": list({ts for _, ts in refs}),
        })  # fmt: skip
        wanted = set(refs)
        return {(c or "", ts or ""): brief for c, ts, brief in rows if (c, ts) in wanted and brief}

    @on_reaction(removed=True)
    def reaction_removed(self, event: ReactionEvent, ctx: Context) -> None:
        """Only the approver whose approval was the last one, or an admin, withdraws."""
        channel = event.channel_id or ""
        collector = self.collector(ctx)
        is_admin = event.user_id in ctx.services.settings.admins
        for dataset in collector.datasets_for_channel(channel):
            if self._role(dataset, event.reaction, channel) is not None:
                collector.unapprove(
                    dataset, channel, event.message_ts, event.user_id, event.reaction,
                    is_admin=is_admin,
                )  # fmt: skip

    @on_message_changed()
    def message_changed(self, event: MessageChangedEvent, ctx: Context) -> None:
        """An approver's edit applies; anyone else's makes the example pending."""
        editor = event.user_id or ""
        outcomes = self.collector(ctx).message_changed(
            event.channel_id or "", event.ts, event.text, editor or None,
            approver_of=lambda dataset: self._is_approver(ctx, dataset, editor),
        )  # fmt: skip
        for outcome in outcomes:
            if outcome.status == "pending":
                ctx.publish("example.pending", {"example_id": outcome.example_id})

    @on_message_deleted()
    def message_deleted(self, event: MessageDeletedEvent, ctx: Context) -> None:
        Collector(ctx.session).message_deleted(event.channel_id or "", event.ts, event.user_id)

    # ---- consent --------------------------------------------------------------------------

    @on_member_joined()
    def joined(self, event: MemberJoinedEvent, ctx: Context) -> None:
        channel = event.channel_id or ""
        if event.user_id != ctx.chat.bot_user_id():
            return
        datasets = Collector(ctx.session).datasets_for_channel(channel)
        if not datasets:
            return
        dialect = ctx.session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        inserted = ctx.session.execute(
            insert(ChannelNotice)
            .values(channel_id=channel, posted_at=utcnow())
            .on_conflict_do_nothing()
            .returning(ChannelNotice.channel_id)
        ).scalar()
        if inserted is None:
            return
        emoji = sorted({e for d in datasets for e in [*d.approve_emoji, *d.label_emoji]})
        ts = ctx.chat.post(channel, NOTICE.format(emoji=" ".join(f":{e}:" for e in emoji)))
        notice = ctx.session.get(ChannelNotice, channel)
        if notice is not None:
            notice.message_ts = ts

    @command("/brandbot optout")
    def optout(self, event: CommandEvent, ctx: Context) -> None:
        """Stop collecting your messages and reactions (`/brandbot optin` undoes it)."""
        if ctx.session.get(OptOut, event.user_id) is None:
            ctx.session.add(OptOut(user_id=event.user_id))
            Audit(ctx.session).record("user.optout", actor=event.user_id)
        ctx.respond("Done: your messages and reactions will not be collected from now on. "
                    "Ask an admin to erase what was collected before.")  # fmt: skip

    @command("/brandbot optin")
    def optin(self, event: CommandEvent, ctx: Context) -> None:
        """Allow collecting your messages again."""
        row = ctx.session.get(OptOut, event.user_id)
        if row is not None:
            ctx.session.delete(row)
            Audit(ctx.session).record("user.optin", actor=event.user_id)
        ctx.respond("Done: your approved messages can be collected again.")

    @command("/brandbot forget")
    @require(admins=True)
    def forget(self, event: CommandEvent, ctx: Context) -> None:
        """Erase a person's examples, drafts and ticket text: `/brandbot forget @user`."""
        match = re.search(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>|\b([UW][A-Z0-9]{2,})\b", event.text)
        if not match:
            ctx.respond("Usage: `/brandbot forget @person`")
            return
        user = match.group(1) or match.group(2)
        settings = ctx.services.settings
        counts = forget_user(ctx.session, user, event.user_id, runs_dir=settings.runs_dir,
                             adapters_dir=settings.adapters_dir)  # fmt: skip
        ctx.after_commit(  # "Erased" must not be said of an erasure that rolled back
            ctx.respond,
            f"Erased <@{user}>: {counts['examples']} examples, {counts['drafts']} drafts, "
            f"{counts['predictions'] + counts['suggestions']} ticket texts; "
            f"{counts['adapters_retired']} adapters taken out of service and retraining "
            "queued. They are opted out from now on.",
        )

    # ---- labels and briefs -------------------------------------------------------------

    @command("/brandbot label")
    def label(self, event: CommandEvent, ctx: Context) -> None:
        """Label a ticket: `/brandbot label <message link> <label>`."""
        match = LINK.search(event.text)
        parts = event.text.split()
        if not match or len(parts) < 2:
            ctx.respond("Usage: `/brandbot label <message link> <label>`")
            return
        channel, ts = match.group(1), f"{match.group(2)}.{match.group(3)}"
        wanted = parts[-1]
        collector = self.collector(ctx)
        datasets = [
            d for d in collector.datasets_for_channel(channel)
            if d.task == "classify" and wanted in d.labels
        ]  # fmt: skip
        if not datasets:
            known = sorted({lbl for d in collector.datasets_for_channel(channel)
                            for lbl in d.labels})  # fmt: skip
            ctx.respond(f"`{wanted}` is not a label here. Labels: {', '.join(known) or 'none'}.")
            return
        if not any(self._is_approver(ctx, d, event.user_id) for d in datasets):
            ctx.respond("Only approvers can label tickets.")
            return
        message = ctx.chat.fetch_message(channel, ts)
        if message is None:
            ctx.respond("I can't read that message, so nothing was labelled.")
            return
        for dataset in datasets:
            outcome = collector.approve_reaction(
                dataset, message, approver=event.user_id, emoji=f"label:{wanted}",
                kind="label", workspace=event.team_id or "", label=wanted,
            )  # fmt: skip
            if outcome.status == "refused":
                ctx.respond(f"Not added to {dataset.name}: {outcome.reason}.")
            else:
                ctx.respond(f"Labelled `{wanted}`. {summary_line(collector.session, dataset)}")

    @command("/brandbot brief")
    def brief(self, event: CommandEvent, ctx: Context) -> None:
        """Show or change an example's brief: `/brandbot brief ID [new brief]`."""
        parts = event.text.split(maxsplit=1)
        if not parts or not parts[0].isdigit():
            ctx.respond("Usage: `/brandbot brief EXAMPLE_ID [new brief]`")
            return
        example = ctx.session.get(Example, int(parts[0]))
        dataset = ctx.session.get(Dataset, example.dataset_id) if example else None
        if example is None or dataset is None or example.task != "draft":
            ctx.respond(f"There is no copy example {parts[0]}.")
            return
        if not may_read(dataset, event.user_id, ctx.chat, ctx.services.settings.admins):
            ctx.respond(f"Example {example.id} belongs to `{dataset.name}`: only its approvers "
                        "and the members of its channels can see it.")  # fmt: skip
            return
        if len(parts) == 1:
            ctx.respond(f"Brief of example {example.id}: {example.prompt or '(none yet)'}")
            return
        if not self._is_approver(ctx, dataset, event.user_id):
            ctx.respond("Only approvers can change briefs.")
            return
        if self.collector(ctx).set_prompt(example, parts[1], event.user_id) is None:
            ctx.respond("The brief is empty.")
            return
        ctx.respond(f"Brief of example {example.id} is now: {example.prompt}")

    @on_event("example.needs_brief")
    def needs_brief(self, event: InternalEvent, ctx: Context) -> None:
        """Queue a one-line brief written by the base model (never inside the event handler)."""
        example_id = int(event.payload["example_id"])
        if ctx.services.inference is None:
            log.debug("no inference client: example %s keeps no brief for now", example_id)
            return
        ctx.submit_after_commit(write_brief, ctx.services, example_id, name="collect.write_brief")

    # ---- pending examples -------------------------------------------------------------

    @on_event("example.pending")
    def pending(self, event: InternalEvent, ctx: Context) -> None:
        """Ask the dataset's approvers, privately, to approve or reject a contribution."""
        ask_approvers(ctx, int(event.payload["example_id"]))

    @on_action("example_approve")
    def approve_pending(self, event: ActionEvent, ctx: Context) -> None:
        decide(ctx, self.collector(ctx), event, approve=True)

    @on_action("example_reject")
    def reject_pending(self, event: ActionEvent, ctx: Context) -> None:
        decide(ctx, self.collector(ctx), event, approve=False)

    # ---- retention ----------------------------------------------------------------------

    @schedule("17 3 * * *")
    def retention(self, event: InternalEvent, ctx: Context) -> None:
        days = self.cfg.ticket_retention_days
        if days:
            purge_ticket_text(ctx.session, utcnow() - dt.timedelta(days=days))
