"""``brandbot datasets``: create, update, list and show datasets."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from bot.cli.common import (
    JsonOption,
    console,
    database,
    parse_map,
    print_json,
    split_list,
)
from bot.dataset_stats import dataset_stats
from bot.datasets import check_consistency, check_name, parse_fields, parse_spec
from bot.storage.models import Dataset
from bot.storage.repositories import Adapters, Datasets, Examples, Runs

app = typer.Typer(
    help=(
        "Datasets: what the bot collects, from which channels, who approves, and how it trains.\n\n"
        "Example: brandbot datasets create acme_copy --task draft --channels C0123ABCD"
    ),
    no_args_is_help=True,
)

FIELDS = (
    "description",
    "channels",
    "approve_emoji",
    "reject_emoji",
    "labels",
    "label_emoji",
    "approvers",
    "approver_groups",
    "system_prompt",
    "max_length",
    "banned_words",
    "required_words",
    "ticket_channels",
    "reply_mode",
    "reply_channel_modes",
    "report_channel",
    "schedule_cron",
    "schedule_timezone",
    "min_new_examples",
)


def dataset_dict(dataset: Dataset) -> dict[str, Any]:
    data: dict[str, Any] = {"name": dataset.name, "task": dataset.task}
    data.update({field: getattr(dataset, field) for field in FIELDS})
    data["created_at"] = dataset.created_at.isoformat()
    data["updated_at"] = dataset.updated_at.isoformat()
    return data


def _field_options(
    description: str | None,
    channels: str | None,
    approve_emoji: str | None,
    reject_emoji: str | None,
    labels: str | None,
    label_emoji: str | None,
    approvers: str | None,
    approver_groups: str | None,
    system_prompt: str | None,
    max_length: int | None,
    banned_words: str | None,
    required_words: str | None,
    ticket_channels: str | None,
    reply_mode: str | None,
    reply_channel_modes: str | None,
    report_channel: str | None,
    schedule: str | None,
    timezone: str | None,
    min_new_examples: int | None,
) -> dict[str, Any]:
    raw = {
        "description": description,
        "channels": split_list(channels),
        "approve_emoji": split_list(approve_emoji),
        "reject_emoji": split_list(reject_emoji),
        "labels": split_list(labels),
        "label_emoji": parse_map(label_emoji),
        "approvers": split_list(approvers),
        "approver_groups": split_list(approver_groups),
        "system_prompt": system_prompt,
        "max_length": max_length,
        "banned_words": split_list(banned_words),
        "required_words": split_list(required_words),
        "ticket_channels": split_list(ticket_channels),
        "reply_mode": reply_mode,
        "reply_channel_modes": parse_map(reply_channel_modes, "channel=mode"),
        "report_channel": report_channel,
        "schedule_cron": schedule,
        "schedule_timezone": timezone,
        "min_new_examples": min_new_examples,
    }
    return {k: v for k, v in raw.items() if v is not None}


# Options shared by create and update; comma-separated lists, "" clears a list.
O_DESC = typer.Option(None, "--description", help="What the dataset is for.")
O_CHANNELS = typer.Option(None, "--channels", help="Channel ids to collect from: C1,C2.")
O_APPROVE = typer.Option(
    None, "--approve-emoji", help="Approve reactions (default white_check_mark)."
)
O_REJECT = typer.Option(None, "--reject-emoji", help="Reject reactions (default x).")
O_LABELS = typer.Option(None, "--labels", help="Classify only: the label set, a,b,c.")
O_LABEL_EMOJI = typer.Option(
    None, "--label-emoji", help="Classify only: emoji=label,emoji2=label2."
)
O_APPROVERS = typer.Option(None, "--approvers", help="Slack user ids allowed to approve.")
O_GROUPS = typer.Option(None, "--approver-groups", help="Slack user group ids allowed to approve.")
O_PROMPT = typer.Option(None, "--system-prompt", help="The brand system prompt.")
O_MAXLEN = typer.Option(None, "--max-length", help="Brand rule: most characters in a post.")
O_BANNED = typer.Option(None, "--banned-words", help="Brand rule: words a post must not use.")
O_REQUIRED = typer.Option(None, "--required-words", help="Brand rule: words a post must use.")
O_TICKETS = typer.Option(None, "--ticket-channels", help="Channels whose new messages are tickets.")
O_REPLY = typer.Option(
    None,
    "--reply-mode",
    help="Draft datasets with ticket channels: suggest replies to tickets, 'thread' (in the "
    "ticket's thread), 'ephemeral' (only to the agent who asks) or 'off'.",
)
O_REPLY_CHANNELS = typer.Option(
    None,
    "--reply-channel-modes",
    help="Per ticket channel reply mode, overriding --reply-mode: C1=ephemeral,C2=thread.",
)
O_REPORT = typer.Option(None, "--report-channel", help="Channel id for retraining reports.")
O_SCHEDULE = typer.Option(None, "--schedule", help="Retraining cron, e.g. '0 6 * * 1'.")
O_TZ = typer.Option(None, "--timezone", help="Time zone of the schedule, e.g. Europe/London.")
O_MIN_NEW = typer.Option(
    None, "--min-new-examples", help="New examples needed for a scheduled run."
)


@app.command("create")
def create(
    name: str = typer.Argument(..., help="Dataset name: ^[a-z][a-z0-9_]{0,31}$."),
    task: str = typer.Option(..., "--task", help="draft (brand copy) or classify (tickets)."),
    description: str | None = O_DESC,
    channels: str | None = O_CHANNELS,
    approve_emoji: str | None = O_APPROVE,
    reject_emoji: str | None = O_REJECT,
    labels: str | None = O_LABELS,
    label_emoji: str | None = O_LABEL_EMOJI,
    approvers: str | None = O_APPROVERS,
    approver_groups: str | None = O_GROUPS,
    system_prompt: str | None = O_PROMPT,
    max_length: int | None = O_MAXLEN,
    banned_words: str | None = O_BANNED,
    required_words: str | None = O_REQUIRED,
    ticket_channels: str | None = O_TICKETS,
    reply_mode: str | None = O_REPLY,
    reply_channel_modes: str | None = O_REPLY_CHANNELS,
    report_channel: str | None = O_REPORT,
    schedule: str | None = O_SCHEDULE,
    timezone: str | None = O_TZ,
    min_new_examples: int | None = O_MIN_NEW,
    as_json: bool = JsonOption,
) -> None:
    """Create a dataset.

    Example: brandbot datasets create acme_tickets --task classify --labels billing,refund
    """
    check_name(name)
    raw = _field_options(
        description, channels, approve_emoji, reject_emoji, labels, label_emoji, approvers,
        approver_groups, system_prompt, max_length, banned_words, required_words,
        ticket_channels, reply_mode, reply_channel_modes, report_channel, schedule, timezone,
        min_new_examples,
    )  # fmt: skip
    spec = parse_spec({"name": name, "task": task, **raw})
    with database().session() as session:
        dataset = Datasets(session).create(**spec.model_dump(exclude_none=True))
        data = dataset_dict(dataset)
    if as_json:
        print_json(data)
    else:
        console.print(f"created dataset [bold]{name}[/] ({task})")


@app.command("update")
def update(
    name: str = typer.Argument(..., help="The dataset to change."),
    description: str | None = O_DESC,
    channels: str | None = O_CHANNELS,
    approve_emoji: str | None = O_APPROVE,
    reject_emoji: str | None = O_REJECT,
    labels: str | None = O_LABELS,
    label_emoji: str | None = O_LABEL_EMOJI,
    approvers: str | None = O_APPROVERS,
    approver_groups: str | None = O_GROUPS,
    system_prompt: str | None = O_PROMPT,
    max_length: int | None = O_MAXLEN,
    banned_words: str | None = O_BANNED,
    required_words: str | None = O_REQUIRED,
    ticket_channels: str | None = O_TICKETS,
    reply_mode: str | None = O_REPLY,
    reply_channel_modes: str | None = O_REPLY_CHANNELS,
    report_channel: str | None = O_REPORT,
    schedule: str | None = O_SCHEDULE,
    timezone: str | None = O_TZ,
    min_new_examples: int | None = O_MIN_NEW,
    as_json: bool = JsonOption,
) -> None:
    """Change fields of a dataset; fields not given stay as they are ("" clears a list).

    Example: brandbot datasets update acme_copy --banned-words cheap,synergy --max-length 280
    """
    raw = _field_options(
        description, channels, approve_emoji, reject_emoji, labels, label_emoji, approvers,
        approver_groups, system_prompt, max_length, banned_words, required_words,
        ticket_channels, reply_mode, reply_channel_modes, report_channel, schedule, timezone,
        min_new_examples,
    )  # fmt: skip
    fields = parse_fields(raw).model_dump(exclude_none=True)
    with database().session() as session:
        repo = Datasets(session)
        dataset = repo.get(name)
        check_consistency(
            dataset.task,
            fields.get("labels", dataset.labels),
            fields.get("label_emoji", dataset.label_emoji),
            ticket_channels=fields.get("ticket_channels", dataset.ticket_channels),
            reply_mode=fields.get("reply_mode", dataset.reply_mode),
            reply_channel_modes=fields.get("reply_channel_modes", dataset.reply_channel_modes),
        )
        repo.update(dataset, **fields)
        data = dataset_dict(dataset)
    if as_json:
        print_json(data)
    else:
        changed = ", ".join(sorted(fields)) or "nothing"
        console.print(f"updated dataset [bold]{name}[/]: {changed}")


@app.command("list")
def list_datasets(as_json: bool = JsonOption) -> None:
    """List the datasets with their example counts."""
    rows = []
    with database().session() as session:
        for dataset in Datasets(session).list():
            counts = Examples(session).counts(dataset.id)
            active = Adapters(session).active(dataset.id)
            rows.append(
                {
                    "name": dataset.name,
                    "task": dataset.task,
                    "channels": dataset.channels,
                    "examples": counts["by_status"].get("active", 0),
                    "train": counts["by_split"].get("train", 0),
                    "heldout": counts["by_split"].get("heldout", 0),
                    "active_adapter": active.name if active else None,
                }
            )
    if as_json:
        print_json({"datasets": rows})
        return
    if not rows:
        console.print("no datasets yet: `brandbot datasets create NAME --task draft|classify`")
        return
    table = Table("name", "task", "channels", "examples", "train", "held out", "adapter")
    for r in rows:
        table.add_row(
            r["name"], r["task"], ",".join(r["channels"]) or "-", str(r["examples"]),
            str(r["train"]), str(r["heldout"]), r["active_adapter"] or "-",
        )  # fmt: skip
    console.print(table)


@app.command("show")
def show(
    name: str = typer.Argument(..., help="The dataset to show."),
    as_json: bool = JsonOption,
) -> None:
    """Show every field of a dataset, its example counts and its latest run."""
    with database().session() as session:
        dataset = Datasets(session).get(name)
        data = dataset_dict(dataset)
        data["counts"] = dataset_stats(session, dataset)
        active = Adapters(session).active(dataset.id)
        data["active_adapter"] = active.name if active else None
        run = Runs(session).latest(dataset.id)
        data["latest_run"] = (
            {"id": run.id, "status": run.status, "created_at": run.created_at.isoformat()}
            if run
            else None
        )
    if as_json:
        print_json(data)
        return
    table = Table(show_header=False, box=None)
    for key, value in data.items():
        if key == "counts":
            continue
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        table.add_row(f"[bold]{key}[/]", "-" if value is None else str(value))
    console.print(table)
    counts = data["counts"]
    console.print(
        f"examples: {counts['by_status'].get('active', 0)} active "
        f"({counts['by_split'].get('train', 0)} train, "
        f"{counts['by_split'].get('heldout', 0)} held out), "
        f"{counts['by_status'].get('withdrawn', 0)} withdrawn"
    )
    if counts["by_kind"].get("preference"):
        console.print(f"of which preference pairs: {counts['by_kind']['preference']}")
    console.print(f"new since the last training: {counts['new_since_last_training']}")
    if counts["by_source"]:
        console.print(
            "by source: " + ", ".join(f"{k} {v}" for k, v in sorted(counts["by_source"].items()))
        )
    if counts["by_label"]:
        console.print(
            "by label: " + ", ".join(f"{k} {v}" for k, v in sorted(counts["by_label"].items()))
            + f" (balance {counts['label_balance']})"
        )  # fmt: skip
    if counts["missing_labels"]:
        console.print("labels with no examples: " + ", ".join(counts["missing_labels"]))
    if counts["top_approvers"]:
        console.print(
            "top approvers: "
            + ", ".join(f"{a['user']} ({a['approvals']})" for a in counts["top_approvers"])
        )
