"""The App Home tab, end to end: signed ``app_home_opened`` events and Home button presses into
the real Bolt app, views published to the fake Slack (which refuses a view past Slack's limits),
examples and runs checked in the database."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from sqlalchemy import func, select

from bot.gate import Gate
from bot.home_view import (
    AUTHORS,
    DATASET_PAGE,
    PENDING_PAGE,
    AuthorLine,
    DatasetCard,
    HomeData,
    PendingItem,
    RunLine,
    build_home,
)
from bot.plugin_loader import PluginEntry
from bot.storage import Database
from bot.storage.models import (
    Adapter,
    AuditEntry,
    Dataset,
    Draft,
    Example,
    OutboxEvent,
    TrainingRun,
    utcnow,
)
from bot.storage.repositories import Datasets, Outbox
from bot.testkit import payloads
from bot.testkit.blockkit import view_problems
from bot.testkit.payloads import signed_post
from bot.testkit.slack import Call, FakeSlack
from plugins.home import HomePlugin
from tests.bot.slack_harness import Served, serve_bot
from tests.conftest import not_none

MAYA, JONAS, PRIYA, TOM = "U0MAYA0001", "U0JONAS001", "U0PRIYA001", "U0TOM00001"
PRIVATE = "G0SECRET01"
DATASETS = 20
PENDING = 200
SMALL = 3 * PENDING_PAGE  # three pages of pending examples
VOCABULARY = (
    "chai cardamom clove ginger assam kettle autumn spice launch thursday oat milk honey steep "
    "brew leaf garden morning evening warm cup pot blend smoky citrus bergamot jasmine mint "
    "rooibos sencha matcha oolong pekoe loose bag strainer cozy fresh"
)


def channel(i: int) -> str:
    return f"C0COPY{i:04d}"


def sentence(rng: random.Random, i: int) -> str:
    return f"Post {i}: " + " ".join(rng.sample(VOCABULARY.split(), 14)) + "."


def workspace(url: str, pending: int) -> Database:
    """20 datasets approved by Jonas (the last fed by a private channel), ``pending``
    contributions among them, and an active adapter for the first."""
    database = Database(url)
    database.upgrade()
    rng = random.Random(7)
    with database.session() as s:
        made = []
        for i in range(DATASETS):
            where = PRIVATE if i == DATASETS - 1 else channel(i)
            made.append(Datasets(s).create(f"ds{i:02d}", "draft", channels=[where],
                                           approvers=[JONAS]))  # fmt: skip
        gate = Gate(s)
        for i in range(pending):
            dataset = made[i % DATASETS]
            outcome = gate.add(
                dataset, text=sentence(rng, i), source="draft", actor=PRIYA, approved=False,
                workspace=payloads.TEAM_ID, channel=dataset.channels[0], ts=f"1700000000.{i:06d}",
                author=PRIYA,
            )  # fmt: skip
            assert outcome.status == "pending", outcome
        run = TrainingRun(dataset_id=made[0].id, status="succeeded",
                          metrics={"base": {"answer_perplexity": 12.0}})  # fmt: skip
        s.add(run)
        s.flush()
        for distance in (10, 0):  # two drafts posted this week, one edited by a tenth
            s.add(Draft(dataset_id=made[0].id, brief="autumn chai", requested_by=PRIYA,
                        adapter_name="ds00-v1", status="posted", final_text="x" * 100,
                        edit_distance=distance, posted_at=utcnow()))  # fmt: skip
        s.add(Adapter(dataset_id=made[0].id, name="ds00-v1", version=1, status="active",
                      run_id=run.id, path="/nowhere", metrics={"answer_perplexity": 8.5}))  # fmt: skip
    return database


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """The workspace on SQLite and PostgreSQL, three pages of pending examples."""
    database = workspace(db_url, SMALL)
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(sqlite_url: str) -> Iterator[Database]:
    database = workspace(sqlite_url, SMALL)
    yield database
    database.dispose()


def serve(db: Database, fake: FakeSlack, secret: str, delay: float = 0.05) -> Any:
    for uid, name in [(MAYA, "maya"), (JONAS, "jonas"), (PRIYA, "priya"), (TOM, "tom")]:
        fake.add_user(uid, name)
    everyone = [fake.bot_user_id, MAYA, JONAS, PRIYA, TOM]
    for i in range(DATASETS - 1):
        fake.add_channel(channel(i), f"copy-{i}", members=everyone)
    fake.add_channel(PRIVATE, "secret-launch", is_private=True, members=[fake.bot_user_id, TOM])
    config: dict[str, object] = {"home": {"refresh_delay": delay}}
    return serve_bot(db, fake, secret, [PluginEntry("home", HomePlugin)], config=config,
                     admins=[MAYA])  # fmt: skip


class Home:
    def __init__(self, bot: Served, fake: FakeSlack, secret: str, db: Database) -> None:
        self.bot, self.fake, self.secret, self.db = bot, fake, secret, db
        self.plugin = next(p for p in bot.runtime.plugins if isinstance(p, HomePlugin))

    def send(self, body: dict[str, Any]) -> None:
        assert signed_post(self.bot.events_url, self.secret, body).status_code == 200

    def publishes(self, user: str) -> list[dict[str, Any]]:
        return [c.args["view"] for c in self.fake.calls_for("views.publish")
                if c.args.get("user_id") == user and c.ok]  # fmt: skip

    def open(self, user: str) -> dict[str, Any]:
        """Open the Home tab; the view is published after the event is answered."""
        before = len(self.publishes(user))
        self.send(payloads.event_callback(payloads.app_home_opened(user)))
        self.bot.runtime.services.jobs.wait_idle()
        views = self.publishes(user)
        assert len(views) > before  # a refresh may have come too; the last is the newest
        return views[-1]

    def press(self, user: str, action_id: str, value: str) -> None:
        self.send(payloads.home_block_actions(user, action_id, value))

    def next_view(self, user: str, after: int) -> dict[str, Any]:
        """The first view published for ``user`` after their ``after``-th."""

        def published(calls: list[Call]) -> bool:
            return len(self.publishes(user)) > after

        self.fake.wait_until(published, what=f"a view published for {user}")
        return self.publishes(user)[after]

    def dms(self, user: str) -> list[str]:
        return [str(c.args.get("text")) for c in self.fake.calls_for("chat.postMessage")
                if c.args.get("channel") == user]  # fmt: skip

    def wait_dms(self, user: str, count: int) -> list[str]:
        self.fake.wait_until(lambda _: len(self.dms(user)) >= count, what=f"{count} DMs")
        return self.dms(user)

    def example(self, example_id: int) -> Example:
        with self.db.session() as s:
            example = s.get(Example, example_id)
            assert example is not None
            return example


@pytest.fixture
def home(db: Database, fake_slack: FakeSlack, slack_signing_secret: str) -> Iterator[Home]:
    """The app over the workspace on both databases."""
    with serve(db, fake_slack, slack_signing_secret) as served:
        yield Home(served, fake_slack, slack_signing_secret, db)


@pytest.fixture
def home_sqlite(
    sqlite_db: Database, fake_slack: FakeSlack, slack_signing_secret: str
) -> Iterator[Home]:
    """The same on SQLite only, for what does not depend on the database."""
    with serve(sqlite_db, fake_slack, slack_signing_secret) as served:
        yield Home(served, fake_slack, slack_signing_secret, sqlite_db)


def headers(view: dict[str, Any]) -> list[str]:
    return [b["text"]["text"] for b in view["blocks"] if b["type"] == "header"]


def pending_ids(view: dict[str, Any]) -> list[int]:
    prefix = "home_pending_"
    return [int(b["block_id"][len(prefix) :]) for b in view["blocks"]
            if b.get("block_id", "").startswith(prefix)]  # fmt: skip


def buttons(view: dict[str, Any], action_id: str) -> list[dict[str, Any]]:
    return [e for b in view["blocks"] if b["type"] == "actions" for e in b["elements"]
            if e["action_id"] == action_id]  # fmt: skip


def text_of(view: dict[str, Any]) -> str:
    return "\n".join(str((b.get("text") or {}).get("text", "")) for b in view["blocks"])


# ---- opening the tab ---------------------------------------------------------------------


def test_the_fake_refuses_a_view_past_slacks_limits(fake_slack: FakeSlack) -> None:
    fake_slack.add_user(JONAS, "jonas")
    client = fake_slack.client()
    too_many = {"type": "home", "blocks": [{"type": "divider"}] * 101}
    too_long = {"type": "home", "blocks": [{"type": "section",
                                            "text": {"type": "mrkdwn", "text": "x" * 3001}}]}  # fmt: skip
    for view in (too_many, too_long):
        assert view_problems(view)
        with pytest.raises(SlackApiError, match="invalid_arguments"):
            client.views_publish(user_id=JONAS, view=view)
    assert client.views_publish(
        user_id=JONAS, view={"type": "home", "blocks": [{"type": "divider"}]}
    )["ok"]


def test_opening_home_publishes_a_paginated_view_within_slacks_limits(
    sqlite_url: str, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    db = workspace(sqlite_url, PENDING)
    with serve(db, fake_slack, slack_signing_secret) as served:
        check_pages(Home(served, fake_slack, slack_signing_secret, db))
    db.dispose()


def check_pages(home: Home) -> None:
    view = home.open(JONAS)  # the fake has refused it already if it broke a limit
    assert view_problems(view) == []
    assert len(view["blocks"]) <= 100
    assert headers(view)[:2] == [f"Waiting for you ({PENDING})", f"Datasets ({DATASETS})"]
    first = pending_ids(view)
    assert len(first) == PENDING_PAGE
    assert len(buttons(view, "home_approve")) == len(buttons(view, "home_reject")) == PENDING_PAGE
    assert "`ds00-v1`: answer perplexity 8.500 (base 12.000, better by 3.500)" in text_of(view)
    assert "last 30 days: 2 drafts posted, revision rate 0.050" in text_of(view)
    assert "`ds00-v1` so far: 2 drafts, too few drafts to judge (fewer than 5)" in text_of(view)
    assert "Priya" not in text_of(view) and f"<@{PRIYA}>" in text_of(view)
    assert not buttons(view, "home_retrain"), "Jonas is no admin"

    (nxt,) = buttons(view, "home_page_next_pending")
    seen = len(home.publishes(JONAS))
    home.press(JONAS, "home_page_next_pending", nxt["value"])
    page2 = home.next_view(JONAS, seen)
    assert view_problems(page2) == []
    assert len(pending_ids(page2)) == PENDING_PAGE and not set(pending_ids(page2)) & set(first)
    assert buttons(page2, "home_page_prev_pending")


def test_an_admin_sees_retrain_and_roll_back_behind_a_confirmation(home_sqlite: Home) -> None:
    home = home_sqlite
    view = home.open(MAYA)
    assert view_problems(view) == []
    assert "Waiting for you" not in " ".join(headers(view)), "Maya approves no dataset"
    retrain = buttons(view, "home_retrain")
    assert len(retrain) == min(DATASETS, DATASET_PAGE)
    assert all(b["confirm"]["confirm"]["text"] == "Retrain" for b in retrain)
    (rollback,) = buttons(view, "home_rollback")
    assert rollback["value"].endswith(":ds00-v1") and rollback["confirm"]["title"]["text"]
    assert headers(view)[-1] == "Last runs"


# ---- approvals -----------------------------------------------------------------------------


def test_an_approvers_approve_button_makes_the_example_trainable_and_unlisted(home: Home) -> None:
    view = home.open(JONAS)
    chosen = pending_ids(view)[0]
    seen = len(home.publishes(JONAS))
    home.press(JONAS, "home_approve", str(chosen))
    refreshed = home.next_view(JONAS, seen)
    example = home.example(chosen)
    assert (example.status, example.approver_id) == ("active", JONAS)
    assert chosen not in pending_ids(refreshed)
    assert headers(refreshed)[0] == f"Waiting for you ({SMALL - 1})"
    assert len(pending_ids(refreshed)) == PENDING_PAGE, "the next one moves up"
    with home.db.session() as s:  # for the other approvers' open views
        (decided,) = s.scalars(select(OutboxEvent).where(OutboxEvent.topic == "example.decided"))
        assert decided.payload["example_id"] == chosen and decided.payload["approved"] is True


def test_a_non_approver_sees_no_approvals_and_cannot_replay_the_button(home_sqlite: Home) -> None:
    home = home_sqlite
    chosen = pending_ids(home.open(JONAS))[0]
    view = home.open(PRIYA)
    assert not any(h.startswith("Waiting for you") for h in headers(view))
    assert not buttons(view, "home_approve")
    home.press(PRIYA, "home_approve", str(chosen))  # Jonas's button, pressed as Priya
    (told,) = home.wait_dms(PRIYA, 1)
    assert "Only the approvers of `ds00`" in told
    assert home.example(chosen).status == "pending"
    home.press(PRIYA, "home_reject", str(chosen))
    home.wait_dms(PRIYA, 2)
    assert home.example(chosen).status == "pending"


def test_a_private_dataset_is_shown_only_to_its_channels_members(home_sqlite: Home) -> None:
    home = home_sqlite
    secret = f"ds{DATASETS - 1:02d}"
    priya = text_of(home.open(PRIYA))
    assert "*ds00*" in priya and f"*{secret}*" not in priya
    assert headers(home.open(PRIYA))[0] == f"Datasets ({DATASETS - 1})"
    assert f"*{secret}* :lock:" in text_of(home.open(TOM))
    assert f"*{secret}* :lock:" in text_of(home.open(MAYA))


# ---- admins ----------------------------------------------------------------------------------


def runs(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(TrainingRun)) or 0)


def test_retrain_pressed_twice_queues_one_run(home: Home) -> None:
    view = home.open(MAYA)
    value = buttons(view, "home_retrain")[1]["value"]  # ds01: no run yet
    before = runs(home.db)
    with ThreadPoolExecutor(2) as pool:  # a double click: both presses at once
        list(pool.map(lambda _: home.press(MAYA, "home_retrain", value), range(2)))
    told = home.wait_dms(MAYA, 2)
    assert runs(home.db) == before + 1
    assert sum(t.startswith("Queued training run") for t in told) == 1
    assert sum(t.startswith("Not queued") for t in told) == 1
    # a fresh view's button while that run is still queued queues nothing either
    fresh = buttons(home.open(MAYA), "home_retrain")[1]["value"]
    assert fresh != value
    home.press(MAYA, "home_retrain", fresh)
    assert "is queued" in home.wait_dms(MAYA, 3)[-1]
    assert runs(home.db) == before + 1


def test_a_non_admin_cannot_retrain_by_replaying_the_button(home_sqlite: Home) -> None:
    home = home_sqlite
    value = buttons(home.open(MAYA), "home_retrain")[1]["value"]
    before = runs(home.db)
    home.press(JONAS, "home_retrain", value)
    (told,) = home.wait_dms(JONAS, 1)
    assert told == "Sorry, only admins may do that."
    assert runs(home.db) == before


# ---- refresh ---------------------------------------------------------------------------------


def publish_events(db: Database, topic: str, payloads_: list[dict[str, Any]]) -> None:
    with db.session() as s:
        for payload in payloads_:
            Outbox(s).publish(topic, payload)


def test_changes_refresh_open_views_once_per_person(
    sqlite_db: Database, fake_slack: FakeSlack, slack_signing_secret: str
) -> None:
    db = sqlite_db
    with serve(db, fake_slack, slack_signing_secret, delay=60) as served:
        home = Home(served, fake_slack, slack_signing_secret, db)
        home.open(JONAS)
        home.open(PRIYA)
        with db.session() as s:
            ids = list(s.scalars(select(Example.id).where(Example.status == "pending").limit(5)))
            ds00 = s.scalar(select(Dataset.id).where(Dataset.name == "ds00"))
        publish_events(db, "example.pending", [{"example_id": i} for i in ids])
        assert served.runtime.deliver_outbox() == len(ids)
        assert home.plugin.refresher.pending() == 1, "Jonas's view, once; Priya approves nothing"
        publish_events(db, "run.finished", [{"run_id": 1, "dataset_id": ds00}])
        served.runtime.deliver_outbox()
        assert home.plugin.refresher.pending() == 2, "and now Priya's, who sees ds00"
        home.plugin.refresher.flush()
        assert home.plugin.refresher.wait_idle()
        assert len(home.publishes(JONAS)) == 2 and len(home.publishes(PRIYA)) == 2
        assert home.plugin.refresher.pending() == 0


def test_a_refresh_comes_by_itself_after_the_delay(home_sqlite: Home) -> None:
    home = home_sqlite
    home.open(JONAS)
    with home.db.session() as s:
        example_id = s.scalar(select(Example.id).where(Example.status == "pending"))
    publish_events(home.db, "example.pending", [{"example_id": example_id}])
    home.bot.runtime.deliver_outbox()
    assert home.next_view(JONAS, 1)["type"] == "home"


def test_the_view_clips_what_would_break_a_limit() -> None:
    """Long texts (a 10,000-character contribution, a long error) and many datasets still
    make a view Slack accepts."""
    huge = "word " * 2000
    data = HomeData(
        user=MAYA, is_admin=True, is_approver=True,
        pending=[PendingItem(i, "ds00", "draft", PRIYA, channel(0), huge, label="x" * 64)
                 for i in range(PENDING_PAGE)],
        pending_total=PENDING, datasets_total=60,
        datasets=[DatasetCard(f"dataset_{i:02d}_{'x' * 20}", "classify", True, 10**6, 10**6,
                              10**5, 10**6, adapter=f"dataset_{i:02d}-v{10**6}", metric="macro_f1",
                              value=0.5, base_value=0.25, dataset_id=i, retrain_token="9" * 18,
                              chart_adapter_id=i + 1, chart_file=f"F0CHART{i:04d}")
                  for i in range(DATASET_PAGE)],
        authors=[AuthorLine(f"U0AUTHOR{i:02d}", 10**6, 10**9) for i in range(AUTHORS)],
        runs=[RunLine(i, "ds00", "failed", "manual", utcnow(), huge) for i in range(5)],
    )  # fmt: skip
    view = build_home(data)
    assert view_problems(view) == []
    assert len(view["blocks"]) == 95, "the most a view holds, as bot.home_view counts it"
    assert len(charts(view)) == DATASET_PAGE
    assert len(accessories(view, "home_approve_all")) == AUTHORS
    assert "macro f1 0.500 (base 0.250, better by 0.250)" in text_of(view)


def test_the_messages_tab_and_a_retried_delivery_publish_nothing_more(home_sqlite: Home) -> None:
    home = home_sqlite
    home.send(payloads.event_callback(payloads.app_home_opened(JONAS, tab="messages")))
    assert home.publishes(JONAS) == []
    body = payloads.event_callback(payloads.app_home_opened(JONAS))
    home.send(body)
    assert signed_post(home.bot.events_url, home.secret, body, retry_num=1).status_code == 200
    home.bot.runtime.services.jobs.wait_idle()
    assert len(home.publishes(JONAS)) == 1


def test_junk_button_values_change_nothing(home_sqlite: Home) -> None:
    home = home_sqlite
    home.open(MAYA)
    before = runs(home.db)
    for action, value in [("home_approve", "abc"), ("home_reject", "-1"),
                          ("home_retrain", "x:y"), ("home_retrain", "99999:0"),
                          ("home_rollback", "nope"), ("home_page_next_pending", "bogus:1")]:  # fmt: skip
        home.press(MAYA, action, value)
    home.press(MAYA, "home_approve", "999999")
    assert home.wait_dms(MAYA, 3) == ["That example is gone."] * 3  # abc, -1, 999999
    assert runs(home.db) == before
    with home.db.session() as s:
        assert s.scalar(select(func.count()).where(Example.status == "pending")) == SMALL


def test_roll_back_takes_out_only_the_adapter_the_view_showed(home_sqlite: Home) -> None:
    home = home_sqlite
    (rollback,) = buttons(home.open(MAYA), "home_rollback")
    dataset_id = rollback["value"].split(":")[0]
    home.press(MAYA, "home_rollback", f"{dataset_id}:ds00-v0")
    assert home.wait_dms(MAYA, 1)[-1] == "Not rolled back: `ds00-v0` is no longer active."
    for n in (2, 3):  # refused without a model server, and not marked done: it can be retried
        home.press(MAYA, "home_rollback", rollback["value"])
        assert home.wait_dms(MAYA, n)[-1] == "Not rolled back: no model server is configured."
    with home.db.session() as s:
        assert s.scalar(select(Adapter.status).where(Adapter.name == "ds00-v1")) == "active"


# ---- approve all from this person ----------------------------------------------------------

SAM = "U0SAM00001"


def accessories(view: dict[str, Any], action_id: str) -> list[dict[str, Any]]:
    return [b["accessory"] for b in view["blocks"]
            if (b.get("accessory") or {}).get("action_id") == action_id]  # fmt: skip


def contribute(db: Database, dataset: str, author: str, count: int, start: int) -> list[int]:
    """``count`` pending contributions by ``author`` to ``dataset``; their ids."""
    rng, ids = random.Random(start), []
    with db.session() as s:
        target = s.scalar(select(Dataset).where(Dataset.name == dataset))
        assert target is not None
        for i in range(start, start + count):
            outcome = Gate(s).add(
                target, text=sentence(rng, i), source="draft", actor=author, approved=False,
                workspace=payloads.TEAM_ID, channel=target.channels[0],
                ts=f"1800000000.{i:06d}", author=author,
            )  # fmt: skip
            assert outcome.status == "pending" and outcome.example_id is not None
            ids.append(outcome.example_id)
    return ids


def statuses(db: Database, ids: list[int]) -> set[tuple[str, str | None]]:
    with db.session() as s:
        return {(e.status, e.approver_id) for e in s.scalars(select(Example).where(
            Example.id.in_(ids)))}  # fmt: skip


def test_approve_all_from_one_person_approves_what_the_view_counted_once(home: Home) -> None:
    """Priya's pending examples in Jonas's datasets, approved by one confirmed press; not hers
    in a dataset Tom approves, nor one that came after the view, nor Sam's; the double click
    approves nothing twice."""
    with home.db.session() as s:
        priya = list(s.scalars(select(Example.id).where(Example.author_id == PRIYA)))
        Datasets(s).create("toms", "draft", channels=[channel(0)], approvers=[TOM])
    toms = contribute(home.db, "toms", PRIYA, 2, 0)
    sams = contribute(home.db, "ds01", SAM, 2, 10)
    view = home.open(JONAS)
    assert view_problems(view) == []
    (hers, his) = accessories(view, "home_approve_all")
    assert hers["value"] == f"{PRIYA}:{max(priya)}" and his["value"] == f"{SAM}:{max(sams)}"
    assert hers["confirm"]["confirm"]["text"] == "Approve all"
    assert (
        f"Approve the {SMALL} pending examples from <@{PRIYA}>" in hers["confirm"]["text"]["text"]
    )
    later = contribute(home.db, "ds00", PRIYA, 1, 20)  # after the view was built
    seen = len(home.publishes(JONAS))
    with ThreadPoolExecutor(2) as pool:  # a double click: both presses at once
        list(pool.map(lambda _: home.press(JONAS, "home_approve_all", hers["value"]), range(2)))
    told = home.wait_dms(JONAS, 2)
    assert sorted(told) == [
        f"Already done: the examples from <@{PRIYA}> that view showed were approved.",
        f"Approved {SMALL} examples from <@{PRIYA}>; they are training data now.",
    ]
    assert statuses(home.db, priya) == {("active", JONAS)}
    assert statuses(home.db, toms + later + sams) == {("pending", None)}
    with home.db.session() as s:
        decided = list(s.scalars(select(OutboxEvent).where(OutboxEvent.topic == "example.decided")))
        assert sorted(e.payload["example_id"] for e in decided) == sorted(priya)
        audited = s.scalars(select(AuditEntry.example_id).where(AuditEntry.actor == JONAS))
        assert sorted(not_none(audited)) == sorted(priya), "one audit entry per example"
    refreshed = home.next_view(JONAS, seen)
    assert headers(refreshed)[0] == "Waiting for you (3)"  # Sam's two and the later one
    assert [b["value"] for b in accessories(refreshed, "home_approve_all")] == [
        f"{SAM}:{max(sams)}", f"{PRIYA}:{later[0]}"]  # fmt: skip


def test_a_non_approver_replaying_approve_all_changes_nothing(home_sqlite: Home) -> None:
    home = home_sqlite
    (hers,) = accessories(home.open(JONAS), "home_approve_all")
    with home.db.session() as s:
        priya = list(s.scalars(select(Example.id).where(Example.author_id == PRIYA)))
    for who in (PRIYA, TOM):  # the author herself, and someone else who approves nothing
        home.press(who, "home_approve_all", hers["value"])
        assert home.wait_dms(who, 1) == ["Only a dataset's approvers can approve its examples."]
    home.press(JONAS, "home_approve_all", f"{PRIYA}:x")  # junk: nothing, no answer
    assert statuses(home.db, priya) == {("pending", None)}
    with home.db.session() as s:
        assert s.scalar(select(func.count()).select_from(OutboxEvent).where(
            OutboxEvent.topic == "example.decided")) == 0  # fmt: skip


# ---- model over time ---------------------------------------------------------------------------


def charts(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for b in view["blocks"] if b["type"] == "image"]


def new_version(db: Database, dataset: str, version: int, value: float) -> None:
    """A trained adapter ``<dataset>-v<version>`` (a candidate) with its run's losses."""
    with db.session() as s:
        target = s.scalar(select(Dataset).where(Dataset.name == dataset))
        assert target is not None
        run = TrainingRun(dataset_id=target.id, status="succeeded", losses=[3.0, 2.1, 1.7],
                          metrics={"base": {"answer_perplexity": 12.0}})  # fmt: skip
        s.add(run)
        s.flush()
        s.add(Adapter(dataset_id=target.id, name=f"{dataset}-v{version}", version=version,
                      status="candidate", run_id=run.id, path="/nowhere",
                      metrics={"answer_perplexity": value}))  # fmt: skip


