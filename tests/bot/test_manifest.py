"""The Slack app manifest declares what the bot listens to."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_declares_commands_events_scopes_and_urls() -> None:
    manifest = yaml.safe_load((ROOT / "deploy" / "slack-app-manifest.yml").read_text())
    features = manifest["features"]
    commands = {c["command"] for c in features["slash_commands"]}
    assert {"/draft", "/classify", "/brandbot"} <= commands
    assert all(c["url"].endswith("/slack/events") for c in features["slash_commands"])
    settings = manifest["settings"]
    events = set(settings["event_subscriptions"]["bot_events"])
    assert {
        "reaction_added",
        "reaction_removed",
        "message.channels",
        "member_joined_channel",
    } <= events
    assert settings["interactivity"]["request_url"].endswith("/slack/events")
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    for needed in ("chat:write", "commands", "reactions:read", "channels:history", "files:write",
                   "usergroups:read", "groups:history"):  # fmt: skip
        assert needed in scopes
    assert {s["callback_id"] for s in features["shortcuts"]}
