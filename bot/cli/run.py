"""``brandbot run``: the main job.

On the embedded default it prepares everything (data folder, migrated database, the sample
brand, the bundled base model), reports what is ready and opens the console chat, which reads
scripted input from a pipe as well as from a terminal. With Slack secrets it runs the Slack
adapter instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from bot.approvers import nobody_approves_notice
from bot.cli.common import CliError, console, database, print_json, settings
from bot.samples import load_sample_brand
from bot.storage.db import safe_url
from bot.storage.repositories import Datasets, Examples
from serving.base_model import BaseModelMissing, find_bundled_gguf


def run(
    http: bool = typer.Option(False, "--http", help="Serve Slack's HTTP Events API."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address for --http and health."),  # noqa: S104
    port: int | None = typer.Option(
        None, "--port", help="HTTP port (default 3000 with --http; health only otherwise)."
    ),
    sample: bool = typer.Option(True, "--sample/--no-sample", help="Load the sample brand."),
    setup_only: bool = typer.Option(
        False, "--setup-only", help="Set up and report what is ready, then exit."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the set-up report as one JSON document and exit."
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        help="With --http: serve from this many processes (PostgreSQL only). Two use both "
        "cores of a small machine; point them at a model server (BRANDBOT_INFERENCE_URL) so "
        "they do not each load the local model.",
    ),
) -> None:
    """Run the bot.

    Without SLACK_BOT_TOKEN: sets up the data folder, the database and the sample brand, then
    opens the console chat on the sample workspace (scripted input works: pipe lines in).
    With SLACK_BOT_TOKEN and SLACK_APP_TOKEN: Socket Mode. With SLACK_BOT_TOKEN,
    SLACK_SIGNING_SECRET and --http: the HTTP Events API on --port (default 3000).

    Examples:
      brandbot run
      printf '/brandbot help\nquit\n' | brandbot run
      brandbot run --http --port 3000
      brandbot run --http --workers 2     # PostgreSQL: two processes share the port
    """
    cfg = settings()
    if cfg.slack_bot_token is not None:
        _run_slack(http=http, host=host, port=port, workers=workers)
        return
    report = _setup(sample)
    if as_json:
        print_json(report)
    else:
        _print_report(report)
    _note_approvers(slack=False)
    if as_json or setup_only:
        return
    from bot.console.runner import run_console

    run_console(cfg, database())


def _run_slack(*, http: bool, host: str, port: int | None, workers: int = 1) -> None:
    from bot.slack.runner import SlackRuntime, configure_process_logging

    cfg = settings()
    configure_process_logging(cfg)
    if workers > 1 and not http:
        raise CliError("--workers serves the HTTP Events API: add --http")
    if http:
        if cfg.slack_signing_secret is None:
            raise CliError("--http needs SLACK_SIGNING_SECRET (Basic Information in the Slack app)")
        _note_approvers(slack=True)
        if workers > 1:
            database()  # migrate once, before the workers start
            try:
                SlackRuntime.run_http_workers(cfg, host, port or 3000, workers)
            except ValueError as exc:
                raise CliError(str(exc)) from None
            return
        SlackRuntime(cfg, database()).run_http(host, port or 3000)
    elif cfg.slack_app_token is not None:
        _note_approvers(slack=True)
        SlackRuntime(cfg, database()).run_socket_mode(host, port)
    else:
        raise CliError(
            "SLACK_BOT_TOKEN is set: also set SLACK_APP_TOKEN for Socket Mode, "
            "or SLACK_SIGNING_SECRET and pass --http for the HTTP Events API"
        )


def _note_approvers(*, slack: bool) -> None:
    """Say once, at the start, when nobody can approve yet: a log warning next to the Slack
    runtime's JSON logs, a plain line on stderr before the console."""
    notice = nobody_approves_notice(settings(), database())
    if notice is None:
        return
    if slack:
        logging.getLogger("bot.approvers").warning(notice)
    else:
        typer.echo(f"note: {notice} (in this console the sample admin @maya acts as one)", err=True)


def _setup(sample: bool) -> dict[str, Any]:
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
            {
                "name": d.name,
                "created": d.created,
                **d.result.as_dict(),
                "pairs": d.pairs.added + d.pairs.duplicate,
            }
            for d in loaded
        ],
        "datasets": datasets,
        "base_model": model,
        "slack": slack,
        "inference": cfg.inference_url or "in process (local engine)",
    }
    return report


def _print_report(report: dict[str, Any]) -> None:
    loaded = report["sample_brand"]
    datasets = report["datasets"]
    model = report["base_model"]
    slack = report["slack"]
    console.print(f"[bold]brandbot[/] data folder: {report['data_dir']}")
    console.print(f"database: {report['database']} (schema {report['schema_revision']})")
    for d in loaded:
        verb = "created" if d["created"] else "already there"
        console.print(
            f"sample brand: {d['name']} {verb}; imported {d['added']} new, "
            f"{d['duplicate']} already present, {d['rejected']} rejected"
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


def demo(
    smoke: bool = typer.Option(
        False, "--smoke", help="A tiny random model: the same path in a minute."
    ),
    data_dir: Path = typer.Option(
        Path("data-demo"), "--data-dir", help="Where the demo's data goes."
    ),
) -> None:
    """The whole loop, scripted and offline, on the sample brand: approvals, a draft and tickets
    from the base model, retraining on the CPU with reports and charts, then the same brief and
    tickets with the tuned adapters. About 8-15 minutes on 2 CPU cores (--smoke: under one)."""
    from bot.demo import run_demo

    run_demo(data_dir, smoke=smoke)
