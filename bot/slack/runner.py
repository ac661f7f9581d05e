"""Running the bot against Slack: the HTTP Events API (one port, uvicorn, a real listen
backlog) or Socket Mode (with the same health and metrics port when one is given)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from bot.adapter_watch import AdapterWatcher
from bot.bootstrap import (
    Bot,
    OutboxPump,
    SchedulerLeader,
    build_bot,
)
from bot.event_spool import EventSpool, SpoolReplayer, spool_folder
from bot.plugin_loader import PluginEntry
from bot.registry import serving_problem
from bot.settings import Settings
from bot.slack.app import SlackBridge
from bot.slack.chat import SlackChat
from bot.storage.db import Database
from bot.web import Readiness, build_web_app
from serving.client import InferenceClient

log = logging.getLogger("brandbot.slack")
BACKLOG = 2048
# A real listen backlog (a small one drops connections under bursts), our own logging, and
# keep-alive long enough for Slack's connection reuse.
UVICORN_OPTIONS: dict[str, Any] = {
    "backlog": BACKLOG, "log_config": None, "access_log": False, "timeout_keep_alive": 30,
}  # fmt: skip


class SlackRuntime:
    """Everything a Slack-connected bot process runs."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        inference: InferenceClient | None = None,
        plugins: list[PluginEntry] | None = None,
    ) -> None:
        if settings.slack_bot_token is None:
            raise ValueError("SLACK_BOT_TOKEN is not set")
        token = settings.slack_bot_token.get_secret_value()
        self.settings = settings
        self.chat = SlackChat(token, settings.slack_api_url)
        if inference is None:
            from bot.inference import LazyInference

            inference = LazyInference(settings)
        self.bot: Bot = build_bot(settings, db, self.chat, inference=inference, plugins=plugins)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        secret = settings.slack_signing_secret
        self.bridge = SlackBridge(
            self.bot.runtime,
            self.chat,
            bot_token=token,
            api_url=settings.slack_api_url,
            signing_secret=secret.get_secret_value() if secret else None,
            team_ids=settings.slack_team_ids,
        )
        self.slack_status = "not checked yet"
        self.readiness = Readiness(
            {
                "database": self._check_db,
                "slack": lambda: None if self.slack_status == "ok" else self.slack_status,
                "inference": self._check_inference,
            }
        )
        self.web = build_web_app(
            self.bridge, secret.get_secret_value() if secret else None, self.readiness
        )
        self.pump = OutboxPump(self.bot.runtime)
        self.leader = SchedulerLeader(self.bot.runtime, db)
        self.adapters = AdapterWatcher(settings, db, inference)
        self.replayer: SpoolReplayer | None = None
        if settings.spool_max_events > 0:
            from bot.gate import scrubber_for_settings

            spool = EventSpool(
                spool_folder(settings.data_dir),
                max_events=settings.spool_max_events,
                scrub=scrubber_for_settings(settings),
            )
            self.bridge.spool = spool
            self.replayer = SpoolReplayer(
                spool, self.bridge.replay_event, interval=settings.spool_replay_seconds
            )

    def _check_db(self) -> str | None:
        self.bot.db.check_connection()
        return None

    def _check_inference(self) -> str | None:
        """Ready once the base model is loaded (or the model server answered) and every active
        adapter is on it; asking starts loading an in-process model."""
        client = self.bot.services.inference
        if client is None:
            return "not configured"
        with self.bot.db.session() as session:
            return serving_problem(session, client)

    def check_slack(self) -> None:
        try:
            auth = self.chat.client.auth_test()
            self.slack_status = "ok"
        except Exception as exc:
            self.slack_status = f"auth.test failed: {exc}"[:200]
            log.warning("Slack auth.test failed: %s", exc)
            return
        if not self.settings.slack_team_ids and auth.get("team_id"):
            self.bridge.team_ids = {str(auth["team_id"])}  # the bot token's own workspace
        if not self.bridge.team_ids:
            log.warning("no workspace known (BRANDBOT_SLACK_TEAM_IDS): requests from any pass")

    def start_background(self) -> None:
        self.check_slack()
        self.adapters.start()
        self.pump.start()
        if self.replayer is not None:
            self.replayer.start()
        self.leader.campaign(self.settings.leader_bid_seconds)

    def stop(self) -> None:
        self.adapters.stop()
        if self.replayer is not None:
            self.replayer.stop()
        self.pump.stop()
        self.leader.stop()
        self.bridge.close()
        self.chat.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Any) -> AsyncIterator[None]:
        """Background work (outbox pump, scheduler bid) for the life of one worker process."""
        self.start_background()
        try:
            yield
        finally:
            self.stop()

    def uvicorn_server(self, host: str, port: int) -> uvicorn.Server:
        config = uvicorn.Config(self.web, host=host, port=port, **UVICORN_OPTIONS)
        return uvicorn.Server(config)

    def run_http(self, host: str, port: int) -> None:
        self.start_background()
        log.info("serving Slack over HTTP on %s:%s/slack/events", host, port)
        try:
            self.uvicorn_server(host, port).run()
        finally:
            self.stop()

    @staticmethod
    def run_http_workers(settings: Settings, host: str, port: int, workers: int) -> None:
        """Serve HTTP from ``workers`` processes on one port, each with its own listening
        socket so the kernel spreads connections over them (``bot.slack.processes``); a worker
        that dies is restarted. Each builds its own runtime from the environment
        (``worker_app``); the database must be PostgreSQL, which every process can write at
        once, and whose advisory lock lets exactly one of them run the schedule."""
        from bot.slack.processes import Supervisor, reuse_port_available, serve_worker

        if workers > 1 and settings.resolved_database_url.startswith("sqlite"):
            raise ValueError(
                "--workers above 1 needs PostgreSQL (BRANDBOT_DATABASE_URL): SQLite has one "
                "writer at a time and its schedule lock only holds within one process"
            )
        log.info("serving Slack over HTTP on %s:%s/slack/events, %d workers", host, port, workers)
        factory = "bot.slack.runner:worker_app"
        if reuse_port_available():
            Supervisor(workers, serve_worker, (factory, host, port, UVICORN_OPTIONS)).run()
        else:  # one shared socket: the first worker to accept keeps the connection
            uvicorn.run(
                factory, factory=True, host=host, port=port, workers=workers, **UVICORN_OPTIONS
            )

    def run_socket_mode(self, host: str, port: int | None) -> None:
        from slack_bolt.adapter.socket_mode.websockets import AsyncSocketModeHandler
        from slack_sdk.web.async_client import AsyncWebClient

        if self.settings.slack_app_token is None:
            raise ValueError("SLACK_APP_TOKEN is not set")
        app_token = self.settings.slack_app_token.get_secret_value()
        self.start_background()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            handler = AsyncSocketModeHandler(
                self.bridge.app,
                app_token,
                web_client=AsyncWebClient(base_url=self.settings.slack_api_url),
            )
            server = self.uvicorn_server(host, port) if port is not None else None
            web = asyncio.ensure_future(server.serve()) if server else None
            await handler.connect_async()  # type: ignore[no-untyped-call]
            log.info("connected to Slack over Socket Mode")
            await self._stopping.wait()
            await handler.close_async()  # type: ignore[no-untyped-call]
            if server is not None and web is not None:
                server.should_exit = True
                await web

        try:
            asyncio.run(main())
        finally:
            self.stop()

    def stop_socket_mode(self) -> None:
        """Ask a running ``run_socket_mode`` (in another thread) to disconnect and return."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)


def worker_app() -> Any:
    """The ASGI app of one ``--workers`` process: settings and database from the environment."""
    from bot.settings import load_settings

    settings = load_settings()
    configure_process_logging(settings)
    runtime = SlackRuntime(settings, Database(settings.resolved_database_url))
    runtime.web.router.lifespan_context = runtime.lifespan
    return runtime.web


def configure_process_logging(settings: Settings) -> None:
    """Structured logs for a Slack-connected process, with every secret it holds masked."""
    from bot.observability import configure_logging, settings_secrets

    configure_logging(settings_secrets(settings))
