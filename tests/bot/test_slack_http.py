"""End to end: signed HTTP requests into the real bolt app, Web API calls to the fake Slack
server, effects checked in the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import func, select

from bot.plugin_loader import PluginEntry
from bot.storage import Database
from bot.storage.models import AuditEntry, ProcessedEvent
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from plugins.help import HelpPlugin
from tests.bot.slack_harness import Served, serve_bot
from tests.bot.test_runtime import Sample

PLUGINS = [PluginEntry("sample", Sample), PluginEntry("help", HelpPlugin)]


@pytest.fixture
def bot(db: Database, fake_slack: FakeSlack, slack_signing_secret: str) -> Iterator[Served]:
    Sample.fail_next = 0
    fake_slack.add_channel("C0CHAN0001", "brand", members=[fake_slack.bot_user_id, "U0USER0001"])
    with serve_bot(db, fake_slack, slack_signing_secret, PLUGINS, {"sample": {"greeting": "hi"}},
                   admins=["U0ADMIN001"]) as served:  # fmt: skip
        yield served


def audits(db: Database, action: str) -> int:
    with db.session() as s:
        return int(
            s.scalar(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.action == action)
            )
            or 0
        )


def metric(bot: Served, name: str) -> float:
    text = httpx.get(f"{bot.url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def command(
    fake: FakeSlack, text: str, name: str = "/hello", user: str = "U0USER0001"
) -> tuple[dict[str, str], str]:
    rid = f"r{time.monotonic_ns()}"
    return payloads.slash_command(name, text, user, "C0CHAN0001", fake.response_url(rid)), rid


def wait_responses(fake: FakeSlack, rid: str, count: int = 1, timeout: float = 5.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fake.responses(rid)
        if len(got) >= count:
            return got
        time.sleep(0.02)
    raise AssertionError(f"no response on {rid}: {fake.responses(rid)}")


def reaction(event_id: str, user: str = "U0USER0001", added: bool = True) -> dict[str, Any]:
    make = payloads.reaction_added if added else payloads.reaction_removed
    return payloads.event_callback(make(user, "white_check_mark", "C0CHAN0001", "1700000000.000100"),
                                   event_id=event_id)  # fmt: skip


def test_url_verification(bot: Served, slack_signing_secret: str) -> None:
    r = signed_post(bot.events_url, slack_signing_secret, payloads.url_verification("abc123"))
    assert r.status_code == 200 and "abc123" in r.text


def test_slash_command_acks_then_answers_through_response_url(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    """The ack does not wait for the work: it arrives while the answer's post is held."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from bot.testkit.servers import BackgroundServer

    release, answers = threading.Event(), []

    async def held(request: Request) -> JSONResponse:
        answers.append(await request.json())
        await anyio.to_thread.run_sync(release.wait, 60)
        return JSONResponse({"ok": True})

    with BackgroundServer(Starlette(routes=[Route("/held", held, methods=["POST"])])) as url:
        body = payloads.slash_command("/hello", "world", "U0USER0001", "C0CHAN0001",
                                      f"{url}/held")  # fmt: skip
        try:  # an ack that waited for the answer's post would time out here
            r = signed_post(bot.events_url, slack_signing_secret, body, timeout=30)
            assert r.status_code == 200
            deadline = time.monotonic() + 10
            while not answers:
                assert time.monotonic() < deadline, "no answer through the response_url"
                time.sleep(0.02)
        finally:
            release.set()
    (answer,) = answers
    assert answer["text"] == "hi world"
    assert answer["blocks"][1]["elements"][0]["action_id"] == "again"


