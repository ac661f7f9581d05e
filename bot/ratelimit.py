"""Per-user rate limits on model work, and the "busy" refusal shared with the job queue.

One ``/draft -n 3`` starts up to nine generations and every Regenerate press queues more, so a
person (or a script) could fill the model server and the job queue for everyone. ``admit``
is the one call a plugin makes before it queues model work: it takes ``cost`` from the user's
bucket for that action and checks the job queue has room, and raises ``Busy`` otherwise; the
runtime answers ``Busy`` with its message and rolls the handler's transaction back.

The buckets live in memory, per process: a restart forgets them, and with several worker
processes each has its own (the limit is per process). That is enough to stop a runaway user;
it is not an account quota.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.observability import BUSY_REFUSALS

if TYPE_CHECKING:
    from bot.plugin import Context

BUSY_MESSAGE = "I'm busy right now, try again in a minute."
MAX_BUCKETS = 10_000  # full (idle) buckets are dropped past this many


class Busy(Exception):
    """Refused for now (a rate limit or a full queue); the message is for the user."""

    def __init__(self, reason: str, message: str = BUSY_MESSAGE) -> None:
        super().__init__(message)
        self.reason = reason
        BUSY_REFUSALS.labels(reason).inc()


class RateLimiter:
    """Token buckets per (user, action): ``per_minute`` tokens, refilled evenly over a minute.

    Thread-safe. ``per_minute`` is read on every call (a callable), so the setting in force
    applies; 0 turns the limit off.
    """

    def __init__(
        self,
        per_minute: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, user: str, action: str, cost: int = 1) -> None:
        """Spend ``cost`` tokens of ``user``'s ``action`` bucket, or raise Busy (spending none)."""
        rate = self.per_minute()
        if rate <= 0:
            return
        cost = max(1, min(cost, rate))  # a request larger than the bucket waits for a full one
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get((user, action), (float(rate), now))
            tokens = min(float(rate), tokens + (now - at) * rate / 60.0)
            if tokens < cost:
                self._buckets[(user, action)] = (tokens, now)
                raise Busy(f"rate:{action}")
            self._buckets[(user, action)] = (tokens - cost, now)
            if len(self._buckets) > MAX_BUCKETS:
                self._forget_idle(rate, now)

    def _forget_idle(self, rate: int, now: float) -> None:
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * rate / 60.0 >= rate:
                del self._buckets[key]


def admit(ctx: Context, user: str, action: str, cost: int = 1) -> None:
    """Before queueing model work for ``user``: raise Busy when they are over their rate for
    ``action`` or the job queue is full."""
    services = ctx.services
    if not services.jobs.has_room():
        raise Busy("queue")
    services.limits.take(user, action, cost)
