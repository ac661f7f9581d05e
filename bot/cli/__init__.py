"""The ``brandbot`` command line (typer + rich). ``main`` turns known errors into one line."""

from __future__ import annotations

import sys

import typer
from pydantic_settings import SettingsError as SourceError

from bot.cli import exits
from bot.cli.common import CliError
from bot.cli.data import export_examples, import_examples
from bot.cli.datasets import app as datasets_app
from bot.cli.db import app as db_app
from bot.cli.gc import gc
from bot.cli.people import examples_app, forget
from bot.cli.report import report
from bot.cli.run import demo, run
from bot.cli.serve import serve
from bot.cli.training import adapters_app, evaluate, train, worker
from bot.datasets import DatasetError
from bot.settings import SettingsError, source_error_line
from bot.storage.db import DatabaseUnavailable
from bot.storage.repositories import DatasetExists, UnknownDataset
from serving.base_model import BaseModelMissing

app = typer.Typer(
    name="brandbot",
    help=(
        "brandbot: fine-tune a model on your team's approved writing and use it in Slack.\n\n"
        "Start with `brandbot run` (no Slack needed: it sets up the data folder, the database "
        "and the sample brand). Settings come from BRANDBOT_* / SLACK_* environment variables "
        "or brandbot.toml; see docs/configuration.md."
    ),
    epilog=exits.HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(db_app, name="db")
app.add_typer(datasets_app, name="datasets")
app.command("import")(import_examples)
app.command("export")(export_examples)
app.command("run")(run)
app.command("demo")(demo)
app.command("serve")(serve)
app.command("forget")(forget)
app.command("report")(report)
app.command("worker")(worker)
app.command("train")(train)
app.command("eval")(evaluate)
app.command("gc")(gc)
app.add_typer(adapters_app, name="adapters")
app.add_typer(examples_app, name="examples")

KNOWN_ERRORS = (
    CliError,
    SettingsError,
    DatabaseUnavailable,
    UnknownDataset,
    DatasetError,
    DatasetExists,
    BaseModelMissing,
)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit's code here
    except KNOWN_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except SourceError as exc:  # pydantic-settings' own error, should one escape load_settings
        print(f"error: {source_error_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
