"""What callers of an inference engine see: requests, results, handles and errors.

Torch-free on purpose: the HTTP client, the server's protocol layer and the plugins import these
without loading torch or transformers; only :mod:`serving.engine` does.
"""

from __future__ import annotations

import math
import queue
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
FinishReason = Literal["stop", "length"]


class EngineError(Exception):
    """A request the engine cannot serve; the message is meant for the caller."""


class UnknownModel(EngineError):
    """The requested model/adapter name is not loaded; ``known`` lists the names that are."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"the model {name!r} does not exist; known models: {', '.join(known)}")
        self.name = name
        self.known = list(known)


class PromptTooLong(EngineError):
    """The prompt (plus at least one new token) does not fit the model's context."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(
            f"the prompt has {tokens} tokens; this model's maximum context length is {limit} "
            "tokens (prompt plus at least one generated token)"
        )
        self.tokens = tokens
        self.limit = limit


class EngineBusy(EngineError):
    """``max_waiting`` generations already wait for a place in the batch; try again later."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"the server is busy ({waiting} requests waiting); try again in a minute")
        self.waiting = waiting


class AdapterError(EngineError):
    """An adapter cannot be loaded or unloaded (name taken, unknown, unreadable)."""


# --- requests and results -------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """How to generate. ``temperature == 0`` is greedy; ``top_logprobs`` needs ``logprobs``."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    seed: int | None = None
    ignore_eos: bool = False  # as vLLM's: keep going past end-of-turn (benchmarks)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability (raw model distribution) and alternatives."""

    token: str
    token_id: int
    logprob: float
    top: tuple[tuple[str, int, float], ...] = ()


@dataclass
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None


@dataclass
class GenerationEvent:
    """One step of a running generation: a text delta, its log-probabilities, the final
    result, or the error that ended it."""

    delta: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    result: GenerationResult | None = None
    error: BaseException | None = None


class GenerationHandle:
    """A running generation: iterate :meth:`deltas` to stream, or call :meth:`result`."""

    def __init__(self, sink: Callable[[GenerationEvent], None] | None = None) -> None:
        self._queue: queue.Queue[GenerationEvent] = queue.Queue()
        self._sink = sink
        self._result: GenerationResult | None = None
        self.cancelled = False

    def _put(self, event: GenerationEvent) -> None:
        """Called on the engine thread; ``sink`` (e.g. an asyncio bridge) replaces the queue."""
        if self._sink is not None:
            self._sink(event)
        else:
            self._queue.put(event)

    def events(self, timeout: float | None = None) -> Iterator[GenerationEvent]:
        """Every event up to and including the final one (whose ``result`` is set)."""
        while True:
            event = self._queue.get(timeout=timeout)
            if event.error is not None:
                raise event.error
            yield event
            if event.result is not None:
                self._result = event.result
                return

    def deltas(self, timeout: float | None = None) -> Iterator[str]:
        for event in self.events(timeout):
            if event.delta:
                yield event.delta

    def result(self, timeout: float | None = None) -> GenerationResult:
        if self._result is None:
            for _ in self.events(timeout):
                pass
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stop generating (a client went away); the sequence leaves the batch at the next step."""
        self.cancelled = True


@dataclass(frozen=True)
class TokenScore:
    """A prompt token's log-probability, its rank (1 = most likely) and the top alternatives."""

    token_id: int
    logprob: float
    rank: int
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class PromptScores:
    prefix: list[TokenScore] = field(default_factory=list)
    rows: list[list[TokenScore]] = field(default_factory=list)
    next_token: list[int] = field(default_factory=list)


def softmax(scores: Sequence[float]) -> list[float]:
    """Label confidences from summed log-probabilities (numerically stable)."""
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]
