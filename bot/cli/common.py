"""What every command shares: settings, the database (migrated on first use) and output."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import typer
from rich.console import Console

from bot.settings import Settings, load_settings
from bot.storage.db import Database

# Lines are not wrapped at the terminal's width (80 columns when piped): a path or an id must
# come out whole, to be copied or grepped. Tables still fit the width.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

DatasetOption = typer.Option(..., "-d", "--dataset", help="The dataset to act on.")
JsonOption = typer.Option(False, "--json", help="Print one JSON document instead of a table.")


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


@cache
def settings() -> Settings:
    return load_settings()


@cache
def database() -> Database:
    """The configured database, upgraded to the newest schema (every start does this)."""
    db = Database(settings().resolved_database_url)
    db.upgrade()
    return db


def print_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, default=str, ensure_ascii=False))


def split_list(value: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; ``None`` stays ``None``; ``""`` clears a list."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_map(value: str | None, what: str = "emoji=label") -> dict[str, str] | None:
    """``"emoji=label,other=label2"`` -> a dict; ``""`` clears the map."""
    if value is None:
        return None
    result: dict[str, str] = {}
    for part in split_list(value) or []:
        key, sep, val = part.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise CliError(f"expected {what} pairs separated by commas, got {part!r}")
        result[key.strip()] = val.strip()
    return result
