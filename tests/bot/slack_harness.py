"""Running the real Slack bridge (bolt) behind the real web app on uvicorn, in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from bot.jobs import JobQueue
from bot.plugin import Services
from bot.plugin_loader import PluginEntry, instantiate
from bot.runtime import Runtime
from bot.settings import Settings
from bot.slack.app import SlackBridge
from bot.slack.chat import SlackChat
from bot.storage import Database
from bot.testkit.slack import FakeSlack
from bot.web import Readiness, build_web_app
from serving.client import InferenceClient
from tests.conftest import free_port


@dataclass
class Served:
    url: str
    runtime: Runtime
    bridge: SlackBridge
    chat: SlackChat

    @property
    def events_url(self) -> str:
        return f"{self.url}/slack/events"


@contextmanager
def serve_bot(
    db: Database,
    fake: FakeSlack,
    secret: str,
    plugins: list[PluginEntry],
    config: dict[str, object] | None = None,
    admins: list[str] | None = None,
    inference: InferenceClient | None = None,
    team_ids: list[str] | None = None,
    settings: dict[str, Any] | None = None,
    jobs: JobQueue | None = None,
) -> Iterator[Served]:
    config_ = Settings(
        slack_api_url=fake.api_url, admins=admins or [], plugins=config or {}, **(settings or {})
    )
    chat = SlackChat(fake.bot_token, fake.api_url)
    services = Services(
        settings=config_, db=db, chat=chat, jobs=jobs or JobQueue(), inference=inference
    )
    runtime = Runtime(services, instantiate(plugins, config or {}, services))
    bridge = SlackBridge(
        runtime, chat, bot_token=fake.bot_token, api_url=fake.api_url, signing_secret=secret,
        team_ids=team_ids or (),
    )  # fmt: skip
    readiness = Readiness({"database": db.check_connection})
    app = build_web_app(bridge, secret, readiness)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", runtime, bridge, chat)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        bridge.pool.shutdown(wait=True)
        chat.close()
