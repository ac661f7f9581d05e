"""Slash-command ack benchmark: 200 concurrent signed slash commands to brandbot's HTTP app
(`brandbot run --http`, the real command, on SQLite or PostgreSQL), to a bare bolt-python app
and to a no-op ASGI app (200 at once, no bolt), all on the same uvicorn settings, in one run.

    python bench/bot_bench.py             # 200 concurrent commands, 3 interleaved rounds each
    python bench/bot_bench.py --write     # also write the doc's section (clean tree only)
    python bench/bot_bench.py --postgres  # on a throw-away PostgreSQL cluster (its own section)
    python bench/bot_bench.py --smoke     # 20 commands, 1 round (CI)

Each database has its own section in the doc: ``--postgres`` (or ``--database-url`` naming a
PostgreSQL server) writes the PostgreSQL one, otherwise the SQLite one.

The no-op app shows the load generator's own ceiling on this machine: if its p50 is close to
the apps', the numbers measure the generator. The generator runs in a process of its own
(the fake Slack that takes the apps' response_url posts lives in this one), on keep-alive
connections opened before the burst; the clients (raw asyncio, aiohttp, httpx) are first
measured against the no-op app and the main table uses the one with the lowest no-op p50.

Target (issue "Bot runtime"): every request acked in under 3 s; our p99 within 1.2x of the
bare app's. Both apps answer the command through its response_url after the ack, on a local
fake Slack Web API.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bot.testkit.postgres import PostgresCluster  # noqa: E402
from bot.testkit.signing import sign  # noqa: E402
from bot.testkit.slack import FakeSlack  # noqa: E402

SECRET = "bench-signing-secret"  # noqa: S105 - a benchmark value
APPS = {"noop": "no-op ASGI app", "bare": "bare bolt app", "ours": "brandbot"}
CLIENTS = ("raw", "aiohttp", "httpx")
TITLE = "Slash-command acks (bot runtime)"
TITLE_POSTGRES = "Slash-command acks on PostgreSQL (bot runtime)"


def database_name(database_url: str | None) -> str:
    return "PostgreSQL" if (database_url or "").startswith("postgresql") else "SQLite"


def title_for(database_url: str | None) -> str:
    return TITLE_POSTGRES if database_name(database_url) == "PostgreSQL" else TITLE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def uvicorn_options() -> dict[str, Any]:
    """brandbot's own uvicorn settings (backlog, keep-alive), so every app gets the same."""
    from bot.slack.runner import UVICORN_OPTIONS

    return {**UVICORN_OPTIONS, "log_level": "warning"}


