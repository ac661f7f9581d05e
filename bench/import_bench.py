"""Import benchmark: `brandbot import` of a 10,000-line chat JSONL file into SQLite, against a
bare SQLAlchemy bulk insert of the same rows measured in the same run.

    python bench/import_bench.py            # 10,000 lines, 3 interleaved rounds
    python bench/import_bench.py --write    # the same, then write its docs/benchmarks.md section
    python bench/import_bench.py --smoke    # 500 lines, seconds (CI)

Targets (issue "Foundation"): the import finishes in under 10 s, within 3x of the bare bulk
insert, and importing the same file again adds nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness
from bench.texts import posts, sentence, utterances
from bot.gate import near_dup_keys
from bot.storage import Database
from bot.storage.models import Example, NearDupKey, utcnow
from bot.storage.repositories import Datasets
from trainer.cleaning import content_hash, split_for, text_key


def make_file(path: Path, lines: int, seed: int = 0) -> None:
    """``lines`` chat records: a one-sentence brief and a three-sentence post, both from
    human-written queries (bench/texts.py), no post a near-duplicate of another."""
    rng = random.Random(seed)
    briefs = utterances()
    with path.open("w", encoding="utf-8") as fh:
        for i, post in enumerate(posts(lines, seed=seed + 11)):
            brief = f"Brief {i}: " + sentence(rng.choice(briefs))
            record = {
                "messages": [
                    {"role": "user", "content": brief},
                    {"role": "assistant", "content": post},
                ]
            }
            fh.write(json.dumps(record) + "\n")


def bare_insert(db: Database, path: Path, keys: bool) -> float:
    """The floor: rows already parsed, hashed and (``keys``) with their near-duplicate band keys
    computed; one executemany per table, no checks. With ``keys`` it writes the rows the import
    writes (an example and its 16 band keys per line)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    prepared = []
    for r in records:
        prompt, text = r["messages"][0]["content"], r["messages"][1]["content"]
        digest = content_hash("draft", prompt, text)
        band_keys = list(dict.fromkeys(near_dup_keys(text))) if keys else []
        prepared.append((prompt, text, digest, band_keys))
    start = time.perf_counter()
    with db.session() as s:
        ds = Datasets(s).create("bare", "draft")
        now = utcnow()
        rows = [
            {
                "dataset_id": ds.id, "task": "draft", "prompt": prompt, "text": text,
                "split": split_for(digest), "content_hash": digest, "text_key": text_key(text),
                "source": "import", "created_at": now, "updated_at": now,
            }
            for prompt, text, digest, _ in prepared
        ]  # fmt: skip
        if keys:
            ids = s.scalars(insert(Example).returning(Example.id, sort_by_parameter_order=True),
                            rows).all()  # fmt: skip
            key_rows = [
                {"example_id": example_id, "band_key": key, "dataset_id": ds.id}
                for example_id, (_, _, _, band_keys) in zip(ids, prepared, strict=True)
                for key in band_keys
            ]
            s.execute(insert(NearDupKey), key_rows)
        else:
            s.execute(insert(Example), rows)
    return time.perf_counter() - start


