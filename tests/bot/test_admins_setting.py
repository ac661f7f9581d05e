"""``BRANDBOT_ADMINS`` in a real ``brandbot run --http``: the start-up notice when nobody can
approve, and comma-separated admins approving by reaction. Real process, signed requests, the
fake Slack Web API."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from sqlalchemy import func, select

from bot.storage import Database
from bot.storage.models import Example
from bot.storage.repositories import Datasets
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.slack import FakeSlack
from tests.conftest import BRANDBOT, free_port, wait_until_up

COPY, MAYA, PRIYA = "C0BRANDCPY", "U0MAYA0001", "U0PRIYA001"
NOTICE = "no admins and no approvers are configured"


def _start(
    tmp_path: Path, fake: FakeSlack, secret: str, url: str, **extra: str
) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    env.update(
        SLACK_BOT_TOKEN=fake.bot_token, SLACK_SIGNING_SECRET=secret, SLACK_API_URL=fake.api_url,
        BRANDBOT_DATA_DIR=str(tmp_path / "data"), BRANDBOT_DATABASE_URL=url,
        BRANDBOT_CONFIG=str(tmp_path / "brandbot.toml"), **extra,
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [BRANDBOT, "run", "--http", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_until_up(f"{base}/healthz", proc)
    return proc, base


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return err


def test_slack_start_says_once_that_nobody_can_approve(
    tmp_path: Path, sqlite_url: str, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    proc, _ = _start(tmp_path, fake_slack, slack_signing_secret, sqlite_url)
    err = _stop(proc)
    assert err.count(NOTICE) == 1, err[-2000:]
    assert "BRANDBOT_ADMINS=" in err


def test_comma_separated_admins_approve_by_reaction_and_silence_the_notice(
    tmp_path: Path, sqlite_url: str, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    db = Database(sqlite_url)
    db.upgrade()
    with db.session() as s:
        Datasets(s).create("kk_copy", "draft", channels=[COPY])  # no approvers: admins approve
    fake_slack.add_user(MAYA, "maya")
    fake_slack.add_user(PRIYA, "priya")
    fake_slack.add_channel(COPY, "brand-copy", members=[fake_slack.bot_user_id, MAYA, PRIYA])
    ts = fake_slack.add_message(
        COPY, "Autumn chai lands thursday with cardamom and clove.", user=PRIYA
    )
    proc, base = _start(
        tmp_path, fake_slack, slack_signing_secret, sqlite_url,
        BRANDBOT_ADMINS=f"U0SOMEONE, {MAYA}",
    )  # fmt: skip
    try:
        body = payloads.event_callback(payloads.reaction_added(MAYA, "white_check_mark", COPY, ts))
        assert signed_post(f"{base}/slack/events", slack_signing_secret, body).status_code == 200
        deadline, count = time.monotonic() + 30, 0
        while count == 0 and time.monotonic() < deadline:
            with db.session() as s:
                count = s.scalar(select(func.count()).select_from(Example)) or 0
            time.sleep(0.1)
        assert count == 1  # the second admin of the comma-separated list approved it
    finally:
        err = _stop(proc)
        db.dispose()
    assert "nobody can approve" not in err
