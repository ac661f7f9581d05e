"""The ASGI application of ``brandbot serve``: the routes bound to one engine, each request
timed and counted, engine errors answered in OpenAI's shape."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from serving.inference_types import (
    AdapterError,
    EngineBusy,
    EngineError,
    PromptTooLong,
    UnknownModel,
)
from serving.server.admin import AdminRoutes
from serving.server.chat import ChatRoutes
from serving.server.common import ApiError, Auth, error
from serving.server.completions import CompletionRoutes

if TYPE_CHECKING:
    from serving.engine import LocalEngine

log = logging.getLogger("serving.server")
Handler = Callable[[Request], Awaitable[Response]]


class OpenAIServer:
    """The routes, bound to one engine. ``app`` is the ASGI application."""

    def __init__(self, engine: LocalEngine, *, api_key: str | None = None) -> None:
        self.engine = engine
        registry = engine.metrics.registry
        self.http_requests = Counter(
            "brandbot_http_requests", "HTTP requests", ["path", "status"], registry=registry
        )
        self.latency = Histogram(
            "brandbot_http_request_seconds", "HTTP request latency", ["path"], registry=registry
        )
        admin, chat, completions = (
            AdminRoutes(engine),
            ChatRoutes(engine),
            CompletionRoutes(engine),
        )
        routes = [
            Route("/health", admin.health, methods=["GET"]),
            Route("/metrics", admin.metrics, methods=["GET"]),
            Route("/v1/models", admin.models, methods=["GET"]),
            Route("/v1/chat/completions", self._wrap(chat.chat), methods=["POST"]),
            Route("/v1/completions", self._wrap(completions.completions), methods=["POST"]),
            Route("/tokenize", self._wrap(admin.tokenize), methods=["POST"]),
            Route("/v1/load_lora_adapter", self._wrap(admin.load_lora), methods=["POST"]),
            Route("/v1/unload_lora_adapter", self._wrap(admin.unload_lora), methods=["POST"]),
        ]
        self.app: ASGIApp = Auth(Starlette(routes=routes), api_key)

    def _wrap(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except ApiError as exc:
                response = error(exc.status, str(exc), exc.param)
            except UnknownModel as exc:
                response = error(404, str(exc), "model")
            except PromptTooLong as exc:
                response = error(400, str(exc), "messages")
            except EngineBusy as exc:
                response = error(503, str(exc))
                response.headers["Retry-After"] = "60"
            except (AdapterError, EngineError) as exc:
                response = error(400, str(exc))
            except Exception:
                log.exception("request failed")
                response = error(500, "internal error; see the server log")
            path = request.url.path
            self.http_requests.labels(path, str(response.status_code)).inc()
            self.latency.labels(path).observe(time.perf_counter() - started)
            return response

        return endpoint
