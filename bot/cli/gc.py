"""``brandbot gc``: retention of checkpoints and adapter files (:mod:`bot.retention`)."""

from __future__ import annotations

import typer

from bot.cli import exits
from bot.cli.common import JsonOption, console, database, err_console, print_json, settings
from bot.retention import collect_garbage


def gc(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List what would be deleted; delete nothing."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Delete the checkpoints of finished runs and the files of rejected and superseded adapters
    older than the retention_days setting. The active adapter, its rollback target and the
    checkpoints of queued or running runs are always kept. Exit status 1 when something could
    not be deleted."""
    config = settings()
    with database().session() as session:
        result = collect_garbage(session, config, dry_run=dry_run)
    code = exits.PARTIAL if result.errors else exits.OK
    if as_json:
        print_json({**result.as_dict(), "exit_code": code})
    else:
        verb = "would delete" if dry_run else "deleted"
        for r in result.removed:
            what = f"run {r.name} checkpoints" if r.kind == "checkpoints" else f"adapter {r.name}"
            console.print(f"{verb} {what}: {r.path} ({r.bytes} bytes)", highlight=False)
        console.print(
            f"{verb} {len(result.removed)} folders, {result.freed_bytes} bytes "
            f"(older than {config.retention_days:g} days)", highlight=False,
        )  # fmt: skip
        for error in result.errors:
            err_console.print(f"error: {error}", highlight=False)
    if code:
        raise typer.Exit(code)