async def noop_app(
    scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
) -> None:
    """A raw ASGI app that reads the request and answers 200 with an empty body at once."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = bool((await receive()).get("more_body", False))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"0")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b""})


def serve_noop(port: int) -> None:
    import uvicorn

    uvicorn.run(noop_app, host="127.0.0.1", port=port, lifespan="off", **uvicorn_options())


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
    uvicorn.run(web, host="127.0.0.1", port=port, **uvicorn_options())


def start(
    kind: str, port: int, env: dict[str, str], extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start app ``kind`` (ours, bare or noop) on ``port`` and wait until it accepts."""
    if kind == "ours":
        cmd = [str(Path(sys.executable).parent / "brandbot"), "run", "--http",
               "--host", "127.0.0.1", "--port", str(port), *extra]  # fmt: skip
    else:
        cmd = [sys.executable, str(Path(__file__)), f"--serve-{kind}", str(port)]
    # The server's log goes to a file: an unread pipe would fill up and stall the server.
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the server process owns it
        prefix=f"brandbot-bench-{kind}-", suffix=".log", delete=False
    )
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    _LOGS[proc.pid] = Path(log.name)
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(log.name).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{kind} server exited (its log: {log.name}): {tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start (its log: {log.name})")


_LOGS: dict[int, Path] = {}


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Stop a server from :func:`start`; its log file is removed unless it exited on its own
    with an error (then the path is printed, to read why)."""
    crashed = proc.poll() not in (None, 0)
    if not crashed:
        proc.terminate()
        proc.wait(timeout=timeout)
    log = _LOGS.pop(proc.pid, None)
    if log is not None:
        if crashed:
            print(f"server exited with status {proc.returncode}; its log: {log}")
        else:
            log.unlink(missing_ok=True)


# --- the load generator (runs in a process of its own) ---------------------------------------


def command_body(team_id: str, response_url: str, i: int) -> str:
    return urlencode({
        "token": "x", "team_id": team_id, "team_domain": "bench",
        "channel_id": "C0BENCH01", "channel_name": "bench", "user_id": "U0BENCH01",
        "user_name": "bench", "command": "/brandbot", "text": "help",
        "api_app_id": "A0BENCH", "is_enterprise_install": "false",
        "response_url": response_url, "trigger_id": f"1.{i}.x",
    })  # fmt: skip


def fire(client: str, url: str, bodies: list[str]) -> dict[str, Any]:
    """Send every body at once, each on its own keep-alive connection opened (and used once)
    beforehand; returns each request's ack latency (inf if not 200) and the generator's CPU
    seconds for the burst."""
    signed = [(body.encode(), sign(SECRET, body)) for body in bodies]
    send = {"raw": _raw, "aiohttp": _aiohttp, "httpx": _httpx}[client]
    return asyncio.run(send(url, signed))


Signed = list[tuple[bytes, dict[str, str]]]


def _result(latencies: list[float], cpu: float) -> dict[str, Any]:
    return {"latencies": latencies, "cpu_s": cpu}


async def _raw(url: str, signed: Signed) -> dict[str, Any]:
    """HTTP/1.1 by hand on asyncio streams: the least a Python client can do per request."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    conns = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in signed))

    async def exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], head: bytes,
                       body: bytes) -> int:  # fmt: skip
        reader, writer = conn
        writer.write(head + body)
        status_line, _, headers = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
        length = 0
        chunked = False
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            await reader.readuntil(b"0\r\n\r\n")
        elif length:
            await reader.readexactly(length)
        return int(status_line.split()[1])

    def head(method: str, headers: dict[str, str], length: int) -> bytes:
        lines = [f"{method} {parts.path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"Content-Length: {length}", *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    # one unmeasured GET per connection: the server has accepted every connection before the burst
    await asyncio.gather(*(exchange(c, head("GET", {}, 0), b"") for c in conns))
    heads = [
        head("POST", {"Content-Type": "application/x-www-form-urlencoded", **h}, len(b))
        for b, h in signed
    ]

    async def one(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], head_: bytes,
                  body: bytes) -> float:  # fmt: skip
        started = time.perf_counter()
        try:
            status = await exchange(conn, head_, body)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            return float("inf")
        return time.perf_counter() - started if status == 200 else float("inf")

    cpu = time.process_time()
    latencies = await asyncio.gather(
        *(one(c, h, b) for c, h, (b, _) in zip(conns, heads, signed, strict=True))
    )
    cpu = time.process_time() - cpu
    for _, writer in conns:
        writer.close()
    return _result(list(latencies), cpu)


async def _aiohttp(url: str, signed: Signed) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=len(signed))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get() -> None:
            async with session.get(url) as r:
                await r.read()

        async def one(body: bytes, headers: dict[str, str]) -> float:
            headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError:
                return float("inf")
            return time.perf_counter() - started if status == 200 else float("inf")

        await asyncio.gather(*(get() for _ in signed))  # fills the pool
        cpu = time.process_time()
        latencies = await asyncio.gather(*(one(b, h) for b, h in signed))
        return _result(list(latencies), time.process_time() - cpu)


