"""Metrics (Prometheus) and structured JSON logs that carry Slack ids and never secrets."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from bot.settings import Settings

EVENTS_RECEIVED = Counter(
    "brandbot_events_received_total", "Chat events received, by type.", ["type"]
)
EVENTS_DUPLICATE = Counter(
    "brandbot_events_duplicate_total", "Events dropped because they already took effect.", ["type"]
)
RETRIES_RECEIVED = Counter("brandbot_slack_retries_total", "Requests with X-Slack-Retry-Num.")
BAD_SIGNATURES = Counter(
    "brandbot_bad_signatures_total", "Slack requests refused for a bad or stale signature."
)
MALFORMED_REQUESTS = Counter(
    "brandbot_malformed_requests_total", "Signed requests whose body could not be understood."
)
OVERSIZED_REQUESTS = Counter(
    "brandbot_oversized_requests_total", "Requests refused because the body was too large."
)
FOREIGN_TEAM_REQUESTS = Counter(
    "brandbot_foreign_team_requests_total", "Slack requests from other workspaces, ignored."
)
BUSY_REFUSALS = Counter(
    "brandbot_busy_refusals_total",
    "Requests answered 'busy': a rate limit or a full queue.",
    ["reason"],
)
HANDLER_LATENCY = Histogram(
    "brandbot_handler_seconds", "Time spent in plugin handlers.", ["handler"]
)
HANDLER_ERRORS = Counter("brandbot_handler_errors_total", "Handlers that raised.", ["handler"])
ACK_LATENCY = Histogram(
    "brandbot_ack_seconds",
    "Time from receiving a Slack request to answering it.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 3.0, 5.0),
)
JOB_QUEUE_DEPTH = Gauge("brandbot_job_queue_depth", "Jobs waiting or running.")
JOBS_FAILED = Counter("brandbot_jobs_failed_total", "Queued jobs that raised.", ["job"])
OUTBOX_DELIVERED = Counter(
    "brandbot_outbox_delivered_total", "Internal events delivered.", ["topic"]
)
OUTBOX_DEAD = Counter(
    "brandbot_outbox_dead_letters_total",
    "Internal events given up on after their last attempt.",
    ["topic"],
)

_TOKEN_RE = re.compile(
    r"\b(xox[abposr]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+)"
    r"|(?<=[Bb]earer )[A-Za-z0-9._~+/=-]+"  # an Authorization header's key
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"  # user:password in a URL
    r"|(?<=^DETAIL:  ).*$",  # PostgreSQL's error detail quotes row values (message text)
    re.MULTILINE,
)
_SLACK_KEYS = ("team_id", "channel_id", "user_id", "event_id", "ts", "error_id", "handler")


class Redactor(logging.Filter):
    """Removes Slack tokens, bearer keys, URL passwords, PostgreSQL's error details (they quote
    the row's values) and the configured secrets from every log record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def scrub(self, text: str) -> str:
        text = _TOKEN_RE.sub("[redacted]", text)
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, Slack ids, error."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _SLACK_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        if record.exc_text:
            doc["error"] = record.exc_text
        elif record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def settings_secrets(settings: Settings) -> list[str]:
    """The secret values in ``settings`` (tokens, keys, the database password), for Redactor."""
    from sqlalchemy.engine import make_url

    values = [
        s.get_secret_value()
        for s in (settings.slack_bot_token, settings.slack_app_token,
                  settings.slack_signing_secret, settings.inference_api_key)
        if s is not None
    ]  # fmt: skip
    password = make_url(settings.resolved_database_url).password
    return values + ([str(password)] if password else [])


def configure_logging(
    secrets: Iterable[str] = (), level: int = logging.INFO, json_logs: bool = True
) -> None:
    """Route all logs to stderr, redacted; JSON unless ``json_logs`` is False (console)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(Redactor(secrets))
    handler.setFormatter(
        JsonFormatter() if json_logs else logging.Formatter("%(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("slack_bolt", "slack_sdk", "apscheduler", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
