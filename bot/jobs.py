"""The in-process job queue for slow work that must not delay an acknowledgement.

Jobs run on a small thread pool; a job that raises is logged with an error id and counted,
never propagated into the chat handler that queued it. The queue is bounded: past ``limit``
jobs waiting or running, ``submit`` raises ``Busy`` instead of growing (``has_room`` lets a
handler refuse before it writes anything).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from bot.observability import JOB_QUEUE_DEPTH, JOBS_FAILED
from bot.ratelimit import Busy

log = logging.getLogger("brandbot.jobs")


class JobQueue:
    def __init__(self, workers: int = 4, limit: int = 100) -> None:
        self.limit = limit
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="brandbot-job")
        self._lock = threading.Lock()
        self._depth = 0

    @property
    def depth(self) -> int:
        return self._depth

    def has_room(self, jobs: int = 1) -> bool:
        return self._depth + jobs <= self.limit

    def submit(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> Future[Any]:
        """Run ``fn(*args)`` soon; returns its future (its exception is logged, not raised).
        Raises Busy when ``limit`` jobs are already waiting or running."""
        job = name or getattr(fn, "__qualname__", "job")
        with self._lock:
            if self._depth >= self.limit:
                log.warning("job %s refused: %d jobs queued", job, self._depth)
                raise Busy("queue")
            self._depth += 1
            JOB_QUEUE_DEPTH.set(self._depth)

        def run() -> Any:
            try:
                return fn(*args)
            except Exception:
                error_id = uuid.uuid4().hex[:8]
                JOBS_FAILED.labels(job).inc()
                log.exception("job %s failed", job, extra={"error_id": error_id})
                raise
            finally:
                with self._lock:
                    self._depth -= 1
                    JOB_QUEUE_DEPTH.set(self._depth)

        return self._pool.submit(run)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no job is waiting or running (tests, the console, shutdown)."""
        import time

        deadline = time.monotonic() + timeout
        while self._depth and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._depth == 0

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
