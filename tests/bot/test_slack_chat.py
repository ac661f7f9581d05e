"""``SlackChat``'s response_url posts: over the pooled session, errors as ``ChatError``, and a
closed client refuses at once instead of waiting on its stopped loop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.plugin import Button, ChatError
from bot.slack.chat import SlackChat
from bot.testkit.slack import FakeSlack


@pytest.fixture
def chat(fake_slack: FakeSlack) -> Iterator[SlackChat]:
    client = SlackChat(fake_slack.bot_token, fake_slack.api_url)
    yield client
    client.close()


def test_respond_posts_to_the_response_url(fake_slack: FakeSlack, chat: SlackChat) -> None:
    chat.respond(fake_slack.response_url("cmd-1"), "Drafting…")
    chat.respond(fake_slack.response_url("cmd-1"), "Here", buttons=[Button("Go", "go", "1")],
                 replace_original=True, in_channel=True)  # fmt: skip
    first, second = fake_slack.responses("cmd-1")
    assert first == {"text": "Drafting…", "replace_original": False,
                     "response_type": "ephemeral"}  # fmt: skip
    assert second["replace_original"] is True
    assert second["response_type"] == "in_channel"
    assert second["blocks"][1]["elements"][0]["action_id"] == "go"


def test_a_refused_response_url_is_a_chat_error(fake_slack: FakeSlack, chat: SlackChat) -> None:
    with pytest.raises(ChatError) as err:
        chat.respond(f"{fake_slack.base_url}/response/never-issued", "x")
    assert err.value.code == "response_url_failed"


def test_a_closed_client_refuses_at_once(fake_slack: FakeSlack, chat: SlackChat) -> None:
    chat.close()
    with pytest.raises(ChatError) as err:
        chat.respond(fake_slack.response_url("late"), "too late")
    assert err.value.code == "client_closed"
    with pytest.raises(ChatError):
        chat.post("C0GENERAL", "too late")
    assert fake_slack.responses("late") == []
