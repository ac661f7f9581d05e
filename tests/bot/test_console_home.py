"""The Home tab in the console chat: ``home`` prints the view as text, its buttons numbered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.console.chat import ConsoleChat
from bot.console.shell import Shell
from bot.console.workspace import Workspace
from bot.gate import Gate
from bot.jobs import JobQueue
from bot.plugin import Services
from bot.plugin_loader import PluginEntry, instantiate
from bot.runtime import Runtime
from bot.samples import load_sample_brand, workspace
from bot.settings import Settings
from bot.storage import Database
from bot.storage.models import Example
from bot.storage.repositories import Datasets
from plugins.home import HomePlugin

MAYA, PRIYA = "U0ADMIN01", "U0PRIYA01"
CONTRIBUTION = "Cold brew season: our oolong, steeped overnight, poured over ice. Thursday only."


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url)
    database.upgrade()
    load_sample_brand(database)
    yield database
    database.dispose()


def shell(db: Database, tmp_path: Path, lines: list[str]) -> tuple[Shell, ConsoleChat]:
    ws = Workspace.from_definition(workspace())
    chat = ConsoleChat(ws, lines.append, tmp_path / "uploads")
    settings = Settings(admins=[MAYA], data_dir=tmp_path, plugins={"home": {"refresh_delay": 60}})
    services = Services(settings=settings, db=db, chat=chat, jobs=JobQueue())
    runtime = Runtime(services, instantiate([PluginEntry("home", HomePlugin)], {}, services))
    return Shell(runtime, chat, ws, lines.append, user=MAYA, db=db), chat


def test_home_shows_the_view_as_text_and_its_buttons_work(db: Database, tmp_path: Path) -> None:
    with db.session() as s:
        dataset = Datasets(s).list()[0]
        outcome = Gate(s).add(
            dataset, text=CONTRIBUTION, source="draft", actor=PRIYA, approved=False,
            workspace="T0KETTLE", channel=dataset.channels[0] if dataset.channels else None,
            ts="1700000000.000001", author=PRIYA,
        )  # fmt: skip
        assert outcome.status == "pending" and outcome.example_id is not None
        names = [d.name for d in Datasets(s).list()]
    lines: list[str] = []
    sh, chat = shell(db, tmp_path, lines)
    sh.execute("home")
    text = "\n".join(lines)
    assert "[Home of @maya]" in text and "Waiting for you (1)" in text
    assert CONTRIBUTION in text and all(f"*{name}*" in text for name in names)
    assert "Retrain" in text and "Last runs" in text
    approve = sh._choice_labelled("Approve")
    assert approve
    assert sh._choice_labelled("Approve all from this person") > 0, "the section's button too"
    assert "@priya: 1 pending example" in text
    lines.clear()
    sh.execute(f"press {approve}")
    with db.session() as s:
        example = s.get(Example, outcome.example_id)
        assert example is not None and (example.status, example.approver_id) == ("active", MAYA)
    plugin = sh.runtime.plugins[0]
    assert isinstance(plugin, HomePlugin)
    plugin.refresher.flush()  # the refresh after the decision, in the background
    assert plugin.refresher.wait_idle()
    assert lines[-1] == "    (the Home of @maya changed; `home` shows it)"
    sh.execute("home")
    assert "Waiting for you (0)" in "\n".join(lines)
    assert chat.homes[MAYA]["type"] == "home"