def set_report_channel(db: Database, dataset: str, where: str) -> int:
    with db.session() as s:
        target = s.scalar(select(Dataset).where(Dataset.name == dataset))
        assert target is not None
        target.report_channel = where
        return target.id


def test_the_metric_chart_is_uploaded_once_per_adapter_version(home: Home) -> None:
    ds00 = set_report_channel(home.db, "ds00", channel(0))  # where the chart is shared
    new_version(home.db, "ds01", 1, 9.0)  # no report channel: no chart
    view = home.open(JONAS)
    assert view_problems(view) == [] and len(view["blocks"]) <= 100
    (image,) = charts(view)
    (first,) = home.fake.uploaded_files
    assert image["slack_file"] == {"id": first.id} and image["block_id"] == f"home_chart_{ds00}"
    assert image["title"]["text"] == "ds00: model over time"
    assert first.content.startswith(b"\x89PNG") and first.channel == channel(0)
    assert first.filename == "ds00-v1-history.png"
    # opened again, by the same person and by another: the same file, nothing uploaded
    assert charts(home.open(JONAS)) == [image] == charts(home.open(PRIYA))
    assert len(home.fake.uploaded_files) == 1
    new_version(home.db, "ds00", 2, 7.9)  # a new version: a new chart, once
    (newer,) = charts(home.open(MAYA))
    assert charts(home.open(JONAS)) == [newer]
    files = home.fake.uploaded_files
    assert len(files) == 2 and newer["slack_file"] == {"id": files[1].id} != image["slack_file"]
    assert files[1].filename == "ds00-v2-history.png"
    with home.db.session() as s:
        assert {n: f for n, f in s.execute(select(Adapter.name, Adapter.chart_file))} == {
            "ds00-v1": first.id, "ds00-v2": files[1].id, "ds01-v1": None}  # fmt: skip


