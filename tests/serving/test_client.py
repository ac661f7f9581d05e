"""The client's failure modes and the factory."""

from __future__ import annotations

import time

import httpx
import pytest

from serving.client import (
    HttpClient,
    InferenceError,
    InferenceUnavailable,
    LocalClient,
    make_client,
)
from serving.engine import LocalEngine
from tests.conftest import free_port
from tests.serving.conftest import API_KEY, SERVED


class CountingTransport(httpx.HTTPTransport):
    """A real transport that counts the requests it was asked to send."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return super().handle_request(request)


def test_closed_port_raises_unavailable_with_url() -> None:
    port = free_port()
    transport = CountingTransport()
    client = HttpClient(f"http://127.0.0.1:{port}", retries=2, backoff=0.01, transport=transport)
    with pytest.raises(InferenceUnavailable) as err:
        client.chat([{"role": "user", "content": "hi"}], model=SERVED)
    message = str(err.value)
    assert message.startswith(f"model server unreachable at http://127.0.0.1:{port}: ")
    assert "Connect" in message
    assert transport.sent == 3  # the first try and two retries, then it gives up
    with pytest.raises(InferenceUnavailable):
        list(client.stream_chat([{"role": "user", "content": "hi"}], model=SERVED))
    assert client.health() is False


def test_make_client_picks_http_or_local(server_url: str, engine: LocalEngine) -> None:
    calls: list[int] = []

    def factory() -> LocalEngine:
        calls.append(1)
        return engine

    remote = make_client(f"{server_url}/v1", API_KEY, factory)
    assert isinstance(remote, HttpClient)
    assert calls == []
    assert remote.health()
    assert remote.models()[0].id == SERVED
    local = make_client(None, None, factory)
    assert isinstance(local, LocalClient)
    assert calls == [1]
    result = local.chat([{"role": "user", "content": "hi"}], max_tokens=3, temperature=0)
    assert result.usage.completion_tokens <= 3
    with pytest.raises(InferenceError) as err:
        local.chat([{"role": "user", "content": "hi"}], model="missing-v1")
    assert err.value.status == 404
    with pytest.raises(ValueError, match="distinct"):
        local.classify([{"role": "user", "content": "hi"}], ["a", "a"])


def test_wrong_key_is_an_error_not_unavailable(server_url: str) -> None:
    client = HttpClient(server_url, api_key="wrong", retries=0)
    with pytest.raises(InferenceError) as err:
        client.models()
    assert err.value.status == 401


def test_5xx_is_retried_with_backoff_then_reported() -> None:
    """A real HTTP server that fails twice, then answers: the client retries through it."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from bot.testkit.servers import BackgroundServer

    calls: list[float] = []

    async def models(request: Request) -> JSONResponse:
        calls.append(time.monotonic())
        if len(calls) <= 2 or request.query_params.get("fail"):
            return JSONResponse({"error": {"message": "warming up"}}, status_code=503)
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})

    app = Starlette(routes=[Route("/v1/models", models)])
    with BackgroundServer(app) as url:
        client = HttpClient(url, retries=3, backoff=0.05)
        assert [m.id for m in client.models()] == ["m"]
        assert len(calls) == 3
        # the client slept its backoff before each retry: 0.05 s, then 0.1 s
        assert calls[1] - calls[0] >= 0.05 and calls[2] - calls[1] >= 0.1
        impatient = HttpClient(url, retries=1, backoff=0.01)
        calls.clear()
        with pytest.raises(InferenceUnavailable, match="HTTP 503: warming up"):
            impatient.models()
