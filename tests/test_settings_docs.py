"""docs/configuration.md lists every setting: its table is generated from the settings model."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import AliasChoices, Field

from bot.settings import Settings, env_name, toml_key
from bot.settings_docs import BEGIN, DOC, END, UndocumentedSetting, regenerate, render_table


def _table(text: str) -> str:
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)]


def test_the_configuration_doc_is_current() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert regenerate(text) == text, "run python -m bot.settings_docs"


def test_every_setting_has_a_row_with_meaning_and_example() -> None:
    rows = _table(DOC.read_text(encoding="utf-8")).strip().splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    for row, field in zip(rows, Settings.model_fields.values(), strict=True):
        name = env_name(field) or toml_key(field)
        assert row.startswith(f"| `{name}`") or row.startswith(f"| toml only: `[{name}]`")
        assert f"`{toml_key(field)}`" in row or f"`[{toml_key(field)}]`" in row
        assert field.description and field.description in row
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 5 and all(cells), row


def test_a_new_setting_makes_the_doc_stale(tmp_path: Path) -> None:
    class Grown(Settings):
        max_body_bytes: int = Field(
            default=1_000_000,
            validation_alias=AliasChoices("BRANDBOT_MAX_BODY_BYTES", "max_body_bytes"),
            description="The largest request body the bot reads.",
            examples=[2_000_000],
        )

    text = DOC.read_text(encoding="utf-8")
    grown = regenerate(text, Grown)
    assert grown != text
    assert (
        "| `BRANDBOT_MAX_BODY_BYTES`<br>toml: `max_body_bytes` | integer | `1000000` | "
        "The largest request body the bot reads. | `2000000` |"
    ) in grown
    assert grown.replace(_table(grown), "") == text.replace(_table(text), "")  # prose kept


def test_a_setting_without_a_description_is_refused() -> None:
    class Bare(Settings):
        rate: float = Field(default=1.0, validation_alias=AliasChoices("BRANDBOT_RATE", "rate"))

    with pytest.raises(UndocumentedSetting, match="rate"):
        render_table(Bare)


def test_the_command_checks_and_rewrites_a_stale_doc(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    text = DOC.read_text(encoding="utf-8")
    stale.write_text(text.replace("| `BRANDBOT_ADMINS`", "| `BRANDBOT_ADMIN`"), encoding="utf-8")
    command = [sys.executable, "-m", "bot.settings_docs"]
    check = subprocess.run([*command, "--check", str(stale)], capture_output=True, text=True)
    assert check.returncode == 1 and "stale" in check.stderr
    assert subprocess.run([*command, str(stale)], capture_output=True).returncode == 0
    assert stale.read_text(encoding="utf-8") == text
    assert subprocess.run([*command, "--check", str(stale)]).returncode == 0
