"""An ASGI app on a real port for the length of a ``with`` block (tests and benchmarks)."""

from __future__ import annotations

import threading
import time

import uvicorn
from starlette.types import ASGIApp

from serving.server import uvicorn_config


class BackgroundServer:
    """uvicorn in a thread, for tests and benchmarks: ``with BackgroundServer(app) as url:``."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = uvicorn.Server(uvicorn_config(app, host, port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.host = host

    @property
    def url(self) -> str:
        sockets = [s for srv in self.server.servers for s in srv.sockets]
        port = sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