def test_a_failed_chart_upload_costs_the_chart_only_and_is_tried_again(home_sqlite: Home) -> None:
    home = home_sqlite
    set_report_channel(home.db, "ds00", channel(0))
    home.fake.fail("files.getUploadURLExternal", "ratelimited")
    view = home.open(JONAS)
    assert charts(view) == [] and headers(view)[0] == f"Waiting for you ({SMALL})"
    assert home.fake.uploaded_files == []
    (image,) = charts(home.open(JONAS))
    (uploaded,) = home.fake.uploaded_files
    assert image["slack_file"] == {"id": uploaded.id}


def test_a_chart_slack_refuses_costs_the_chart_only(home_sqlite: Home) -> None:
    """A chart's file deleted in Slack: the view is published without it, not lost."""
    home = home_sqlite
    set_report_channel(home.db, "ds00", channel(0))
    with home.db.session() as s:
        adapter = s.scalar(select(Adapter).where(Adapter.name == "ds00-v1"))
        assert adapter is not None
        adapter.chart_file = "F0DELETED1"
    view = home.open(JONAS)
    assert charts(view) == [] and headers(view)[0] == f"Waiting for you ({SMALL})"
    refused = [c for c in home.fake.calls_for("views.publish") if not c.ok]
    assert len(refused) == 1 and charts(refused[0].args["view"])


