"""``POST /v1/completions``: token-id prompts, generation, and vLLM's ``prompt_logprobs``
(how ``brandbot serve`` scores every label of a classification in one request).

``prompt_logprobs`` repeats the shared prompt's entries in every choice, as vLLM does; they are
built once as plain JSON objects (``PromptLogprob``'s fields) and put into the response after
pydantic has dumped the rest, so a request over ten labels does not validate and dump the
prompt's entries ten times over."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serving.inference_types import TokenLogprob, TokenScore
from serving.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    UsageInfo,
    new_id,
    now,
)
from serving.server.common import ApiError, parse, sampling, start

if TYPE_CHECKING:
    from serving.engine import LocalEngine

Entry = dict[str, dict[str, float | int | str]]  # token id -> PromptLogprob's fields
PromptRow = list[Entry | None]


class CompletionRoutes:
    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine

    async def completions(self, request: Request) -> Response:
        req = await parse(request, CompletionRequest)
        engine = self.engine
        engine.check_model(req.model)
        prompts = self._prompt_ids(req.prompt)
        vocab = len(engine.tokenizer)
        for ids in prompts:
            if not ids:
                raise ApiError(400, "a prompt must not be empty", "prompt")
            if any(t < 0 or t >= vocab for t in ids):
                raise ApiError(400, f"token ids must be in [0, {vocab})", "prompt")
        params = [sampling(req, len(ids), engine.max_model_len) for ids in prompts]
        scored_rows: list[PromptRow] = []
        next_tokens: list[int] = []
        if req.prompt_logprobs is not None:
            scored_rows, next_tokens = await self._score_prompts(
                prompts, req.model, req.prompt_logprobs
            )
        # one greedy token after scored prompts: the scoring pass already computed it
        shortcut = (
            req.prompt_logprobs is not None
            and req.max_tokens == 1
            and req.temperature == 0
            and req.logprobs is None
            and not req.stop
        )
        choices = []
        for index, ids in enumerate(prompts):
            if shortcut:
                token = next_tokens[index]
                eos = token in engine.eos_ids and not req.ignore_eos
                text = "" if eos else engine.piece(token)
                finish, completion_tokens, lp = ("stop" if eos else "length"), 1, None
            else:
                result = (await start(engine, ids, params[index], req.model, 1).results(1))[0]
                text, finish = result.text, result.finish_reason
                completion_tokens = result.completion_tokens
                lp = completion_logprobs(result.logprobs) if req.logprobs is not None else None
            if req.echo:
                text = str(engine.tokenizer.decode(ids)) + str(text)
            choice = CompletionChoice(
                index=index, text=text, logprobs=lp, finish_reason=finish,
                prompt_token_ids=ids if req.prompt_logprobs is not None else None,
            )  # fmt: skip
            choices.append((choice, completion_tokens))
        prompt_tokens = sum(len(p) for p in prompts)
        completion = sum(tokens for _, tokens in choices)
        body = CompletionResponse(
            id=new_id("cmpl"),
            created=now(),
            model=req.model,
            choices=[choice for choice, _ in choices],
            usage=UsageInfo(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion,
                total_tokens=prompt_tokens + completion,
            ),
        )
        out = body.model_dump()
        for choice, row in zip(out["choices"], scored_rows, strict=False):
            choice["prompt_logprobs"] = row
        return JSONResponse(out)

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
    ) -> tuple[list[PromptRow], list[int]]:
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
        pieces: dict[int, str] = {}

        def piece(token: int) -> str:
            if token not in pieces:
                pieces[token] = self.engine.piece(token)
            return pieces[token]

        def entry(score: TokenScore) -> Entry:
            out: Entry = {
                str(score.token_id): {
                    "logprob": score.logprob,
                    "rank": score.rank,
                    "decoded_token": piece(score.token_id),
                }
            }
            for rank, (tid, lp) in enumerate(score.top, start=1):
                out.setdefault(str(tid), {"logprob": lp, "rank": rank, "decoded_token": piece(tid)})
            return out

        head: PromptRow = [None, *(entry(s) for s in scored.prefix)]
        rows = [head + [entry(s) for s in row] for row in scored.rows]
        return rows, scored.next_token


def completion_logprobs(items: list[TokenLogprob] | None) -> CompletionLogprobs | None:
    if items is None:
        return None
    offsets, position = [], 0
    for t in items:
        offsets.append(position)
        position += len(t.token)
    return CompletionLogprobs(
        text_offset=offsets,
        token_logprobs=[t.logprob for t in items],
        tokens=[t.token for t in items],
        top_logprobs=[{tok: lp for tok, _, lp in t.top} for t in items],
    )
