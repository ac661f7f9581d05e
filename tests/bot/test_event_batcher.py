"""The Slack bridge's batcher: who waits for whom, with a runtime that records its batches."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from bot.plugin import Event, ReactionEvent
from bot.runtime import Outcome, Result, Runtime
from bot.slack.app import EventBatcher


class BatchRecorder:
    """Stands in for the runtime: records the size of each batch it is handed. After the
    "commit" its after-commit work waits until ``after_commit_may_run`` is set."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.after_commit_may_run = threading.Event()
        self.after_commit_may_run.set()
        self.after_commit_done: list[int] = []

    def handle_batch(
        self, events: list[Event], on_commit: Callable[[list[Result]], None] | None = None
    ) -> list[Result]:
        self.sizes.append(len(events))
        results = [Result(Outcome.HANDLED) for _ in events]
        if on_commit is not None:
            on_commit(results)
        assert self.after_commit_may_run.wait(timeout=10)
        self.after_commit_done.append(len(events))
        return results

    def handle(self, event: Event) -> Result:
        raise AssertionError("no batch fails here")


def reaction(n: int) -> ReactionEvent:
    return ReactionEvent(
        user_id="U1", channel_id="C1", event_id=f"Ev{n}", reaction="white_check_mark",
        message_ts=f"1.{n}", added=True,
    )  # fmt: skip


def batcher(
    recorder: BatchRecorder, linger: float, quiet_after: float = 1.0, threads: int = 2
) -> EventBatcher:
    pool = ThreadPoolExecutor(max_workers=threads)
    return EventBatcher(cast(Runtime, recorder), pool, linger=linger, quiet_after=quiet_after)


async def burst(b: EventBatcher, first: int, count: int) -> list[Result]:
    runs = [b.submit(reaction(n)) for n in range(first, first + count)]
    return await asyncio.wait_for(asyncio.gather(*runs), timeout=10)


def test_a_lone_event_never_waits() -> None:
    recorder = BatchRecorder()

    async def main() -> None:
        b = batcher(recorder, linger=60.0)
        results = await burst(b, 0, 1)
        assert [r.outcome for r in results] == [Outcome.HANDLED]

    asyncio.run(main())
    assert recorder.sizes == [1]


def test_under_load_a_batch_waits_for_as_many_events_as_the_last_one_had() -> None:
    recorder = BatchRecorder()

    async def main() -> None:
        b = batcher(recorder, linger=60.0)
        await burst(b, 0, 3)  # the first starts alone, the other two wait for it
        assert recorder.sizes == [1, 2]
        await burst(b, 3, 2)  # the first of these waits for the second instead of running alone
        assert recorder.sizes == [1, 2, 2]

    asyncio.run(main())


def test_the_wait_is_bounded_by_linger() -> None:
    recorder = BatchRecorder()

    async def main() -> None:
        b = batcher(recorder, linger=0.05)
        await burst(b, 0, 3)
        started = asyncio.get_running_loop().time()
        await burst(b, 3, 1)  # a second event was expected and never comes
        waited = asyncio.get_running_loop().time() - started
        assert 0.04 <= waited < 5

    asyncio.run(main())
    assert recorder.sizes == [1, 2, 1]


def test_after_a_quiet_spell_an_event_starts_at_once() -> None:
    recorder = BatchRecorder()

    async def main() -> None:
        b = batcher(recorder, linger=60.0, quiet_after=0.05)
        await burst(b, 0, 3)
        await asyncio.sleep(0.1)
        await burst(b, 3, 1)  # would wait a minute if the last batch still counted

    asyncio.run(main())
    assert recorder.sizes == [1, 2, 1]


def test_events_are_answered_at_the_commit_not_after_the_after_commit_work() -> None:
    recorder = BatchRecorder()
    recorder.after_commit_may_run.clear()  # a notice to Slack that takes its time

    async def main() -> None:
        b = batcher(recorder, linger=0.0, threads=4)
        results = await burst(b, 0, 2)  # would time out if the answers waited for the notices
        assert [r.outcome for r in results] == [Outcome.HANDLED] * 2
        assert recorder.after_commit_done == []
        more = await burst(b, 2, 1)  # and the next batch need not wait for them either
        assert [r.outcome for r in more] == [Outcome.HANDLED]
        recorder.after_commit_may_run.set()

    asyncio.run(main())
    assert recorder.sizes == [1, 1, 1]


def test_with_every_batch_thread_still_sending_notices_the_next_batch_waits_for_one() -> None:
    recorder = BatchRecorder()
    recorder.after_commit_may_run.clear()

    async def main() -> None:
        b = batcher(recorder, linger=0.0, threads=2)
        await burst(b, 0, 1)
        await burst(b, 1, 1)  # both threads now send notices
        third = asyncio.ensure_future(burst(b, 2, 1))
        await asyncio.sleep(0.3)
        assert not third.done() and recorder.sizes == [1, 1]
        recorder.after_commit_may_run.set()
        assert [r.outcome for r in await third] == [Outcome.HANDLED]

    asyncio.run(main())
    assert recorder.sizes == [1, 1, 1]
