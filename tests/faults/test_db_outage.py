"""A database outage loses no chat event and doubles none: events whose handler found the
database unreachable are kept on disk (scrubbed), answered 200, and replayed when it is back."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bot.event_spool import EventSpool, SpoolReplayer
from bot.storage import Database
from bot.storage.db import DatabaseUnavailable
from bot.storage.models import Approval, Example, ProcessedEvent
from bot.storage.repositories import Datasets
from bot.testkit import payloads
from bot.testkit.payloads import signed_post
from bot.testkit.postgres import PostgresCluster
from bot.testkit.slack import FakeSlack
from tests.conftest import BRANDBOT, free_port, wait_until_up

TICKETS, TOM, PRIYA = "C0SUPPORT1", "U0TOM00001", "U0PRIYA001"
OUTAGE_S = 60.0
REACTIONS = 200


def envelope(event_id: str, text: str = "hello") -> dict[str, Any]:
    event = payloads.message(TICKETS, PRIYA, text, ts="1700000000.000100")
    return payloads.event_callback(event, event_id=event_id)


# ---- the spool on its own ----------------------------------------------------------------------


def test_a_kept_event_is_scrubbed_written_once_and_replayed_in_arrival_order(
    tmp_path: Path,
) -> None:
    spool = EventSpool(tmp_path / "spool", scrub=lambda t: t.replace("ana@kk.example", "[EMAIL]"))
    assert spool.keep(envelope("Ev1", "write to ana@kk.example please"))
    assert spool.keep(envelope("Ev1", "write to ana@kk.example please"))  # Slack's retry
    assert spool.keep(envelope("Ev2"))
    assert spool.count() == 2
    stored = spool.pending()[0].read_text()
    assert "ana@kk.example" not in stored and "[EMAIL]" in stored
    seen: list[str] = []
    replayer = SpoolReplayer(spool, lambda body: seen.append(body["event_id"]))
    assert replayer.replay() == 2
    assert seen == ["Ev1", "Ev2"] and spool.count() == 0


def test_a_full_spool_refuses_instead_of_filling_the_disk(tmp_path: Path) -> None:
    spool = EventSpool(tmp_path / "spool", max_events=3)
    assert all(spool.keep(envelope(f"Ev{i}")) for i in range(3))
    assert not spool.keep(envelope("Ev3"))
    assert spool.count() == 3


def test_replay_waits_while_the_database_is_away_and_buries_a_poison_event(
    tmp_path: Path,
) -> None:
    spool = EventSpool(tmp_path / "spool")
    spool.keep(envelope("EvPoison"))
    spool.keep(envelope("EvFine"))
    database_up = False
    handled: list[str] = []

    def handle(body: dict[str, Any]) -> None:
        if not database_up:
            raise DatabaseUnavailable("cannot reach the database")
        if body["event_id"] == "EvPoison":
            raise ValueError("a handler bug")
        handled.append(body["event_id"])

    replayer = SpoolReplayer(spool, handle, max_attempts=2)
    assert replayer.replay() == 0 and spool.count() == 2  # nothing dropped while it is away
    database_up = True
    assert replayer.replay() == 1  # the poison event stays for its second attempt
    assert handled == ["EvFine"] and spool.count() == 1
    assert replayer.replay() == 0
    assert spool.count() == 0 and spool.dead_count() == 1


def test_a_write_killed_midway_leaves_no_half_event(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    code = (
        "import os, sys\n"
        "from bot.event_spool import EventSpool\n"
        "spool = EventSpool(__import__('pathlib').Path(sys.argv[1]))\n"
        "for i in range(100000):\n"
        "    spool.keep({'event_id': f'Ev{i}', 'event': {'type': 'message', 'text': 'x' * 4000}})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(folder.glob("*.json"))) < 50:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    spool = EventSpool(folder)
    kept = spool.pending()
    assert len(kept) >= 50
    for path in kept:  # every file the replayer sees is a whole event
        assert json.loads(path.read_text())["event"]["text"] == "x" * 4000


# ---- a real bot process and a real PostgreSQL server stopped for a minute -----------------------


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    pg = PostgresCluster().start()  # PostgresUnavailable says how to install the server
    yield pg
    pg.stop()


def ticket_texts(n: int) -> list[str]:
    """Distinct, plausible tickets (no two near-duplicates, so each becomes its own example)."""
    rng = random.Random(7)
    things = ["invoice", "parcel", "voucher", "subscription", "refund", "card", "address",
              "password", "courier", "receipt", "discount", "order", "delivery", "account"]  # fmt: skip
    moods = ["still", "again", "finally", "somehow", "apparently", "clearly", "suddenly"]
    verbs = ["missing", "wrong", "late", "broken", "duplicated", "blocked", "expired", "lost"]
    out: set[str] = set()
    while len(out) < n:
        words = [rng.choice(things), rng.choice(moods), rng.choice(verbs), rng.choice(things),
                 rng.choice(verbs), f"KK-{rng.randrange(10**5):05d}", rng.choice(moods),
                 rng.choice(things), f"since {rng.randrange(2, 30)} days"]  # fmt: skip
        out.add("My " + " ".join(words) + ", please help")
    return sorted(out)


@pytest.mark.slow
@pytest.mark.waits
@pytest.mark.postgres
def test_200_reactions_during_a_60_s_database_outage_are_all_kept_and_none_doubled(
    cluster: PostgresCluster, tmp_path: Path, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    db = Database(cluster.create_database())
    db.upgrade()
    with db.session() as s:
        Datasets(s).create(
            "kk_tickets", "classify", channels=[TICKETS], ticket_channels=[TICKETS],
            labels=["billing", "refund"], label_emoji={"credit_card": "billing", "money": "refund"},
            approvers=[TOM],
        )  # fmt: skip
    fake_slack.add_user(TOM, "tom")
    fake_slack.add_user(PRIYA, "priya")
    fake_slack.add_channel(TICKETS, "support", members=[fake_slack.bot_user_id, TOM, PRIYA])
    stamps = [fake_slack.add_message(TICKETS, text, user=PRIYA) for text in ticket_texts(REACTIONS)]
    (tmp_path / "brandbot.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    env.update(
        SLACK_BOT_TOKEN=fake_slack.bot_token, SLACK_SIGNING_SECRET=slack_signing_secret,
        SLACK_API_URL=fake_slack.api_url, BRANDBOT_DATA_DIR=str(tmp_path / "data"),
        BRANDBOT_DATABASE_URL=db.url, BRANDBOT_CONFIG=str(tmp_path / "brandbot.toml"),
        BRANDBOT_SPOOL_REPLAY_SECONDS="1",
    )  # fmt: skip
    port, log = free_port(), tmp_path / "bot.log"
    with log.open("a") as err:
        bot = subprocess.Popen(
            [BRANDBOT, "run", "--http", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=err, text=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/slack/events"
    bodies = [
        payloads.event_callback(
            payloads.reaction_added(TOM, "money" if i % 2 else "credit_card", TICKETS, ts, PRIYA),
            event_id=f"EvOutage{i:04d}",
        )
        for i, ts in enumerate(stamps)
    ]
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", bot)
        cluster.pause()
        down_at = time.monotonic()
        statuses: list[int | str] = []
        waits: list[float] = []

        def deliver(body: dict[str, Any], retry_num: int | None = None) -> None:
            sent = time.monotonic()
            try:
                status: int | str = signed_post(
                    url, slack_signing_secret, body, retry_num=retry_num
                ).status_code
            except httpx.TimeoutException:
                status = f"no answer in 10 s (sent {sent - down_at:.1f} s into the outage)"
            waits.append(time.monotonic() - sent)
            statuses.append(status)

        for i, body in enumerate(bodies):  # spread over the outage, as people react
            deliver(body)
            if i % 10 == 0:  # Slack's retry of a delivery it thinks failed
                deliver(body, retry_num=1)
            time.sleep(max(0.0, down_at + OUTAGE_S * (i + 1) / REACTIONS - time.monotonic()))
        waits.sort()
        print(f"acks: median {waits[len(waits) // 2]:.3f} s, slowest {waits[-1]:.3f} s")
        assert statuses == [200] * len(statuses), (statuses, log.read_text()[-3000:])
        kept = list((tmp_path / "data" / "spool" / "events").glob("*.json"))
        assert len(kept) == REACTIONS
        cluster.resume()
        print(f"database down {time.monotonic() - down_at:.0f} s")

        def labelled() -> int:
            try:
                with db.session() as s:
                    return int(s.scalar(select(func.count()).select_from(Approval)) or 0)
            except DatabaseUnavailable:
                return 0

        deadline = time.monotonic() + 120
        while labelled() < REACTIONS and time.monotonic() < deadline:
            time.sleep(0.5)
        late = [threading.Thread(target=signed_post, args=(url, slack_signing_secret, b),
                                 kwargs={"retry_num": 2}) for b in bodies[:20]]  # fmt: skip
        for t in late:  # a late retry after the replay is a duplicate
            t.start()
        for t in late:
            t.join()
    finally:
        bot.send_signal(signal.SIGTERM)
        bot.wait(timeout=60)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Approval)) == REACTIONS, log.read_text()[
            -3000:
        ]
        examples = s.scalars(select(Example)).all()
        assert len(examples) == REACTIONS
        assert sorted(e.message_ts or "" for e in examples) == sorted(stamps)
        assert {e.label for e in examples} == {"billing", "refund"}
        events = s.scalar(
            select(func.count()).select_from(ProcessedEvent)
            .where(ProcessedEvent.event_id.like("EvOutage%"))
        )  # fmt: skip
        assert events == REACTIONS
    assert not list((tmp_path / "data" / "spool" / "events").glob("*.json"))
    db.dispose()


def test_kept_and_buried_events_show_in_brandbot_status(db_url: str, tmp_path: Path) -> None:
    from bot.jobs import JobQueue
    from bot.plugin import CommandEvent, Services
    from bot.plugin_loader import PluginEntry, instantiate
    from bot.runtime import Runtime
    from bot.settings import Settings
    from plugins.admin import AdminPlugin
    from tests.bot.recording import RecordingChat

    database = Database(db_url)
    database.upgrade()
    spool = EventSpool(tmp_path / "spool" / "events")
    for i in range(3):
        spool.keep(envelope(f"Ev{i}"))
    spool.dead.mkdir()
    spool.pending()[0].rename(spool.dead / spool.pending()[0].name)
    chat = RecordingChat()
    services = Services(settings=Settings(admins=["U0ADMIN"], data_dir=tmp_path), db=database,
                        chat=chat, jobs=JobQueue())  # fmt: skip
    runtime = Runtime(services, instantiate([PluginEntry("admin", AdminPlugin)], {}, services))
    runtime.handle(CommandEvent(user_id="U0ADMIN", channel_id="C0CHAN", command="/brandbot",
                                text="status", response_url="http://resp/1"))  # fmt: skip
    (reply,) = chat.of("respond")
    assert "dead letters: 1" in reply["text"]
    assert "events kept while the database was unreachable: 2" in reply["text"]
    database.dispose()