def test_a_command_whose_text_says_payload_is_handled(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    """bolt's form parser takes any body containing the word "payload" for an interactive
    payload and drops a command like ``/draft a payload note``; it must reach its handler."""
    body, rid = command(fake_slack, "a payload note")
    assert signed_post(bot.events_url, slack_signing_secret, body).status_code == 200
    (answer,) = wait_responses(fake_slack, rid)
    assert answer["text"] == "hi a payload note"


def test_help_is_generated_and_admin_commands_hidden(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    body, rid = command(fake_slack, "help", name="/brandbot")
    signed_post(bot.events_url, slack_signing_secret, body)
    text = wait_responses(fake_slack, rid)[0]["text"]
    assert "`/hello` Say hello. Usage: /hello [name]" in text and "/hello admin" not in text
    body, rid = command(fake_slack, "admin go")
    signed_post(bot.events_url, slack_signing_secret, body)
    assert "only admins" in wait_responses(fake_slack, rid)[0]["text"]
    body, rid = command(fake_slack, "admin go", user="U0ADMIN001")
    signed_post(bot.events_url, slack_signing_secret, body)
    assert wait_responses(fake_slack, rid)[0]["text"] == "admin go"


def test_failing_command_apologises_with_an_error_id(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    body, rid = command(fake_slack, "", name="/boom")
    assert signed_post(bot.events_url, slack_signing_secret, body).status_code == 200
    text = wait_responses(fake_slack, rid)[0]["text"]
    assert text.startswith("Sorry, something went wrong") and "error id" in text


def test_bad_and_stale_signatures_are_refused_and_counted(
    bot: Served, slack_signing_secret: str
) -> None:
    before = metric(bot, "brandbot_bad_signatures_total")
    body = json.dumps(reaction("EvBAD"))
    bad = signed_post(bot.events_url, slack_signing_secret + "x", body)
    stale = signed_post(
        bot.events_url, slack_signing_secret, body, timestamp=int(time.time()) - 600
    )
    unsigned = httpx.post(
        bot.events_url, content=body, headers={"Content-Type": "application/json"}
    )
    assert (bad.status_code, stale.status_code, unsigned.status_code) == (401, 401, 401)
    assert metric(bot, "brandbot_bad_signatures_total") == before + 3


def test_malformed_and_unknown_payloads_answer_200_without_touching_data(
    bot: Served, db: Database, slack_signing_secret: str
) -> None:
    cases = [
        ("{not json", "application/json"),
        (json.dumps(["a", "list"]), "application/json"),
        (
            json.dumps(
                payloads.event_callback({"type": "channel_rename", "channel": {"id": "C1"}})
            ),
            "application/json",
        ),
        (
            json.dumps(payloads.event_callback({"type": "reaction_added", "user": "U1"})),
            "application/json",
        ),
        (json.dumps({"type": "something_new"}), "application/json"),
        ("payload=%7Bbroken", "application/x-www-form-urlencoded"),
    ]
    for body, content_type in cases:
        r = signed_post(bot.events_url, slack_signing_secret, body, content_type=content_type)
        assert r.status_code == 200, (body, r.status_code, r.text)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ProcessedEvent)) == 0
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == 0


def test_the_same_event_three_times_has_exactly_one_effect(
    bot: Served, db: Database, slack_signing_secret: str
) -> None:
    event = reaction("Ev0000001")
    before = metric(bot, "brandbot_events_duplicate_total")
    statuses = [
        signed_post(bot.events_url, slack_signing_secret, event, retry_num=n).status_code
        for n in (None, 1, 2)
    ]
    assert statuses == [200, 200, 200]
    assert audits(db, "approve") == 1
    assert metric(bot, "brandbot_events_duplicate_total") == before + 2


def test_a_handler_that_fails_once_is_redone_by_the_retry(
    bot: Served, db: Database, slack_signing_secret: str
) -> None:
    Sample.fail_next = 1
    event = reaction("Ev0000002")
    first = signed_post(bot.events_url, slack_signing_secret, event)
    assert first.status_code == 500  # Slack will retry
    assert audits(db, "approve") == 0 and audits(db, "approve.partial") == 0
    retry = signed_post(
        bot.events_url, slack_signing_secret, event, retry_num=1, retry_reason="http_error"
    )
    assert retry.status_code == 200
    assert audits(db, "approve") == 1


def test_two_replicas_sharing_the_database_apply_an_event_once(
    bot: Served, db: Database, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    with serve_bot(db, fake_slack, slack_signing_secret, PLUGINS) as replica:
        event = reaction("Ev0000003")
        results: list[int] = []

        def send(url: str, retry: int | None) -> None:
            results.append(
                signed_post(url, slack_signing_secret, event, retry_num=retry).status_code
            )

        threads = [threading.Thread(target=send, args=(u, r)) for u, r in
                   [(bot.events_url, None), (replica.events_url, 1), (bot.events_url, 2), (replica.events_url, 3)]]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(set(results)) in ([200], [200, 500])
    assert audits(db, "approve") == 1


def test_message_events_and_rate_limited_web_api(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    fake_slack.rate_limit("chat.postMessage", times=1, retry_after=1)
    event = payloads.event_callback(
        payloads.message("C0CHAN0001", "U0USER0001", "ping please", ts="1700000001.000200")
    )
    assert signed_post(bot.events_url, slack_signing_secret, event).status_code == 200
    posts = [
        c for c in fake_slack.wait_for("chat.postMessage", count=2) if c.args.get("text") == "pong"
    ]
    assert posts[-1].args["thread_ts"] == "1700000001.000200"
    assert fake_slack.calls_for("chat.postMessage")[0].status == 429


def test_buttons_views_and_shortcuts(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    fake_slack.add_usergroup("S0APPROVE", ["U0USER0001"])
    rid = "press1"
    press = payloads.block_actions(
        "U0USER0001", "choose:1", "tea", "C0CHAN0001", "1.2", fake_slack.response_url(rid)
    )
    assert signed_post(bot.events_url, slack_signing_secret, press).status_code == 200
    assert wait_responses(fake_slack, rid)[0]["text"] == "chose tea"
    short = payloads.view_submission("U0USER0001", "edit_draft", {"text": {"value": "x"}})
    r = signed_post(bot.events_url, slack_signing_secret, short)
    assert r.status_code == 200 and r.json() == {
        "response_action": "errors",
        "errors": {"text": "too short"},
    }
    good = payloads.view_submission("U0USER0001", "edit_draft", {"text": {"value": "long enough"}})
    r = signed_post(bot.events_url, slack_signing_secret, good)
    assert r.status_code == 200 and not r.content
    shortcut = payloads.message_shortcut(
        "U0USER0001", "unknown_shortcut", "C0CHAN0001", {"ts": "1.3", "text": "hi"}
    )
    assert signed_post(bot.events_url, slack_signing_secret, shortcut).status_code == 200


def test_health_readiness_and_metrics(bot: Served, slack_signing_secret: str) -> None:
    assert httpx.get(f"{bot.url}/healthz").json() == {"status": "ok", "worker": os.getpid()}
    ready = httpx.get(f"{bot.url}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    signed_post(bot.events_url, slack_signing_secret, reaction("Ev0000009"))
    text = httpx.get(f"{bot.url}/metrics").text
    for name in ("brandbot_events_received_total", "brandbot_handler_seconds", "brandbot_ack_seconds",
                 "brandbot_job_queue_depth", "brandbot_bad_signatures_total"):  # fmt: skip
        assert name in text
    assert slack_signing_secret not in text and "xoxb-" not in text


def test_file_upload_modal_and_channel_membership_requirement(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    body, rid = command(fake_slack, "", name="/chart", user="U0OUTSIDE1")
    signed_post(bot.events_url, slack_signing_secret, body)
    assert "only the people it is configured for" in wait_responses(fake_slack, rid)[0]["text"]
    body, _ = command(fake_slack, "", name="/chart")  # U0USER0001 is a member of C0CHAN0001
    signed_post(bot.events_url, slack_signing_secret, body)
    fake_slack.wait_for("files.completeUploadExternal")
    (uploaded,) = fake_slack.uploaded_files
    assert uploaded.content == b"\x89PNG fake"
    assert fake_slack.wait_for("views.open")[0].args["trigger_id"]
