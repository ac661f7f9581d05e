"""Work that follows an ack (a command's or a button's handler) starts once a burst of Slack
requests has been acked.

A handler runs on a worker thread, and every worker thread competes with the event loop for
the GIL: started while other requests of a burst still wait for their ack, the handlers'
work delays those acks (the loop waits for the GIL after each socket write). So work handed
in while requests keep arriving is held, and released when no request has arrived for
``quiet`` seconds, or when the oldest held work has waited ``max_hold`` seconds, so that
steady traffic never starves it. A quiet workspace sees at most ``quiet`` seconds of delay.

Nothing held here has been promised durable: the ack only says the request was received,
as when the work waits in the worker pool's queue. ``release_all`` hands everything held to
the pool (shutdown).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

Work = Callable[[], Any]


class AfterAck:
    """Holds post-ack work on the event loop's side and hands it to ``submit`` (a worker
    pool) in arrival order. ``arrived`` and ``run`` are called on the event loop."""

    def __init__(
        self, submit: Callable[[Work], Any], *, quiet: float = 0.005, max_hold: float = 0.1
    ) -> None:
        self.submit = submit
        self.quiet = quiet
        self.max_hold = max_hold
        self._lock = threading.Lock()
        self._held: list[Work] = []
        self._first_held = 0.0
        self._last_arrival = float("-inf")
        self._timer: asyncio.TimerHandle | None = None

    def arrived(self) -> None:
        """A Slack request arrived: post-ack work waits until arrivals pause."""
        self._last_arrival = asyncio.get_running_loop().time()

    def run(self, work: Work) -> None:
        """Hand ``work`` to the pool now if no request arrived in the last ``quiet`` seconds
        and nothing is held, else hold it until the burst is acked."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        with self._lock:
            if not self._held and now - self._last_arrival >= self.quiet:
                self.submit(work)
                return
            if not self._held:
                self._first_held = now
            self._held.append(work)
        if self._timer is None:
            self._timer = loop.call_later(min(self.quiet, self.max_hold), self._check)

    def _check(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        quiet_left = self.quiet - (now - self._last_arrival)
        hold_left = self.max_hold - (now - self._first_held)
        if quiet_left > 0 and hold_left > 0:
            self._timer = loop.call_later(min(quiet_left, hold_left), self._check)
            return
        self.release_all()

    def release_all(self) -> None:
        """Hand every held piece of work to the pool (from any thread)."""
        with self._lock:
            held, self._held = self._held, []
            for work in held:
                self.submit(work)
