"""Collect benchmark: 10,000 signed reaction events (10% of them duplicates or Slack retries)
through `brandbot run --http` into a PostgreSQL dataset that already holds 20,000 examples,
with the messages fetched from a local fake Slack Web API; beside a bare bolt-python app that
only acks the same events (the ceiling of any bolt app here). Sides, in interleaved rounds:
the bare app, brandbot with one process, brandbot with ``--workers 2``. The pre-fill is
imported once with ``brandbot import``; every brandbot round starts from a copy of that
database and checks that exactly the expected examples exist afterwards.

    python bench/collect_bench.py            # 10,000 events, 3 rounds (PostgreSQL of the test kit)
    python bench/collect_bench.py --write    # also write the doc's section (clean tree only)
    python bench/collect_bench.py --smoke    # 100 events into 200 examples, 1 process (CI)
    python bench/collect_bench.py --sqlite   # the embedded default instead (one process)

The message texts are brand-post-like paragraphs of three CLINC150 utterances each (23,695
distinct human-written queries, bench/data/clinc150_utterances.txt.gz; no two posts share more
than one), so the shingle hashes and near-duplicate candidates meet a real vocabulary.
Aim (issue "Collect"): 500 events per second on this 2-core machine, sustained.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.bot_bench import SECRET, free_port, start, stop  # noqa: E402
from bench.texts import posts  # noqa: E402
from bot.storage import Database  # noqa: E402
from bot.storage.models import Example  # noqa: E402
from bot.testkit import payloads  # noqa: E402
from bot.testkit.postgres import PostgresCluster  # noqa: E402
from bot.testkit.signing import sign  # noqa: E402
from bot.testkit.slack import FakeSlack  # noqa: E402

CHANNEL, APPROVER, AUTHOR = "C0BENCHCPY", "U0APPROVE1", "U0AUTHOR01"
TITLE = "Reaction events into PostgreSQL (collect)"


async def send_all(
    url: str, bodies: list[str], concurrency: int, warm_up: list[str]
) -> tuple[list[int], float, list[float]]:
    """Send ``warm_up`` (unmeasured), then ``bodies`` over the same keep-alive connections;
    returns the statuses of ``bodies``, the seconds they took and the moment (seconds after
    the start) each answer arrived, in arrival order. aiohttp is the load generator: it costs
    a fraction of httpx's time per request, which matters when it shares the cores."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        done: list[float] = []

        async def send(batch: list[str], started: float) -> list[int]:
            statuses: list[int] = []
            queue: asyncio.Queue[str] = asyncio.Queue()
            for body in batch:
                queue.put_nowait(body)

            async def worker() -> None:
                while not queue.empty():
                    body = queue.get_nowait()
                    headers = {"Content-Type": "application/json", **sign(SECRET, body)}
                    if '"retry"' in body:
                        headers["X-Slack-Retry-Num"] = "1"
                    async with session.post(url, data=body.encode(), headers=headers) as r:
                        await r.read()
                        statuses.append(r.status)
                        done.append(time.perf_counter() - started)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return statuses

        await send(warm_up, time.perf_counter())
        done.clear()
        started = time.perf_counter()
        statuses = await send(bodies, started)
        return statuses, time.perf_counter() - started, done


def windows(done: list[float], size: int) -> list[float]:
    """Events per second in each consecutive window of ``size`` answers."""
    rates = []
    for end in range(size, len(done) + 1, size):
        begin = done[end - size - 1] if end > size else 0.0
        rates.append(size / max(done[end - 1] - begin, 1e-9))
    return rates


