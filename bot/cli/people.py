"""``brandbot forget`` and ``brandbot examples``: erasure, and looking at and editing briefs."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table
from sqlalchemy import select

from bot.cli.common import CliError, DatasetOption, JsonOption, console, database, print_json
from bot.collection import forget_user
from bot.storage.models import Example
from bot.storage.repositories import Audit, Datasets
from trainer.cleaning import content_hash, normalize_text

examples_app = typer.Typer(help="Look at examples and edit their briefs.", no_args_is_help=True)


def forget(
    user: str = typer.Option(..., "--user", help="The Slack user id to erase, e.g. U0123ABCD."),
    as_json: bool = JsonOption,
) -> None:
    """Erase a person: their examples, drafts and ticket text, from the database and from
    every future training run; adapters trained on them are flagged for retraining."""
    with database().session() as session:
        counts = forget_user(session, user.strip(), actor="cli")
    if as_json:
        print_json({"user": user, **counts})
    else:
        console.print(
            f"erased {user}: {counts['examples']} examples, {counts['drafts']} drafts, "
            f"{counts['predictions'] + counts['suggestions']} ticket texts; "
            f"{counts['adapters_flagged']} adapters flagged for retraining"
        )


@examples_app.command("list")
def list_examples(
    dataset: str = DatasetOption,
    status: str = typer.Option("active", "--status", help="active, withdrawn or all."),
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
        text = normalize_text(brief)
        if not text:
            raise CliError("the brief is empty")
        example.prompt, example.prompt_source = text, "edited"
        example.content_hash = content_hash(example.task, text, example.text, example.label)
        Audit(session).record(
            "example.brief", actor="cli", dataset_id=example.dataset_id,
            example_id=example.id, content_hash=example.content_hash,
        )  # fmt: skip
    console.print(f"example {example_id}: brief set")