def cli_import(env: dict[str, str], path: Path) -> tuple[float, dict[str, object]]:
    brandbot = str(Path(sys.executable).parent / "brandbot")
    start = time.perf_counter()
    proc = subprocess.run(
        [brandbot, "import", str(path), "-d", "bench", "--json"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    result = json.loads(proc.stdout)
    # an empty file (the start-up measurement) imports nothing: exit 3, by design
    if proc.returncode != result.get("exit_code", 0):
        raise RuntimeError(f"brandbot import exited {proc.returncode}: {proc.stderr[-2000:]}")
    return time.perf_counter() - start, result


def brandbot_round(root: Path, path: Path) -> dict[str, Any]:
    """One measured ``brandbot import`` in a fresh data folder: start-up (an empty file), the
    file, then the same file again."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    env["BRANDBOT_DATA_DIR"] = str(root / "data")
    env["BRANDBOT_CONFIG"] = str(root / "none.toml")
    brandbot = str(Path(sys.executable).parent / "brandbot")
    subprocess.run(
        [brandbot, "datasets", "create", "bench", "--task", "draft"],
        env=env, capture_output=True, check=True,
    )  # fmt: skip
    empty = root / "empty.jsonl"
    empty.write_text("")
    startup_s, _ = cli_import(env, empty)
    first_s, first = cli_import(env, path)
    again_s, again = cli_import(env, path)
    return {
        "startup_s": startup_s, "first_s": first_s, "import_s": first_s - startup_s,
        "again_s": again_s, "added": first["added"], "added_again": again["added"],
    }  # fmt: skip


SECTION = "Import (foundation)"
DOC_INTRO = [
    "`brandbot import` of a 10,000-line chat JSONL file into SQLite (the whole command in its own "
    "process, each round in a fresh data folder) against two bare SQLAlchemy bulk inserts into a "
    "fresh database, all taking turns: the `examples` rows alone "
    "(`session.execute(insert(Example), rows)`), and the rows the import writes, each example "
    "with its 16 near-duplicate band keys (`near_dup_keys`). The bare inserts get their rows "
    "already parsed, hashed and keyed; the import parses, normalizes, scrubs personal data, "
    "hashes, computes the band keys and looks up near-duplicates before it writes. The lines are "
    "realistic: a one-sentence brief and a three-sentence post of human-written CLINC150 "
    "queries (bench/texts.py), no two posts near-duplicates. The command's start-up is "
    "measured on an empty file in each round and subtracted for the ratios. Target: under 10 s, "
    "within 3x of the bare insert of the same rows, and a second import of the same file adds "
    "nothing.",
    "",
    "    .venv/bin/python bench/import_bench.py --write",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="500 lines instead of 10,000")
    parser.add_argument("--lines", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="rounds per side (>= 3)")
    parser.add_argument("--write", action="store_true", help="Write docs/benchmarks.md.")
    args = parser.parse_args()
    lines = args.lines or (500 if args.smoke else 10_000)
    repeats = args.repeats or (1 if args.smoke else 3)
    if args.write and (args.smoke or args.lines or repeats < 3):
        parser.error("--write records 10,000 lines over at least 3 rounds per side")
    if args.write:
        harness.require_clean_tree()
    section = harness.Section(SECTION)
    with tempfile.TemporaryDirectory(prefix="brandbot-bench-") as tmp:
        root = Path(tmp)
        path = root / "examples.jsonl"
        make_file(path, lines)
        count = iter(range(1_000_000))

        def bare(keys: bool) -> Callable[[], dict[str, Any]]:
            def run() -> dict[str, Any]:
                db = Database(f"sqlite:///{root / f'bare{next(count)}.db'}")
                db.upgrade()
                try:
                    return {"bare_s": bare_insert(db, path, keys)}
                finally:
                    db.dispose()

            return run

        def ours() -> dict[str, Any]:
            return brandbot_round(root / f"ours{next(count)}", path)

        sides = {"bare": bare(False), "bare+keys": bare(True), "brandbot": ours}
        runs, order = harness.interleave(sides, repeats)
    section.finish()
    bare_s = harness.spread(runs["bare"], "bare_s")
    keyed_s = harness.spread(runs["bare+keys"], "bare_s")
    first_s = harness.spread(runs["brandbot"], "first_s")
    import_s = harness.spread(runs["brandbot"], "import_s")
    startup = harness.spread(runs["brandbot"], "startup_s")
    again_s = harness.spread(runs["brandbot"], "again_s")
    ratio = import_s.median / keyed_s.median
    added_again = max(r["added_again"] for r in runs["brandbot"])
    correct = all(r["added"] == lines for r in runs["brandbot"]) and added_again == 0
    fast = first_s.median < 10 and ratio < 3
    body = [
        f"{lines} lines of chat JSONL into SQLite (WAL); medians of {repeats} interleaved rounds "
        "(min-max in brackets)",
        "",
        "| what | seconds |",
        "| --- | --- |",
        f"| bare bulk insert: examples alone | {bare_s.show(2)} |",
        f"| bare bulk insert: the same rows as the import (examples and band keys) | "
        f"{keyed_s.show(2)} |",
        f"| `brandbot import` (whole command) | {first_s.show(2)} |",
        f"| `brandbot import` start-up (an empty file) | {startup.show(2)} |",
        f"| `brandbot import` minus start-up | {import_s.show(2)} ({ratio:.2f}x the bare insert "
        f"of the same rows, {import_s.median / bare_s.median:.2f}x the examples alone) |",
        f"| second import of the same file (adds {added_again}) | {again_s.show(2)} |",
        "",
        f"- every round added all {lines} lines the first time: "
        f"{'yes' if all(r['added'] == lines for r in runs['brandbot']) else 'NO'}",
        f"- targets (under 10 s, under 3x, a second import adds 0): "
        f"{'met' if correct and fast else 'NOT met'}",
        "",
        f"run order: {' '.join(order)}",
        *section.provenance_lines(),
    ]
    print("\n".join(body))
    if args.write:
        harness.write_section(SECTION, [*DOC_INTRO, "", *body])
    # Smoke runs check correctness only: timings of 500 rows are start-up noise.
    return 0 if correct and (fast or args.smoke) else 1


if __name__ == "__main__":
    sys.exit(main())
