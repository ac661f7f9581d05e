"""``brandbot serve``: vLLM's OpenAI-compatible HTTP API over the local engine (starlette).

Endpoints (shapes as in vLLM 0.33): ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (with ``prompt_logprobs``, used for label confidences),
``POST /tokenize``, ``POST /v1/load_lora_adapter``, ``POST /v1/unload_lora_adapter``,
``GET /health``, ``GET /metrics``. With an API key every path but ``/health`` (``/tokenize``
and ``/metrics`` included) needs ``Authorization: Bearer KEY``, compared in constant time.
A full engine queue is answered 503 with ``Retry-After``. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.

Generation never occupies a worker thread: the engine pushes events into an asyncio queue
through a thread-safe sink, so thousands of waiting requests cost only coroutines.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.engine import (
    AdapterError,
    EngineBusy,
    EngineError,
    Event,
    GenerationResult,
    LocalEngine,
    PromptTooLong,
    SamplingParams,
    TokenLogprob,
    TokenScore,
    UnknownModel,
)
from serving.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionRequest,
    Delta,
    LoadLoraRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenLogprobOut,
    TopLogprob,
    UnloadLoraRequest,
    Usage,
    error_body,
    new_id,
    now,
)

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, param), status_code=status)


async def _parse(request: Request, model: type[M]) -> M:
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


OPEN_PATHS = frozenset({"/health"})  # liveness probes carry no key


class _Auth:
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
            response = _error(401, "missing or wrong API key (Authorization: Bearer KEY)")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


@dataclass
class _Run:
    """n generations of one request, their events merged into one asyncio queue."""

    queue: asyncio.Queue[tuple[int, Event]]
    handles: list[Any]

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()


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
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self._wrap(self.chat), methods=["POST"]),
            Route("/v1/completions", self._wrap(self.completions), methods=["POST"]),
            Route("/tokenize", self._wrap(self.tokenize), methods=["POST"]),
            Route("/v1/load_lora_adapter", self._wrap(self.load_lora), methods=["POST"]),
            Route("/v1/unload_lora_adapter", self._wrap(self.unload_lora), methods=["POST"]),
        ]
        self.app: ASGIApp = _Auth(Starlette(routes=routes), api_key)

    def _wrap(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except ApiError as exc:
                response = _error(exc.status, str(exc), exc.param)
            except UnknownModel as exc:
                response = _error(404, str(exc), "model")
            except PromptTooLong as exc:
                response = _error(400, str(exc), "messages")
            except EngineBusy as exc:
                response = _error(503, str(exc))
                response.headers["Retry-After"] = "60"
            except (AdapterError, EngineError) as exc:
                response = _error(400, str(exc))
            except Exception:
                log.exception("request failed")
                response = _error(500, "internal error; see the server log")
            path = request.url.path
            self.http_requests.labels(path, str(response.status_code)).inc()
            self.latency.labels(path).observe(time.perf_counter() - started)
            return response

        return endpoint

    # --- plain endpoints ---------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def metrics(self, request: Request) -> Response:
        body = generate_latest(self.engine.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Request) -> Response:
        engine = self.engine
        created = now()
        cards = [
            ModelCard(
                id=engine.served_name,
                created=created,
                root=str(engine.model_path),
                max_model_len=engine.max_model_len,
            )
        ]
        cards += [
            ModelCard(id=name, created=created, root=path, parent=engine.served_name)
            for name, path in list(engine.adapters.items())
        ]
        return JSONResponse(ModelList(data=cards).model_dump())

    async def load_lora(self, request: Request) -> Response:
        body = await _parse(request, LoadLoraRequest)
        if body.lora_name == self.engine.served_name:
            raise ApiError(400, f"the name {body.lora_name!r} is the base model's", "lora_name")
        if body.lora_name in self.engine.adapters:
            raise ApiError(
                400, f"The lora adapter '{body.lora_name}' has already been loaded.", "lora_name"
            )
        await run_in_threadpool(self.engine.load_adapter, body.lora_name, body.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    async def unload_lora(self, request: Request) -> Response:
        body = await _parse(request, UnloadLoraRequest)
        if body.lora_name not in self.engine.adapters:
            raise ApiError(
                404, f"The lora adapter '{body.lora_name}' cannot be found.", "lora_name"
            )
        await run_in_threadpool(self.engine.unload_adapter, body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    async def tokenize(self, request: Request) -> Response:
        body = await _parse(request, TokenizeRequest)
        engine = self.engine
        if body.model is not None:
            engine.check_model(body.model)
        if body.messages is not None:
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            ids = engine.render(messages, add_generation_prompt=body.add_generation_prompt)
        elif body.prompt is not None:
            special = True if body.add_special_tokens is None else body.add_special_tokens
            ids = list(engine.tokenizer.encode(body.prompt, add_special_tokens=special))
        else:
            raise ApiError(400, "either 'prompt' or 'messages' is required", "prompt")
        out: dict[str, Any] = {
            "count": len(ids),
            "max_model_len": engine.max_model_len,
            "tokens": ids,
        }
        if body.return_token_strs:
            out["token_strs"] = engine.tokenizer.convert_ids_to_tokens(ids)
        return JSONResponse(out)

    # --- chat --------------------------------------------------------------------------------

    def _sampling(self, req: ChatCompletionRequest | CompletionRequest, prompt: int) -> Any:
        limit = self.engine.max_model_len
        if isinstance(req, ChatCompletionRequest):
            wanted = req.limit()
            stop = req.stop_list()
            logprobs, top = req.logprobs, (req.top_logprobs or 0) if req.logprobs else 0
        else:
            wanted = req.max_tokens
            stop = (
                ()
                if req.stop is None
                else ((req.stop,) if isinstance(req.stop, str) else tuple(req.stop))
            )
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
            stop=stop,
            logprobs=logprobs,
            top_logprobs=top,
            seed=req.seed,
            ignore_eos=req.ignore_eos,
        )

    def _start(self, ids: list[int], params: SamplingParams, model: str, n: int) -> _Run:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        handles = []
        for index in range(n):

            def sink(event: Event, index: int = index) -> None:
                loop.call_soon_threadsafe(q.put_nowait, (index, event))

            handles.append(self.engine.generate(ids, params, model, sink=sink))
        return _Run(q, handles)

    async def chat(self, request: Request) -> Response:
        req = await _parse(request, ChatCompletionRequest)
        self.engine.check_model(req.model)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        so = req.structured_outputs
        if so is not None and (so.json_schema is not None or so.regex or so.grammar):
            raise ApiError(
                400,
                "this server implements only structured_outputs.choice",
                "structured_outputs",
            )
        ids = self.engine.chat_prompt(messages)
        params = self._sampling(req, len(ids))
        if so is not None and so.choice:
            return await self._choose(req, messages, so.choice, params)
        run = self._start(ids, params, req.model, req.n)
        rid, created = new_id("chatcmpl"), now()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                self._chat_stream(run, req, rid, created, len(ids), include_usage),
                media_type="text/event-stream",
            )
        results: dict[int, GenerationResult] = {}
        try:
            while len(results) < req.n:
                index, event = await run.queue.get()
                if event.error is not None:
                    raise event.error
                if event.result is not None:
                    results[index] = event.result
        finally:
            run.cancel()
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=results[i].text),
                logprobs=_chat_logprobs(results[i].logprobs) if req.logprobs else None,
                finish_reason=results[i].finish_reason,
            )
            for i in range(req.n)
        ]
        completion = sum(r.completion_tokens for r in results.values())
        usage = Usage(
            prompt_tokens=len(ids),
            completion_tokens=completion,
            total_tokens=len(ids) + completion,
        )
        body = ChatCompletionResponse(
            id=rid, created=created, model=req.model, choices=choices, usage=usage
        )
        return JSONResponse(body.model_dump())

    async def _chat_stream(
        self,
        run: _Run,
        req: ChatCompletionRequest,
        rid: str,
        created: int,
        prompt_tokens: int,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            body = ChatCompletionChunk(
                id=rid, created=created, model=req.model, choices=choices, usage=usage
            )
            return f"data: {body.model_dump_json(exclude_none=True)}\n\n"

        finished = 0
        completion = 0
        try:
            for index in range(req.n):
                yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
            while finished < req.n:
                index, event = await run.queue.get()
                if event.error is not None:
                    yield f"data: {json.dumps(error_body(str(event.error), 500))}\n\n"
                    break
                lp = _chat_logprobs(event.logprobs) if req.logprobs and event.logprobs else None
                reason = event.result.finish_reason if event.result else None
                if event.delta or lp or reason:
                    choice = ChunkChoice(
                        index=index, delta=Delta(content=event.delta), logprobs=lp,
                        finish_reason=reason,
                    )  # fmt: skip
                    yield chunk([choice])
                if event.result is not None:
                    finished += 1
                    completion += event.result.completion_tokens
            if include_usage:
                usage = Usage(
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion,
                    total_tokens=prompt_tokens + completion,
                )
                yield chunk([], usage)
            yield "data: [DONE]\n\n"
        finally:
            run.cancel()

    async def _choose(
        self,
        req: ChatCompletionRequest,
        messages: list[dict[str, Any]],
        choices: list[str],
        params: SamplingParams,
    ) -> Response:
        """``structured_outputs.choice``: the answer is the label with the highest summed
        log-probability (end of turn included), scored over the closed set in one pass."""
        engine = self.engine
        prompt, conts = engine.label_continuations(messages, choices)
        top = params.top_logprobs
        scored = await run_in_threadpool(engine.prompt_logprobs, prompt, conts, req.model, top)
        totals = [sum(t.logprob for t in row) for row in scored.rows]
        best = max(range(len(choices)), key=lambda i: totals[i])
        label = choices[best]
        cut = next(
            (i for i, t in enumerate(scored.rows[best]) if t.token_id in engine.eos_ids),
            len(scored.rows[best]),
        )
        label_tokens = scored.rows[best][:cut]
        logprobs = (
            ChoiceLogprobs(content=[self._score_out(t) for t in label_tokens])
            if req.logprobs
            else None
        )
        usage = Usage(
            prompt_tokens=len(prompt),
            completion_tokens=len(label_tokens),
            total_tokens=len(prompt) + len(label_tokens),
        )
        rid, created = new_id("chatcmpl"), now()
        if req.stream:

            async def stream() -> AsyncIterator[str]:
                for index in range(req.n):
                    body = ChatCompletionChunk(
                        id=rid,
                        created=created,
                        model=req.model,
                        choices=[
                            ChunkChoice(
                                index=index,
                                delta=Delta(role="assistant", content=label),
                                logprobs=logprobs,
                                finish_reason="stop",
                            )
                        ],
                    )
                    yield f"data: {body.model_dump_json(exclude_none=True)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(stream(), media_type="text/event-stream")
        body = ChatCompletionResponse(
            id=rid,
            created=created,
            model=req.model,
            choices=[
                ChatChoice(
                    index=i,
                    message=AssistantMessage(content=label),
                    logprobs=logprobs,
                    finish_reason="stop",
                )
                for i in range(req.n)
            ],
            usage=usage,
        )
        return JSONResponse(body.model_dump())

    def _score_out(self, score: TokenScore) -> TokenLogprobOut:
        piece = self.engine.piece
        return TokenLogprobOut(
            token=piece(score.token_id),
            logprob=score.logprob,
            bytes=list(piece(score.token_id).encode()),
            top_logprobs=[
                TopLogprob(token=piece(i), logprob=lp, bytes=list(piece(i).encode()))
                for i, lp in score.top
            ],
        )

    # --- completions (prompt scoring) --------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        req = await _parse(request, CompletionRequest)
        engine = self.engine
        engine.check_model(req.model)
        prompts = self._prompt_ids(req.prompt)
        vocab = len(engine.tokenizer)
        for ids in prompts:
            if not ids:
                raise ApiError(400, "a prompt must not be empty", "prompt")
            if any(t < 0 or t >= vocab for t in ids):
                raise ApiError(400, f"token ids must be in [0, {vocab})", "prompt")
        params = [self._sampling(req, len(ids)) for ids in prompts]
        scored_rows: list[list[dict[str, Any] | None]] = []
        next_tokens: list[int] = []
        if req.prompt_logprobs is not None:
            scored_rows, next_tokens = await self._score_prompts(
                prompts, req.model, req.prompt_logprobs
            )
        choices = []
        total_completion = 0
        shortcut = (
            req.prompt_logprobs is not None
            and req.max_tokens == 1
            and req.temperature == 0
            and req.logprobs is None
            and not req.stop
        )
        for index, ids in enumerate(prompts):
            if shortcut:
                token = next_tokens[index]
                eos = token in engine.eos_ids and not req.ignore_eos
                text = "" if eos else engine.piece(token)
                finish, completion_tokens, lp = ("stop" if eos else "length"), 1, None
            else:
                run = self._start(ids, params[index], req.model, 1)
                try:
                    while True:
                        _, event = await run.queue.get()
                        if event.error is not None:
                            raise event.error
                        if event.result is not None:
                            result = event.result
                            break
                finally:
                    run.cancel()
                text, finish = result.text, result.finish_reason
                completion_tokens = result.completion_tokens
                lp = _completion_logprobs(result.logprobs) if req.logprobs is not None else None
            if req.echo:
                text = str(engine.tokenizer.decode(ids)) + str(text)
            total_completion += completion_tokens
            choice: dict[str, Any] = {
                "index": index,
                "text": text,
                "logprobs": lp,
                "finish_reason": finish,
                "stop_reason": None,
            }
            if req.prompt_logprobs is not None:
                choice["prompt_logprobs"] = scored_rows[index]
                choice["prompt_token_ids"] = ids
            choices.append(choice)
        prompt_tokens = sum(len(p) for p in prompts)
        return JSONResponse(
            {
                "id": new_id("cmpl"),
                "object": "text_completion",
                "created": now(),
                "model": req.model,
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": total_completion,
                    "total_tokens": prompt_tokens + total_completion,
                },
            }
        )

    def _prompt_ids(self, prompt: str | list[int] | list[str] | list[list[int]]) -> list[list[int]]:
        encode = self.engine.tokenizer.encode
        if isinstance(prompt, str):
            return [list(encode(prompt))]
        if not prompt:
            raise ApiError(400, "the prompt must not be empty", "prompt")
        if all(isinstance(p, int) for p in prompt):
            return [[int(p) for p in prompt]]  # type: ignore[arg-type]
        out: list[list[int]] = []
        for item in prompt:
            if isinstance(item, str):
                out.append(list(encode(item)))
            elif isinstance(item, list):
                out.append([int(t) for t in item])
            else:
                raise ApiError(
                    400, "prompt must be a string, token ids, or a list of them", "prompt"
                )
        return out

    async def _score_prompts(
        self, prompts: list[list[int]], model: str, top: int
    ) -> tuple[list[list[dict[str, Any] | None]], list[int]]:
        """vLLM's ``prompt_logprobs`` for each prompt; their common prefix is computed once."""
        common = len(prompts[0])
        for ids in prompts[1:]:
            common = min(common, len(ids))
            for j in range(common):
                if ids[j] != prompts[0][j]:
                    common = j
                    break
        common = max(common, 1)
        prefix = prompts[0][:common]
        conts = [ids[common:] for ids in prompts]
        scored = await run_in_threadpool(
            self.engine.prompt_logprobs, prefix, conts, model, top, True
        )
        piece = self.engine.piece

        def entry(score: TokenScore) -> dict[str, Any]:
            out = {
                str(score.token_id): {
                    "logprob": score.logprob,
                    "rank": score.rank,
                    "decoded_token": piece(score.token_id),
                }
            }
            for rank, (tid, lp) in enumerate(score.top, start=1):
                out.setdefault(str(tid), {"logprob": lp, "rank": rank, "decoded_token": piece(tid)})
            return out

        head: list[dict[str, Any] | None] = [None, *(entry(s) for s in scored.prefix)]
        rows = [head + [entry(s) for s in row] for row in scored.rows]
        return rows, scored.next_token


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _chat_logprobs(items: list[TokenLogprob] | None) -> ChoiceLogprobs | None:
    if items is None:
        return None
    return ChoiceLogprobs(
        content=[
            TokenLogprobOut(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token.encode()),
                top_logprobs=[
                    TopLogprob(token=tok, logprob=lp, bytes=list(tok.encode()))
                    for tok, _, lp in t.top
                ],
            )
            for t in items
        ]
    )


def _completion_logprobs(items: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if items is None:
        return None
    offsets, position = [], 0
    for t in items:
        offsets.append(position)
        position += len(t.token)
    return {
        "text_offset": offsets,
        "token_logprobs": [t.logprob for t in items],
        "tokens": [t.token for t in items],
        "top_logprobs": [{tok: lp for tok, _, lp in t.top} for t in items],
    }


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


class BackgroundServer:
    """uvicorn in a thread, for tests and benchmarks: ``with BackgroundServer(app) as url:``."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = uvicorn.Server(uvicorn_config(app, host, port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.host = host

    @property
    def url(self) -> str:
        sockets = [s for srv in self.server.servers for s in srv.sockets]
        port = sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
