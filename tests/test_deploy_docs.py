"""The steps of docs/deploy.md and docs/slack-setup.md name commands, options and files that
exist, in an order that works (a dataset is created before it is updated)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from bot.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("docs/deploy.md", "docs/slack-setup.md")


def shown_commands(text: str) -> list[str]:
    """`brandbot ...` in code spans, code blocks and indented blocks (not `/brandbot`)."""
    found = re.findall(r"(?<![/\w])`((?:[A-Z_]+=\S+ )*brandbot [^`]+)`", text)
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("brandbot ") and (line.startswith("    ") or line.startswith("   ")):
            found.append(stripped)
    commands = []
    for command in found:
        command = command.split("#")[0].strip()
        command = re.sub(r"^(?:[A-Z_]+=\S+ )+", "", command)
        commands.append(command)
    return commands


def resolve(tokens: list[str]) -> tuple[Any, list[str]]:
    """The CLI command ``tokens`` name (groups have ``commands``) and the words after it."""
    command: Any = typer.main.get_command(app)
    rest = tokens[1:]
    while getattr(command, "commands", None) is not None and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        assert sub is not None, f"no command {' '.join(tokens)}"
        command, rest = sub, rest[1:]
    return command, rest


@pytest.mark.parametrize("doc", DOCS)
def test_documented_commands_and_options_exist(doc: str) -> None:
    text = (ROOT / doc).read_text()
    commands = shown_commands(text)
    assert commands
    for shown in commands:
        tokens = shlex.split(shown.replace("...", "X"))
        command, rest = resolve(tokens)
        options = {o for p in command.params for o in [*p.opts, *p.secondary_opts]}
        for token in rest:
            if token.startswith("--"):
                assert token.split("=")[0] in options, f"{doc}: {shown}: no option {token}"


def test_bad_option_is_caught() -> None:
    command, _ = resolve(["brandbot", "run"])
    options = {o for p in command.params for o in p.opts}
    assert "--http" in options and "--no-such" not in options


@pytest.mark.parametrize("doc", DOCS)
def test_documented_files_exist(doc: str) -> None:
    text = (ROOT / doc).read_text()
    paths = set(re.findall(r"(?<![\w/])((?:deploy|scripts|docs|tests)/[\w./-]+\.\w+)", text))
    assert paths
    for path in paths:
        assert (ROOT / path).exists(), f"{doc} names {path}"


def test_slack_setup_creates_a_dataset_before_updating_one() -> None:
    text = (ROOT / "docs" / "slack-setup.md").read_text()
    create = text.find("brandbot datasets create")
    assert create != -1
    for match in re.finditer(r"brandbot datasets update ([a-z_]+)", text):
        assert match.start() > create, f"{match.group(0)} before any dataset exists"
