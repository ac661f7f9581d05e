"""The structure promises that code review alone does not keep: what a light import loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(statement: str, modules: list[str]) -> dict[str, bool]:
    """In a fresh interpreter, run ``statement`` and say which of ``modules`` it loaded."""
    probe = f"{statement}\nimport sys\nprint(' '.join(str(m in sys.modules) for m in {modules!r}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return dict(zip(modules, (word == "True" for word in out.stdout.split()), strict=True))


def test_plugins_and_the_client_import_without_torch() -> None:
    heavy = ["torch", "transformers", "peft", "serving.engine"]
    loaded = loaded_after("import plugins.draft, serving.client", heavy)
    assert loaded == dict.fromkeys(heavy, False)


def test_every_builtin_plugin_and_the_plugin_api_import_without_torch() -> None:
    statement = (
        "import bot.plugin, bot.inference, plugins.admin, plugins.classify, plugins.collect, "
        "plugins.draft, plugins.help, plugins.replies, plugins.report"
    )
    assert loaded_after(statement, ["torch", "transformers"]) == {
        "torch": False,
        "transformers": False,
    }


def test_the_probe_sees_torch_when_it_is_loaded() -> None:
    """The check above can fail: importing the engine does load torch."""
    assert loaded_after("import serving.engine", ["torch"]) == {"torch": True}


def test_no_product_module_is_over_500_lines() -> None:
    """Small modules with one job each: a module that grows past 500 lines is split."""
    modules = [
        p for room in ("bot", "plugins", "trainer", "serving") for p in (ROOT / room).rglob("*.py")
    ]
    assert len(modules) > 100  # the walk found the code
    lengths = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in modules
    }
    assert {path: n for path, n in lengths.items() if n > 500} == {}
