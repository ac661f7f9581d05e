"""Collect benchmark: 1,000 signed reaction events (10% of them duplicates or Slack retries)
through `brandbot run --http` into PostgreSQL, with the messages fetched from a local fake
Slack Web API. Checks that exactly the expected examples exist and reports events per second,
beside a bare bolt-python app that only acks the same events (the ceiling of any bolt app here).

    python bench/collect_bench.py            # 1,000 events, PostgreSQL (the test kit starts it)
    python bench/collect_bench.py --smoke    # 100 events (CI)
    python bench/collect_bench.py --sqlite   # the embedded default instead

Aim (issue "Collect"): 500 events per second on this 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from sqlalchemy import func, select

from bot.storage import Database
from bot.storage.models import Example
from bot.testkit import payloads
from bot.testkit.postgres import PostgresCluster
from bot.testkit.signing import sign
from bot.testkit.slack import FakeSlack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bot_bench import SECRET, free_port, start

CHANNEL, APPROVER, AUTHOR = "C0BENCHCPY", "U0APPROVE1", "U0AUTHOR01"
WORDS = [
    "tea",
    "leaf",
    "kettle",
    "chai",
    "steep",
    "brew",
    "autumn",
    "ginger",
    "honey",
    "smoke",
    "bergamot",
    "jasmine",
    "mint",
]


async def send_all(
    url: str, bodies: list[str], concurrency: int, warm_up: list[str]
) -> tuple[list[int], float]:
    """Send ``warm_up`` (unmeasured), then ``bodies`` over the same keep-alive connections;
    returns the statuses of ``bodies`` and the seconds they took. aiohttp is the load generator:
    it costs a fraction of httpx's time per request, which matters when it shares the cores."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(batch: list[str]) -> list[int]:
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

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return statuses

        await send(warm_up)
        started = time.perf_counter()
        statuses = await send(bodies)
        return statuses, time.perf_counter() - started


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sqlite", action="store_true", help="use SQLite instead of PostgreSQL")
    parser.add_argument(
        "--workers", type=int, default=1,
        help="brandbot's HTTP processes (brandbot run --http --workers N; PostgreSQL only)",
    )  # fmt: skip
    parser.add_argument(
        "--write-briefs",
        action="store_true",
        help="also let the bot write a brief for each approved post with the local base model "
        "while the events arrive (off by default: that queued, model-bound work runs on the "
        "model server in a deployment and is not part of the event path)",
    )
    args = parser.parse_args()
    total = 100 if args.smoke else args.events
    unique = total - total // 10
    rng = random.Random(7)
    cluster = None if args.sqlite else PostgresCluster().start()
    try:
        with FakeSlack() as fake, tempfile.TemporaryDirectory(prefix="brandbot-bench-") as tmp:
            fake.add_user(APPROVER, "approver")
            fake.add_user(AUTHOR, "author")
            fake.add_channel(CHANNEL, "copy", members=[fake.bot_user_id, APPROVER, AUTHOR])
            bodies = []
            for i in range(unique):
                text = f"Post {i}: " + " ".join(rng.choices(WORDS, k=24))
                ts = fake.add_message(CHANNEL, text, user=AUTHOR, ts=f"1700000000.{i:06d}")
                event = payloads.reaction_added(APPROVER, "white_check_mark", CHANNEL, ts)
                bodies.append(json.dumps(payloads.event_callback(event, event_id=f"EvB{i:06d}")))
            for i in rng.sample(range(unique), total - unique):  # duplicates and retries
                body = json.loads(bodies[i])
                body["retry"] = True
                bodies.append(json.dumps(body))
            rng.shuffle(bodies)
            # The warm-up (imports, auth.test, connections, every worker) reacts in a channel
            # no dataset collects in, so it adds nothing.
            fake.add_channel("C0BENCHOFF", "off-topic", members=[fake.bot_user_id, APPROVER])
            warm_ts = fake.add_message("C0BENCHOFF", "warm-up", user=AUTHOR)
            warm_up = [
                json.dumps(payloads.event_callback(
                    payloads.reaction_added(APPROVER, "white_check_mark", "C0BENCHOFF", warm_ts),
                    event_id=f"EvWarm{i:04d}",
                ))
                for i in range(4 * args.concurrency)
            ]  # fmt: skip
            config = Path(tmp) / "brandbot.toml"
            if not args.write_briefs:  # model-bound queued work, not the event path
                config.write_text("[plugins.collect]\nwrite_briefs = false\n")
            env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
            env.update(
                SLACK_BOT_TOKEN=fake.bot_token, SLACK_SIGNING_SECRET=SECRET,
                SLACK_API_URL=fake.api_url, BRANDBOT_DATA_DIR=str(Path(tmp) / "data"),
                BRANDBOT_CONFIG=str(config),
            )  # fmt: skip
            db_url = cluster.create_database() if cluster else f"sqlite:///{tmp}/data/brandbot.db"
            env["BRANDBOT_DATABASE_URL"] = db_url
            brandbot = str(Path(sys.executable).parent / "brandbot")
            subprocess.run(
                [brandbot, "datasets", "create", "bench", "--task", "draft",
                 "--channels", CHANNEL, "--approvers", APPROVER],
                env={**env, "SLACK_BOT_TOKEN": ""}, check=True, capture_output=True,
            )  # fmt: skip
            elapsed: dict[str, float] = {}
            for kind in ("bare", "ours"):
                port = free_port()
                extra = ("--workers", str(args.workers)) if args.workers > 1 else ()
                server = start(kind, port, env, extra)
                if kind == "ours" and args.workers > 1:
                    wait_for_workers(port, args.workers)
                url = f"http://127.0.0.1:{port}/slack/events"
                try:
                    statuses, elapsed[kind] = asyncio.run(
                        send_all(url, bodies, args.concurrency, warm_up)
                    )
                finally:
                    server.terminate()
                    server.wait(timeout=10)
                if kind == "bare" and statuses.count(200) != total:
                    print(f"  the bare app answered {statuses.count(200)}/{total} with 200")
            db = Database(db_url)
            with db.session() as s:
                examples = s.scalar(select(func.count()).select_from(Example)) or 0
            db.dispose()
    finally:
        if cluster:
            cluster.stop()
    rate, bare = total / elapsed["ours"], total / elapsed["bare"]
    database = "SQLite" if args.sqlite else "PostgreSQL"
    print(f"collect benchmark: {total} reaction events ({total - unique} duplicates/retries)")
    briefs = "briefs written by the local model meanwhile" if args.write_briefs else "no briefs"
    workers = f", {args.workers} brandbot processes" if args.workers > 1 else ""
    print(f"  {database}, {args.concurrency} concurrent senders, {briefs}{workers}")
    print(f"  bare bolt app that only acks: {elapsed['bare']:.2f} s, {bare:.0f} events/s")
    print(f"  brandbot: {elapsed['ours']:.2f} s, {rate:.0f} events/s (aim: 500/s), "
          f"{rate / bare:.2f}x the bare app")  # fmt: skip
    print(f"  HTTP 200: {statuses.count(200)}/{total}; examples: {examples} (expected {unique})")
    ok = examples == unique and statuses.count(200) == total
    print(f"  exactly the expected examples: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
