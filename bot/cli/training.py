"""``brandbot worker``, ``brandbot train`` and ``brandbot adapters``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import select

from bot.cli import exits
from bot.cli.common import (
    CliError,
    DatasetOption,
    JsonOption,
    console,
    database,
    err_console,
    print_json,
    settings,
)
from bot.storage.models import Adapter, Dataset
from bot.storage.repositories import Datasets, Runs

if TYPE_CHECKING:
    from bot.inference import LazyInference

adapters_app = typer.Typer(help="Trained adapters: list, promote, roll back.", no_args_is_help=True)


def _client() -> LazyInference:
    """The inference client; use it as a context manager so the engine is shut down on exit."""
    from bot.inference import LazyInference

    return LazyInference(settings())


GpusOption = typer.Option(
    None, "--gpus", min=1, max=64,
    help="Train each run data-parallel on this many GPUs (CPU processes without a GPU) through "
    "`accelerate launch`; default: the `processes` setting under \\[training] in brandbot.toml, "
    "else 1.",
)  # fmt: skip


def _overrides(gpus: int | None) -> dict[str, Any]:
    return {} if gpus is None else {"processes": gpus}


def worker(
    once: bool = typer.Option(False, "--once", help="Run at most one queued run, then exit."),
    poll: float = typer.Option(5.0, "--poll", help="Seconds between looks at the queue."),
    gpus: int | None = GpusOption,
) -> None:
    """Claim queued training runs and run them (one worker per run; several may run)."""
    from bot.observability import Redactor, configure_logging, settings_secrets
    from bot.worker import Worker

    secrets = settings_secrets(settings())
    configure_logging(secrets)  # JSON to stderr, secrets masked

    with _client() as client:
        w = Worker(settings(), database(), client, config_overrides=_overrides(gpus))
        if once:
            w.requeue_stale()
            summary = w.run_once()
            console.print(Redactor(secrets).scrub(summary.reason) if summary else "no queued run")
            if summary is not None and summary.status == "failed":
                raise typer.Exit(exits.FAILED)
            return
        console.print("worker: waiting for queued runs (Ctrl-C to stop)")
        try:
            w.serve(poll)
        except KeyboardInterrupt:
            w.stop()


def train(
    dataset: str = DatasetOption, as_json: bool = JsonOption, gpus: int | None = GpusOption
) -> None:
    """Train the dataset now, in this process, with a progress bar: train, evaluate base vs
    current vs new on the held-out examples, and promote the new adapter only if it wins.
    With --gpus N the training step runs in N processes under `accelerate launch`."""
    from bot.worker import Worker

    with database().session() as session:
        ds = Datasets(session).get(dataset)
        run = Runs(session).enqueue(ds, trigger="manual", requested_by="cli")
        assert run is not None
        run_id = run.id
    with Progress(
        TextColumn("[bold]training[/] {task.description}"), BarColumn(),
        TextColumn("step {task.completed}/{task.total}  loss {task.fields[loss]}"),
        TimeRemainingColumn(), console=console, disable=as_json,
    ) as bar:  # fmt: skip
        task = bar.add_task(dataset, total=None, loss="-")

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, loss=f"{loss:.3f}")

        with _client() as client:
            worker = Worker(
                settings(), database(), client, progress=progress, config_overrides=_overrides(gpus)
            )
            summary = worker.run_now(run_id)
    code = exits.run_exit_code(summary.status)
    if as_json:
        print_json({**summary.__dict__, "exit_code": code})
        raise typer.Exit(code)
    if code != exits.OK:
        err_console.print(f"run {run_id} {summary.status}: {summary.reason}", highlight=False)
        raise typer.Exit(code)
    console.print(f"run {run_id}: {summary.adapter}: {summary.reason}")


@adapters_app.command("list")
def list_adapters(
    dataset: str | None = typer.Option(None, "-d", "--dataset", help="Only this dataset."),
    as_json: bool = JsonOption,
) -> None:
    """Every adapter with its status, metrics and the promotion decision."""
    with database().session() as session:
        stmt = select(Adapter, Dataset.name).join(Dataset).order_by(Adapter.version)
        if dataset:
            stmt = stmt.where(Dataset.id == Datasets(session).get(dataset).id)
        rows: list[dict[str, Any]] = [
            {"name": a.name, "dataset": d, "version": a.version, "status": a.status,
             "metrics": a.metrics, "decision": a.decision, "path": a.path,
             "needs_retrain": a.needs_retrain, "created_at": a.created_at.isoformat()}
            for a, d in session.execute(stmt)
        ]  # fmt: skip
    if as_json:
        print_json({"adapters": rows})
        return
    table = Table("adapter", "status", "decision")
    for r in rows:
        table.add_row(r["name"], r["status"], (r["decision"] or "-")[:120])
    console.print(table if rows else "no adapters yet: `brandbot train -d NAME`")


@adapters_app.command("promote")
def promote_adapter(name: str = typer.Argument(..., help="e.g. kk_copy-v3")) -> None:
    """Deploy an adapter and make it its dataset's active one (lint, load, canary first)."""
    from bot.reconciler import reconcile
    from bot.registry import promote

    with _client() as client:
        with database().session() as session:
            adapter = session.scalar(select(Adapter).where(Adapter.name == name))
            if adapter is None:
                raise CliError(f"unknown adapter {name!r} (see `brandbot adapters list`)")
            result = promote(session, settings(), client, adapter, actor="cli")
        if result.ok:  # committed: the server follows the registry
            with database().session() as session:
                reconcile(session, settings(), client)
    if not result.ok:
        raise CliError(f"not promoted: {result.reason}")
    console.print(result.reason)


