"""One callable run every few seconds on a daemon thread, for the bot's background chores.

The outbox pump, the event replayer, the adapter watcher, the lease heartbeat and the scheduler
campaign all need the same loop: run, wait ``interval`` seconds or until stopped, run again. A
round that raises is logged and the next round runs as usual, so one bad round (the database
briefly away) never ends the chore. ``stop`` wakes the wait at once; a round already running is
finished, not interrupted (``join`` waits for it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("brandbot.periodic")


class Periodic:
    """Calls ``action`` every ``interval`` seconds on a daemon thread named ``name`` until
    :meth:`stop`; the first call is at once when ``immediately``, else after one interval.
    ``action`` may call :meth:`stop` itself to end the loop after its round. A failed round is
    logged on ``logger`` (the chore's own; ``brandbot.periodic`` when None) with the message
    ``failure``."""

    def __init__(
        self,
        name: str,
        interval: float,
        action: Callable[[], object],
        *,
        immediately: bool,
        logger: logging.Logger | None = None,
        failure: str | None = None,
    ) -> None:
        self.name = name
        self.log = logger or log
        self.failure = failure or f"{name}: round failed; running again"
        self.interval = interval
        self.action = action
        self.immediately = immediately
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end: it runs no further round and its wait returns at once."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (a no-op before :meth:`start`)."""
        if self._thread.is_alive():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        if not self.immediately and self._stop.wait(self.interval):
            return
        while True:
            try:
                self.action()
            except Exception:
                self.log.exception(self.failure)
            if self._stop.wait(self.interval):
                return
