"""Health that tells the truth: not ready before the base model loaded (or the model server
answered) and every active adapter is on it; ``/readyz`` and ``/brandbot status`` say so."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from bot.inference import LazyInference
from bot.plugin_loader import PluginEntry
from bot.registry import serving_problem
from bot.settings import Settings
from bot.slack.runner import SlackRuntime
from bot.storage import Database
from bot.storage.repositories import Adapters, Datasets
from bot.testkit import payloads
from bot.testkit.models import build_tiny_adapter
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from plugins.admin import AdminPlugin
from serving.client import LocalClient
from serving.engine import LocalEngine
from tests.bot.slack_harness import serve_bot
from tests.conftest import free_port

SERVED = "brandbot-base"
ADMIN, COPY = "U0ADMIN001", "C0BRANDCPY"


def settle(probe: Callable[[], str | None], until: Callable[[str | None], bool]) -> str | None:
    """Ask ``probe`` until its answer satisfies ``until`` (a model loads in the background)."""
    deadline = time.monotonic() + 120
    answer = probe()
    while not until(answer) and time.monotonic() < deadline:
        time.sleep(0.05)
        answer = probe()
    return answer


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url)
    database.upgrade()
    yield database
    database.dispose()


def activate_adapter(db: Database, folder: Path) -> str:
    with db.session() as s:
        dataset = Datasets(s).create("kk_copy", "draft", channels=[COPY], approvers=[ADMIN])
        adapter = Adapters(s).create(dataset, str(folder))
        adapter.status = "active"
        return adapter.name


def test_local_client_is_healthy_only_while_its_engine_runs(tiny_model_dir: Path) -> None:
    engine = LocalEngine(tiny_model_dir, served_name=SERVED)
    client = LocalClient(engine, owns_engine=True)
    assert client.health() is True and client.readiness() is None
    client.close()
    assert client.health() is False
    assert client.readiness() == "the local engine stopped"


def test_lazy_local_model_is_not_ready_until_loaded(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, base_model=str(tiny_model_dir), served_model_name=SERVED)
    with LazyInference(settings) as lazy:
        assert lazy.health() is False  # never loaded: asking starts the load
        assert lazy.readiness() in ("loading the base model", None)
        assert settle(lazy.readiness, lambda r: r != "loading the base model") is None
        assert lazy.health() is True
        assert lazy.models()[0].id == SERVED


def test_a_broken_base_model_never_reports_healthy(tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    settings = Settings(data_dir=tmp_path / "data", base_model=str(broken))
    with LazyInference(settings) as lazy:
        answer = settle(lazy.readiness, lambda r: r != "loading the base model")
        assert answer is not None and answer.startswith("the base model failed to load: ")
        assert lazy.health() is False
        assert lazy.readiness() == answer  # a broken file is not retried on every probe


def test_unreachable_model_server_is_not_healthy(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with LazyInference(Settings(data_dir=tmp_path, inference_url=url)) as lazy:
        assert lazy.health() is False
        assert lazy.readiness() == "model server unreachable"


def test_readyz_waits_for_the_active_adapters(
    db: Database, fake_slack: FakeSlack, engine: LocalEngine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    client = LocalClient(engine)
    name = activate_adapter(
        db, build_tiny_adapter(tiny_model_dir, tmp_path / "a", served_name=SERVED)
    )
    settings = Settings(
        slack_bot_token=fake_slack.bot_token, slack_api_url=fake_slack.api_url, data_dir=tmp_path
    )
    runtime = SlackRuntime(settings, db, inference=client, plugins=[])
    runtime.check_slack()
    try:
        web = TestClient(runtime.web)
        answer = web.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["checks"]["inference"] == f"active adapters not loaded yet: {name}"
        assert runtime.adapters.check() == [name]
        answer = web.get("/readyz")
        assert answer.status_code == 200, answer.json()
        assert answer.json()["checks"]["inference"] == "ok"
        with db.session() as s:
            assert serving_problem(s, client) is None
    finally:
        runtime.stop()
        engine.unload_adapter(name)


def test_status_reports_a_model_that_is_not_ready(
    db: Database, fake_slack: FakeSlack, slack_signing_secret: str, tmp_path: Path
) -> None:
    fake_slack.add_channel(COPY, "brand-copy", members=[fake_slack.bot_user_id, ADMIN])
    url = f"http://127.0.0.1:{free_port()}/v1"
    lazy = LazyInference(Settings(data_dir=tmp_path, inference_url=url))
    plugins = [PluginEntry("admin", AdminPlugin)]
    with serve_bot(
        db, fake_slack, slack_signing_secret, plugins, admins=[ADMIN], inference=lazy
    ) as bot:
        rid = "status1"
        body = payloads.slash_command(
            "/brandbot", "status", ADMIN, COPY, fake_slack.response_url(rid)
        )
        assert signed_post(bot.events_url, slack_signing_secret, body).status_code == 200
        deadline = time.monotonic() + 10
        while not fake_slack.responses(rid) and time.monotonic() < deadline:
            time.sleep(0.02)
        text = str(fake_slack.responses(rid)[0]["text"])
    lazy.close()
    assert "model server: NOT READY (model server unreachable)" in text


def test_brandbot_serve_health_fails_once_the_engine_stopped(tiny_model_dir: Path) -> None:
    from serving.server import create_app

    engine = LocalEngine(tiny_model_dir, served_name=SERVED)
    web = TestClient(create_app(engine, api_key="k"))
    try:
        assert web.get("/health").status_code == 200
        plain = web.post(
            "/v1/completions",
            json={"model": SERVED, "prompt": [1, 2, 3], "max_tokens": 2, "temperature": 0},
            headers={"Authorization": "Bearer k"},
        ).json()
        (choice,) = plain["choices"]
        assert plain["object"] == "text_completion" and plain["usage"]["prompt_tokens"] == 3
        assert choice["logprobs"] is None and choice["stop_reason"] is None
        assert "prompt_logprobs" not in choice and "prompt_token_ids" not in choice
    finally:
        engine.close()
    answer = web.get("/health")
    assert answer.status_code == 503 and "stopped" in answer.json()["error"]["message"]
