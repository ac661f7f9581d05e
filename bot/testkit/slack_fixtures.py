"""pytest fixtures for Slack: the fake Web API server, the fake Socket Mode server, signing.

- ``fake_slack``: a started :class:`~bot.testkit.slack.FakeSlack` (seeded with the team, the
  bot user and ``#general``), stopped after the test.
- ``fake_socket_mode``: a started :class:`~bot.testkit.socket_mode.FakeSocketMode`, attached
  to ``fake_slack`` so ``apps.connections.open`` returns its URL.
- ``slack_signing_secret``: the signing secret the app under test is configured with.
- ``slack_env``: ``SLACK_BOT_TOKEN``, ``SLACK_SIGNING_SECRET`` and ``SLACK_API_URL`` set for
  the test, pointing at ``fake_slack``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from bot.testkit.slack import FakeSlack

if TYPE_CHECKING:
    from bot.testkit.socket_mode import FakeSocketMode

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # noqa: S105 - a test value, not a secret


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def fake_socket_mode(fake_slack: FakeSlack) -> Iterator[FakeSocketMode]:
    # websockets is a test dependency: imported here so the plugin loads without it.
    from bot.testkit.socket_mode import FakeSocketMode

    with FakeSocketMode(app_id=fake_slack.api_app_id) as server:
        fake_slack.attach_socket_mode(server)
        yield server


@pytest.fixture
def slack_signing_secret() -> str:
    return SIGNING_SECRET


@pytest.fixture
def slack_env(
    monkeypatch: pytest.MonkeyPatch, fake_slack: FakeSlack, slack_signing_secret: str
) -> FakeSlack:
    monkeypatch.setenv("SLACK_BOT_TOKEN", fake_slack.bot_token)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", slack_signing_secret)
    monkeypatch.setenv("SLACK_API_URL", fake_slack.api_url)
    monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
    return fake_slack
