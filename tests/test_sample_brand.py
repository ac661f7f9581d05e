"""The sample brand is real package data that loads through the product's own import path."""

from __future__ import annotations

import json
from collections import Counter

from bot.datasets import parse_spec
from bot.samples import brand_definition, load_sample_brand, sample_dir, workspace
from bot.storage import Database
from bot.storage.repositories import Datasets, Examples


def _lines(name: str) -> list[dict[str, object]]:
    text = (sample_dir() / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_sample_brand_sizes_and_shape() -> None:
    copy = _lines("copy.jsonl")
    assert len(copy) >= 60
    assert len({c["messages"][1]["content"] for c in copy}) == len(copy)  # type: ignore[index]
    tickets = _lines("tickets.jsonl")
    per_label = Counter(t["label"] for t in tickets)
    assert len(per_label) >= 10
    assert min(per_label.values()) >= 40
    assert len({t["messages"][0]["content"] for t in tickets}) == len(tickets)  # type: ignore[index]
    messages = _lines("messages.jsonl")
    assert len(messages) >= 24
    ws = workspace()
    users = {u["id"] for u in ws["users"]}
    channels = {c["name"] for c in ws["channels"]}
    assert all(m["user"] in users and m["channel"] in channels for m in messages)


def test_brand_rules_hold_in_the_approved_copy() -> None:
    spec = next(d for d in brand_definition()["datasets"] if d["task"] == "draft")
    for record in _lines("copy.jsonl"):
        post = str(record["messages"][1]["content"]).lower()  # type: ignore[index]
        assert len(post) <= spec["max_length"]
        assert not any(word in post.split() for word in spec["banned_words"]), post


def test_dataset_definitions_are_valid_and_emoji_map_to_labels() -> None:
    for raw in brand_definition()["datasets"]:
        raw = {k: v for k, v in raw.items() if k not in ("examples", "pairs")}
        spec = parse_spec(raw)
        if spec.task == "classify":
            assert len(spec.labels or []) == 10
            assert set((spec.label_emoji or {}).values()) == set(spec.labels or [])


def test_loading_twice_adds_nothing(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    db.upgrade()
    first = load_sample_brand(db)
    assert all(d.created and not d.result.rejected for d in first)
    assert sum(d.result.added for d in first) >= 460
    assert {d.name: d.pairs.added for d in first} == {"kk_copy": 36, "kk_tickets": 0,
                                                       "kk_replies": 0}  # fmt: skip
    second = load_sample_brand(db)
    assert all(not d.created and d.result.added == 0 == d.pairs.added for d in second)
    assert {d.name: d.pairs.duplicate for d in second}["kk_copy"] == 36
    with db.session() as s:
        tickets = Datasets(s).get("kk_tickets")
        counts = Examples(s).counts(tickets.id)
        assert 0.08 < counts["by_split"]["heldout"] / counts["total"] < 0.25


def test_sample_pairs_prefer_on_brand_posts_over_drafts_with_the_brands_flaws() -> None:
    from trainer.rules import rule_violations

    spec = next(d for d in brand_definition()["datasets"] if d["task"] == "draft")
    pairs = _lines(spec["pairs"])
    assert 30 <= len(pairs) <= 40
    copy = {str(c["messages"][1]["content"]) for c in _lines("copy.jsonl")}  # type: ignore[index]
    rules = {"max_length": spec["max_length"], "banned_words": spec["banned_words"],
             "required_words": []}  # fmt: skip
    flawed = 0
    for pair in pairs:
        chosen, rejected = str(pair["chosen"]), str(pair["rejected"])
        assert not rule_violations(chosen, **rules) and chosen.count("!") <= 1, chosen
        assert chosen not in copy and str(pair["prompt"]).strip()
        hype = rejected.count("!") > 1 or rejected.count("#") > 1
        assert hype or rule_violations(rejected, **rules), rejected
        flawed += bool(rule_violations(rejected, **rules))
    assert flawed >= len(pairs) // 2  # banned words or too long in most of them
