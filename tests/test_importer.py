"""Import/export of chat JSONL and CSV through the storage layer, on both databases."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.importer import ImportResult, Rejected, export_records, import_candidates, read_file
from bot.storage import Database
from bot.storage.repositories import Audit, Datasets, Examples
from tests.conftest import write_jsonl

LABELS = ["billing", "shipping"]


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.upgrade()
    with database.session() as s:
        Datasets(s).create("copy", "draft", max_length=100, system_prompt="Be kind.")
        Datasets(s).create("tickets", "classify", labels=LABELS)
    yield database
    database.dispose()


def pair(brief: str, post: str) -> dict[str, list[dict[str, str]]]:
    return {
        "messages": [{"role": "user", "content": brief}, {"role": "assistant", "content": post}]
    }


def ticket(text: str, label: str, answer: str | None = None) -> dict[str, object]:
    return {
        "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "content": answer or label},
        ],
        "label": label,
    }


def do_import(db: Database, name: str, path: Path) -> ImportResult:
    with db.session() as s:
        ds = Datasets(s).get(name)
        return import_candidates(s, ds, read_file(path, ds.task))


def test_malformed_lines_are_reported_by_number_and_the_rest_imported(
    db: Database, tmp_path: Path
) -> None:
    path = tmp_path / "copy.jsonl"
    lines = [
        json.dumps(pair("Launch the chai", "Our autumn chai is here.")),
        "{not json",
        json.dumps({"messages": []}),
        json.dumps(pair("Too long", "x" * 101)),
        "",
        json.dumps(pair("Empty", "   ")),
        json.dumps({"messages": [{"role": "robot", "content": "hi"}]}),
        json.dumps(pair("Restock", "Earl Grey is back on the shelf.")),
    ]
    path.write_text("\n".join(lines) + "\n")
    result = do_import(db, "copy", path)
    assert result.added == 2
    assert result.duplicate == 0
    reasons = {r.line: r.reason for r in result.rejected}
    assert set(reasons) == {2, 3, 4, 6, 7}
    assert "malformed JSON" in reasons[2]
    assert "messages" in reasons[3]
    assert "max_length is 100" in reasons[4]
    assert reasons[6] == "empty text"
    assert "role" in reasons[7]


def test_import_is_idempotent(db: Database, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [pair("b1", "Post one."), pair("b2", "Post two.")])
    assert do_import(db, "copy", path).added == 2
    again = do_import(db, "copy", path)
    assert again.added == 0
    assert again.duplicate == 2
    spaced = write_jsonl(tmp_path / "d.jsonl", [pair("B1 ", "post  ONE")])
    assert do_import(db, "copy", spaced).duplicate == 1


def test_classify_label_must_agree_and_be_known(db: Database, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [
            ticket("I was charged twice", "billing"),
            ticket("Where is my parcel", "shipping", answer="billing"),
            ticket("Can I pay by card", "payments"),
            {
                "messages": [
                    {"role": "user", "content": "no label"},
                    {"role": "assistant", "content": "billing"},
                ]
            },
        ],
    )
    result = do_import(db, "tickets", path)
    assert result.added == 2
    reasons = {r.line: r.reason for r in result.rejected}
    assert "differ" in reasons[2]
    assert "not one of the dataset's labels" in reasons[3]


def test_csv_for_classify(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        'text,label\n"Charged twice, please help",billing\nonly one column\n'
        '"multi\nline ticket",shipping\n',
        encoding="utf-8",
    )
    result = do_import(db, "tickets", path)
    assert result.added == 2
    assert [(r.line, "2 columns" in r.reason) for r in result.rejected] == [(3, True)]
    with db.session() as s:
        ds = Datasets(s).get("copy")
        first = read_file(path, ds.task)[0]
        assert isinstance(first, Rejected) and first.reason.startswith("CSV")


def test_same_text_keeps_its_split(db: Database, tmp_path: Path) -> None:
    """No text that is held out may enter train under another label or brief."""
    records = [ticket(f"Ticket number {i} about money", "billing") for i in range(60)]
    do_import(db, "tickets", write_jsonl(tmp_path / "a.jsonl", records))
    relabelled = [ticket(f"ticket number {i} about money!", "shipping") for i in range(60)]
    do_import(db, "tickets", write_jsonl(tmp_path / "b.jsonl", relabelled))
    with db.session() as s:
        ds = Datasets(s).get("tickets")
        examples = Examples(s).active(ds.id)
        assert len(examples) == 120
        by_key: dict[str, set[str]] = {}
        for ex in examples:
            by_key.setdefault(ex.text_key, set()).add(ex.split)
        assert all(len(splits) == 1 for splits in by_key.values())
        assert any(ex.split == "heldout" for ex in examples)


def test_export_round_trips_and_records_an_audit_entry(db: Database, tmp_path: Path) -> None:
    words = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(30)]  # no near twins
    src = [pair(f"brief {i}", f"Approved post {' '.join(w[j : j + 6] for j in range(0, 36, 6))}.")
           for i, w in enumerate(words)]  # fmt: skip
    do_import(db, "copy", write_jsonl(tmp_path / "c.jsonl", src))
    with db.session() as s:
        ds = Datasets(s).get("copy")
        records = list(export_records(ds, Examples(s).active(ds.id)))
        entries = Audit(s).entries(ds.id)
    assert len(records) == 30
    assert records[0]["messages"][0] == {"role": "system", "content": "Be kind."}
    assert {r["messages"][-1]["content"] for r in records} == {
        m["messages"][1]["content"] for m in src
    }
    assert [e.action for e in entries] == ["examples.import"]
    assert entries[0].details["added"] == 30
    assert "Approved post" not in json.dumps(entries[0].details)
    out = write_jsonl(tmp_path / "out.jsonl", records)
    assert do_import(db, "copy", out).duplicate == 30


def test_import_scrubs_personal_data_and_writes_near_duplicate_keys(
    db: Database, tmp_path: Path
) -> None:
    zw = "\u200b"
    card = zw.join(["4111", "1111", "1111", "1111"])  # a card number split by zero-width spaces
    tickets = [
        ticket(f"Charged twice on card {card}, refund to DE89 3704 0044 0532 0130 00", "billing"),
        ticket("Mail kim.ng@example.com or call +44 7700 900123 about my box", "shipping"),
        ticket(
            "Card\u2060 5500 0000 0000 0004 was charged, IBAN GB82WEST12345698765432", "billing"
        ),
    ]
    result = do_import(db, "tickets", write_jsonl(tmp_path / "t.jsonl", tickets))
    assert result.added == 3, result.rejected
    posts = [pair("Launch", "Our autumn chai is here: cardamom, clove and ginger over Assam."),
             pair("Launch again", "Our autumn chai is here: cardamom, clove and ginger over Assam!"),
             pair("Bristol", "Tasting evenings are back at the Bristol shop every Friday.")]  # fmt: skip
    copy = do_import(db, "copy", write_jsonl(tmp_path / "c.jsonl", posts))
    assert (copy.added, copy.duplicate) == (2, 1)  # the near-identical second post
    with db.session() as s:
        from bot.storage.models import Example, NearDupKey

        stored = [e.text for e in s.query(Example).all()]
        keys = {k.example_id for k in s.query(NearDupKey).all()}
        ids = {e.id for e in s.query(Example).all()}
    blob = " ".join(stored)
    for secret in ("4111", "1111", "DE89", "0532", "kim.ng", "7700", "900123", "5500", "GB82"):
        assert secret not in blob, secret
    assert "[CARD]" in blob and "[IBAN]" in blob and "[EMAIL]" in blob and "[PHONE]" in blob
    assert zw not in blob and "\u2060" not in blob
    assert keys == ids  # every imported example can be found as a near duplicate later


def test_a_large_import_goes_in_by_batches(db: Database, tmp_path: Path) -> None:
    from sqlalchemy import event

    from bot.importer import INSERT_BATCH

    count = 2 * INSERT_BATCH + 7
    path = write_jsonl(
        tmp_path / "many.jsonl",
        [ticket(f"order {i} ticket {hashlib.sha256(str(i).encode()).hexdigest()}", LABELS[i % 2])
         for i in range(count)],
    )  # fmt: skip
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO EXAMPLES"):
            statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        result = do_import(db, "tickets", path)
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    assert result.added == count and not result.rejected
    assert len(statements) == 3  # INSERT_BATCH, INSERT_BATCH, then the 7 left
    with db.session() as s:
        ds = Datasets(s).get("tickets")
        assert ds is not None
        assert Examples(s).counts(ds.id)["total"] == count
