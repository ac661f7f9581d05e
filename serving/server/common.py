"""What every route of ``brandbot serve`` shares: errors in OpenAI's shape, body parsing,
the API-key middleware, sampling parameters from a request, and running generations whose
events arrive on an asyncio queue (so waiting requests cost coroutines, not threads)."""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.inference_types import (
    GenerationEvent,
    GenerationHandle,
    GenerationResult,
    PromptTooLong,
    SamplingParams,
)
from serving.protocol import ChatCompletionRequest, CompletionRequest, error_body

if TYPE_CHECKING:
    from serving.engine import LocalEngine

M = TypeVar("M", bound=BaseModel)
OPEN_PATHS = frozenset({"/health"})  # liveness probes carry no key


class ApiError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, param), status_code=status)


async def parse(request: Request, model: type[M]) -> M:
    """The JSON body as ``model``; a 400 names the first bad field."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, f"invalid field {field!r}: {first['msg']}", field) from None


class Auth:
    """Pure ASGI middleware: every path but ``OPEN_PATHS`` needs the bearer key (stricter than
    vLLM's ``--api-key``, which leaves ``/tokenize`` and ``/metrics`` open)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    def _allowed(self, scope: Scope) -> bool:
        if self.expected is None or scope["type"] != "http":
            return True
        if str(scope.get("path", "")) in OPEN_PATHS:
            return True
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        return hmac.compare_digest(given, self.expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._allowed(scope):
            response = error(401, "missing or wrong API key (Authorization: Bearer KEY)")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def sampling(
    req: ChatCompletionRequest | CompletionRequest, prompt: int, limit: int
) -> SamplingParams:
    """The request's sampling parameters; a prompt or a completion that cannot fit ``limit``
    (the context length) is refused, in vLLM's words."""
    if isinstance(req, ChatCompletionRequest):
        wanted = req.limit()
        logprobs, top = req.logprobs, (req.top_logprobs or 0) if req.logprobs else 0
    else:
        wanted = req.max_tokens
        logprobs, top = req.logprobs is not None, req.logprobs or 0
    if prompt + 1 > limit:
        raise PromptTooLong(prompt, limit)
    if wanted is not None and prompt + wanted > limit:
        raise ApiError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt + wanted} tokens ({prompt} in the messages, {wanted} in the "
            "completion). Please reduce the length of the messages or completion.",
            "max_tokens",
        )
    return SamplingParams(
        max_tokens=wanted or (limit - prompt),
        temperature=req.temperature,
        top_p=req.top_p,
        stop=req.stop_list(),
        logprobs=logprobs,
        top_logprobs=top,
        seed=req.seed,
        ignore_eos=req.ignore_eos,
    )


@dataclass
class Run:
    """n generations of one request, their events merged into one asyncio queue."""

    queue: asyncio.Queue[tuple[int, GenerationEvent]]
    handles: list[GenerationHandle]

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()

    async def results(self, n: int) -> dict[int, GenerationResult]:
        """Wait for all ``n`` results (an engine error is raised); cancels the rest on exit."""
        results: dict[int, GenerationResult] = {}
        try:
            while len(results) < n:
                index, event = await self.queue.get()
                if event.error is not None:
                    raise event.error
                if event.result is not None:
                    results[index] = event.result
        finally:
            self.cancel()
        return results


def start(engine: LocalEngine, ids: list[int], params: SamplingParams, model: str, n: int) -> Run:
    """Start ``n`` generations of ``ids`` on ``engine``; their events go to the running loop."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[tuple[int, GenerationEvent]] = asyncio.Queue()
    handles = []
    for index in range(n):

        def sink(event: GenerationEvent, index: int = index) -> None:
            loop.call_soon_threadsafe(q.put_nowait, (index, event))

        handles.append(engine.generate(ids, params, model, sink=sink))
    return Run(q, handles)
