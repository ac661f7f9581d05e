"""The fake Socket Mode server speaks to slack_sdk's real SocketModeClient."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode import SocketModeClient
from slack_sdk.socket_mode.aiohttp import SocketModeClient as AsyncSocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.client import BaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from bot.testkit import payloads
from bot.testkit.slack import FakeSlack
from bot.testkit.socket_mode import FakeSocketMode


@pytest.fixture
def received() -> list[SocketModeRequest]:
    return []


@pytest.fixture
def client(
    fake_slack: FakeSlack, fake_socket_mode: FakeSocketMode, received: list[SocketModeRequest]
) -> Iterator[SocketModeClient]:
    client = SocketModeClient(
        app_token=fake_slack.app_token,
        web_client=WebClient(base_url=fake_slack.api_url, token=fake_slack.bot_token),
    )
    lock = threading.Lock()

    def listener(client: BaseSocketModeClient, request: SocketModeRequest) -> None:
        with lock:
            received.append(request)
        if request.type == "slash_commands":
            answer = {"text": f"Drafting {request.payload['text']}…"}
            client.send_socket_mode_response(
                SocketModeResponse(envelope_id=request.envelope_id, payload=answer)
            )
        else:
            client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))

    client.socket_mode_request_listeners.append(listener)
    client.connect()
    try:
        yield client
    finally:
        # Closing the server side first spares the builtin client's 3 s receive timeout.
        client.auto_reconnect_enabled = False
        fake_socket_mode.close_connections()
        client.close()


def test_connections_open_needs_an_attached_server(fake_slack: FakeSlack) -> None:
    app = WebClient(base_url=fake_slack.api_url, token=fake_slack.app_token)
    with pytest.raises(SlackApiError) as err:
        app.apps_connections_open(app_token=fake_slack.app_token)
    assert err.value.response["error"] == "socket_mode_not_enabled"
    bot = WebClient(base_url=fake_slack.api_url, token=fake_slack.bot_token)
    with pytest.raises(SlackApiError) as err:
        bot.apps_connections_open(app_token=fake_slack.bot_token)
    assert err.value.response["error"] == "not_allowed_token_type"


def test_events_api_round_trip(
    fake_slack: FakeSlack,
    fake_socket_mode: FakeSocketMode,
    client: SocketModeClient,
    received: list[SocketModeRequest],
) -> None:
    connection = fake_socket_mode.wait_for_connection()
    assert connection.path.startswith("/link?ticket=")
    [opened] = fake_slack.calls_for("apps.connections.open")
    assert opened.token == fake_slack.app_token

    event = payloads.event_callback(
        payloads.reaction_added("U0ALICE", "white_check_mark", "C0GENERAL", "1.000100"),
        event_id="Ev0SOCKET",
    )
    envelope_id = fake_socket_mode.send("events_api", event, retry_attempt=1)
    ack = fake_socket_mode.wait_for_ack(envelope_id)
    assert ack == {"envelope_id": envelope_id}
    [request] = received
    assert request.type == "events_api"
    assert request.payload["event_id"] == "Ev0SOCKET"
    assert request.retry_attempt == 1
    assert fake_socket_mode.sent[envelope_id]["accepts_response_payload"] is False


def test_slash_command_ack_carries_payload(
    fake_slack: FakeSlack, fake_socket_mode: FakeSocketMode, client: SocketModeClient
) -> None:
    command = payloads.slash_command(
        "/draft", "socks", "U0ALICE", "C0GENERAL", fake_slack.response_url()
    )
    envelope_id = fake_socket_mode.send_payload(command)
    assert fake_socket_mode.sent[envelope_id]["type"] == "slash_commands"
    assert fake_socket_mode.sent[envelope_id]["accepts_response_payload"] is True
    ack = fake_socket_mode.wait_for_ack(envelope_id)
    assert ack["payload"] == {"text": "Drafting socks…"}


def test_disconnect_makes_the_client_reconnect(
    fake_slack: FakeSlack,
    fake_socket_mode: FakeSocketMode,
    client: SocketModeClient,
    received: list[SocketModeRequest],
) -> None:
    fake_socket_mode.wait_for_connection()
    fake_socket_mode.disconnect()
    fake_socket_mode.wait_for_connection(count=2, timeout=10)
    assert len(fake_slack.calls_for("apps.connections.open")) >= 2
    action = payloads.block_actions(
        "U0ALICE", "approve", "1", "C0GENERAL", "1.000100", fake_slack.response_url()
    )
    envelope_id = fake_socket_mode.send_payload(action)
    fake_socket_mode.wait_for_ack(envelope_id)
    assert received[-1].type == "interactive"


def test_send_without_a_client_times_out() -> None:
    with FakeSocketMode() as server, pytest.raises(TimeoutError):
        server.send("events_api", {}, timeout=0.1)
    with pytest.raises(ValueError, match="envelope type"):
        FakeSocketMode().send("rtm", {})


def test_aiohttp_socket_mode_client(
    fake_slack: FakeSlack, fake_socket_mode: FakeSocketMode
) -> None:
    async def run() -> dict[str, Any]:
        web = AsyncWebClient(base_url=fake_slack.api_url, token=fake_slack.bot_token)
        client = AsyncSocketModeClient(app_token=fake_slack.app_token, web_client=web)

        async def listener(client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
            answer = SocketModeResponse(envelope_id=request.envelope_id, payload={"text": "ok"})
            await client.send_socket_mode_response(answer)

        client.socket_mode_request_listeners.append(listener)
        await client.connect()
        try:
            loop = asyncio.get_running_loop()
            command = payloads.slash_command(
                "/draft", "async", "U0ALICE", "C0GENERAL", fake_slack.response_url()
            )
            envelope_id = await loop.run_in_executor(
                None, lambda: fake_socket_mode.send_payload(command)
            )
            return await loop.run_in_executor(
                None, lambda: fake_socket_mode.wait_for_ack(envelope_id)
            )
        finally:
            await client.close()

    ack = asyncio.run(run())
    assert ack["payload"] == {"text": "ok"}
