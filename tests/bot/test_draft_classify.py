"""/draft and ticket classification end to end: signed Slack requests into the real app, a real
(tiny) model behind the inference client, the fake Slack Web API, and the database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.plugin_loader import PluginEntry
from bot.storage import Database
from bot.storage.models import Draft, Example, Prediction
from bot.storage.repositories import Datasets
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from plugins.classify import ClassifyPlugin
from plugins.draft import DraftPlugin, parse
from serving.client import HttpClient, LocalClient
from serving.engine import LocalEngine
from tests.bot.slack_harness import Served, serve_bot

COPY, TICKETS, SECRET_CH = "C0BRANDCPY", "C0SUPPORT1", "C0SECRET01"
MAYA, PRIYA, TOM = "U0MAYA0001", "U0PRIYA001", "U0TOM00001"
PLUGINS = [PluginEntry("draft", DraftPlugin), PluginEntry("classify", ClassifyPlugin)]


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    with database.session() as s:
        Datasets(s).create("kk_copy", "draft", channels=[COPY], system_prompt="Write warmly.",
                           max_length=400, approvers=[MAYA])  # fmt: skip
        Datasets(s).create("kk_tickets", "classify", channels=[TICKETS], ticket_channels=[TICKETS],
                           labels=["billing", "refund", "shipping"], approvers=[TOM])  # fmt: skip
    yield database
    database.dispose()


@pytest.fixture
def bot(
    db: Database, fake_slack: FakeSlack, slack_signing_secret: str, engine: LocalEngine
) -> Iterator[Served]:
    for uid in (MAYA, PRIYA, TOM):
        fake_slack.add_user(uid, uid.lower())
    fake_slack.add_channel(COPY, "brand-copy", members=[fake_slack.bot_user_id, MAYA, PRIYA])
    fake_slack.add_channel(TICKETS, "support", members=[fake_slack.bot_user_id, TOM])
    fake_slack.add_channel(
        SECRET_CH, "secret", is_private=True, members=[fake_slack.bot_user_id, MAYA]
    )
    client = LocalClient(engine)
    with serve_bot(db, fake_slack, slack_signing_secret, PLUGINS, inference=client,
                   config={"draft": {"max_tokens": 16, "retries_for_rules": 2, "stream_every_s": 0.001, "temperature": 1.0}}) as served:  # fmt: skip
        yield served


def wait(predicate: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def draft_status(db: Database) -> str:
    with db.session() as s:
        return s.scalars(select(Draft)).one().status


def settle(bot: Served) -> None:
    bot.runtime.services.jobs.wait_idle(30)
    bot.runtime.deliver_outbox()
    bot.runtime.services.jobs.wait_idle(30)


def slash(
    bot: Served,
    fake: FakeSlack,
    secret: str,
    command: str,
    text: str,
    user: str = MAYA,
    channel: str = COPY,
) -> str:
    rid = f"r{time.monotonic_ns()}"
    body = payloads.slash_command(command, text, user, channel, fake.response_url(rid))
    assert signed_post(bot.events_url, secret, body).status_code == 200
    return rid


def press(
    bot: Served, fake: FakeSlack, secret: str, button: dict[str, Any], user: str = MAYA
) -> str:
    rid = f"p{time.monotonic_ns()}"
    body = payloads.block_actions(
        user, button["action_id"], button["value"], COPY, "1.1", fake.response_url(rid)
    )
    assert signed_post(bot.events_url, secret, body).status_code == 200
    return rid


def buttons_of(response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["text"]["text"]: e
        for b in response.get("blocks") or []
        if b["type"] == "actions"
        for e in b["elements"]
    }


def test_parse_options() -> None:
    assert parse("-d kk_copy -n 2 hello there").__dict__ == {
        "dataset": "kk_copy",
        "variants": 2,
        "brief": "hello there",
    }
    assert "give a brief" in str(parse("-n 2"))
    assert "-n` takes 1, 2 or 3" in str(parse("-n 9 x"))
    assert "under 2000" in str(parse("x" * 2001))


def test_draft_preview_post_and_feedback(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> None:
    rid = slash(bot, fake_slack, slack_signing_secret, "/draft", "-n 2 announce the autumn chai")
    responses = wait(lambda: [r for r in fake_slack.responses(rid) if buttons_of(r)])
    preview = responses[-1]
    assert fake_slack.responses(rid)[0]["text"].startswith("Drafting for `kk_copy`")
    streamed = [
        r for r in fake_slack.responses(rid) if r["text"].startswith(("Drafting 1…", "Drafting 2…"))
    ]
    assert streamed and all(r["replace_original"] for r in streamed)  # the draft streams in
    assert "base model" in preview["text"]  # no adapter yet: said so
    buttons = buttons_of(preview)
    assert {"Post 1 to channel", "Post 2 to channel", "Edit 1", "Regenerate", "Discard"} <= set(
        buttons
    )
    done = press(bot, fake_slack, slack_signing_secret, buttons["Post 2 to channel"])
    wait(lambda: fake_slack.responses(done))
    # the handler answers before its transaction commits: wait for the commit, not the answer
    wait(lambda: draft_status(db) != "pending")
    settle(bot)
    with db.session() as s:
        draft = s.scalars(select(Draft)).one()
        assert draft.status == "posted" and draft.final_text == draft.variants[1]
        assert draft.edit_distance == 0 and draft.posted_by == MAYA and draft.posted_at
        example = s.scalars(select(Example).where(Example.kind == "positive")).one()
        assert (example.source, example.prompt, example.channel_id) == (
            "draft",
            "announce the autumn chai",
            COPY,
        )
        pairs = s.scalars(select(Example).where(Example.kind == "preference")).all()
        assert [p.source for p in pairs] in ([], ["variant"])  # variant 2 over variant 1
    posted = [c for c in fake_slack.calls_for("chat.postMessage") if c.args.get("channel") == COPY]
    assert len(posted) == 1
    again = press(bot, fake_slack, slack_signing_secret, buttons["Post 1 to channel"])
    assert "already posted" in wait(lambda: fake_slack.responses(again))[0]["text"]
    assert (
        len([c for c in fake_slack.calls_for("chat.postMessage") if c.args.get("channel") == COPY])
        == 1
    )


def test_edit_modal_enforces_brand_rules_and_records_the_edit(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> None:
    with db.session() as s:
        Datasets(s).update(Datasets(s).get("kk_copy"), banned_words=["cheap"])
    rid = slash(bot, fake_slack, slack_signing_secret, "/draft", "tins are back")
    preview = wait(lambda: [r for r in fake_slack.responses(rid) if buttons_of(r)])[-1]
    press(bot, fake_slack, slack_signing_secret, buttons_of(preview)["Edit"])
    view = fake_slack.wait_for("views.open")[0].args["view"]
    view = view if isinstance(view, dict) else __import__("json").loads(view)
    assert (
        view["callback_id"] == "draft_edit" and view["blocks"][0]["element"]["max_length"] == 3000
    )
    bad = payloads.view_submission(
        MAYA,
        "draft_edit",
        {"text": {"value": "Cheap tins, buy now"}},
        private_metadata=view["private_metadata"],
    )
    r = signed_post(bot.events_url, slack_signing_secret, bad)
    assert r.json()["response_action"] == "errors" and "cheap" in r.json()["errors"]["text"]
    good = payloads.view_submission(
        MAYA,
        "draft_edit",
        {"text": {"value": "Our tins are back, in sage green."}},
        private_metadata=view["private_metadata"],
    )
    assert signed_post(bot.events_url, slack_signing_secret, good).status_code == 200
    with db.session() as s:
        draft = s.scalars(select(Draft)).one()
        assert (
            draft.final_text == "Our tins are back, in sage green."
            and draft.edit_distance is not None
            and draft.edit_distance > 0
        )


def test_draft_flags_rule_breaks_and_bad_input(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> None:
    with db.session() as s:
        Datasets(s).update(Datasets(s).get("kk_copy"), required_words=["zzqxv"])
    rid = slash(bot, fake_slack, slack_signing_secret, "/draft", "a post")
    preview = wait(lambda: [r for r in fake_slack.responses(rid) if buttons_of(r)])[-1]
    assert "breaks brand rules" in preview["text"] and "zzqxv" in preview["text"]
    empty = slash(bot, fake_slack, slack_signing_secret, "/draft", "   ")
    assert "Please give a brief" in wait(lambda: fake_slack.responses(empty))[0]["text"]
    unknown = slash(bot, fake_slack, slack_signing_secret, "/draft", "-d nope hello")
    assert "no draft dataset `nope`" in wait(lambda: fake_slack.responses(unknown))[0]["text"]


def test_private_dataset_drafts_only_for_members(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> None:
    with db.session() as s:
        Datasets(s).create("secret_copy", "draft", channels=[SECRET_CH])
    refused = slash(
        bot, fake_slack, slack_signing_secret, "/draft", "-d secret_copy hi", user=PRIYA
    )
    assert "only drafts for their members" in wait(lambda: fake_slack.responses(refused))[0]["text"]
    allowed = slash(bot, fake_slack, slack_signing_secret, "/draft", "-d secret_copy hi", user=MAYA)
    assert wait(lambda: fake_slack.responses(allowed))[0]["text"].startswith(
        "Drafting for `secret_copy`"
    )


def test_model_server_down_offers_a_retry(
    db: Database, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    fake_slack.add_user(MAYA, "maya")
    fake_slack.add_channel(COPY, "brand-copy", members=[fake_slack.bot_user_id, MAYA])
    down = HttpClient("http://127.0.0.1:1", retries=0, timeout=1)
    with serve_bot(db, fake_slack, slack_signing_secret, PLUGINS, inference=down) as served:
        rid = slash(served, fake_slack, slack_signing_secret, "/draft", "hello")
        answer = wait(lambda: [r for r in fake_slack.responses(rid) if buttons_of(r)])[-1]
    assert "unreachable" in answer["text"] and "Retry" in buttons_of(answer)


def test_tickets_are_classified_in_thread_and_corrections_become_examples(
    bot: Served, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> None:
    ticket = payloads.message(
        TICKETS, PRIYA, "I was charged twice for order KK-48213", ts="1700000100.000100"
    )
    assert (
        signed_post(
            bot.events_url, slack_signing_secret, payloads.event_callback(ticket)
        ).status_code
        == 200
    )
    reply = payloads.message(
        TICKETS, TOM, "looking into it", ts="1700000100.000200", thread_ts="1700000100.000100"
    )
    signed_post(bot.events_url, slack_signing_secret, payloads.event_callback(reply))
    botmsg = payloads.message(
        TICKETS, None, "a bot note", ts="1700000100.000300", bot_id="B0OTHER01"
    )
    signed_post(bot.events_url, slack_signing_secret, payloads.event_callback(botmsg))
    settle(bot)
    posts = fake_slack.wait_for("chat.postMessage")
    assert len(posts) == 1 and posts[0].args["thread_ts"] == "1700000100.000100"
    with db.session() as s:
        prediction = s.scalars(select(Prediction)).one()
        assert (
            prediction.label in ("billing", "refund", "shipping") and 0 < prediction.confidence <= 1
        )
        assert abs(sum(prediction.scores.values()) - 1) < 1e-6
    wrong = next(lbl for lbl in ("billing", "refund", "shipping") if lbl != prediction.label)
    rid = press(
        bot,
        fake_slack,
        slack_signing_secret,
        {"action_id": "classify_pick", "value": f"{prediction.id}:{wrong}"},
        user=TOM,
    )
    assert f"Corrected to *{wrong}*" in wait(lambda: fake_slack.responses(rid))[0]["text"]
    twice = press(
        bot,
        fake_slack,
        slack_signing_secret,
        {"action_id": "classify_confirm", "value": str(prediction.id)},
        user=TOM,
    )
    assert "Already recorded" in wait(lambda: fake_slack.responses(twice))[0]["text"]
    with db.session() as s:
        example = s.scalars(select(Example)).one()
        assert (example.label, example.source, example.task) == (wrong, "correction", "classify")
        stored = s.get(Prediction, prediction.id)
        assert stored is not None and stored.status == "corrected"


def test_classify_command(bot: Served, fake_slack: FakeSlack, slack_signing_secret: str) -> None:
    rid = slash(
        bot,
        fake_slack,
        slack_signing_secret,
        "/classify",
        "where is my parcel",
        channel=TICKETS,
        user=TOM,
    )
    answer = wait(lambda: fake_slack.responses(rid))[0]
    assert ("Label:" in answer["text"] or "not sure" in answer["text"]) and "base model" in answer[
        "text"
    ]
    assert any(name.startswith("✓") for name in buttons_of(answer))
    empty = slash(bot, fake_slack, slack_signing_secret, "/classify", "", channel=TICKETS, user=TOM)
    assert "Usage" in wait(lambda: fake_slack.responses(empty))[0]["text"]


def test_rollback_in_slack(
    db: Database,
    fake_slack: FakeSlack,
    slack_signing_secret: str,
    engine: LocalEngine,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    from bot.storage.models import Adapter
    from bot.testkit.models import build_tiny_adapter
    from plugins.admin import AdminPlugin

    folder = build_tiny_adapter(
        tiny_model_dir, tmp_path / "kk_copy-v3", served_name="brandbot-base"
    )
    client = LocalClient(engine)
    client.load_adapter("kk_copy-v3", str(folder))
    with db.session() as s:
        ds = Datasets(s).get("kk_copy")
        s.add(
            Adapter(
                dataset_id=ds.id, name="kk_copy-v3", version=3, status="active", path=str(folder)
            )
        )
    fake_slack.add_user(MAYA, "maya")
    with serve_bot(db, fake_slack, slack_signing_secret, [PluginEntry("admin", AdminPlugin)],
                   admins=[MAYA], inference=client) as served:  # fmt: skip
        rid = slash(served, fake_slack, slack_signing_secret, "/brandbot", "rollback kk_copy")
        answer = wait(lambda: fake_slack.responses(rid))[0]["text"]
        # the database decided; the server follows on the adapter.rolled_back event
        assert served.runtime.deliver_outbox() == 1  # what the bot's outbox pump does
        assert "kk_copy-v3" not in {m.id for m in client.models()}
    assert answer == "Rolled back: kk_copy now uses the base model."
    with db.session() as s:
        assert s.scalars(select(Adapter)).one().status == "retired"
