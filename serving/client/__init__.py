"""One inference client for the bot and the worker, torch-free.

Two implementations of :class:`InferenceClient`:

- :class:`HttpClient` talks to any OpenAI-compatible server with vLLM's runtime LoRA API
  (vLLM itself, or ``brandbot serve``), with timeouts, retries with backoff on connection errors
  and 5xx answers, and :class:`InferenceUnavailable` when the server cannot be reached.
- :class:`LocalClient` calls an in-process :class:`~serving.engine.LocalEngine`; importing it
  does not load the engine, building one does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from serving.client.base import (
    ChatResult,
    Classification,
    InferenceClient,
    InferenceError,
    InferenceUnavailable,
    Message,
    ModelInfo,
    Usage,
    classification,
)
from serving.client.http import HttpClient
from serving.client.local import LocalClient

if TYPE_CHECKING:
    from serving.engine import LocalEngine

__all__ = [
    "ChatResult",
    "Classification",
    "HttpClient",
    "InferenceClient",
    "InferenceError",
    "InferenceUnavailable",
    "LocalClient",
    "Message",
    "ModelInfo",
    "Usage",
    "classification",
    "make_client",
]


def make_client(
    url: str | None,
    api_key: str | None,
    engine_factory: Callable[[], LocalEngine],
    *,
    served_model_name: str | None = None,
) -> InferenceClient:
    """HTTP when a URL is configured (``BRANDBOT_INFERENCE_URL``), else the in-process engine.

    ``engine_factory`` is only called in the second case, so an HTTP deployment never loads a
    model.
    """
    if url:
        return HttpClient(url, api_key=api_key, served_model_name=served_model_name)
    return LocalClient(engine_factory(), owns_engine=True)
