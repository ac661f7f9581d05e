"""Coalescing repeated requests for the same work: ``Debouncer(delay, fn).trigger(key)``.

The first ``trigger(key)`` schedules ``fn(key)`` ``delay`` seconds later; further triggers of
the same key before it runs are absorbed by it, so a burst of events (ten approvals, a training
run finishing while its report is posted) costs one call per key. A trigger that arrives while
``fn(key)`` runs schedules one more call, since the call under way may have read the state
before the change. One daemon thread runs the calls, one at a time; an error is logged and the
next calls still run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
log = logging.getLogger("brandbot.debounce")


class Debouncer(Generic[K]):
    def __init__(self, delay: float, fn: Callable[[K], None], *, name: str = "debounce") -> None:
        self.delay = delay
        self.fn = fn
        self._due: dict[K, float] = {}
        self._busy = False
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def trigger(self, key: K) -> None:
        """Call ``fn(key)`` within ``delay`` seconds, once for all triggers until then."""
        with self._cond:
            if key not in self._due:
                self._due[key] = time.monotonic() + self.delay
                self._cond.notify_all()

    def flush(self) -> None:
        """Make every call that is due later due now (shutdown, tests)."""
        with self._cond:
            now = time.monotonic()
            self._due = dict.fromkeys(self._due, now)
            self._cond.notify_all()

    def pending(self) -> int:
        """How many calls are due or running."""
        with self._cond:
            return len(self._due) + (1 if self._busy else 0)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until nothing is due or running (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._due or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    ready = [k for k, at in self._due.items() if at <= now]
                    if ready:
                        key = min(ready, key=lambda k: self._due[k])
                        del self._due[key]
                        self._busy = True
                        break
                    wait = min(self._due.values(), default=now + 3600) - now
                    self._cond.wait(wait)
                else:
                    return
            try:
                self.fn(key)
            except Exception:
                log.exception("debounced call failed for %r", key)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
