"""``brandbot db``: schema migrations."""

from __future__ import annotations

import typer

from bot.cli.common import console, print_json, settings
from bot.storage.db import Database, safe_url

app = typer.Typer(help="Database schema: migrations (every start also upgrades).")


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply the migrations up to REVISION (the newest by default)."""
    db = Database(settings().resolved_database_url)
    db.upgrade(revision)
    console.print(f"database {safe_url(db.url)} is at revision {db.current_revision()}")


@app.command("current")
def current(as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the schema revision of the configured database."""
    db = Database(settings().resolved_database_url)
    db.check_connection()
    rev = db.current_revision()
    if as_json:
        print_json({"url": safe_url(db.url), "revision": rev})
    else:
        console.print(f"{safe_url(db.url)}: revision {rev or 'none (run `brandbot db upgrade`)'}")
