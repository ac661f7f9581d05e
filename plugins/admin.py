"""``/brandbot datasets``: datasets managed from Slack, with every field the CLI has."""

from __future__ import annotations

import shlex
from typing import Any

from bot.cron import next_fire
from bot.dataset_stats import dataset_stats
from bot.datasets import DatasetError, check_consistency, parse_fields, parse_spec
from bot.durable import dead_jobs
from bot.event_spool import spooled
from bot.outbox import dead_letters
from bot.plugin import CommandEvent, Context, InternalEvent, Plugin, command, on_event, require
from bot.production_signals import production_signals
from bot.registry import serving_problem
from bot.reply_prompts import is_reply_dataset, reply_mode
from bot.storage.repositories import Adapters, DatasetExists, Datasets, Runs, UnknownDataset

LIST_FIELDS = {
    "channels", "approve_emoji", "reject_emoji", "labels", "approvers", "approver_groups",
    "banned_words", "required_words", "ticket_channels",
}  # fmt: skip
INT_FIELDS = {"max_length", "min_new_examples"}
USAGE = (
    "`/brandbot datasets` lists them; `/brandbot datasets NAME` shows one; admins: "
    "`/brandbot datasets create NAME draft|classify` and "
    "`/brandbot datasets update NAME field=value ...` (lists comma-separated, "
    "label_emoji=emoji:label,..., reply_channel_modes=channel:mode,..., quote values with "
    'spaces: system_prompt="Be kind.")'
)


def parse_assignments(words: list[str]) -> dict[str, Any]:
    """``["labels=a,b", "max_length=280"]`` -> typed field values; raises DatasetError."""
    raw: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise DatasetError(f"expected field=value, got {word!r}")
        if key in LIST_FIELDS:
            raw[key] = [v.strip() for v in value.split(",") if v.strip()]
        elif key in INT_FIELDS:
            if not value.strip().isdigit():
                raise DatasetError(f"{key}: expected a number, got {value!r}")
            raw[key] = int(value)
        elif key in ("label_emoji", "reply_channel_modes"):
            pairs = [p.split(":") if ":" in p else p.split("=") for p in value.split(",") if p]
            if any(len(p) != 2 for p in pairs):
                shape = "emoji:label" if key == "label_emoji" else "channel:mode"
                raise DatasetError(f"{key}: expected {shape} pairs")
            raw[key] = {e.strip(): v.strip() for e, v in pairs}
        elif key == "schedule":
            raw["schedule_cron"] = value
        elif key == "timezone":
            raw["schedule_timezone"] = value
        else:
            raw[key] = value
    return raw


