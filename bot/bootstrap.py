"""Assembling the bot: settings -> database -> chat -> services -> plugins -> runtime, and
loading the active adapters at start. The background loops every mode shares live in
``bot.outbox`` (delivery and durable jobs) and ``bot.leader`` (the schedule, in one replica)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from bot.jobs import JobQueue
from bot.leader import (
    JOB_DEFAULTS,
    JOBS_TABLE,
    SCHEDULER_LOCK_KEY,
    SchedulerLeader,
    run_dataset_schedule,
    run_plugin_schedule,
    scheduled_run,
)
from bot.outbox import OutboxPump
from bot.plugin import ChatAPI, Services
from bot.plugin_loader import PluginEntry, instantiate, load_plugins
from bot.runtime import Runtime
from bot.settings import Settings
from bot.storage.db import Database

# The scheduler and the outbox pump live in their own modules; their names stay importable
# from here, and stored APScheduler jobs that name ``bot.bootstrap:run_*_schedule`` still load.
__all__ = [
    "JOBS_TABLE",
    "JOB_DEFAULTS",
    "SCHEDULER_LOCK_KEY",
    "Bot",
    "OutboxPump",
    "SchedulerLeader",
    "build_bot",
    "load_active_adapters_soon",
    "run_dataset_schedule",
    "run_plugin_schedule",
    "scheduled_run",
]

log = logging.getLogger("brandbot.bootstrap")


@dataclass
class Bot:
    settings: Settings
    db: Database
    services: Services
    runtime: Runtime


def build_bot(
    settings: Settings,
    db: Database,
    chat: ChatAPI,
    *,
    jobs: JobQueue | None = None,
    inference: Any = None,
    plugins: list[PluginEntry] | None = None,
) -> Bot:
    """``plugins`` replaces entry-point discovery (tests, embedding); settings still apply."""
    services = Services(
        settings=settings,
        db=db,
        chat=chat,
        jobs=jobs or JobQueue(limit=settings.job_queue_limit),
        inference=inference,
    )
    if plugins is None:
        loaded = load_plugins(services)
    else:
        loaded = instantiate(plugins, settings.plugins, services)
    return Bot(settings, db, services, Runtime(services, loaded))


def load_active_adapters_soon(settings: Settings, db: Database, client: Any) -> threading.Thread:
    """Load every dataset's active adapter on the inference server in the background (an
    in-process engine starts empty; vLLM may have restarted)."""
    from bot.reconciler import reconcile
    from bot.storage.models import Adapter

    def work() -> None:
        try:
            with db.session() as session:
                if session.scalar(select(Adapter.id).where(Adapter.status == "active").limit(1)):
                    loaded = reconcile(session, settings, client).loaded
                    if loaded:
                        log.info("loaded active adapters %s", loaded)
        except Exception:
            log.exception("could not load the active adapters")

    thread = threading.Thread(target=work, name="brandbot-load-adapters", daemon=True)
    thread.start()
    return thread