def test_the_fake_shows_only_an_uploaded_shared_image(fake_slack: FakeSlack) -> None:
    """As Slack: an image block's slack_file must be an uploaded image shared somewhere."""
    fake_slack.add_user(JONAS, "jonas")
    fake_slack.add_channel(channel(0), "copy-0", members=[fake_slack.bot_user_id, JONAS])
    client = fake_slack.client()
    shared = client.files_upload_v2(channel=channel(0), content=b"\x89PNG", filename="a.png")
    alone = client.files_upload_v2(content=b"\x89PNG", filename="b.png")
    text = client.files_upload_v2(channel=channel(0), content=b"hello", filename="c.txt")

    def home_with(source: dict[str, Any]) -> dict[str, Any]:
        return {"type": "home", "blocks": [{"type": "image", "alt_text": "chart", **source}]}

    file = shared["files"][0]
    for good in ({"id": file["id"]}, {"url": file["url_private"]}, {"url": file["permalink"]}):
        assert client.views_publish(user_id=JONAS, view=home_with({"slack_file": good}))["ok"]
    bad: list[dict[str, Any]] = [
        {"slack_file": {"id": "F0NOSUCH01"}}, {"slack_file": {"id": alone["files"][0]["id"]}},
        {"slack_file": {"id": text["files"][0]["id"]}},
        {"slack_file": {"id": file["id"], "url": file["url_private"]}},
        {"slack_file": {"id": file["id"]}, "image_url": "https://example.com/a.png"}, {},
    ]  # fmt: skip
    for source in bad:
        with pytest.raises(SlackApiError, match="invalid_arguments"):
            client.views_publish(user_id=JONAS, view=home_with(source))
