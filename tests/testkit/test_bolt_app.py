"""A real bolt-python App against the kit: signed HTTP requests in, Web API calls out.

The app runs on uvicorn (bolt's Starlette adapter) in a thread; requests come from
``signed_post``; what the app says lands in the fake Web API's recorded calls. The same app
also runs over Socket Mode through the fake websocket server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from slack_bolt import Ack, App, BoltRequest, Respond, Say
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.starlette import SlackRequestHandler
from slack_sdk import WebClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from bot.testkit.socket_mode import FakeSocketMode


class AsgiServer:
    """Serve an ASGI app with uvicorn on a free port of 127.0.0.1, in a thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> AsgiServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def build_app(fake: FakeSlack, secret: str) -> App:
    app = App(
        signing_secret=secret,
        client=WebClient(base_url=fake.api_url, token=fake.bot_token),
    )

    @app.command("/draft")
    def draft(ack: Ack, command: dict[str, Any], say: Say, respond: Respond) -> None:
        ack(f"Drafting “{command['text']}”…")
        say(f"Draft: {command['text']}!")
        respond(text="Posted the draft.", replace_original=True)

    @app.event("reaction_added")
    def reaction(event: dict[str, Any], client: WebClient, request: BoltRequest) -> None:
        item = event["item"]
        client.reactions_add(channel=item["channel"], timestamp=item["ts"], name="eyes")
        retry = request.headers.get("x-slack-retry-num", ["none"])[0]
        client.chat_postMessage(
            channel=item["channel"], thread_ts=item["ts"], text=f"retry={retry}"
        )

    @app.action("approve")
    def approve(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        respond(text=f"Approved {body['actions'][0]['value']}")

    @app.view("draft_modal")
    def submit(ack: Ack, view: dict[str, Any]) -> None:
        brief = view["state"]["values"]["brief"]["text"]["value"]
        if len(brief) < 3:
            ack(response_action="errors", errors={"brief": "Too short"})
        else:
            ack()

    @app.shortcut("save_example")
    def save(ack: Ack, shortcut: dict[str, Any], client: WebClient) -> None:
        ack()
        client.views_open(
            trigger_id=shortcut["trigger_id"],
            view={
                "type": "modal",
                "callback_id": "draft_modal",
                "private_metadata": shortcut["message_ts"],
                "title": {"type": "plain_text", "text": "Save"},
                "blocks": [],
            },
        )

    return app


@pytest.fixture
def bolt_url(fake_slack: FakeSlack, slack_signing_secret: str) -> Iterator[str]:
    app = build_app(fake_slack, slack_signing_secret)
    handler = SlackRequestHandler(app)

    async def endpoint(request: Request) -> Response:
        return await handler.handle(request)

    asgi = Starlette(routes=[Route("/slack/events", endpoint=endpoint, methods=["POST"])])
    with AsgiServer(asgi) as server:
        yield f"{server.url}/slack/events"


def test_signed_slash_command_is_acked_and_says(
    fake_slack: FakeSlack, slack_signing_secret: str, bolt_url: str
) -> None:
    fake_slack.add_user("U0ALICE", "alice")
    response_url = fake_slack.response_url("draft-1")
    command = payloads.slash_command("/draft", "socks", "U0ALICE", "C0GENERAL", response_url)
    started = time.monotonic()
    answer = signed_post(bolt_url, slack_signing_secret, command)
    assert answer.status_code == 200
    assert time.monotonic() - started < 3
    assert answer.text == "Drafting “socks”…"

    [post] = fake_slack.wait_for("chat.postMessage")
    assert post.args["channel"] == "C0GENERAL"
    assert post.args["text"] == "Draft: socks!"
    assert post.token == fake_slack.bot_token
    assert [m["text"] for m in fake_slack.messages("C0GENERAL")] == ["Draft: socks!"]
    fake_slack.wait_for("response_url")
    assert fake_slack.responses("draft-1") == [
        {"text": "Posted the draft.", "replace_original": True}
    ]


def test_bad_and_stale_signatures_get_401(
    fake_slack: FakeSlack, slack_signing_secret: str, bolt_url: str
) -> None:
    command = payloads.slash_command(
        "/draft", "x", "U0ALICE", "C0GENERAL", fake_slack.response_url()
    )
    assert signed_post(bolt_url, "not-the-secret", command).status_code == 401
    stale = int(time.time()) - 600
    assert signed_post(bolt_url, slack_signing_secret, command, timestamp=stale).status_code == 401
    time.sleep(0.1)
    assert fake_slack.calls_for("chat.postMessage") == []


def test_events_with_retry_headers(
    fake_slack: FakeSlack, slack_signing_secret: str, bolt_url: str
) -> None:
    ts = fake_slack.add_message("C0GENERAL", "Our new tagline", user="U0ALICE")
    event = payloads.event_callback(
        payloads.reaction_added("U0BOB", "white_check_mark", "C0GENERAL", ts, "U0ALICE")
    )
    answer = signed_post(
        bolt_url, slack_signing_secret, event, retry_num=1, retry_reason="http_timeout"
    )
    assert answer.status_code == 200
    [post] = fake_slack.wait_for("chat.postMessage")
    assert post.args["text"] == "retry=1"
    assert post.args["thread_ts"] == ts
    assert fake_slack.message("C0GENERAL", ts)["reactions"][0]["name"] == "eyes"  # type: ignore[index]


def test_url_verification(slack_signing_secret: str, bolt_url: str) -> None:
    answer = signed_post(bolt_url, slack_signing_secret, payloads.url_verification("ch4ll"))
    assert answer.status_code == 200
    assert answer.json() == {"challenge": "ch4ll"}


def test_interactivity(fake_slack: FakeSlack, slack_signing_secret: str, bolt_url: str) -> None:
    ts = fake_slack.add_message("C0GENERAL", "Draft 7", user=fake_slack.bot_user_id)
    url = fake_slack.response_url("action-1")
    action = payloads.block_actions("U0ALICE", "approve", "draft-7", "C0GENERAL", ts, url)
    assert signed_post(bolt_url, slack_signing_secret, action).status_code == 200
    fake_slack.wait_for("response_url")
    assert fake_slack.responses("action-1") == [{"text": "Approved draft-7"}]

    short = payloads.view_submission("U0ALICE", "draft_modal", {"brief": {"text": "ok"}})
    answer = signed_post(bolt_url, slack_signing_secret, short)
    assert answer.json() == {"response_action": "errors", "errors": {"brief": "Too short"}}
    good = payloads.view_submission("U0ALICE", "draft_modal", {"brief": {"text": "socks"}})
    answer = signed_post(bolt_url, slack_signing_secret, good)
    assert answer.status_code == 200
    assert answer.text == ""

    message = fake_slack.message("C0GENERAL", ts)
    assert message is not None
    shortcut = payloads.message_shortcut("U0ALICE", "save_example", "C0GENERAL", message)
    assert signed_post(bolt_url, slack_signing_secret, shortcut).status_code == 200
    [opened] = fake_slack.wait_for("views.open")
    assert opened.args["trigger_id"] == shortcut["trigger_id"]
    assert opened.args["view"]["private_metadata"] == ts


def test_bolt_over_socket_mode(
    fake_slack: FakeSlack, fake_socket_mode: FakeSocketMode, slack_signing_secret: str
) -> None:
    app = build_app(fake_slack, slack_signing_secret)
    handler = SocketModeHandler(app, app_token=fake_slack.app_token)
    handler.connect()
    try:
        command = payloads.slash_command(
            "/draft", "hats", "U0ALICE", "C0GENERAL", fake_slack.response_url("sm-1")
        )
        envelope_id = fake_socket_mode.send_payload(command)
        ack = fake_socket_mode.wait_for_ack(envelope_id)
        assert ack["payload"] == {"text": "Drafting “hats”…"}
        [post] = fake_slack.wait_for("chat.postMessage")
        assert post.args["text"] == "Draft: hats!"

        ts = fake_slack.add_message("C0GENERAL", "tagline", user="U0ALICE")
        event = payloads.event_callback(payloads.reaction_added("U0BOB", "+1", "C0GENERAL", ts))
        envelope_id = fake_socket_mode.send_payload(event, retry_attempt=2)
        fake_socket_mode.wait_for_ack(envelope_id)
        posts = fake_slack.wait_for("chat.postMessage", count=2)
        assert posts[-1].args["text"] == "retry=2"
    finally:
        handler.client.auto_reconnect_enabled = False
        fake_socket_mode.close_connections()
        handler.close()
    assert json.loads(json.dumps(fake_socket_mode.acks()))  # acks are plain JSON
