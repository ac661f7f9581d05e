"""``brandbot forget`` (the real console script) on SQLite and PostgreSQL: everything by and
about a person goes, adapters trained on them leave service, their checkpoints are deleted."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from bot.gate import Gate
from bot.preferences import PairCandidate, PairGate
from bot.storage import Database
from bot.storage.models import Adapter, Example, OptOut, Prediction, Suggestion, TrainingRun
from bot.storage.repositories import Adapters, Datasets
from tests.conftest import CliRunner

TOM, CUSTOMER, PRIYA = "U0TOM00001", "U0CUST0001", "U0PRIYA001"
TICKETS = "C0SUPPORT1"


def _seed(db_url: str, data: Path) -> dict[str, int]:
    db = Database(db_url)
    db.upgrade()
    with db.session() as s:
        ds = Datasets(s).create("kk_replies", "draft", ticket_channels=[TICKETS], approvers=[TOM])
        gate = Gate(s)
        built = gate.add(ds, text="Sorry: the second charge is refunded today.", source="suggestion",
                         actor=TOM, approved=True, workspace="T1", channel=TICKETS, ts="2.1",
                         author=TOM, prompt="Ticket: charged twice", subject=CUSTOMER)  # fmt: skip
        legacy = gate.add(ds, text="A new lid is on its way to you, sorry!", source="suggestion",
                          actor=TOM, approved=True, workspace="T1", channel=TICKETS, ts="3.2",
                          author=TOM, prompt="Ticket: my lid is broken")  # fmt: skip
        s.add(Suggestion(dataset_id=ds.id, channel_id=TICKETS, ticket_ts="3.1", reply_ts="3.2",
                         author_id=CUSTOMER, ticket_text="my lid is broken", status="posted"))  # fmt: skip
        other = gate.add(ds, text="Tasting evenings are back in Bristol on Friday.",
                         source="draft", actor=TOM, approved=True, workspace="T1", channel=None,
                         ts=None, author=TOM)  # fmt: skip
        pair = PairGate(gate).add_many(
            ds, [PairCandidate("Ticket: charged twice", "Sorry: the second charge is refunded today.",
                               "Hi there!! We have escalated your ticket.", "reply_edit")],
            actor=TOM, author=TOM, subject=CUSTOMER, workspace="T1", channel=TICKETS,
            identity=None, thread_ts="2.0", prompt_source="suggestion",
        )[0]  # fmt: skip
        assert pair.status == "added" and pair.example_id
        s.add(Prediction(dataset_id=ds.id, channel_id=TICKETS, message_ts="2.0",
                         author_id=CUSTOMER, text="charged twice", label="billing",
                         confidence=0.9))  # fmt: skip
        ids = [o.example_id for o in (built, legacy, other)]
        assert all(ids)
        clean = TrainingRun(dataset_id=ds.id, status="succeeded", example_ids=[ids[2]])
        tainted = TrainingRun(dataset_id=ds.id, status="succeeded", example_ids=ids)
        s.add_all([clean, tainted])
        s.flush()
        for run in (clean, tainted):
            (data / "runs" / str(run.id) / "checkpoints").mkdir(parents=True)
        (data / "adapters" / "v1").mkdir(parents=True)
        (data / "adapters" / "v2").mkdir(parents=True)
        Adapters(s).create(ds, str(data / "adapters" / "v1"), run_id=clean.id, status="retired")
        Adapters(s).create(ds, str(data / "adapters" / "v2"), run_id=tainted.id, status="active")
        out = {"clean": clean.id, "tainted": tainted.id, "other": int(ids[2] or 0)}
    db.dispose()
    return out


def test_forget_a_customer_removes_replies_to_their_tickets_and_retires_adapters(
    cli: CliRunner, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    seeded = _seed(db_url, data)
    bad = cli("forget", "--user", "customer@example.com")
    assert bad.code == 2 and "not a Slack user id" in bad.err
    done = cli("forget", "--user", CUSTOMER)
    assert done.code == 0, done.err
    assert (
        "erased U0CUST0001: 3 examples" in done.out
    )  # two replies and a preference pair and "1 predictions" in done.out
    assert "kk_replies-v" in done.out and "taken out of service" in done.out
    assert f"deleted {(data / 'runs' / str(seeded['tainted'])).resolve()}" in done.out
    assert "queued training run" in done.out
    db = Database(db_url)
    with db.session() as s:
        assert [e.id for e in s.scalars(select(Example))] == [seeded["other"]]
        assert s.scalars(select(Prediction)).all() == [] == s.scalars(select(Suggestion)).all()
        assert s.get(OptOut, CUSTOMER) is not None
        adapters = {a.run_id: a for a in s.scalars(select(Adapter))}
        assert adapters[seeded["tainted"]].status == "rejected"
        assert adapters[seeded["clean"]].status == "active"  # rolled back to a clean one
        queued = s.scalars(select(TrainingRun).where(TrainingRun.status == "queued")).all()
        assert [r.trigger for r in queued] == ["forget"]
    db.dispose()
    assert not (data / "runs" / str(seeded["tainted"])).exists()
    assert not (data / "adapters" / "v2").exists()
    assert (data / "runs" / str(seeded["clean"]) / "checkpoints").is_dir()
    assert (data / "adapters" / "v1").is_dir()


def test_forget_falls_back_to_the_base_model_and_export_leaves_pending_out(
    cli: CliRunner, db_url: str
) -> None:
    from bot.privacy import forget_user

    db = Database(db_url)
    db.upgrade()
    with db.session() as s:
        ds = Datasets(s).create("kk_copy", "draft", approvers=[TOM])
        gate = Gate(s)
        mine = gate.add(ds, text="Our autumn chai lands Thursday.", source="draft", actor=TOM,
                        approved=True, workspace="T1", channel="C1", ts="1.1", author=TOM)  # fmt: skip
        gate.add(ds, text="Tasting evenings are back in Bristol.", source="draft",
                 actor=CUSTOMER, approved=False, workspace="T1", channel="C1", ts="1.2",
                 author=CUSTOMER)  # fmt: skip
        (weak,) = PairGate(gate).add_many(
            ds, [PairCandidate("Announce the chai", "Our autumn chai lands Thursday.",
                               "OMG the chai is HERE, hurry!!!", "discard")],
            actor=TOM, author=PRIYA, workspace="T1", channel="C1", identity=None,
        )  # fmt: skip
        (kept,) = PairGate(gate).add_many(
            ds, [PairCandidate("Announce the chai", "Our autumn chai lands Thursday.",
                               "Chai. Now. Buy it!!!", "edit")],
            actor=PRIYA, author=PRIYA, workspace="T1", channel="C1", identity=None,
        )  # fmt: skip
        assert weak.example_id and kept.example_id
        run = TrainingRun(dataset_id=ds.id, status="succeeded", example_ids=[mine.example_id])
        s.add(run)
        s.flush()
        Adapters(s).create(ds, "/nowhere/kk_copy-v1", run_id=run.id, status="active")
    exported = cli("export", "-d", "kk_copy")
    assert exported.code == 0, exported.err
    assert "autumn chai" in exported.out and "Bristol" not in exported.out
    pending = cli("export", "-d", "kk_copy", "--pending")
    assert "Bristol" in pending.out and "autumn chai" not in pending.out
    with db.session() as s:
        forgotten = forget_user(s, TOM, actor="test")
        assert forgotten["detail"].now_serving == {"kk_copy": "base"}
    with db.session() as s:
        assert s.scalars(select(Adapter)).one().status == "rejected"
        assert Adapters(s).active(Datasets(s).get("kk_copy").id) is None
        left = s.scalars(select(Example).where(Example.kind == "preference")).all()
        assert [e.id for e in left] == [kept.example_id]  # the pair Tom approved went with him
    db.dispose()
