"""The model server dies (kill -9) and comes back with no adapters: while it is down the bot
says so, and once it is up every replica's watcher loads the active adapters again within a
minute, with nobody restarting the bot. Runs last among the vLLM tests: it restarts the
session's server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.adapter_watch import AdapterWatcher
from bot.registry import promote
from bot.settings import Settings
from bot.storage import Database
from bot.storage.models import Adapter
from bot.storage.repositories import Adapters, Datasets
from bot.testkit.slack import FakeSlack
from serving.base_model import ResolvedModel
from tests.bot.slack_harness import serve_bot
from tests.bot.test_draft_classify import PLUGINS, buttons_of, slash, wait
from tests.vllm.conftest import SERVED, VllmServer

pytestmark = pytest.mark.smollm2

COPY, MAYA = "C0VLLMREST", "U0MAYA0001"


def test_a_restarted_vllm_gets_the_active_adapters_back_within_a_minute(
    vllm: VllmServer,
    db: Database,
    fake_slack: FakeSlack,
    slack_signing_secret: str,
    smollm2_adapter: Path,
    smollm2_model: ResolvedModel,
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data", served_model_name=SERVED)
    assert settings.adapter_check_seconds <= 30  # the product default keeps "within a minute"
    with db.session() as s:
        dataset = Datasets(s).create("vr_copy", "draft", channels=[COPY], approvers=[MAYA])
        adapter = Adapters(s).create(
            dataset, str(smollm2_adapter), base_fingerprint=smollm2_model.fingerprint
        )
        name = adapter.name
    client = vllm.client()
    replicas = [AdapterWatcher(settings, db, vllm.client(retries=0, timeout=10)) for _ in range(2)]
    fake_slack.add_user(MAYA, "maya")
    fake_slack.add_channel(COPY, "brand-copy", members=[fake_slack.bot_user_id, MAYA])
    try:
        with db.session() as s:
            row = s.scalars(select(Adapter).where(Adapter.name == name)).one()
            assert promote(s, settings, client, row).ok
        # loaded already: a watcher's pass (what its thread runs) has nothing to do
        assert [w.check() for w in replicas] == [[], []]
        assert all(w.reloads == 0 for w in replicas)
        for watcher in replicas:
            watcher.start()

        vllm.kill()
        down = vllm.client(retries=0, timeout=5)
        with serve_bot(db, fake_slack, slack_signing_secret, PLUGINS, inference=down) as served:
            rid = slash(served, fake_slack, slack_signing_secret, "/draft", "-d vr_copy hello")
            answer = wait(lambda: [r for r in fake_slack.responses(rid) if buttons_of(r)], 60)[-1]
        assert "unreachable" in answer["text"] and "Retry" in buttons_of(answer)
        down.close()

        vllm.start()  # a new server: no adapters loaded
        up = time.monotonic()
        while name not in {m.id for m in client.models()}:
            assert time.monotonic() - up < 60, "the active adapter was not loaded again in 60 s"
            time.sleep(0.5)
        # the server lists the adapter before the watcher that loaded it has counted the load
        while sum(w.reloads for w in replicas) < 1:
            assert time.monotonic() - up < 60, "the adapter came back, but no watcher loaded it"
            time.sleep(0.1)
        reply = client.chat([{"role": "user", "content": "hi"}], model=name, max_tokens=4)
        assert reply.usage.completion_tokens > 0
    finally:
        for watcher in replicas:
            watcher.stop()
            watcher.client.close()
        client.close()
