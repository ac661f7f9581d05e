"""The bot's one HTTP port: ``/slack/events`` (events, commands, interactivity), ``/healthz``,
``/readyz`` and ``/metrics``. Served by uvicorn with a real listen backlog.

A body over ``MAX_BODY_BYTES`` is refused with 413 before it is read: by its Content-Length,
or, when it is streamed (chunked), as soon as the bytes read pass the limit. Slack requests are
then verified (a bad or stale signature is 401 and counted; this is the only check, bolt's own
is off), then parsed once, by bolt's parser (a malformed body is logged and answered 200, so
Slack does not retry it forever), then handed to bolt. Whatever bolt does not handle is still
answered 200.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot.observability import (
    ACK_LATENCY,
    BAD_SIGNATURES,
    MALFORMED_REQUESTS,
    OVERSIZED_REQUESTS,
    RETRIES_RECEIVED,
)
from bot.slack.app import SlackBridge

log = logging.getLogger("brandbot.web")
MAX_BODY_BYTES = 1 << 20  # Slack's own payloads are far smaller


class BodyTooLarge(Exception):
    """The request body passed ``MAX_BODY_BYTES``."""


async def read_capped(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, or BodyTooLarge once its declared or streamed size passes ``limit``.

    Nothing past the limit is read: a declared size over it is refused at once, and a
    streamed body is dropped as soon as it grows past it.
    """
    declared = request.headers.get("content-length", "")
    if declared and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Readiness:
    """Named checks for ``/readyz``; each returns None when fine or a reason when not."""

    checks: dict[str, Callable[[], str | None]] = field(default_factory=dict)

    def run(self) -> dict[str, str]:
        results = {}
        for name, check in self.checks.items():
            try:
                problem = check()
            except Exception as exc:
                problem = f"{type(exc).__name__}: {str(exc)[:200]}"
            results[name] = problem or "ok"
        return results


def bolt_request(body: str, headers: Mapping[str, str]) -> AsyncBoltRequest | None:
    """The request for bolt, its body parsed once (by bolt), or None when the body cannot be
    understood: not JSON, a form or a form's JSON ``payload``, or not an object.

    bolt's form parser takes any form body containing the word "payload" for an interactive
    request's ``payload=`` field, and parses a slash command whose text says "payload" as
    empty; in such a form without that field the word is percent-encoded (the same form once
    decoded), so bolt reads the command. The signature was checked on the original bytes."""
    is_json = "application/json" in headers.get("content-type", "") or body.startswith("{")
    if "payload" in body and not is_json and not _has_payload_field(body):
        body = body.replace("payload", "%70ayload")
    try:
        request = AsyncBoltRequest(body=body, headers={k: [v] for k, v in headers.items()})
    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
        return None
    return request if isinstance(request.body, dict) and request.body else None


def _has_payload_field(form: str) -> bool:
    return any(pair.split("=", 1)[0] == "payload" for pair in form.split("&"))


def request_kind(payload: dict[str, Any]) -> str:
    if "command" in payload:
        return "command"
    return str(payload.get("type", "unknown"))


def build_web_app(
    bridge: SlackBridge | None,
    signing_secret: str | None,
    readiness: Readiness,
) -> Starlette:
    verifier = SignatureVerifier(signing_secret) if signing_secret else None

    async def slack_events(request: Request) -> Response:
        start = time.perf_counter()
        headers = request.headers
        if bridge is None or verifier is None:
            return PlainTextResponse("Slack over HTTP is not configured", status_code=404)
        try:
            raw = await read_capped(request)
        except BodyTooLarge:
            OVERSIZED_REQUESTS.inc()
            log.warning("refused a request body over %d bytes", MAX_BODY_BYTES)
            return PlainTextResponse(
                "request body too large", status_code=413, headers={"Connection": "close"}
            )
        timestamp = headers.get("x-slack-request-timestamp", "")
        signature = headers.get("x-slack-signature", "")
        if not (timestamp.isdigit() and signature and verifier.is_valid(raw, timestamp, signature)):
            BAD_SIGNATURES.inc()
            log.warning("refused a request with a bad or stale signature")
            return PlainTextResponse("invalid signature", status_code=401)
        if headers.get("x-slack-retry-num"):
            RETRIES_RECEIVED.inc()
        slack_request = bolt_request(raw.decode("utf-8", errors="replace"), headers)
        if slack_request is None:
            MALFORMED_REQUESTS.inc()
            log.warning("malformed Slack request body ignored")
            return PlainTextResponse("", status_code=200)
        kind = request_kind(slack_request.body)
        bolt_response = await bridge.app.async_dispatch(slack_request)
        status = bolt_response.status
        if status == 404:
            log.info("unhandled Slack request %s answered 200", kind)
            status = 200
        response = Response(
            content=bolt_response.body,
            status_code=status,
            headers={
                k: v[0] for k, v in bolt_response.headers.items() if v and k != "content-length"
            },
        )
        ACK_LATENCY.labels(kind).observe(time.perf_counter() - start)
        return response

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", "worker": os.getpid()})

    async def readyz(_: Request) -> Response:
        import asyncio

        results = await asyncio.get_running_loop().run_in_executor(None, readiness.run)
        ready = all(v == "ok" or v.startswith("not configured") for v in results.values())
        return JSONResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/slack/events", slack_events, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
    )
