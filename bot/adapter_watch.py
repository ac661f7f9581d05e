"""Keep the active adapters loaded on the model server, whatever happens to the server.

vLLM forgets every runtime-loaded adapter when it restarts, and the bot is not told: requests
for the active adapter then fail with "unknown model" until someone loads it again. Every bot
replica runs one :class:`AdapterWatcher`: it loads what is missing at start and then checks
every ``interval`` seconds, so a restarted server serves the tuned adapters again within one
interval of coming back, on every replica, with no one restarting the bot. Loading an adapter
that another replica loaded a moment earlier is harmless: the name is listed and skipped, and
a "name already loaded" answer is logged and ignored.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from bot.periodic import Periodic
from bot.reconciler import reconcile
from bot.settings import Settings
from bot.storage import Database
from bot.storage.models import Adapter
from serving.client import InferenceClient

log = logging.getLogger("brandbot.adapters")


class AdapterWatcher:
    """A daemon thread that calls :func:`bot.reconciler.reconcile` every ``interval`` seconds."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        client: InferenceClient,
        *,
        interval: float | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.client = client
        self.interval = settings.adapter_check_seconds if interval is None else interval
        self.reloads = 0
        self._periodic = Periodic(
            "brandbot-adapters", self.interval, self.check, immediately=True, logger=log,
            failure="could not check the active adapters",
        )  # fmt: skip

    def check(self) -> list[str]:
        """One pass: load every active adapter the server does not list and unload the ones the
        registry no longer uses; returns the names it loaded."""
        with self.db.session() as session:
            if session.scalar(select(Adapter.id).limit(1)) is None:
                return []
            loaded = reconcile(session, self.settings, self.client).loaded
        if loaded:
            self.reloads += 1
            log.info("loaded active adapters on the model server: %s", ", ".join(loaded))
        return loaded

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
        self._periodic.join(timeout=10)
