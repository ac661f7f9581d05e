"""The edge of the bot (issue 17): oversized bodies, other workspaces, per-user rate limits and
the bounded job queue, driven over signed HTTP (and Socket Mode) into the real bolt app with
the fake Slack."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from bot.jobs import JobQueue
from bot.plugin_loader import PluginEntry
from bot.ratelimit import BUSY_MESSAGE, Busy, RateLimiter
from bot.settings import Settings
from bot.slack.runner import SlackRuntime
from bot.storage import Database
from bot.storage.models import AuditEntry, Draft, ProcessedEvent
from bot.storage.repositories import Datasets
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from bot.testkit.socket_mode import FakeSocketMode
from plugins.draft import DraftPlugin
from plugins.help import HelpPlugin
from serving.client import LocalClient
from serving.engine import LocalEngine
from tests.bot.slack_harness import Served, serve_bot
from tests.bot.test_runtime import Sample
from tests.bot.test_slack_http import command, reaction, wait_responses

PLUGINS = [PluginEntry("sample", Sample), PluginEntry("help", HelpPlugin)]
SIXTEEN_MB = 16 * 1024 * 1024
COPY, MAYA, PRIYA = "C0BRANDCPY", "U0MAYA0001", "U0PRIYA001"


@pytest.fixture
def bot(db: Database, fake_slack: FakeSlack, slack_signing_secret: str) -> Iterator[Served]:
    Sample.fail_next = 0
    fake_slack.add_channel("C0CHAN0001", "brand", members=[fake_slack.bot_user_id, "U0USER0001"])
    with serve_bot(db, fake_slack, slack_signing_secret, PLUGINS, {"sample": {"greeting": "hi"}},
                   team_ids=[payloads.TEAM_ID]) as served:  # fmt: skip
        yield served


def count(db: Database, model: type[AuditEntry] | type[ProcessedEvent] | type[Draft]) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def raw_post(url: str, head: dict[str, str], body: Iterator[bytes]) -> tuple[str, int]:
    """POST over a bare socket: send the head, then ``body`` from a thread (until the server
    stops reading); return the status line and how many body bytes had been offered to the
    socket when it arrived (counted before each send, so a server that read the whole body
    before answering always shows all of it)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.hostname}"]
    lines += [f"{k}: {v}" for k, v in head.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    offered = [0]

    def send() -> None:
        try:
            for chunk in body:
                offered[0] += len(chunk)
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed: it did not read the rest

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    status = sock.makefile("rb").readline().decode().strip()
    at_answer = offered[0]
    sock.close()
    sender.join(timeout=5)
    return status, at_answer


def test_a_16_mb_body_is_refused_before_it_is_read_and_the_bot_stays_healthy(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    """The refusal comes from the declared or counted size, not after taking in 16 MB: the
    answer arrives while most of the body was never sent (the socket buffers hold far less)."""
    block = b"x" * 65536
    declared = {"Content-Type": "application/json", "Content-Length": str(SIXTEEN_MB)}
    status, sent = raw_post(bot.events_url, declared, iter([block] * (SIXTEEN_MB // 65536)))
    assert status.startswith("HTTP/1.1 413") and sent < SIXTEEN_MB

    def chunked() -> Iterator[bytes]:
        for _ in range(SIXTEEN_MB // 65536):
            yield b"%x\r\n%s\r\n" % (len(block), block)
        yield b"0\r\n\r\n"

    streamed = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    status, sent = raw_post(bot.events_url, streamed, chunked())
    assert status.startswith("HTTP/1.1 413") and sent < SIXTEEN_MB

    assert httpx.get(f"{bot.url}/healthz").json()["status"] == "ok"
    body, rid = command(fake_slack, "still here")
    assert signed_post(bot.events_url, slack_signing_secret, body).status_code == 200
    assert wait_responses(fake_slack, rid)[0]["text"] == "hi still here"


def test_a_body_just_under_the_limit_still_reaches_the_signature_check(
    bot: Served, slack_signing_secret: str
) -> None:
    r = httpx.post(bot.events_url, content=b"{" + b" " * (1024 * 1024 - 2) + b"}")
    assert r.status_code == 401  # read in full, then refused for its (missing) signature


def test_events_from_another_workspace_are_ignored_and_write_nothing(
    bot: Served,
    db: Database,
    fake_slack: FakeSlack,
    slack_signing_secret: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    foreign = reaction("Ev0FOREIGN1")
    foreign["team_id"] = "T0STRANGER"
    with caplog.at_level(logging.WARNING, logger="brandbot.slack"):
        r = signed_post(bot.events_url, slack_signing_secret, foreign)
    assert r.status_code == 200
    assert "another workspace" in caplog.text
    assert count(db, AuditEntry) == 0 and count(db, ProcessedEvent) == 0

    rid = f"r{time.monotonic_ns()}"
    body = payloads.slash_command("/hello", "x", "U0USER0001", "C0CHAN0001",
                                  fake_slack.response_url(rid), team_id="T0STRANGER")  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="brandbot.slack"):
        assert signed_post(bot.events_url, slack_signing_secret, body).status_code == 200
    # dropped before any listener ran (in the request, before its 200): nothing answers later
    assert "another workspace" in caplog.text
    assert fake_slack.responses(rid) == []

    ours = reaction("Ev0OURS0001")
    assert signed_post(bot.events_url, slack_signing_secret, ours).status_code == 200
    assert count(db, AuditEntry) == 1 and count(db, ProcessedEvent) == 1


# ---- rate limits and the bounded queue ---------------------------------------------------


@pytest.fixture
def drafting(
    db: Database, fake_slack: FakeSlack, slack_signing_secret: str, engine: LocalEngine
) -> Iterator[Served]:
    with db.session() as s:
        Datasets(s).create("kk_copy", "draft", channels=[COPY], approvers=[MAYA])
    for uid in (MAYA, PRIYA):
        fake_slack.add_user(uid, uid.lower())
    fake_slack.add_channel(COPY, "brand-copy", members=[fake_slack.bot_user_id, MAYA, PRIYA])
    with serve_bot(db, fake_slack, slack_signing_secret, [PluginEntry("draft", DraftPlugin)],
                   {"draft": {"max_tokens": 16, "retries_for_rules": 0}},
                   inference=LocalClient(engine),
                   settings={"rate_limit_per_minute": 3}) as served:  # fmt: skip
        yield served


def draft(bot: Served, fake: FakeSlack, secret: str, text: str, user: str = MAYA) -> str:
    rid = f"r{time.monotonic_ns()}"
    body = payloads.slash_command("/draft", text, user, COPY, fake.response_url(rid))
    assert signed_post(bot.events_url, secret, body).status_code == 200
    return rid


def test_a_busy_user_is_told_to_try_again_and_nothing_is_queued(
    drafting: Served, db: Database, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    first = draft(drafting, fake_slack, slack_signing_secret, "-n 3 announce the autumn chai")
    assert wait_responses(fake_slack, first)[0]["text"].startswith("Drafting")
    again = draft(drafting, fake_slack, slack_signing_secret, "one more please")
    assert wait_responses(fake_slack, again)[0]["text"] == BUSY_MESSAGE
    other = draft(drafting, fake_slack, slack_signing_secret, "a brief of mine", user=PRIYA)
    assert wait_responses(fake_slack, other)[0]["text"].startswith("Drafting")
    drafting.runtime.services.jobs.wait_idle(30)
    assert count(db, Draft) == 2  # the refused request wrote nothing

    answers = wait_responses(fake_slack, first, count=2, timeout=30)
    regenerate = next(
        e for b in answers[-1]["blocks"] if b["type"] == "actions" for e in b["elements"]
        if e["action_id"] == "draft_regenerate"
    )  # fmt: skip
    rid = f"p{time.monotonic_ns()}"
    press = payloads.block_actions(MAYA, "draft_regenerate", regenerate["value"], COPY, "1.1",
                                   fake_slack.response_url(rid))  # fmt: skip
    for _ in range(2):  # a regenerate of three costs three: the second press is refused
        assert signed_post(drafting.events_url, slack_signing_secret, press).status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        texts = [a["text"] for a in fake_slack.responses(rid)]
        if BUSY_MESSAGE in texts and "Regenerating…" in texts:
            break
        time.sleep(0.05)
    assert texts.count(BUSY_MESSAGE) == 1 and texts.count("Regenerating…") == 1


def test_a_full_job_queue_answers_busy_instead_of_growing(
    db: Database, fake_slack: FakeSlack, slack_signing_secret: str, engine: LocalEngine
) -> None:
    with db.session() as s:
        Datasets(s).create("kk_copy", "draft", channels=[COPY], approvers=[MAYA])
    fake_slack.add_channel(COPY, "brand-copy", members=[fake_slack.bot_user_id, MAYA])
    jobs = JobQueue(workers=1, limit=2)
    release = threading.Event()
    for _ in range(2):
        jobs.submit(release.wait, 30)
    try:
        with serve_bot(db, fake_slack, slack_signing_secret, [PluginEntry("draft", DraftPlugin)],
                       inference=LocalClient(engine), jobs=jobs) as served:  # fmt: skip
            rid = draft(served, fake_slack, slack_signing_secret, "announce the chai")
            assert wait_responses(fake_slack, rid)[0]["text"] == BUSY_MESSAGE
            assert jobs.depth == 2 and count(db, Draft) == 0
    finally:
        release.set()
        jobs.wait_idle(10)


def test_the_job_queue_bound_holds_under_concurrent_submits() -> None:
    jobs = JobQueue(workers=2, limit=5)
    release = threading.Event()
    refused: list[Busy] = []
    seen: list[int] = []

    def submit() -> None:
        try:
            jobs.submit(release.wait, 10)
        except Busy as exc:
            refused.append(exc)
        seen.append(jobs.depth)

    threads = [threading.Thread(target=submit) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert jobs.depth == 5 and len(refused) == 35 and max(seen) <= 5
    assert str(refused[0]) == BUSY_MESSAGE
    release.set()
    assert jobs.wait_idle(10)
    jobs.submit(lambda: None).result(timeout=5)  # room again once the queue drains


def test_rate_limiter_refills_over_a_minute_and_zero_turns_it_off() -> None:
    now = [0.0]
    limiter = RateLimiter(lambda: 6, clock=lambda: now[0])
    limiter.take("U1", "draft", 3)
    limiter.take("U1", "draft", 3)
    with pytest.raises(Busy):
        limiter.take("U1", "draft")
    limiter.take("U1", "classify")  # another action has its own bucket
    limiter.take("U2", "draft", 6)  # and so has another user
    now[0] = 10.0  # one token back every ten seconds
    limiter.take("U1", "draft")
    with pytest.raises(Busy):
        limiter.take("U1", "draft")
    off = RateLimiter(lambda: 0)
    for _ in range(1000):
        off.take("U1", "draft", 3)


def test_socket_mode_ignores_other_workspaces_learning_its_own_from_auth_test(
    sqlite_url: str, fake_slack: FakeSlack, fake_socket_mode: FakeSocketMode
) -> None:
    db = Database(sqlite_url)
    db.upgrade()
    settings = Settings(
        slack_bot_token=fake_slack.bot_token, slack_app_token=fake_slack.app_token,
        slack_api_url=fake_slack.api_url,
    )  # fmt: skip
    runtime = SlackRuntime(settings, db, plugins=PLUGINS)
    thread = threading.Thread(target=runtime.run_socket_mode, args=("127.0.0.1", None), daemon=True)
    thread.start()
    try:
        fake_socket_mode.wait_for_connection(timeout=10)
        assert runtime.bridge.team_ids == {payloads.TEAM_ID}  # no setting: the token's own
        foreign = reaction("EvSOCKFOR1")
        foreign["team_id"] = "T0STRANGER"
        assert fake_socket_mode.wait_for_ack(fake_socket_mode.send("events_api", foreign))
        assert count(db, AuditEntry) == 0 and count(db, ProcessedEvent) == 0
        ours = reaction("EvSOCKOUR1")
        assert fake_socket_mode.wait_for_ack(fake_socket_mode.send("events_api", ours))
        assert count(db, AuditEntry) == 1
    finally:
        runtime.stop_socket_mode()
        thread.join(timeout=10)
        db.dispose()
