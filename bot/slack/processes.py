"""Several HTTP worker processes on one port, each with its own listening socket.

uvicorn's own ``--workers`` shares one listening socket between the processes, and whichever
process accepts first keeps the connection. Slack and load balancers keep connections open,
so a burst that arrives on a few long-lived connections lands on one worker while the others
idle. Here every worker binds the port itself with ``SO_REUSEPORT`` and the kernel spreads
new connections evenly over them. The supervisor restarts a worker that dies and stops them
all on SIGTERM or Ctrl-C. Where the platform has no ``SO_REUSEPORT`` it falls back to uvicorn's
shared socket.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from types import FrameType
from typing import Any

import uvicorn

log = logging.getLogger("brandbot.slack")
RESTART_DELAY = 1.0  # seconds between a worker's death and its replacement
STOP_TIMEOUT = 15.0  # seconds a worker gets to finish its requests on shutdown


def reuse_port_available() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def bind_reuse_port(host: str, port: int) -> socket.socket:
    """A listening-ready socket on (host, port) that other workers can bind as well."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def serve_worker(
    ready: EventType, app_factory: str, host: str, port: int, options: dict[str, Any]
) -> None:
    """One worker process: its own socket on the shared port, one uvicorn server; ``ready``
    is set once it serves."""
    config = uvicorn.Config(app_factory, factory=True, host=host, port=port, **options)
    server = uvicorn.Server(config)
    sock = bind_reuse_port(host, port)

    async def serve() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            ready.set()
        await serving

    asyncio.run(serve())


class Supervisor:
    """Starts ``workers`` processes running ``target(ready, *args)`` and keeps them running.

    A worker that dies after it set ``ready`` is replaced; one that dies before is broken
    (a taken port, bad settings), so the supervisor stops them all and raises.
    """

    def __init__(self, workers: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.workers = workers
        self.target = target
        self.args = args
        self._context = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess] = []
        self._ready: dict[int, EventType] = {}
        self._stopping = False

    def _spawn(self) -> BaseProcess:
        ready = self._context.Event()
        proc = self._context.Process(target=self.target, args=(ready, *self.args))
        proc.start()
        self._ready[id(proc)] = ready
        return proc

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._procs = [self._spawn() for _ in range(self.workers)]
            while not self._stopping:
                for i, proc in enumerate(self._procs):
                    if not proc.is_alive() and not self._stopping:
                        if not self._ready.pop(id(proc)).is_set():
                            raise RuntimeError(
                                f"a worker exited during start-up (exit code {proc.exitcode}); "
                                "its error is above"
                            )
                        log.warning("worker %s exited with %s; starting another",
                                    proc.pid, proc.exitcode)  # fmt: skip
                        time.sleep(RESTART_DELAY)
                        self._procs[i] = self._spawn()
                time.sleep(0.2)
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _shutdown(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: uvicorn finishes the requests under way
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker %s did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.join()