class AdminPlugin(Plugin):
    """Dataset administration in Slack."""

    @command("/brandbot status")
    @require(admins=True)
    def status(self, event: CommandEvent, ctx: Context) -> None:
        """Datasets, active adapters and metrics, last and next training, server, dead letters."""
        lines = ["*brandbot status*"]
        inference = ctx.services.inference
        if inference is None:
            server = "not configured"
        else:
            problem = serving_problem(ctx.session, inference)
            server = "ready" if problem is None else f"NOT READY ({problem})"
        lines.append(f"model server: {server}")
        kept, gave_up = spooled(ctx.services.settings.data_dir)
        dead = dead_letters(ctx.session) + dead_jobs(ctx.session) + gave_up
        lines.append(
            f"dead letters: {dead} (events or jobs given up on; see the logs)"
            if dead
            else "dead letters: none"
        )
        if kept:
            lines.append(f"events kept while the database was unreachable: {kept} (replaying)")
        for dataset in Datasets(ctx.session).list():
            adapter = Adapters(ctx.session).active(dataset.id)
            run = Runs(ctx.session).latest(dataset.id)
            nxt = next_fire(dataset.schedule_cron, dataset.schedule_timezone)
            metrics = ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in (adapter.metrics if adapter else {}).items()
                if not isinstance(v, dict | list)
            )
            adapter_txt = (
                f"`{adapter.name}` ({metrics or 'no metrics'})" if adapter else "base model"
            )
            run_txt = f"{run.status} {run.created_at:%Y-%m-%d %H:%M}" if run else "never"
            signals = production_signals(ctx.session, dataset)
            next_txt = f"{nxt:%a %d %b %H:%M %Z}" if nxt else "not scheduled"
            lines.append(
                f"• `{dataset.name}` ({dataset.task}): {adapter_txt}; last run {run_txt}; "
                f"next {next_txt}"
            )
            if dataset.task == "draft" and signals["drafts_posted"]:
                lines.append(f"   drafts posted {signals['drafts_posted']}, revision rate "
                             f"{signals['draft_revision_rate']}")  # fmt: skip
            if dataset.task == "classify" and signals["predictions_resolved"]:
                lines.append(f"   label correction rate {signals['label_correction_rate']}")
        ctx.respond("\n".join(lines))

    @command("/brandbot rollback")
    @require(admins=True)
    def rollback(self, event: CommandEvent, ctx: Context) -> None:
        """Go back to the previous adapter: `/brandbot rollback DATASET [ADAPTER]`."""
        from bot.registry import roll_back

        words = event.text.split()
        if not words:
            ctx.respond("Usage: `/brandbot rollback DATASET [ADAPTER]`")
            return
        try:
            dataset = Datasets(ctx.session).get(words[0])
        except UnknownDataset as exc:
            ctx.respond(str(exc))
            return
        if ctx.services.inference is None:
            ctx.respond("No model server is configured.")
            return
        result = roll_back(
            ctx.session, dataset, to=words[1] if len(words) > 1 else None, actor=event.user_id
        )
        ctx.respond(("Rolled back: " if result.ok else "Not rolled back: ") + result.reason + ".")

    @on_event("adapter.promoted")
    @on_event("adapter.rolled_back")
    def follow_registry(self, event: InternalEvent, ctx: Context) -> None:
        """The model server follows the registry (:mod:`bot.reconciler`); an unreachable
        server fails the delivery, so it is retried."""
        from bot.reconciler import reconcile

        if ctx.services.inference is None:
            return
        with ctx.services.db.session() as session:  # what the registry says now
            reconcile(session, ctx.services.settings, ctx.services.inference)

    @command("/brandbot retrain")
    @require(admins=True)
    def retrain(self, event: CommandEvent, ctx: Context) -> None:
        """Queue a training run now: `/brandbot retrain DATASET`."""
        name = event.text.strip()
        if not name:
            ctx.respond("Usage: `/brandbot retrain DATASET`")
            return
        try:
            dataset = Datasets(ctx.session).get(name)
        except UnknownDataset as exc:
            ctx.respond(str(exc))
            return
        run = Runs(ctx.session).enqueue(dataset, trigger="manual", requested_by=event.user_id)
        assert run is not None
        ctx.respond(f"Queued training run {run.id} for `{dataset.name}`; the report will be posted "
                    "when it finishes.")  # fmt: skip

    @command("/brandbot datasets")
    def datasets(self, event: CommandEvent, ctx: Context) -> None:
        """List datasets, show one (`/brandbot datasets NAME`), or create and update them."""
        try:
            words = shlex.split(event.text)
        except ValueError as exc:
            ctx.respond(f"I couldn't read that: {exc}. {USAGE}")
            return
        repo = Datasets(ctx.session)
        try:
            if not words:
                self._list(ctx, repo)
            elif words[0] in ("create", "update"):
                if event.user_id not in ctx.services.settings.admins:
                    ctx.respond("Sorry, only admins may change datasets.")
                    return
                if words[0] == "create":
                    self._create(ctx, repo, words[1:])
                else:
                    self._update(ctx, repo, words[1:])
            else:
                self._show(ctx, repo, words[0])
        except (DatasetError, UnknownDataset, DatasetExists) as exc:
            ctx.respond(f"{exc}")

    def _list(self, ctx: Context, repo: Datasets) -> None:
        lines = ["*Datasets*"]
        for dataset in repo.list():
            stats = dataset_stats(ctx.session, dataset)
            lines.append(
                f"• `{dataset.name}` ({dataset.task}): {stats['by_status'].get('active', 0)} "
                f"examples, {stats['new_since_last_training']} new since the last training"
            )
        if len(lines) == 1:
            lines.append("none yet. " + USAGE)
        ctx.respond("\n".join(lines))

    def _show(self, ctx: Context, repo: Datasets, name: str) -> None:
        dataset = repo.get(name)
        s = dataset_stats(ctx.session, dataset)
        split = s["by_split"]
        where = ", ".join(f"<#{c}>" for c in dataset.channels)
        if is_reply_dataset(dataset):
            modes = ", ".join(f"<#{c}> ({reply_mode(dataset, c)})" for c in dataset.ticket_channels)
            where = (where + "; " if where else "") + f"replies to tickets in {modes}"
        lines = [
            f"*{dataset.name}* ({dataset.task}): {where or 'no channels yet'}",
            f"examples: {s['by_status'].get('active', 0)} active "
            f"({split.get('train', 0)} train, {split.get('heldout', 0)} held out), "
            f"{s['by_status'].get('withdrawn', 0)} withdrawn; "
            f"{s['new_since_last_training']} new since the last training",
            "by source: "
            + (", ".join(f"{k} {v}" for k, v in sorted(s["by_source"].items())) or "-"),
        ]
        if dataset.task == "classify":
            lines.append(
                "by label: "
                + (", ".join(f"{k} {v}" for k, v in sorted(s["by_label"].items())) or "-")
                + f" (balance {s['label_balance']})"
            )
            if s["missing_labels"]:
                lines.append("no examples yet: " + ", ".join(s["missing_labels"]))
        if s["top_approvers"]:
            lines.append(
                "top approvers: "
                + ", ".join(f"<@{a['user']}> {a['approvals']}" for a in s["top_approvers"])
            )
        ctx.respond("\n".join(lines))

    def _create(self, ctx: Context, repo: Datasets, words: list[str]) -> None:
        if len(words) < 2:
            ctx.respond(USAGE)
            return
        spec = parse_spec({"name": words[0], "task": words[1], **parse_assignments(words[2:])})
        repo.create(**spec.model_dump(exclude_none=True))
        ctx.respond(f"Created dataset `{spec.name}` ({spec.task}).")

    def _update(self, ctx: Context, repo: Datasets, words: list[str]) -> None:
        if len(words) < 2:
            ctx.respond(USAGE)
            return
        dataset = repo.get(words[0])
        fields = parse_fields(parse_assignments(words[1:])).model_dump(exclude_none=True)
        check_consistency(
            dataset.task,
            fields.get("labels", dataset.labels),
            fields.get("label_emoji", dataset.label_emoji),
            ticket_channels=fields.get("ticket_channels", dataset.ticket_channels),
            reply_mode=fields.get("reply_mode", dataset.reply_mode),
            reply_channel_modes=fields.get("reply_channel_modes", dataset.reply_channel_modes),
        )
        repo.update(dataset, **fields)
        ctx.respond(f"Updated `{dataset.name}`: {', '.join(sorted(fields))}.")
