"""``brandbot report``: how a dataset is doing in production (and, with the trainer, in
evaluation)."""

from __future__ import annotations

from rich.table import Table

from bot.cli.common import DatasetOption, JsonOption, console, database, print_json
from bot.collection import Collector
from bot.signals import production_signals
from bot.storage.repositories import Datasets


def report(dataset: str = DatasetOption, as_json: bool = JsonOption) -> None:
    """Production signals since the last training run: draft revision rate, share posted
    unedited, time to an approved draft, label correction rate."""
    with database().session() as session:
        ds = Datasets(session).get(dataset)
        since = Collector(session, scrubber=lambda t: t).last_training(ds)
        signals = production_signals(session, ds, since)
    if as_json:
        print_json({"dataset": dataset, "production": signals})
        return
    table = Table("signal", "value", title=f"{dataset}: production signals")
    for key, value in signals.items():
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    console.print(table)
