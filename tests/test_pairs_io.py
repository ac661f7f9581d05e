"""``brandbot import`` / ``export --pairs`` of preference pairs (prompt/chosen/rejected JSONL) through
the real command line on SQLite and PostgreSQL: bad lines reported by number, the pair gate's
scrubbing and trivial-edit skip, idempotent re-import, and pairs kept out of the plain export."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from bot.cli.exits import PARTIAL
from bot.gate import pair_hash
from bot.storage import Database
from bot.storage.models import AuditEntry, Example
from tests.conftest import CliRunner

CHAI = "Our autumn chai lands Thursday: cardamom, clove and ginger over strong Assam."
HYPE = "OMG guys, the chai is HERE and it's a total game-changer!!! Hurry!!!"


def _pair(prompt: object, chosen: object, rejected: object) -> str:
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected})


def test_pairs_import_reports_bad_lines_and_round_trips_through_export(
    cli: CliRunner, db_url: str, tmp_path: Path
) -> None:
    assert cli("datasets", "create", "kk_copy", "--task", "draft", "--max-length", "120").code == 0
    assert (
        cli("datasets", "create", "kk_tickets", "--task", "classify", "--labels", "a,b").code == 0
    )
    messages = [
        {"role": "system", "content": "Be warm."},
        {"role": "user", "content": "Launch the kettle"},
    ]
    lines = [
        _pair("Announce the autumn chai", CHAI, HYPE),  # 1
        "{not json",  # 2
        json.dumps({"prompt": "No rejected side", "chosen": CHAI}),  # 3
        _pair(
            "Trivial", "The tins are back, in sage green.", "the tins are back in SAGE green"
        ),  # 4
        _pair(
            messages,
            [{"role": "assistant", "content": "New: a copper kettle."}],
            "NEW KETTLE!!! Buy it now, it's cheap!!!",
        ),  # 5
        _pair("Too long", "x " * 80, HYPE),  # 6
        _pair([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], CHAI, HYPE),
        "",  # 8: blank lines are skipped
        _pair("Write to maya@example.com", "Questions? Write to maya@example.com today.", HYPE),
        _pair("Announce the autumn chai ", CHAI + " ", HYPE),  # 10: the same pair as line 1
        _pair("Nul", "Tea\u0000time is here again.", HYPE),  # 11
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli("import", str(path), "-d", "kk_copy", "--json")
    assert result.code == PARTIAL, result.err
    report = result.json()
    assert (report["added"], report["duplicate"], report["rejected"]) == (3, 1, 6)
    reasons = {r["line"]: r["reason"] for r in report["rejections"]}
    assert set(reasons) == {2, 3, 4, 6, 7, 11}
    assert "malformed JSON" in reasons[2] and '"rejected"' in reasons[3]
    assert "whitespace, punctuation or case" in reasons[4]
    assert "chosen" in reasons[6] and "limit is 120" in reasons[6]
    assert "exactly one user message" in reasons[7] and "U+0000" in reasons[11]
    text = cli("import", str(path), "-d", "kk_copy")
    assert "added 0" in text.out and "duplicate 4" in text.out
    assert "rejected line 4: the two answers differ only" in text.out

    exported = cli("export", "-d", "kk_copy", "--pairs")
    assert exported.code == 0, exported.err
    records = [json.loads(line) for line in exported.out.splitlines()]
    assert records == [
        {"prompt": "Announce the autumn chai", "chosen": CHAI, "rejected": HYPE},
        {"prompt": "Launch the kettle", "chosen": "New: a copper kettle.",
         "rejected": "NEW KETTLE!!! Buy it now, it's cheap!!!"},
        {"prompt": "Write to [EMAIL]", "chosen": "Questions? Write to [EMAIL] today.",
         "rejected": HYPE},
    ]  # fmt: skip
    assert cli("export", "-d", "kk_copy").out == ""  # pairs are not chat examples
    again = tmp_path / "again.jsonl"
    assert cli("export", "-d", "kk_copy", "--pairs", "-o", str(again)).code == 0
    reimported = cli("import", str(again), "-d", "kk_copy", "--json").json()
    assert (reimported["added"], reimported["duplicate"]) == (0, 3)
    wrong = cli("import", str(again), "-d", "kk_tickets", "--json").json()
    assert wrong["added"] == 0 and "for draft datasets" in wrong["rejections"][0]["reason"]

    first = cli("examples", "list", "-d", "kk_copy", "--limit", "3", "--json").json()
    assert cli("examples", "brief", str(first["examples"][-1]["id"]), "The autumn chai").code == 0
    renamed = cli("import", str(again), "-d", "kk_copy", "--json").json()
    assert (renamed["added"], renamed["duplicate"]) == (1, 2)  # the pair's hash follows its brief

    shown = cli("datasets", "show", "kk_copy")
    assert "examples: 4 active" in shown.out and "of which preference pairs: 4" in shown.out

    db = Database(db_url)
    with db.session() as s:
        stored = s.scalars(select(Example)).all()
        assert all(e.content_hash == pair_hash(e.task, e.prompt or "", e.text,
                                               e.rejected_text or "") for e in stored)  # fmt: skip
        assert len(stored) == 4
        assert {(e.kind, e.status, e.source, e.approver_id) for e in stored} == {
            ("preference", "active", "import", "cli")
        }
        assert all(e.message_ts is None and e.split in ("train", "heldout") for e in stored)
        audit = s.scalars(select(AuditEntry).where(AuditEntry.action == "pairs.import")).all()
        assert [a.details["added"] for a in audit] == [3, 1]
        assert "maya" not in json.dumps([a.details for a in audit])
    db.dispose()
