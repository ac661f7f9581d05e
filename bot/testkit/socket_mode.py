"""A fake Slack Socket Mode endpoint: a real websocket server on 127.0.0.1.

It speaks Slack's Socket Mode protocol to any client (slack_sdk's ``SocketModeClient``, and
so bolt's ``SocketModeHandler``):

1. the app calls ``apps.connections.open`` with its app-level token; the fake Web API
   (:meth:`bot.testkit.slack.FakeSlack.attach_socket_mode`) answers with :attr:`url`;
2. the app opens the websocket and receives ``{"type": "hello", ...}``;
3. the test delivers an envelope with :meth:`FakeSocketMode.send` (``events_api``,
   ``slash_commands`` or ``interactive``): ``{"envelope_id", "type", "payload",
   "accepts_response_payload", ...}``;
4. the app acks with ``{"envelope_id": ..., "payload": {...}}`` (the payload is optional: a
   slash command's or a view submission's response), which :meth:`wait_for_ack` returns.

:meth:`FakeSocketMode.disconnect` sends Slack's ``disconnect`` message, which makes a client
reconnect through ``apps.connections.open``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from bot.testkit.payloads import API_APP_ID, envelope_type

__all__ = ["ENVELOPE_TYPES", "Connection", "FakeSocketMode"]

ENVELOPE_TYPES = frozenset({"events_api", "slash_commands", "interactive"})

#: Interactive payloads whose ack may carry a response (``response_action``...).
_RESPONSE_PAYLOAD_TYPES = frozenset({"view_submission", "block_suggestion"})


@dataclass
class Connection:
    """One websocket connection a client opened."""

    id: int
    path: str
    headers: dict[str, str]
    connected_at: float = field(default_factory=time.time)
    closed_at: float | None = None
    _ws: ServerConnection | None = field(default=None, repr=False, compare=False)

    @property
    def open(self) -> bool:
        return self.closed_at is None


class FakeSocketMode:
    """A Socket Mode websocket server at ``ws://127.0.0.1:PORT/link``.

    Use it as a context manager or call :meth:`start` / :meth:`stop`; attach it to a
    :class:`~bot.testkit.slack.FakeSlack` so ``apps.connections.open`` returns its URL (the
    ``fake_socket_mode`` fixture does both).
    """

    def __init__(self, app_id: str = API_APP_ID, ping_interval: float | None = 10) -> None:
        self.app_id = app_id
        self._ping_interval = ping_interval
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._server: Server | None = None
        self._serve_thread: threading.Thread | None = None
        self.connections: list[Connection] = []
        #: Every JSON message clients sent (acks), oldest first.
        self.received: list[dict[str, Any]] = []
        #: Envelopes sent, by envelope id.
        self.sent: dict[str, dict[str, Any]] = {}
        self._acks: dict[str, dict[str, Any]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeSocketMode:
        """Start serving on a random free port of 127.0.0.1 (in a daemon thread)."""
        if self._server is not None:
            return self
        self._server = serve(
            self._handle,
            "127.0.0.1",
            0,
            compression=None,
            ping_interval=self._ping_interval,
            close_timeout=1,
        )
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, name="fake-slack-socket-mode", daemon=True
        )
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Close every connection and stop serving."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        if self._serve_thread is not None:
            self._serve_thread.join(timeout=5)
            self._serve_thread = None

    def __enter__(self) -> FakeSocketMode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeSocketMode is not started")
        return int(self._server.socket.getsockname()[1])

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/link`` (``apps.connections.open`` adds a ticket to it)."""
        return f"ws://127.0.0.1:{self.port}/link"

    # -- connections -------------------------------------------------------------------------

    def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        with self._changed:
            connection = Connection(
                id=len(self.connections) + 1,
                path=request.path if request is not None else "",
                headers={k.lower(): v for k, v in request.headers.raw_items()}
                if request is not None
                else {},
                _ws=ws,
            )
            self.connections.append(connection)
            open_now = sum(1 for c in self.connections if c.open)
            self._changed.notify_all()
        hello = {
            "type": "hello",
            "num_connections": open_now,
            "debug_info": {
                "host": "applink-fake-127-0-0-1",
                "build_number": 1,
                "approximate_connection_time": 18060,
            },
            "connection_info": {"app_id": self.app_id},
        }
        try:
            self._send(ws, hello)
            for raw in ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                with self._changed:
                    self.received.append(message)
                    envelope_id = message.get("envelope_id")
                    if isinstance(envelope_id, str) and envelope_id not in self._acks:
                        self._acks[envelope_id] = message
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            with self._changed:
                connection.closed_at = time.time()
                self._changed.notify_all()

    def _send(self, ws: ServerConnection, message: dict[str, Any]) -> None:
        with self._send_lock:
            ws.send(json.dumps(message))

    def wait_for_connection(self, count: int = 1, timeout: float = 5.0) -> Connection:
        """Block until ``count`` connections were opened in all; returns the latest open one."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                live = [c for c in self.connections if c.open]
                if len(self.connections) >= count and live:
                    return live[-1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"expected {count} Socket Mode connection(s) within {timeout}s, "
                        f"got {len(self.connections)} ({len(live)} open)"
                    )
                self._changed.wait(left)

    def disconnect(self, reason: str = "refresh_requested") -> None:
        """Send Slack's ``disconnect`` message to every open connection (clients reconnect)."""
        message = {
            "type": "disconnect",
            "reason": reason,
            "debug_info": {"host": "applink-fake-127-0-0-1"},
        }
        with self._lock:
            live = [c for c in self.connections if c.open and c._ws is not None]
        for connection in live:
            assert connection._ws is not None
            with contextlib.suppress(ConnectionClosed):
                self._send(connection._ws, message)

    def close_connections(self, code: int = 1000, reason: str = "") -> None:
        """Close every open connection from the server side (a client then reconnects unless
        it is closing; closing the server side first also makes slack_sdk's builtin client
        shut down faster)."""
        with self._lock:
            live = [c for c in self.connections if c.open and c._ws is not None]
        for connection in live:
            assert connection._ws is not None
            connection._ws.close(code, reason)

    # -- envelopes ---------------------------------------------------------------------------

    def send(
        self,
        envelope_type: str,
        payload: dict[str, Any],
        retry_attempt: int = 0,
        retry_reason: str = "",
        accepts_response_payload: bool | None = None,
        envelope_id: str | None = None,
        timeout: float = 5.0,
    ) -> str:
        """Deliver ``payload`` in an envelope to the newest open connection (waiting up to
        ``timeout`` for one); returns the envelope id to pass to :meth:`wait_for_ack`."""
        if envelope_type not in ENVELOPE_TYPES:
            raise ValueError(f"unknown envelope type {envelope_type!r}")
        connection = self.wait_for_connection(timeout=timeout)
        if accepts_response_payload is None:
            accepts_response_payload = envelope_type == "slash_commands" or (
                envelope_type == "interactive" and payload.get("type") in _RESPONSE_PAYLOAD_TYPES
            )
        envelope: dict[str, Any] = {
            "envelope_id": envelope_id or str(uuid.uuid4()),
            "payload": payload,
            "type": envelope_type,
            "accepts_response_payload": accepts_response_payload,
        }
        if envelope_type == "events_api":
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason
        with self._lock:
            self.sent[envelope["envelope_id"]] = envelope
        assert connection._ws is not None
        self._send(connection._ws, envelope)
        return str(envelope["envelope_id"])

    def send_payload(self, payload: dict[str, Any], **kwargs: Any) -> str:
        """:meth:`send` with the envelope type read from the payload (see
        :func:`bot.testkit.payloads.envelope_type`)."""
        return self.send(envelope_type(payload), payload, **kwargs)

    def wait_for_ack(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """Block until the client acked ``envelope_id``; returns the ack
        (``{"envelope_id": ..., "payload": {...}}``, the payload being optional)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while envelope_id not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no ack for envelope {envelope_id} within {timeout}s")
                self._changed.wait(left)
            return dict(self._acks[envelope_id])

    def acked(self, envelope_id: str) -> bool:
        """Whether ``envelope_id`` was acked already."""
        with self._lock:
            return envelope_id in self._acks

    def acks(self) -> list[dict[str, Any]]:
        """Every ack received, oldest first."""
        with self._lock:
            return [m for m in self.received if "envelope_id" in m]
