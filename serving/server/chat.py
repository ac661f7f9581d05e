"""``POST /v1/chat/completions``: generation (plain or streamed as server-sent events) and
``structured_outputs.choice``, answered with the label that scores highest."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from serving.inference_types import SamplingParams, TokenLogprob, TokenScore
from serving.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    TokenLogprobOut,
    TopLogprob,
    UsageInfo,
    error_body,
    new_id,
    now,
)
from serving.server.common import ApiError, Run, parse, sampling, start

if TYPE_CHECKING:
    from serving.engine import LocalEngine


def sse(body: ChatCompletionChunk) -> str:
    return f"data: {body.model_dump_json(exclude_none=True)}\n\n"


class ChatRoutes:
    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine

    async def chat(self, request: Request) -> Response:
        req = await parse(request, ChatCompletionRequest)
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
        params = sampling(req, len(ids), self.engine.max_model_len)
        if so is not None and so.choice:
            return await self._choose(req, messages, so.choice, params)
        run = start(self.engine, ids, params, req.model, req.n)
        rid, created = new_id("chatcmpl"), now()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                self._stream(run, req, rid, created, len(ids), include_usage),
                media_type="text/event-stream",
            )
        results = await run.results(req.n)
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=results[i].text),
                logprobs=chat_logprobs(results[i].logprobs) if req.logprobs else None,
                finish_reason=results[i].finish_reason,
            )
            for i in range(req.n)
        ]
        completion = sum(r.completion_tokens for r in results.values())
        usage = UsageInfo(
            prompt_tokens=len(ids),
            completion_tokens=completion,
            total_tokens=len(ids) + completion,
        )
        body = ChatCompletionResponse(
            id=rid, created=created, model=req.model, choices=choices, usage=usage
        )
        return JSONResponse(body.model_dump())

    async def _stream(
        self,
        run: Run,
        req: ChatCompletionRequest,
        rid: str,
        created: int,
        prompt_tokens: int,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        def chunk(choices: list[ChunkChoice], usage: UsageInfo | None = None) -> str:
            return sse(
                ChatCompletionChunk(
                    id=rid, created=created, model=req.model, choices=choices, usage=usage
                )
            )

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
                lp = chat_logprobs(event.logprobs) if req.logprobs and event.logprobs else None
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
                usage = UsageInfo(
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
        rid, created = new_id("chatcmpl"), now()
        if req.stream:

            async def stream() -> AsyncIterator[str]:
                for index in range(req.n):
                    delta = Delta(role="assistant", content=label)
                    choice = ChunkChoice(
                        index=index, delta=delta, logprobs=logprobs, finish_reason="stop"
                    )
                    yield sse(
                        ChatCompletionChunk(
                            id=rid, created=created, model=req.model, choices=[choice]
                        )
                    )
                yield "data: [DONE]\n\n"

            return StreamingResponse(stream(), media_type="text/event-stream")
        usage = UsageInfo(
            prompt_tokens=len(prompt),
            completion_tokens=len(label_tokens),
            total_tokens=len(prompt) + len(label_tokens),
        )
        answers = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=label),
                logprobs=logprobs,
                finish_reason="stop",
            )
            for i in range(req.n)
        ]
        body = ChatCompletionResponse(
            id=rid, created=created, model=req.model, choices=answers, usage=usage
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


def chat_logprobs(items: list[TokenLogprob] | None) -> ChoiceLogprobs | None:
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