async def _httpx(url: str, signed: Signed) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=len(signed), max_keepalive_connections=len(signed))
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(body: bytes, headers: dict[str, str]) -> float:
            headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
            started = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError:
                return float("inf")
            ok = response.status_code == 200
            return time.perf_counter() - started if ok else float("inf")

        await asyncio.gather(*(client.get(url) for _ in signed))  # fills the pool
        cpu = time.process_time()
        latencies = await asyncio.gather(*(one(b, h) for b, h in signed))
        return _result(list(latencies), time.process_time() - cpu)


# --- the run -----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stats(fired: dict[str, Any]) -> dict[str, Any]:
    """One round's p50, p99 and max in ms, failures and generator CPU ms per request."""
    vals: list[float] = fired["latencies"]
    ok = [v * 1000 for v in vals if v != float("inf")] or [float("inf")]
    return {"p50": pct(ok, 0.5), "p99": pct(ok, 0.99), "max": max(ok),
            "failed": len(vals) - len(ok), "cpu_ms": 1000 * fired["cpu_s"] / len(vals)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per side")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp folder")
    parser.add_argument(
        "--postgres", action="store_true",
        help="run brandbot on a throw-away PostgreSQL cluster (needs the server binaries)",
    )  # fmt: skip
    parser.add_argument(
        "--client", choices=CLIENTS, default=None,
        help="the load generator (default: the lowest no-op p50 of this run)",
    )  # fmt: skip
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    for kind in ("bare", "noop"):
        parser.add_argument(f"--serve-{kind}", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    if args.serve_noop:
        serve_noop(args.serve_noop)
        return 0
    if args.write:
        harness.require_clean_tree()
    if args.postgres and args.database_url:
        parser.error("--postgres starts its own server: give it or --database-url, not both")
    cluster = PostgresCluster().start() if args.postgres else None
    try:
        if cluster is not None:
            args.database_url = cluster.create_database("bot_bench")
        return run(args)
    finally:
        if cluster is not None:
            cluster.stop()


def run(args: argparse.Namespace) -> int:
    n = 20 if args.smoke else args.concurrency
    rounds = 1 if args.smoke else args.rounds
    title = title_for(args.database_url)
    section = harness.Section(title)
    spawn = multiprocessing.get_context("spawn")  # the generator: no threads of ours forked
    with ProcessPoolExecutor(1, mp_context=spawn) as generator, FakeSlack() as fake, \
            tempfile.TemporaryDirectory(prefix="brandbot-bench-") as tmp:  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRANDBOT_", "SLACK_"))}
        env.update(
            SLACK_BOT_TOKEN=fake.bot_token, SLACK_SIGNING_SECRET=SECRET,
            SLACK_API_URL=fake.api_url, BRANDBOT_DATA_DIR=str(Path(tmp) / "data"),
            BRANDBOT_CONFIG=str(Path(tmp) / "none.toml"),
        )  # fmt: skip
        if args.database_url:
            env["BRANDBOT_DATABASE_URL"] = args.database_url
        burst = 0

        def bodies() -> list[str]:
            nonlocal burst
            burst += 1
            return [command_body(fake.team_id, fake.response_url(f"b{burst}-{i}"), i)
                    for i in range(n)]  # fmt: skip

        def side(client: str, url: str) -> Callable[[], dict[str, Any]]:
            def run() -> dict[str, Any]:
                result = stats(generator.submit(fire, client, url, bodies()).result())
                time.sleep(0.5)  # the apps' response_url posts settle between rounds
                return result

            return run

        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            for kind in APPS:
                port = free_port()
                servers[kind] = (start(kind, port, env), f"http://127.0.0.1:{port}/slack/events")
                # One unmeasured round of the same size warms every app up (auth.test, imports,
                # handler threads, pooled database connections, compiled statements).
                side("raw", servers[kind][1])()
            noop_url = servers["noop"][1]
            by_client, client_order = harness.interleave(
                {c: side(c, noop_url) for c in CLIENTS}, rounds
            )
            client = args.client or min(
                CLIENTS, key=lambda c: harness.spread(by_client[c], "p50").median
            )
            by_app, app_order = harness.interleave(
                {kind: side(client, url) for kind, (_, url) in servers.items()}, rounds
            )
        finally:
            for proc, _ in servers.values():
                stop(proc, timeout=10)
    section.finish()
    lines = report(n, rounds, client, by_client, by_app, args.database_url)
    lines += ["", f"run order: {' '.join(client_order)} | {' '.join(app_order)}",
              *section.provenance_lines()]  # fmt: skip
    print("\n".join(lines))
    ours = by_app["ours"]
    ratio = harness.spread(ours, "p99").median / harness.spread(by_app["bare"], "p99").median
    all_acked = all(r["failed"] == 0 and r["max"] < 3000 for r in ours)
    print(f"every request acked under 3 s: {'yes' if all_acked else 'NO'}")
    if args.write:
        harness.write_section(title, [*doc_intro(args.database_url), "", *lines])
    return 0 if all_acked and (ratio <= 1.2 or args.smoke) else 1


def doc_intro(database_url: str | None) -> list[str]:
    database = database_name(database_url)
    command = "--postgres --write" if database == "PostgreSQL" else "--write"
    return [line.format(database=database, command=command) for line in DOC_INTRO]


DOC_INTRO = [
    "200 concurrent signed `/brandbot help` commands to `brandbot run --http` (the real",
    "command, {database}), to a bare bolt-python `AsyncApp` that only acks and answers through",
    "response_url, and to a no-op ASGI app (reads the request, answers 200 at once, no bolt), all",
    "on brandbot's uvicorn settings, against a local fake Slack Web API. The no-op app is the load",
    "generator's own ceiling on this machine. The generator runs in a process of its own and",
    "sends each burst on keep-alive connections opened just before it (one request each). Each",
    "app first gets one unmeasured round; the clients are measured against the no-op app, then",
    "the apps with the client of lowest no-op p50, each side in interleaved rounds (medians and",
    "min-max over rounds of the per-round p50/p99/max). Target: every request acked under 3 s,",
    "our p99 within 1.2x of the bare app's.",
    "",
    "    .venv/bin/python bench/bot_bench.py {command}",
]


def report(
    n: int,
    rounds: int,
    client: str,
    by_client: dict[str, list[dict[str, Any]]],
    by_app: dict[str, list[dict[str, Any]]],
    database_url: str | None,
) -> list[str]:
    def cells(runs: list[dict[str, Any]]) -> str:
        s = harness.spread
        return (f"{s(runs, 'p50').show(1)} | {s(runs, 'p99').show(1)} | "
                f"{s(runs, 'max').show(1)} | {sum(r['failed'] for r in runs)}")  # fmt: skip

    database = database_name(database_url)
    lines = [
        f"Load generators against the no-op app ({n} at once, {rounds} interleaved rounds):",
        "",
        "| client | generator CPU ms per request | p50 ms | p99 ms | max ms | failed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c, runs in by_client.items():
        lines.append(f"| {c} | {harness.spread(runs, 'cpu_ms').show(3)} | {cells(runs)} |")
    lines += [
        "",
        f"The apps ({database}, client {client}, {n} at once, {rounds} interleaved rounds):",
        "",
        "| app | p50 ms | p99 ms | max ms | failed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, runs in by_app.items():
        lines.append(f"| {APPS[kind]} | {cells(runs)} |")
    med = {k: {q: harness.spread(r, q).median for q in ("p50", "p99")} for k, r in by_app.items()}
    lines += [
        "",
        f"p99 brandbot / bare bolt app: {med['ours']['p99'] / med['bare']['p99']:.2f}x "
        f"(target <= 1.2x); p50 {med['ours']['p50'] / med['bare']['p50']:.2f}x. "
        f"The no-op app's p50 is {med['noop']['p50'] / med['bare']['p50']:.2f}x the bare app's "
        f"and {med['noop']['p50'] / med['ours']['p50']:.2f}x brandbot's.",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
