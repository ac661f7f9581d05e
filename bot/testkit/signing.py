"""Slack request signing (v0 HMAC-SHA256), exactly as Slack signs what it sends to an app.

Slack signs ``v0:{timestamp}:{raw body}`` with the app's signing secret and sends the result
as ``X-Slack-Signature: v0=<hex>`` next to ``X-Slack-Request-Timestamp``. Receivers reject a
timestamp more than five minutes away from their clock. :func:`sign` builds the two headers;
:func:`sign_stale` and :func:`sign_bad` build the headers a verifier must refuse.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["STALE_AFTER_SECONDS", "sign", "sign_bad", "sign_stale", "signature"]

#: Slack's receivers refuse requests older (or newer) than this many seconds.
STALE_AFTER_SECONDS = 60 * 5


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


def signature(secret: str, body: bytes | str, timestamp: int) -> str:
    """The ``v0=<hex>`` value of ``X-Slack-Signature`` for this body and timestamp."""
    base = b"v0:" + str(timestamp).encode("ascii") + b":" + _as_bytes(body)
    digest = hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()
    return f"v0={digest}"


def sign(secret: str, body: bytes | str, timestamp: int | None = None) -> dict[str, str]:
    """Headers Slack would send with ``body``: the request timestamp (now by default) and the
    ``v0`` signature."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": signature(secret, body, ts),
    }


def sign_stale(
    secret: str, body: bytes | str, age: int = STALE_AFTER_SECONDS + 60
) -> dict[str, str]:
    """A correct signature over a timestamp ``age`` seconds in the past (a replayed request)."""
    return sign(secret, body, int(time.time()) - age)


def sign_bad(secret: str, body: bytes | str, timestamp: int | None = None) -> dict[str, str]:
    """A fresh timestamp with a signature made with the wrong secret."""
    return sign(secret + "-wrong", body, timestamp)
