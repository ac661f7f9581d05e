"""``brandbot serve``: vLLM's OpenAI-compatible HTTP API over the local engine (starlette).

Endpoints (shapes as in vLLM 0.33): ``GET /v1/models``, ``POST /v1/chat/completions``
(:mod:`serving.server.chat`), ``POST /v1/completions`` with ``prompt_logprobs``, used for label
confidences (:mod:`serving.server.completions`), ``POST /tokenize``,
``POST /v1/load_lora_adapter``, ``POST /v1/unload_lora_adapter``, ``GET /health``,
``GET /metrics`` (:mod:`serving.server.admin`). With an API key every path but ``/health``
(``/tokenize`` and ``/metrics`` included) needs ``Authorization: Bearer KEY``, compared in
constant time. A full engine queue is answered 503 with ``Retry-After``. Errors use OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}``.

Generation never occupies a worker thread: the engine pushes events into an asyncio queue
through a thread-safe sink, so thousands of waiting requests cost only coroutines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.types import ASGIApp

from serving.server.app import OpenAIServer

if TYPE_CHECKING:
    from serving.engine import LocalEngine

__all__ = ["OpenAIServer", "create_app", "uvicorn_config"]


def create_app(engine: LocalEngine, *, api_key: str | None = None) -> ASGIApp:
    """The ASGI application serving ``engine``."""
    return OpenAIServer(engine, api_key=api_key).app


def uvicorn_config(app: ASGIApp, host: str, port: int, *, log_level: str = "info") -> Any:
    """uvicorn settings for serving: a real listen backlog and no per-request access log."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        backlog=2048,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=30,
    )
