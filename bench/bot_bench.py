"""Slash-command ack benchmark: 200 concurrent signed slash commands to brandbot's HTTP app
(`brandbot run --http`, the real command, on SQLite or PostgreSQL) and to a bare bolt-python
app on the same ASGI server (uvicorn, same backlog), in the same run.

    python bench/bot_bench.py             # 200 concurrent commands, 3 rounds each
    python bench/bot_bench.py --smoke     # 20 commands, 1 round (CI)

Target (issue "Bot runtime"): every request acked in under 3 s; our p99 within 1.2x of the
bare app's. Both apps answer the command through its response_url after the ack, on a local
fake Slack Web API.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx

from bot.testkit.signing import sign
from bot.testkit.slack import FakeSlack

SECRET = "bench-signing-secret"  # noqa: S105 - a benchmark value
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve_bare(port: int) -> None:
    """The baseline: a bolt AsyncApp that acks and answers through response_url."""
    import uvicorn
    from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
    from slack_bolt.async_app import AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    token = os.environ["SLACK_BOT_TOKEN"]
    app = AsyncApp(
        client=AsyncWebClient(token=token, base_url=os.environ["SLACK_API_URL"]),
        signing_secret=os.environ["SLACK_SIGNING_SECRET"],
        process_before_response=True,
    )

    pending: set[asyncio.Future[object]] = set()

    @app.command("/brandbot")
    async def brandbot(ack, respond):  # type: ignore[no-untyped-def]
        await ack()
        future = asyncio.ensure_future(respond("*brandbot commands*"))
        pending.add(future)
        future.add_done_callback(pending.discard)

    @app.event("reaction_added")
    async def reaction_added(ack):  # type: ignore[no-untyped-def]
        await ack()  # the collect benchmark's baseline: the least a bolt app does per event

    handler = AsyncSlackRequestHandler(app)

    async def endpoint(request: Request):  # type: ignore[no-untyped-def]
        return await handler.handle(request)

    web = Starlette(routes=[Route("/slack/events", endpoint, methods=["POST"])])
    uvicorn.run(web, host="127.0.0.1", port=port, backlog=2048, log_level="warning",
                access_log=False)  # fmt: skip


def start(
    kind: str, port: int, env: dict[str, str], extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    if kind == "ours":
        cmd = [str(Path(sys.executable).parent / "brandbot"), "run", "--http",
               "--host", "127.0.0.1", "--port", str(port), *extra]  # fmt: skip
    else:
        cmd = [sys.executable, str(Path(__file__)), "--serve-bare", str(port)]
    # The server's log goes to a file: an unread pipe would fill up and stall the server.
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the server process owns it
        prefix=f"brandbot-bench-{kind}-", suffix=".log", delete=False
    )
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(log.name).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{kind} server exited: {tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


async def fire(url: str, n: int, fake: FakeSlack) -> list[float]:
    """n signed slash commands at once; returns each one's ack latency (inf if not 200)."""
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(i: int) -> float:
            body = urlencode({
                "token": "x", "team_id": fake.team_id, "team_domain": "bench",
                "channel_id": "C0BENCH01", "channel_name": "bench", "user_id": "U0BENCH01",
                "user_name": "bench", "command": "/brandbot", "text": "help",
                "api_app_id": "A0BENCH", "is_enterprise_install": "false",
                "response_url": fake.response_url(f"bench-{i}"), "trigger_id": f"1.{i}.x",
            })  # fmt: skip
            headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(SECRET, body)}
            start = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError:
                return float("inf")
            elapsed = time.perf_counter() - start
            return elapsed if response.status_code == 200 else float("inf")

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp folder")
    parser.add_argument("--serve-bare", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    n = 20 if args.smoke else args.concurrency
    rounds = 1 if args.smoke else args.rounds
    with FakeSlack() as fake, tempfile.TemporaryDirectory(prefix="brandbot-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
        env.update(
            SLACK_BOT_TOKEN=fake.bot_token, SLACK_SIGNING_SECRET=SECRET,
            SLACK_API_URL=fake.api_url, BRANDBOT_DATA_DIR=str(Path(tmp) / "data"),
            BRANDBOT_CONFIG=str(Path(tmp) / "none.toml"),
        )  # fmt: skip
        if args.database_url:
            env["BRANDBOT_DATABASE_URL"] = args.database_url
        results: dict[str, list[float]] = {"bare": [], "ours": []}
        servers = {}
        try:
            for kind in ("bare", "ours"):
                port = free_port()
                servers[kind] = (start(kind, port, env), f"http://127.0.0.1:{port}/slack/events")
                # One unmeasured round of the same size warms both apps up (auth.test, imports,
                # handler threads, pooled database connections, compiled statements).
                asyncio.run(fire(servers[kind][1], n, fake))
            for _ in range(rounds):
                for kind in ("bare", "ours"):
                    results[kind] += asyncio.run(fire(servers[kind][1], n, fake))
                    time.sleep(0.5)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=10)
    print(f"slash-command acks: {n} concurrent signed requests x {rounds} rounds, uvicorn")
    print(f"{'app':<6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'failed':>7}")
    summary = {}
    for kind in ("bare", "ours"):
        vals = results[kind]
        ok = [v for v in vals if v != float("inf")]
        failed = len(vals) - len(ok)
        p50, p99 = pct(ok, 0.5) * 1000, pct(ok, 0.99) * 1000
        summary[kind] = (p50, p99, max(ok) * 1000, failed)
        print(f"{kind:<6} {p50:8.1f} {p99:8.1f} {max(ok) * 1000:8.1f} {failed:7d}")
    ratio = summary["ours"][1] / summary["bare"][1]
    print(f"p99 ours / bare = {ratio:.2f}x (target <= 1.2x); "
          f"p50 ratio {summary['ours'][0] / summary['bare'][0]:.2f}x")  # fmt: skip
    all_acked = summary["ours"][3] == 0 and summary["ours"][2] < 3000
    print(f"every request acked under 3 s: {'yes' if all_acked else 'NO'}")
    return 0 if all_acked and (ratio <= 1.2 or args.smoke) else 1


if __name__ == "__main__":
    sys.exit(main())
