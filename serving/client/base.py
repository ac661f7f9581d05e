"""What the bot and the worker need from a model server: the interface, its errors and results.

Torch-free: plugins import these to type and catch inference failures without loading a model.

Label confidences are computed the same way by every client: each label is scored as the
assistant's whole answer — its tokens and the chat template's end-of-turn token — and the
confidences are the softmax over those summed log-probabilities.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.inference_types import softmax

Message = dict[str, Any]


class InferenceUnavailable(Exception):
    """The model server cannot be reached (down, refusing, timing out, or failing with 5xx)."""


class InferenceError(Exception):
    """The server refused the request (4xx); ``status`` is the HTTP status (404 = unknown model)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True)
class ChatResult:
    """A finished completion. ``logprobs``: per generated token, its top alternatives."""

    text: str
    finish_reason: str
    usage: Usage
    logprobs: list[dict[str, float]] | None = None


@dataclass(frozen=True)
class Classification:
    """The chosen label, its confidence, and every label's confidence (they sum to 1)."""

    label: str
    confidence: float
    scores: dict[str, float]
    logprobs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    id: str
    parent: str | None = None
    root: str | None = None
    max_model_len: int | None = None
    owned_by: str | None = None


def classification(labels: Sequence[str], summed: Sequence[float]) -> Classification:
    """Softmax over the labels' summed log-probabilities; ties go to the first label."""
    probs = softmax(list(summed))
    best = max(range(len(labels)), key=lambda i: probs[i])
    return Classification(
        label=labels[best],
        confidence=probs[best],
        scores=dict(zip(labels, probs, strict=True)),
        logprobs=dict(zip(labels, summed, strict=True)),
    )


def check_labels(labels: Sequence[str]) -> list[str]:
    out = list(labels)
    if not out:
        raise ValueError("classify needs at least one label")
    if len(set(out)) != len(out):
        raise ValueError("the labels must be distinct")
    return out


class InferenceClient(ABC):
    """What the bot and the worker need from a model server."""

    @abstractmethod
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
    ) -> ChatResult: ...

    @abstractmethod
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
        """Text deltas as they are generated."""

    @abstractmethod
    def classify(
        self, messages: Sequence[Message], labels: Sequence[str], *, model: str | None = None
    ) -> Classification: ...

    @abstractmethod
    def models(self) -> list[ModelInfo]: ...

    @abstractmethod
    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of ``messages`` with the chat template and the generation prompt."""

    def max_model_len(self) -> int | None:
        """The served context length (prompt plus completion), when the server says; asked
        once, since it is fixed for the life of a server."""
        known: int | None = getattr(self, "_max_model_len", None)
        if known is None:
            lengths = [m.max_model_len for m in self.models() if m.max_model_len]
            known = min(lengths) if lengths else None
            self._max_model_len = known
        return known

    @abstractmethod
    def load_adapter(self, name: str, path: str) -> None: ...

    @abstractmethod
    def unload_adapter(self, name: str) -> None: ...

    @abstractmethod
    def health(self) -> bool:
        """True only when the model can answer now: the base model is loaded (in process) or
        the server answered its health check. Never true on hope."""

    def readiness(self) -> str | None:
        """None when :meth:`health` holds, else why not, in words for ``/readyz`` and
        ``/brandbot status``."""
        return None if self.health() else "model server unreachable"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or the engine."""