def wait_for_workers(port: int, workers: int, timeout: float = 120) -> None:
    """Block until every worker answers: connections opened while only the first one listens
    would all stay with it (each worker has its own socket; the kernel spreads new ones)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {workers} workers answered")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            seen.add(int(json.loads(conn.getresponse().read())["worker"]))
        finally:
            conn.close()
        time.sleep(0.05)


@dataclass
class Setup:
    """What every round shares: the events, the pre-fill file, the environment."""

    bodies: list[str]
    warm_up: list[str]
    prefill: Path
    prefill_count: int
    unique: int
    env: dict[str, str]
    tmp: Path
    concurrency: int
    window: int
    cluster: PostgresCluster | None
    template: str = ""  # the pre-filled database every brandbot round starts from a copy of
    prefill_s: float = 0.0


def one_round(setup: Setup, kind: str, workers: int = 1) -> dict[str, Any]:
    """One side's round: for brandbot a fresh pre-filled database, the events, the count."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{kind}{workers}-", dir=setup.tmp))
    env = {**setup.env, "BRANDBOT_DATA_DIR": str(run_dir / "data")}
    examples = prefilled = -1
    if kind == "ours":
        url = copy_database(setup, run_dir)
        env["BRANDBOT_DATABASE_URL"] = url
        prefilled = count_examples(url)
    port = free_port()
    extra = ("--workers", str(workers)) if workers > 1 else ()
    server = start(kind, port, env, extra)
    try:
        if kind == "ours" and workers > 1:
            wait_for_workers(port, workers)
        statuses, elapsed, done = asyncio.run(
            send_all(f"http://127.0.0.1:{port}/slack/events", setup.bodies, setup.concurrency,
                     setup.warm_up)
        )  # fmt: skip
    finally:
        stop(server)
    if kind == "ours":
        examples = count_examples(env["BRANDBOT_DATABASE_URL"])
    rates = windows(done, setup.window)
    total = len(setup.bodies)
    ok = statuses.count(200) == total and (
        kind != "ours"
        or (prefilled, examples) == (setup.prefill_count, setup.prefill_count + setup.unique)
    )
    return {"rate": total / elapsed, "slowest": min(rates), "last": rates[-1],
            "http200": statuses.count(200), "prefilled": prefilled, "examples": examples,
            "windows": rates, "ok": ok}  # fmt: skip


