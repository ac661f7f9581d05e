"""``brandbot report``: the latest retraining report in the terminal (and its chart as a PNG),
plus the production signals since the last training."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer
from rich.table import Table

from bot.cli.common import DatasetOption, JsonOption, console, database, print_json, settings
from bot.dataset_stats import last_training
from bot.durable import dead_jobs
from bot.outbox import dead_letters
from bot.production_signals import production_signals, version_signals
from bot.reporting import build_report
from bot.storage.models import TrainingRun
from bot.storage.repositories import Datasets


def report(
    dataset: str = DatasetOption,
    output: Path | None = typer.Option(None, "-o", "--output", help="Where to write the PNG."),
    as_json: bool = JsonOption,
) -> None:
    """The latest run's report (metrics base / current / new, the decision, sample drafts, the
    loss and metric chart as a PNG) and the production signals since the last training: draft
    revision rate, share posted unedited, time to an approved draft, label correction rate
    (``--json``: also per adapter version, all time); and the dead letters (events and jobs
    given up on), if any."""
    from sqlalchemy import select

    with database().session() as session:
        ds = Datasets(session).get(dataset)
        since = last_training(session, ds)
        signals = production_signals(session, ds, since)
        versions = [
            {**asdict(v), "first_at": v.first_at.isoformat()} for v in version_signals(session, ds)
        ]
        run = session.scalar(
            select(TrainingRun)
            .where(TrainingRun.dataset_id == ds.id, TrainingRun.status.in_(("succeeded", "failed")))
            .order_by(TrainingRun.id.desc())
            .limit(1)
        )
        built = build_report(session, run.id) if run else None
        run_id = run.id if run else None
        dead = dead_letters(session) + dead_jobs(session)
    png_path = None
    if built is not None and built.chart_png:
        png_path = output or settings().runs_dir / str(run_id) / "report.png"
        png_path.parent.mkdir(parents=True, exist_ok=True)
        png_path.write_bytes(built.chart_png)
    if as_json:
        print_json(
            {
                "dataset": dataset,
                "production": signals,
                "versions": versions,
                "run": run_id,
                "report": built.lines if built else None,
                "chart": str(png_path) if png_path else None,
                "dead_letters": dead,
            }
        )
        return
    if built is None:
        console.print(f"{dataset}: no finished training run yet (`brandbot train -d {dataset}`)")
    else:
        for line in built.lines:
            console.print(line.replace("```", ""), highlight=False, markup=False)
        if png_path:
            console.print(f"chart: {png_path}")
    table = Table("signal", "value", title=f"{dataset}: production signals")
    for key, value in signals.items():
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    console.print(table)
    if dead:
        console.print(
            f"dead letters: {dead} internal events or jobs were given up on (see the logs)"
        )
