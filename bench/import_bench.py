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
from pathlib import Path
from typing import Any

from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness
from bot.storage import Database
from bot.storage.models import Example, utcnow
from bot.storage.repositories import Datasets
from trainer.cleaning import content_hash, split_for, text_key

WORDS = [
    "tea",
    "kettle",
    "chai",
    "oolong",
    "sencha",
    "leaf",
    "steep",
    "brew",
    "cup",
    "pot",
    "autumn",
    "spice",
    "ginger",
    "honey",
    "smoke",
    "bright",
    "malty",
    "floral",
    "citrus",
    "bergamot",
    "mint",
    "jasmine",
    "cosy",
    "morning",
    "evening",
    "parcel",
    "order",
    "club",
]


def make_file(path: Path, lines: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(lines):
            brief = f"Brief {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(4, 10)))
            post = " ".join(rng.choices(WORDS, k=rng.randint(15, 45))).capitalize() + "."
            record = {
                "messages": [
                    {"role": "user", "content": brief},
                    {"role": "assistant", "content": post},
                ]
            }
            fh.write(json.dumps(record) + "\n")


def bare_insert(db: Database, path: Path) -> float:
    """The floor: rows already parsed, one executemany, no checks."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    start = time.perf_counter()
    with db.session() as s:
        ds = Datasets(s).create("bare", "draft")
        now = utcnow()
        rows = []
        for r in records:
            prompt, text = r["messages"][0]["content"], r["messages"][1]["content"]
            digest = content_hash("draft", prompt, text)
            rows.append(
                {
                    "dataset_id": ds.id, "task": "draft", "prompt": prompt, "text": text,
                    "split": split_for(digest), "content_hash": digest,
                    "text_key": text_key(text), "source": "import",
                    "created_at": now, "updated_at": now,
                }
            )  # fmt: skip
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
    "process, each round in a fresh data folder), against a bare SQLAlchemy bulk insert "
    "(`session.execute(insert(Example), rows)` of already-parsed rows, into a fresh database) in "
    "the same run, the two taking turns. The command's start-up is measured on an empty file in "
    "each round and subtracted for the ratio. Target: under 10 s, within 3x of the bare insert, "
    "and a second import of the same file adds nothing.",
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

        def bare() -> dict[str, Any]:
            db = Database(f"sqlite:///{root / f'bare{next(count)}.db'}")
            db.upgrade()
            return {"bare_s": bare_insert(db, path)}

        def ours() -> dict[str, Any]:
            return brandbot_round(root / f"ours{next(count)}", path)

        runs, order = harness.interleave({"bare": bare, "brandbot": ours}, repeats)
    section.finish()
    bare_s = harness.spread(runs["bare"], "bare_s")
    first_s = harness.spread(runs["brandbot"], "first_s")
    import_s = harness.spread(runs["brandbot"], "import_s")
    startup = harness.spread(runs["brandbot"], "startup_s")
    again_s = harness.spread(runs["brandbot"], "again_s")
    ratio = import_s.median / bare_s.median
    added_again = max(r["added_again"] for r in runs["brandbot"])
    correct = all(r["added"] == lines for r in runs["brandbot"]) and added_again == 0
    fast = first_s.median < 10 and ratio < 3
    body = [
        f"{lines} lines of chat JSONL into SQLite (WAL); medians of {repeats} interleaved rounds "
        "(min-max in brackets)",
        "",
        "| what | seconds |",
        "| --- | --- |",
        f"| bare SQLAlchemy bulk insert | {bare_s.show(2)} |",
        f"| `brandbot import` (whole command) | {first_s.show(2)} |",
        f"| `brandbot import` start-up (an empty file) | {startup.show(2)} |",
        f"| `brandbot import` minus start-up | {import_s.show(2)} ({ratio:.2f}x the bare insert) |",
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