def prefill_template(setup: Setup) -> None:
    """Create the dataset and import the pre-fill once, through `brandbot import` (the gate:
    cleaning, hashes, near-duplicate keys), into the database every round copies."""
    name = "prefilled"
    if setup.cluster:
        url = setup.cluster.create_database(name)
    else:
        url = f"sqlite:///{setup.tmp}/{name}.db"
    env = {**setup.env, "BRANDBOT_DATABASE_URL": url, "SLACK_BOT_TOKEN": "",
           "BRANDBOT_DATA_DIR": str(setup.tmp / "prefill-data")}  # fmt: skip
    brandbot = str(Path(sys.executable).parent / "brandbot")
    subprocess.run(
        [brandbot, "datasets", "create", "bench", "--task", "draft",
         "--channels", CHANNEL, "--approvers", APPROVER],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(
        [brandbot, "import", str(setup.prefill), "--dataset", "bench", "--json"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    setup.prefill_s = time.perf_counter() - t0
    setup.template = url if not setup.cluster else name


def copy_database(setup: Setup, run_dir: Path) -> str:
    """A fresh copy of the pre-filled database for one round (PostgreSQL: CREATE DATABASE
    ... TEMPLATE, a file copy; SQLite: the file)."""
    if setup.cluster is None:
        target = run_dir / "brandbot.db"
        shutil.copyfile(setup.template.removeprefix("sqlite:///"), target)
        return f"sqlite:///{target}"
    import psycopg

    name = f"r_{run_dir.name.replace('-', '_').lower()}"
    with psycopg.connect(host="127.0.0.1", port=setup.cluster.port, user="postgres",
                         dbname="postgres", autocommit=True) as conn:  # fmt: skip
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{setup.template}"')
    return setup.cluster.url(name)


def count_examples(url: str) -> int:
    db = Database(url)
    try:
        with db.session() as s:
            return int(s.scalar(select(func.count()).select_from(Example)) or 0)
    finally:
        db.dispose()


def prepare(
    args: argparse.Namespace, fake: FakeSlack, tmp: Path, cluster: PostgresCluster | None
) -> Setup:
    total, prefill_count = (100, 200) if args.smoke else (args.events, args.prefill)
    unique = total - total // 10
    rng = random.Random(7)
    texts = posts(prefill_count + unique)
    fake.add_user(APPROVER, "approver")
    fake.add_user(AUTHOR, "author")
    fake.add_channel(CHANNEL, "copy", members=[fake.bot_user_id, APPROVER, AUTHOR])
    prefill = tmp / "prefill.jsonl"
    with prefill.open("w", encoding="utf-8") as f:
        for text in texts[:prefill_count]:
            f.write(json.dumps({"messages": [{"role": "assistant", "content": text}]}) + "\n")
    bodies = []
    for i, text in enumerate(texts[prefill_count:]):
        ts = fake.add_message(CHANNEL, text, user=AUTHOR, ts=f"1700000000.{i:06d}")
        event = payloads.reaction_added(APPROVER, "white_check_mark", CHANNEL, ts)
        bodies.append(json.dumps(payloads.event_callback(event, event_id=f"EvB{i:06d}")))
    for i in rng.sample(range(unique), total - unique):  # duplicates and retries
        body = json.loads(bodies[i])
        body["retry"] = True
        bodies.append(json.dumps(body))
    rng.shuffle(bodies)
    # The warm-up (imports, auth.test, connections, every worker) reacts in a channel no
    # dataset collects in, so it adds nothing.
    fake.add_channel("C0BENCHOFF", "off-topic", members=[fake.bot_user_id, APPROVER])
    warm_ts = fake.add_message("C0BENCHOFF", "warm-up", user=AUTHOR)
    warm_up = [
        json.dumps(payloads.event_callback(
            payloads.reaction_added(APPROVER, "white_check_mark", "C0BENCHOFF", warm_ts),
            event_id=f"EvWarm{i:04d}",
        ))
        for i in range(4 * args.concurrency)
    ]  # fmt: skip
    config = tmp / "brandbot.toml"
    if not args.write_briefs:  # model-bound queued work, not the event path
        config.write_text("[plugins.collect]\nwrite_briefs = false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
    env.update(
        SLACK_BOT_TOKEN=fake.bot_token, SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=fake.api_url, BRANDBOT_CONFIG=str(config),
    )  # fmt: skip
    return Setup(bodies, warm_up, prefill, prefill_count, unique, env, tmp, args.concurrency,
                 max(1, total // 10), cluster)  # fmt: skip


LABELS = {"bare": "bare bolt app (acks only)", "ours1": "brandbot, 1 process",
          "ours2": "brandbot, `--workers 2`"}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--prefill", type=int, default=20_000, help="examples already stored")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per side")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    parser.add_argument(
        "--write-briefs",
        action="store_true",
        help="also let the bot write a brief for each approved post with the local base model "
        "while the events arrive (off by default: that queued, model-bound work runs on the "
        "model server in a deployment and is not part of the event path)",
    )
    args = parser.parse_args()
    if args.write:
        harness.require_clean_tree()
    section = harness.Section(TITLE)
    cluster = None if args.sqlite else PostgresCluster().start()
    try:
        with FakeSlack() as fake, tempfile.TemporaryDirectory(prefix="brandbot-bench-") as tmp:
            setup = prepare(args, fake, Path(tmp), cluster)
            prefill_template(setup)
            sides: dict[str, Callable[[], dict[str, Any]]] = {
                "bare": lambda: one_round(setup, "bare"),
                "ours1": lambda: one_round(setup, "ours"),
            }
            if not (args.sqlite or args.smoke):  # the smoke run keeps to one process
                sides["ours2"] = lambda: one_round(setup, "ours", workers=2)
            results, order = harness.interleave(sides, 1 if args.smoke else args.rounds)
    finally:
        if cluster:
            cluster.stop()
    section.finish()
    lines = report(args, setup, results)
    lines += ["", f"run order: {' '.join(order)}", *section.provenance_lines()]
    print("\n".join(lines))
    ok = all(r["ok"] for runs in results.values() for r in runs)
    print(f"exactly the expected examples: {'yes' if ok else 'NO'}")
    if args.write:
        harness.write_section(TITLE, [*DOC_INTRO, "", *lines])
    return 0 if ok else 1


def report(
    args: argparse.Namespace, setup: Setup, results: dict[str, list[dict[str, Any]]]
) -> list[str]:
    total = len(setup.bodies)
    database = "SQLite" if args.sqlite else "PostgreSQL"
    briefs = "briefs written by the local model meanwhile" if args.write_briefs else "no briefs"
    rounds = len(results["bare"])
    lines = [
        f"{total} reaction events ({total - setup.unique} duplicates/retries) into a dataset of "
        f"{setup.prefill_count} examples, {database}, {args.concurrency} concurrent senders, "
        f"{briefs}; {rounds} interleaved round(s), median (min-max):",
        "",
        f"| app | events/s over all {total} | slowest {setup.window}-event window | "
        f"last {setup.window}-event window | HTTP 200 | examples after (expected) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    expected = setup.prefill_count + setup.unique
    for kind, runs in results.items():
        found = (
            "-"
            if kind == "bare"
            else ", ".join(str(r["examples"]) for r in runs) + f" ({expected})"
        )
        lines.append(
            f"| {LABELS[kind]} | {harness.spread(runs, 'rate').show()} | "
            f"{harness.spread(runs, 'slowest').show()} | {harness.spread(runs, 'last').show()} | "
            f"{', '.join(str(r['http200']) for r in runs)} | {found} |"
        )
    bare = harness.spread(results["bare"], "rate").median
    for kind in ("ours1", "ours2"):
        if kind in results:
            rate = harness.spread(results[kind], "rate").median
            lines.append(f"\n{LABELS[kind]}: {rate / bare:.2f}x the bare app (aim: 500 events/s)")
    lines.append(
        f"\npre-fill: `brandbot import` of {setup.prefill_count} examples into an empty dataset, "
        f"{setup.prefill_s:.1f} s, once; every brandbot round starts from a copy of that database."
    )
    lines.append(f"\nevents/s in each {setup.window}-event window, in order:")
    for kind, runs in results.items():
        for n, r in enumerate(runs, 1):
            rates = " ".join(f"{x:.0f}" for x in r["windows"])
            lines.append(f"- {LABELS[kind]}, round {n}: {rates}")
    return lines


DOC_INTRO = [
    "10,000 signed `reaction_added` events (9,000 distinct approvals plus 1,000 duplicates and",
    "Slack retries) from 16 concurrent aiohttp senders to `brandbot run --http` on PostgreSQL,",
    "into a dataset that already holds 20,000 examples (imported once with `brandbot import`;",
    "each round starts from a copy of that database, so the near-duplicate lookup meets",
    "20,000-29,000 stored texts), each message fetched from the local fake Slack Web API,",
    "approvals answered with their",
    '"Added to …" notice; the same events to a bare bolt-python `AsyncApp` that only acks them.',
    "The texts are paragraphs of three CLINC150 utterances (23,695 distinct human-written",
    "queries, bench/data/clinc150_utterances.txt.gz, CC BY 3.0), so the shingle hash cache and",
    "the near-duplicate candidates meet a real vocabulary. Each app first gets an unmeasured",
    "warm-up on the same keep-alive connections (reactions in a channel no dataset collects in).",
    "Every round checks that every request got HTTP 200 and that exactly the expected examples",
    "exist. Events/s is over all 10,000; the windows are consecutive 1,000-answer stretches (the",
    "slowest and the last show whether the rate holds as the dataset grows). Briefs for approved",
    "posts are not written during the run (a queued, model-bound job; `--write-briefs`).",
    "With `--workers N` the benchmark waits until every worker answers `/healthz` before it",
    "connects. Aim (issue 4): 500 events per second.",
    "",
    "    .venv/bin/python bench/collect_bench.py --write   # --sqlite, --concurrency N, --smoke",
]


if __name__ == "__main__":
    sys.exit(main())