@adapters_app.command("rollback")
def rollback_adapter(
    dataset: str = DatasetOption,
    to: str | None = typer.Option(None, "--to", help="The adapter to go back to."),
) -> None:
    """Make the previous adapter (or --to) active again; with none, the base model."""
    from bot.reconciler import reconcile
    from bot.registry import roll_back

    with database().session() as session:
        ds = Datasets(session).get(dataset)
        result = roll_back(session, ds, to=to, actor="cli")
    if not result.ok:
        raise CliError(result.reason)
    with _client() as client, database().session() as session:  # committed: the server follows
        reconcile(session, settings(), client)
    console.print(result.reason)


def evaluate(dataset: str = DatasetOption, as_json: bool = JsonOption) -> None:
    """Evaluate the base model and the active adapter on the held-out examples: answer
    perplexity, chrF and rule compliance (draft); accuracy, macro-F1, per-label scores and the
    confusion matrix (classify)."""
    from bot.worker import evaluate_dataset

    with Progress(
        TextColumn("[bold]evaluating[/] {task.description}"), BarColumn(),
        TextColumn("{task.completed}/{task.total} held-out examples"), TimeRemainingColumn(),
        console=err_console, transient=True,
    ) as bar:  # fmt: skip
        tasks: dict[str, TaskID] = {}

        def progress(model: str, done: int, total: int) -> None:
            if model not in tasks:
                tasks[model] = bar.add_task(model, total=total)
            bar.update(tasks[model], completed=done)

        try:
            with _client() as client:
                result = evaluate_dataset(settings(), database(), client, dataset, progress)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    if as_json:
        print_json(result)
        return
    keys = [k for k in ("answer_perplexity", "chrf", "rule_compliance", "accuracy", "macro_f1",
                        "invalid_rate") if k in result["base"]]  # fmt: skip
    table = Table("model", "examples", *keys, title=f"{dataset}: held-out evaluation")
    for which in ("base", "active"):
        summary = result.get(which)
        if summary:
            table.add_row(
                summary["name"], str(summary["examples"]),
                *[f"{summary[k]:.3f}" if isinstance(summary[k], float) else str(summary[k])
                  for k in keys],
            )  # fmt: skip
    console.print(table)
    if "verdict" in result:
        console.print(result["verdict"])
    console.print(f"evaluation took {result['seconds']:.1f} s")
