"""The routes around generation: ``/health``, ``/metrics``, ``/v1/models``, ``/tokenize`` and
vLLM's runtime LoRA API (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from serving.client.local import engine_running
from serving.protocol import (
    LoadLoraRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
    UnloadLoraRequest,
    now,
)
from serving.server.common import ApiError, error, parse

if TYPE_CHECKING:
    from serving.engine import LocalEngine


class AdminRoutes:
    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine

    async def health(self, request: Request) -> Response:
        """200 while the engine (its model loaded when it was built) runs; 503 once stopped."""
        if engine_running(self.engine):
            return Response(status_code=200)
        return error(503, "the engine stopped")

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
        body = await parse(request, LoadLoraRequest)
        if body.lora_name == self.engine.served_name:
            raise ApiError(400, f"the name {body.lora_name!r} is the base model's", "lora_name")
        if body.lora_name in self.engine.adapters:
            raise ApiError(
                400, f"The lora adapter '{body.lora_name}' has already been loaded.", "lora_name"
            )
        await run_in_threadpool(self.engine.load_adapter, body.lora_name, body.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    async def unload_lora(self, request: Request) -> Response:
        body = await parse(request, UnloadLoraRequest)
        if body.lora_name not in self.engine.adapters:
            raise ApiError(
                404, f"The lora adapter '{body.lora_name}' cannot be found.", "lora_name"
            )
        await run_in_threadpool(self.engine.unload_adapter, body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    async def tokenize(self, request: Request) -> Response:
        body = await parse(request, TokenizeRequest)
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
