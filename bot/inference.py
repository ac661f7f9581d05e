"""The bot's inference client: HTTP to vLLM or `brandbot serve` when BRANDBOT_INFERENCE_URL is
set, else the local engine in process, created on first use (so commands that never generate
never load a model).

Its health tells the truth: an in-process model that was not loaded yet is not healthy. Asking
for :meth:`LazyInference.readiness` starts loading it in the background, so a readiness probe
loads the model at start while a process nobody asks (a CLI command) still never does."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from bot.settings import Settings
from serving.client import (
    ChatResult,
    Classification,
    InferenceClient,
    ModelInfo,
    make_client,
)


class LazyInference(InferenceClient):
    """An ``InferenceClient`` that builds the real one on the first call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: InferenceClient | None = None
        self._lock = threading.Lock()
        self._loading: threading.Thread | None = None
        self._loading_lock = threading.Lock()  # never held while a model loads
        self._failure: str | None = None

    @property
    def client(self) -> InferenceClient:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._build()
                except Exception as exc:
                    self._failure = f"{type(exc).__name__}: {exc}"[:300]
                    raise
                self._failure = None
            return self._client

    def _build(self) -> InferenceClient:
        settings = self.settings
        key = settings.inference_api_key.get_secret_value() if settings.inference_api_key else None

        def engine() -> Any:
            from serving.base_model import resolve_base_model
            from serving.engine import LocalEngine

            base = resolve_base_model(settings.base_model, settings.models_dir)
            return LocalEngine(base.path, served_name=settings.served_model_name)

        return make_client(
            settings.inference_url, key, engine, served_model_name=settings.served_model_name
        )

    def chat(self, messages: Sequence[Any], **kw: Any) -> ChatResult:
        return self.client.chat(messages, **kw)

    def stream_chat(self, messages: Sequence[Any], **kw: Any) -> Iterator[str]:
        return self.client.stream_chat(messages, **kw)

    def classify(
        self, messages: Sequence[Any], labels: Sequence[str], *, model: str | None = None
    ) -> Classification:
        return self.client.classify(messages, labels, model=model)

    def models(self) -> list[ModelInfo]:
        return self.client.models()

    def count_tokens(self, messages: Sequence[Any]) -> int:
        return self.client.count_tokens(messages)

    def max_model_len(self) -> int | None:
        return self.client.max_model_len()

    def load_adapter(self, name: str, path: str) -> None:
        self.client.load_adapter(name, path)

    def unload_adapter(self, name: str) -> None:
        self.client.unload_adapter(name)

    def health(self) -> bool:
        return self.readiness() is None

    def readiness(self) -> str | None:
        """None once the base model is loaded (or the model server answered); else why not.
        An in-process model that is not loaded yet starts loading in the background."""
        client = self._client
        if client is not None:
            return client.readiness()
        if self.settings.inference_url:
            return self.client.readiness()  # building an HTTP client loads nothing
        if self._failure is not None:
            return f"the base model failed to load: {self._failure}"
        with self._loading_lock:
            if self._loading is None or not self._loading.is_alive():
                self._loading = threading.Thread(
                    target=self._load_quietly, name="brandbot-load-model", daemon=True
                )
                self._loading.start()
        return "loading the base model"

    def _load_quietly(self) -> None:
        """Build the client on a background thread; a failure is kept for readiness to say."""
        with contextlib.suppress(Exception):
            _ = self.client

    def close(self) -> None:
        """Close the real client, if one was built (the local engine's thread is joined)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> LazyInference:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
