"""Finding plugins (the ``brandbot.plugins`` entry-point group) and validating their settings.

All problems are collected and reported together at start, so a bad plugin section is found
before anybody talks to the bot.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from bot.plugin import Plugin, Services

GROUP = "brandbot.plugins"


class PluginError(Exception):
    """One or more plugins cannot start; the message lists each problem on its own line."""


@dataclass(frozen=True)
class PluginEntry:
    name: str
    cls: type[Plugin]


def discover() -> list[PluginEntry]:
    """Every installed plugin class, built-ins included, sorted by name."""
    entries = []
    for ep in importlib.metadata.entry_points(group=GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            raise PluginError(f"entry point {ep.name} ({ep.value}) is not a Plugin class")
        entries.append(PluginEntry(ep.name, cls))
    return sorted(entries, key=lambda e: e.name)


def select(entries: list[PluginEntry], config: dict[str, Any]) -> list[PluginEntry]:
    """Apply ``[plugins] enabled = [...]`` (only these) and ``disabled = [...]``."""
    known = {e.name for e in entries}
    enabled = config.get("enabled")
    disabled = set(config.get("disabled", []))
    unknown = sorted((set(enabled or []) | disabled) - known)
    if unknown:
        raise PluginError(
            f"[plugins] names unknown plugins: {', '.join(unknown)} "
            f"(installed: {', '.join(sorted(known)) or 'none'})"
        )
    return [e for e in entries if (enabled is None or e.name in enabled) and e.name not in disabled]


def instantiate(
    entries: list[PluginEntry], config: dict[str, Any], services: Services
) -> list[Plugin]:
    """Validate each plugin's section and build it; raise one PluginError listing every fault."""
    plugins: list[Plugin] = []
    problems: list[str] = []
    for entry in entries:
        section = config.get(entry.name, {})
        settings = None
        if entry.cls.Settings is not None:
            try:
                settings = entry.cls.Settings(**(section if isinstance(section, dict) else {}))
            except ValidationError as exc:
                for err in exc.errors():
                    field = ".".join(str(p) for p in err["loc"])
                    problems.append(f"[plugins.{entry.name}] {field}: {err['msg']}")
                continue
        elif section and isinstance(section, dict):
            problems.append(f"[plugins.{entry.name}]: this plugin takes no settings")
            continue
        plugin = entry.cls(services, settings)
        type(plugin).name = entry.cls.name or entry.name
        plugins.append(plugin)
    if problems:
        raise PluginError("invalid plugin settings:\n  " + "\n  ".join(problems))
    for plugin in plugins:
        plugin.setup()
    return plugins


def load_plugins(services: Services) -> list[Plugin]:
    config = services.settings.plugins
    entries = select(discover(), config)
    return instantiate(entries, config, services)
