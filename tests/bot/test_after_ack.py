"""``AfterAck``: post-ack work waits while requests keep arriving, starts once they pause or
it has waited ``max_hold``, in the order it came, and shutdown hands over whatever is held."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bot.slack.after_ack import AfterAck, Work


def recorder() -> tuple[list[str], Callable[[Work], Any]]:
    started: list[str] = []

    def submit(work: Work) -> None:
        started.append(work())

    return started, submit


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never met")


def test_work_starts_at_once_when_no_request_arrived_lately() -> None:
    started, submit = recorder()

    async def main() -> None:
        after = AfterAck(submit, quiet=0.0)
        after.arrived()
        after.run(lambda: "a")
        assert started == ["a"]

    asyncio.run(main())


def test_work_waits_while_requests_arrive_and_shutdown_releases_it_in_order() -> None:
    started, submit = recorder()

    async def main() -> None:
        after = AfterAck(submit, quiet=60, max_hold=60)
        after.arrived()
        after.run(lambda: "a")
        after.arrived()
        after.run(lambda: "b")
        await asyncio.sleep(0)
        assert started == []
        after.release_all()
        assert started == ["a", "b"]

    asyncio.run(main())


def test_held_work_starts_once_arrivals_pause() -> None:
    started, submit = recorder()

    async def main() -> None:
        after = AfterAck(submit, quiet=0.01, max_hold=60)
        after.arrived()
        after.run(lambda: "a")
        after.run(lambda: "b")
        assert started == []
        await until(lambda: started == ["a", "b"])

    asyncio.run(main())


def test_steady_arrivals_do_not_starve_held_work() -> None:
    started, submit = recorder()

    async def main() -> None:
        after = AfterAck(submit, quiet=60, max_hold=0.02)
        after.arrived()
        after.run(lambda: "a")

        async def keep_arriving() -> None:
            while not started:
                after.arrived()
                await asyncio.sleep(0.001)

        await asyncio.wait_for(keep_arriving(), timeout=10)
        assert started == ["a"]

    asyncio.run(main())
