"""The Slack app manifest asks for exactly what the code uses.

Events, slash commands and shortcuts come from the built-in plugins' handler decorators
(``Plugin.handlers()``); scopes from the Web API methods the Slack layer calls and the events it
subscribes to, through Slack's documented scope of each."""

from __future__ import annotations

import re
import tomllib
from importlib import import_module
from pathlib import Path
from typing import Any

import yaml

from bot.plugin import HandlerSpec, Plugin

ROOT = Path(__file__).resolve().parents[2]

# A handler kind -> the Slack events that deliver it (public and private channels).
EVENTS_OF_KIND = {
    "message": {"message.channels", "message.groups"},
    "message_changed": {"message.channels", "message.groups"},
    "message_deleted": {"message.channels", "message.groups"},
    "member_joined": {"member_joined_channel"},
    "home_opened": {"app_home_opened"},
}
# Slack's documented bot scope for each Web API method and event (api.slack.com/methods, /events).
METHOD_SCOPES = {
    "chat.postMessage": {"chat:write"},
    "chat.postEphemeral": {"chat:write"},
    "chat.update": {"chat:write"},
    "views.open": set(),
    "views.publish": set(),
    "auth.test": set(),
    "conversations.replies": {"channels:history", "groups:history"},
    "conversations.history": {"channels:history", "groups:history"},
    "conversations.members": {"channels:read", "groups:read"},
    "conversations.info": {"channels:read", "groups:read"},
    "usergroups.users.list": {"usergroups:read"},
    "files.upload": {"files:write"},  # files_upload_v2
}
EVENT_SCOPES = {
    "message.channels": {"channels:history"},
    "message.groups": {"groups:history"},
    "reaction_added": {"reactions:read"},
    "reaction_removed": {"reactions:read"},
    "member_joined_channel": {"channels:read", "groups:read"},
    "app_home_opened": set(),
}


def manifest() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "deploy" / "slack-app-manifest.yml").read_text())
    assert isinstance(data, dict)
    return data


def plugin_specs() -> list[HandlerSpec]:
    """Every handler of the plugins registered in pyproject.toml's entry points."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = []
    for target in project["entry-points"]["brandbot.plugins"].values():
        module, _, name = target.partition(":")
        cls = getattr(import_module(module), name)
        assert issubclass(cls, Plugin)
        specs += [spec for _, spec, _ in cls.handlers()]
    return specs


def handled_events(specs: list[HandlerSpec]) -> set[str]:
    events: set[str] = set()
    for spec in specs:
        if spec.kind == "reaction":
            events.add("reaction_added" if spec.added else "reaction_removed")
        events |= EVENTS_OF_KIND.get(spec.kind, set())
    return events


def called_methods() -> set[str]:
    methods: set[str] = set()
    for path in [*(ROOT / "bot").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        if "testkit" in path.parts:
            continue
        text = path.read_text()
        methods |= set(re.findall(r'\b_a?call\(\s*"([a-z]+\.[A-Za-z.]+)"', text))
        if "files_upload_v2(" in text:
            methods.add("files.upload")
    return methods


def test_subscribed_events_are_exactly_the_handled_ones() -> None:
    subscribed = set(manifest()["settings"]["event_subscriptions"]["bot_events"])
    assert subscribed == handled_events(plugin_specs())


def test_every_slash_command_and_shortcut_has_a_handler_and_back() -> None:
    features = manifest()["features"]
    specs = plugin_specs()
    handled = {s.key.split()[0] for s in specs if s.kind == "command"}
    declared = {c["command"] for c in features["slash_commands"]}
    assert declared == handled
    shortcuts = {s["callback_id"] for s in features.get("shortcuts", [])}
    assert shortcuts == {s.key for s in specs if s.kind == "shortcut"}


def test_the_home_tab_is_enabled_when_a_plugin_draws_it() -> None:
    app_home = manifest()["features"].get("app_home", {})
    drawn = any(s.kind == "home_opened" for s in plugin_specs())
    assert drawn and app_home.get("home_tab_enabled") is True


def test_brandbot_command_escapes_mentions_for_forget() -> None:
    """`/brandbot forget @person` needs the member id, which Slack sends only when escaping."""
    assert any(s.key == "/brandbot forget" for s in plugin_specs())
    brandbot = next(
        c for c in manifest()["features"]["slash_commands"] if c["command"] == "/brandbot"
    )
    assert brandbot["should_escape"] is True


def test_every_scope_maps_to_a_call_or_an_event() -> None:
    data = manifest()
    methods = called_methods()
    assert {"chat.postMessage", "conversations.replies", "usergroups.users.list"} <= methods
    unknown = methods - set(METHOD_SCOPES)
    assert not unknown, f"add Slack's scope for {unknown} to METHOD_SCOPES"
    needed = {"commands"} if data["features"]["slash_commands"] else set()
    for method in methods:
        needed |= METHOD_SCOPES[method]
    for event in data["settings"]["event_subscriptions"]["bot_events"]:
        needed |= EVENT_SCOPES[event]
    assert set(data["oauth_config"]["scopes"]["bot"]) == needed


def test_request_urls_point_at_the_events_route() -> None:
    data = manifest()
    assert all(c["url"].endswith("/slack/events") for c in data["features"]["slash_commands"])
    assert data["settings"]["interactivity"]["request_url"].endswith("/slack/events")
    assert data["settings"]["event_subscriptions"]["request_url"].endswith("/slack/events")
    assert 'Route("/slack/events"' in (ROOT / "bot" / "web.py").read_text()
