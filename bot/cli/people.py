"""``brandbot forget`` and ``brandbot examples``: erasure, and looking at and editing briefs."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table
from sqlalchemy import select

from bot.access import valid_user_id
from bot.cli.common import (
    CliError,
    DatasetOption,
    JsonOption,
    console,
    database,
    print_json,
    settings,
)
from bot.gate import Gate, scrubber_for_settings
from bot.privacy import Forgotten, forget_user
from bot.storage.models import Example
from bot.storage.repositories import Datasets

examples_app = typer.Typer(help="Look at examples and edit their briefs.", no_args_is_help=True)


def forget(
    user: str = typer.Option(..., "--user", help="The Slack user id to erase, e.g. U0123ABCD."),
    as_json: bool = JsonOption,
) -> None:
    """Erase a person: everything they wrote and everything about them (reply examples built
    on their tickets, predictions, suggestions, drafts and briefs). They are opted out so
    nothing new is collected; adapters trained on their data are taken out of service (the
    dataset rolls back to one that was not, else the base model), retraining is queued and
    those runs' checkpoints are deleted."""
    user = user.strip()
    if not valid_user_id(user):
        raise CliError(f"{user!r} is not a Slack user id (like U0123ABCD); nothing was erased")
    config = settings()
    with database().session() as session:
        counts = forget_user(session, user, actor="cli", runs_dir=config.runs_dir,
                             adapters_dir=config.adapters_dir)  # fmt: skip
    detail = counts.pop("detail")
    assert isinstance(detail, Forgotten)
    if as_json:
        print_json({"user": user, **counts, "adapters": detail.adapters,
                    "now_serving": detail.now_serving, "deleted": detail.removed_paths,
                    "queued_runs": detail.runs_queued})  # fmt: skip
        return
    console.print(
        f"erased {user}: {counts['examples']} examples, {counts['drafts']} drafts, "
        f"{counts['predictions']} predictions, {counts['suggestions']} suggestions, "
        f"{counts['approvals']} approvals; opted out from now on", highlight=False,
    )  # fmt: skip
    for name in detail.adapters:
        console.print(f"  adapter {name} taken out of service", highlight=False)
    for dataset, now in detail.now_serving.items():
        console.print(f"  {dataset} now uses {'the base model' if now == 'base' else now}",
                      highlight=False)  # fmt: skip
    for path in detail.removed_paths:
        console.print(f"  deleted {path}", highlight=False)
    for run_id in detail.runs_queued:
        console.print(f"  queued training run {run_id}", highlight=False)


@examples_app.command("list")
def list_examples(
    dataset: str = DatasetOption,
    status: str = typer.Option(
        "active", "--status", help="active, pending (waiting for an approver), withdrawn or all."
    ),
    limit: int = typer.Option(50, "--limit", min=1),
    as_json: bool = JsonOption,
) -> None:
    """List a dataset's examples with their briefs, splits and sources."""
    with database().session() as session:
        ds = Datasets(session).get(dataset)
        stmt = select(Example).where(Example.dataset_id == ds.id).order_by(Example.id.desc())
        if status != "all":
            stmt = stmt.where(Example.status == status)
        rows: list[dict[str, Any]] = [
            {
                "id": e.id, "split": e.split, "status": e.status, "kind": e.kind,
                "source": e.source, "brief": e.prompt, "brief_source": e.prompt_source,
                "label": e.label, "text": e.text, "author": e.author_id, "approver": e.approver_id,
            }
            for e in session.scalars(stmt.limit(limit))
        ]  # fmt: skip
    if as_json:
        print_json({"dataset": dataset, "examples": rows})
        return
    table = Table("id", "split", "kind", "source", "brief", "text / label")
    for r in rows:
        table.add_row(
            str(r["id"]), r["split"], r["kind"], r["source"], (r["brief"] or "-")[:60],
            (r["label"] or r["text"])[:80],
        )  # fmt: skip
    console.print(table)


@examples_app.command("brief")
def set_brief(
    example_id: int = typer.Argument(..., help="The example's id (see `examples list`)."),
    brief: str = typer.Argument(..., help="The new brief."),
) -> None:
    """Change the brief (prompt) of a copy example."""
    with database().session() as session:
        example = session.get(Example, example_id)
        if example is None or example.task != "draft":
            raise CliError(f"there is no copy example {example_id}")
        gate = Gate(session, scrubber=scrubber_for_settings(settings()))
        if gate.set_prompt(example, brief, "cli") is None:
            raise CliError("the brief is empty")
    console.print(f"example {example_id}: brief set")
