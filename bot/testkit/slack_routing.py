"""How the fake Slack answers HTTP: the Web API (``/api/<method>``) with failures, rate limits
and custom answers, file uploads, ``response_url`` posts and file downloads."""

from __future__ import annotations

import contextlib
import json
import mimetypes
import socket
import threading
from collections import deque
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from bot.testkit.slack_state import JSON_ARGS, Call, SlackError, SlackState, _json_arg


class HttpRouting(SlackState):
    """Routes a request to a Web API method, an upload, a response URL or a file."""

    # -- HTTP routing ------------------------------------------------------------------------

    def _route(
        self, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(target)
        path = url.path
        args = dict(parse_qsl(url.query, keep_blank_values=True))
        if path.startswith("/api/"):
            args.update(self._parse_body(headers, raw))
            return self._api(path.removeprefix("/api/"), args, headers, raw, target)
        if path.startswith("/upload/"):
            return self._upload(path.removeprefix("/upload/"), headers, raw, target)
        if path.startswith("/response/"):
            return self._response_post(path.removeprefix("/response/"), headers, raw, target)
        if path.startswith("/files/"):
            return self._download(path.removeprefix("/files/"), headers)
        return 404, {"Content-Type": "text/plain"}, b"not found"

    @staticmethod
    def _parse_body(headers: dict[str, str], raw: bytes) -> dict[str, Any]:
        if not raw:
            return {}
        content_type = headers.get("content-type", "").lower()
        if content_type.startswith("application/json"):
            try:
                body = json.loads(raw)
            except ValueError:
                return {}
            return body if isinstance(body, dict) else {}
        if content_type.startswith("multipart/form-data"):
            head = f"Content-Type: {headers['content-type']}\r\n\r\n".encode("latin-1")
            message = BytesParser(policy=HTTP).parsebytes(head + raw)
            fields: dict[str, Any] = {}
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if not isinstance(name, str):
                    continue
                data = part.get_payload(decode=True)
                if part.get_filename() is not None:
                    fields[name] = data
                elif isinstance(data, bytes):
                    fields[name] = data.decode("utf-8")
            return fields
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))

    @staticmethod
    def _token_of(headers: dict[str, str], args: dict[str, Any]) -> str | None:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip() or None
        token = args.pop("token", None)
        return str(token) if token else None

    def _api(
        self, method: str, args: dict[str, Any], headers: dict[str, str], raw: bytes, path: str
    ) -> tuple[int, dict[str, str], bytes]:
        token = self._token_of(headers, args)
        args.pop("token", None)
        for key in JSON_ARGS & args.keys():
            args[key] = _json_arg(args[key])
        call = Call(method, args, headers, token, path=path, raw=raw)
        extra_headers: dict[str, str] = {}
        with self._lock:
            retry_after = self._take(self._rate_limits, method)
            failure = self._take(self._failures, method)
            if retry_after is not None:
                call.status = 429
                call.response = {"ok": False, "error": "ratelimited"}
                extra_headers["Retry-After"] = str(retry_after)
            elif failure is not None:
                call.response = {"ok": False, "error": failure}
            else:
                call.response = self._answer(call)
            self._record(call)
        body = json.dumps(call.response).encode("utf-8")
        return (
            call.status,
            {"Content-Type": "application/json; charset=utf-8", **extra_headers},
            body,
        )

    @staticmethod
    def _take(queues: dict[str, deque[Any]], method: str) -> Any:
        for key in (method, "*"):
            queue = queues.get(key)
            if queue:
                return queue.popleft()
        return None

    def _answer(self, call: Call) -> dict[str, Any]:
        custom = self._custom.get(call.method)
        builtin = self._methods.get(call.method)
        if custom is None and builtin is None:
            return {"ok": False, "error": "unknown_method"}
        if call.token is None:
            return {"ok": False, "error": "not_authed"}
        token = self._tokens.get(call.token)
        if token is None:
            return {"ok": False, "error": "invalid_auth"}
        app_only = call.method == "apps.connections.open"
        if (token.kind == "app") != app_only:
            return {"ok": False, "error": "not_allowed_token_type"}
        try:
            if custom is not None:
                result = custom(call)
            else:
                assert builtin is not None
                result = builtin(call, token.user_id)
        except SlackError as exc:
            return {"ok": False, "error": exc.error}
        return result if "ok" in result else {"ok": True, **result}

    def _record(self, call: Call) -> None:
        with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    def _upload(
        self, file_id: str, headers: dict[str, str], raw: bytes, path: str
    ) -> tuple[int, dict[str, str], bytes]:
        data = raw
        if headers.get("content-type", "").lower().startswith("multipart/form-data"):
            fields = self._parse_body(headers, raw)
            data = next((v for v in fields.values() if isinstance(v, bytes)), b"")
        call = Call("upload", {"file_id": file_id, "length": len(data)}, headers, None, path)
        call.raw = raw
        with self._lock:
            upload = self._files.get(file_id)
            if upload is None:
                call.status, call.response = 404, "file not found"
            else:
                upload.data = data
                call.response = f"OK - {len(data)}"
            self._record(call)
        return call.status, {"Content-Type": "text/plain"}, str(call.response).encode()

    def _response_post(
        self, id: str, headers: dict[str, str], raw: bytes, path: str
    ) -> tuple[int, dict[str, str], bytes]:
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        call = Call("response_url", {}, headers, None, path, raw=raw)
        call.args = {**body, "response_url_id": id} if isinstance(body, dict) else {}
        with self._lock:
            if id not in self._responses:
                call.status, call.response = 404, {"ok": False, "error": "expired_url"}
            elif not isinstance(body, dict):
                call.status, call.response = 400, {"ok": False, "error": "invalid_payload"}
            else:
                self._responses[id].append(body)
                call.response = {"ok": True}
            self._record(call)
        return call.status, {"Content-Type": "application/json"}, json.dumps(call.response).encode()

    def _download(self, rest: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        file_id = rest.split("/", 1)[0]
        token = self._token_of(headers, {})
        with self._lock:
            upload = self._files.get(file_id)
            if token is None or token not in self._tokens:
                return 401, {"Content-Type": "text/plain"}, b"not authed"
            if upload is None or not upload.completed:
                return 404, {"Content-Type": "text/plain"}, b"file not found"
            mime = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
            return 200, {"Content-Type": mime}, upload.content


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, a keep-alive
    # client would wait for a delayed ACK (40 ms) on every call.
    disable_nagle_algorithm = True
    server: _Server
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:  # the test output stays clean
        return

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, resp_headers, body = self.server.fake._route(self.path, headers, raw)
        self.send_response(status)
        for name, value in resp_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A real listen backlog: benchmarks open hundreds of connections at once.
    request_queue_size = 1024
    fake: HttpRouting

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _RequestHandler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Close idle keep-alive connections so their threads end with the server."""
        with self._open_lock:
            live, self._open = list(self._open), set()
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
