"""The client over an in-process :class:`~serving.engine.LocalEngine`.

This module does not import the engine (torch, transformers); whoever builds the engine does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from serving.client.base import (
    ChatResult,
    Classification,
    InferenceClient,
    InferenceError,
    InferenceUnavailable,
    Message,
    ModelInfo,
    Usage,
    check_labels,
    classification,
)
from serving.inference_types import EngineBusy, EngineError, SamplingParams, UnknownModel

if TYPE_CHECKING:
    from serving.engine import LocalEngine

T = TypeVar("T")


class LocalClient(InferenceClient):
    """The client over an in-process engine (no URL configured)."""

    def __init__(self, engine: LocalEngine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self.owns_engine = owns_engine

    def _params(
        self, max_tokens: int, temperature: float, top_p: float, stop: Sequence[str], top: int
    ) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=tuple(stop),
            logprobs=top > 0,
            top_logprobs=top,
        )

    def chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        top_logprobs: int | None = None,
    ) -> ChatResult:
        params = self._params(max_tokens, temperature, top_p, stop, top_logprobs or 0)
        result = _local(lambda: self.engine.chat(messages, params, model).result())
        logprobs = None
        if result.logprobs is not None and top_logprobs:
            logprobs = [{tok: lp for tok, _, lp in t.top} for t in result.logprobs]
        return ChatResult(
            text=result.text,
            finish_reason=result.finish_reason,
            usage=Usage(
                result.prompt_tokens,
                result.completion_tokens,
                result.prompt_tokens + result.completion_tokens,
            ),
            logprobs=logprobs,
        )

    def stream_chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
    ) -> Iterator[str]:
        params = self._params(max_tokens, temperature, top_p, stop, 0)
        handle = _local(lambda: self.engine.chat(messages, params, model))
        try:
            yield from handle.deltas()
        finally:
            handle.cancel()

    def classify(
        self, messages: Sequence[Message], labels: Sequence[str], *, model: str | None = None
    ) -> Classification:
        names = check_labels(labels)
        summed = _local(lambda: self.engine.score_labels(messages, names, model))
        return classification(names, summed)

    def models(self) -> list[ModelInfo]:
        limit = self.engine.max_model_len
        base = ModelInfo(self.engine.served_name, None, str(self.engine.model_path), limit)
        adapters = [
            ModelInfo(name, self.engine.served_name, path, limit)
            for name, path in self.engine.adapters.items()
        ]
        return [base, *adapters]

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.engine.chat_prompt(list(messages)))

    def load_adapter(self, name: str, path: str) -> None:
        _local(lambda: self.engine.load_adapter(name, path))

    def unload_adapter(self, name: str) -> None:
        _local(lambda: self.engine.unload_adapter(name))

    def health(self) -> bool:
        """The engine loaded its model when it was built; it serves while its thread runs."""
        return engine_running(self.engine)

    def readiness(self) -> str | None:
        return None if self.health() else "the local engine stopped"

    def close(self) -> None:
        if self.owns_engine:
            self.engine.close()


def engine_running(engine: LocalEngine) -> bool:
    """Whether ``engine``'s scheduler thread runs and was not asked to stop (only
    :meth:`~serving.engine.LocalEngine.close` stops it; a failed step does not)."""
    return engine.alive


def _local(call: Callable[[], T]) -> T:
    try:
        return call()
    except UnknownModel as exc:
        raise InferenceError(str(exc), 404) from exc
    except EngineBusy as exc:
        raise InferenceUnavailable(str(exc)) from exc
    except EngineError as exc:
        raise InferenceError(str(exc), 400) from exc
