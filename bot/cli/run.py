"""``brandbot run``: the main job on the embedded default.

Today it prepares everything the bot needs (data folder, migrated database, the sample brand,
the bundled base model) and reports what is ready. It reads no terminal, so it works the same
with scripted or absent stdin.
"""

from __future__ import annotations

import typer
from rich.table import Table

from bot.cli.common import JsonOption, console, database, print_json, settings
from bot.samples import load_sample_brand
from bot.storage.db import safe_url
from bot.storage.repositories import Datasets, Examples
from serving.base_model import BaseModelMissing, find_bundled_gguf


def run(
    sample: bool = typer.Option(True, "--sample/--no-sample", help="Load the sample brand."),
    as_json: bool = JsonOption,
) -> None:
    """Set up the data folder, migrate the database, load the sample brand and report.

    Needs no Slack secrets. Example: BRANDBOT_DATA_DIR=/tmp/bb brandbot run
    """
    cfg = settings()
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    for folder in (cfg.models_dir, cfg.adapters_dir, cfg.runs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    db = database()
    loaded = load_sample_brand(db) if sample else []
    with db.session() as session:
        datasets = []
        for ds in Datasets(session).list():
            counts = Examples(session).counts(ds.id)
            datasets.append(
                {
                    "name": ds.name,
                    "task": ds.task,
                    "examples": counts["by_status"].get("active", 0),
                    "train": counts["by_split"].get("train", 0),
                    "heldout": counts["by_split"].get("heldout", 0),
                    "labels": len(ds.labels),
                }
            )
    try:
        model = {
            "ready": True,
            "source": str(find_bundled_gguf()) if not cfg.base_model else cfg.base_model,
        }
    except BaseModelMissing as exc:
        model = {"ready": False, "error": str(exc)}
    slack = "configured" if cfg.slack_bot_token else "not configured (console mode)"
    report = {
        "data_dir": str(cfg.data_dir.resolve()),
        "database": safe_url(db.url),
        "schema_revision": db.current_revision(),
        "sample_brand": [
            {"name": d.name, "created": d.created, **d.result.as_dict()} for d in loaded
        ],
        "datasets": datasets,
        "base_model": model,
        "slack": slack,
        "inference": cfg.inference_url or "in process (local engine)",
    }
    if as_json:
        print_json(report)
        return
    console.print(f"[bold]brandbot[/] data folder: {report['data_dir']}")
    console.print(f"database: {report['database']} (schema {report['schema_revision']})")
    for d in loaded:
        verb = "created" if d.created else "already there"
        console.print(
            f"sample brand: {d.name} {verb}; imported {d.result.added} new, "
            f"{d.result.duplicate} already present, {len(d.result.rejected)} rejected"
        )
    table = Table("dataset", "task", "examples", "train", "held out", "labels", title="ready")
    for row in datasets:
        table.add_row(
            row["name"], row["task"], str(row["examples"]), str(row["train"]),
            str(row["heldout"]), str(row["labels"] or "-"),
        )  # fmt: skip
    console.print(table)
    if model["ready"]:
        console.print(f"base model: {model['source']}")
    else:
        console.print(f"[red]base model missing[/]: {model['error']}")
    console.print(f"slack: {slack}; inference: {report['inference']}")
    console.print(
        "next: `brandbot datasets show kk_copy`, `brandbot export -d kk_tickets`; "
        "the console chat and training arrive with the bot runtime and trainer."
    )
