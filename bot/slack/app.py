"""The bolt app: every Slack request type routed to the runtime.

Bolt runs with ``process_before_response=True`` so that an Events API handler that fails
answers 500 and Slack retries it (the runtime has left no mark). Commands, buttons and
shortcuts are acknowledged first and handled on a worker thread, so the ack never waits; their
work starts once the burst of requests it came in is acked (``bot.slack.after_ack``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.event_spool import EventSpool
from bot.observability import FOREIGN_TEAM_REQUESTS
from bot.plugin import ActionEvent, ChatAPI, CommandEvent, Event
from bot.ratelimit import Busy
from bot.runtime import NotAllowed, Outcome, Result, Runtime
from bot.slack import events as translate
from bot.slack.after_ack import AfterAck
from bot.storage.db import DatabaseUnavailable

log = logging.getLogger("brandbot.slack")
ANY = re.compile(".*")


def _log_failure(done: futures.Future[Any]) -> None:
    error = None if done.cancelled() else done.exception()
    if error is not None:
        log.error("work after an ack failed", exc_info=error)


class EventBatcher:
    """Runs batchable events (``Runtime.batchable``) in batches, like a group commit.

    One batch runs at a time; events that arrive meanwhile wait and form the next
    batch (at most ``max_size``), so a quiet workspace sees no added delay and a burst of
    reactions costs a few queries per batch. (Two batches at a time measured no faster on
    PostgreSQL, and only add conflicts between them.) Each caller still gets its own event's
    result or error: when a batch fails it is rerun event by event, so Slack retries only the
    event that failed. A batch's events are answered when it commits; its after-commit calls
    (notices to Slack) then run on its thread while the next batch starts.

    Under load a batch waits up to ``linger`` seconds for as many events as the last batch
    had (they are usually the answers to it, on their way back): without that, the first of
    them would start a batch of one and the rest would queue behind it. After a quiet spell
    (no batch for ``quiet_after`` seconds) or a batch of one, an event starts at once.
    """

    def __init__(
        self,
        runtime: Runtime,
        pool: ThreadPoolExecutor,
        max_size: int = 64,
        *,
        linger: float = 0.01,
        quiet_after: float = 1.0,
    ) -> None:
        self.runtime = runtime
        self.pool = pool
        self.max_size = max_size
        self.linger = linger
        self.quiet_after = quiet_after
        self._waiting: list[tuple[Event, asyncio.Future[Result]]] = []
        self._running = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_size = 0
        self._last_done = float("-inf")
        self._runs: set[futures.Future[None]] = set()

    async def submit(self, event: Event) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, future))
        if not self._running:
            self._start_or_linger()
        return await future

    def _start_or_linger(self) -> None:
        loop = asyncio.get_running_loop()
        expected = min(self._last_size, self.max_size)
        busy = loop.time() - self._last_done < self.quiet_after
        if len(self._waiting) >= expected or not busy:
            self._start()
        elif self._timer is None:
            self._timer = loop.call_later(self.linger, self._start)

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting[: self.max_size], self._waiting[self.max_size :]
        self._running = True
        loop = asyncio.get_running_loop()
        answered = threading.Event()

        def answer(results: Sequence[Result | BaseException]) -> None:
            answered.set()
            try:
                loop.call_soon_threadsafe(self._finish, batch, results)
            except RuntimeError:  # the loop is closed: the server stopped, nobody waits
                log.debug("a batch finished after the server stopped")

        def crashed(done: asyncio.Future[None]) -> None:
            error = None if done.cancelled() else done.exception()
            if error is not None and not answered.is_set():
                self._finish(batch, [error] * len(batch))

        events = [event for event, _ in batch]
        run = self.pool.submit(self._run, events, answer, answered)
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        asyncio.wrap_future(run, loop=loop).add_done_callback(crashed)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until the batches under way are done, their after-commit calls (notices to
        Slack) included: an event's answer comes before those (tests, shutdown)."""
        futures.wait(list(self._runs), timeout=timeout)

    def _run(
        self,
        events: list[Event],
        answer: Callable[[Sequence[Result | BaseException]], None],
        answered: threading.Event,
    ) -> None:
        """Runs in the pool and answers once: at the commit, before the batch's after-commit
        calls (a notice to Slack never holds up the acks), or with the one-by-one results."""
        try:
            self.runtime.handle_batch(events, on_commit=answer)
            return
        except Exception as exc:
            if answered.is_set():  # committed and answered; only after-commit work failed
                log.exception("after-commit work of a batch failed")
                return
            if len(events) == 1:
                answer([exc])
                return
            log.warning("a batch of %d events failed; running them one by one", len(events),
                        exc_info=True)  # fmt: skip
        results: list[Result | BaseException] = []
        for event in events:
            try:
                results.append(self.runtime.handle(event))
            except Exception as exc:
                results.append(exc)
        answer(results)

    def _finish(
        self,
        batch: list[tuple[Event, asyncio.Future[Result]]],
        results: Sequence[Result | BaseException],
    ) -> None:
        self._running = False
        self._last_size, self._last_done = len(batch), asyncio.get_running_loop().time()
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self._waiting:
            self._start_or_linger()


class SlackBridge:
    """Owns the bolt app and the worker threads that run plugin handlers."""

    def __init__(
        self,
        runtime: Runtime,
        chat: ChatAPI,
        *,
        bot_token: str,
        api_url: str,
        signing_secret: str | None,
        workers: int = 16,
        team_ids: Iterable[str] = (),
    ) -> None:
        self.runtime = runtime
        self.chat = chat
        self.team_ids: set[str] = set(team_ids)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="brandbot-handler")
        # Batches have threads of their own: one batch runs at a time, and a few earlier ones
        # may still be sending their notices. When Slack is slow that holds up the next batch,
        # never the slash commands.
        self.batch_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="brandbot-batch")
        self.batcher = EventBatcher(runtime, self.batch_pool)
        self.after_ack = AfterAck(self._submit)
        self.spool: EventSpool | None = None
        # One thread: a kept event is fsynced off the event loop, and a retry that arrives
        # while its original is being kept finds it kept.
        self.spool_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brandbot-spool")
        client = AsyncWebClient(
            token=bot_token,
            base_url=api_url,
            retry_handlers=[
                AsyncRateLimitErrorRetryHandler(max_retry_count=5),
                AsyncConnectionErrorRetryHandler(),
            ],
        )
        self.app = AsyncApp(
            client=client,
            signing_secret=signing_secret or "",
            # Over HTTP, bot.web verifies every request's signature before bolt sees it (and
            # Socket Mode requests have none): bolt checking it again would only repeat that.
            request_verification_enabled=False,
            process_before_response=True,
            logger=logging.getLogger("slack_bolt"),
        )
        self.app.use(self._only_our_workspaces)
        self.app.event(ANY)(self._on_event)
        self.app.command(ANY)(self._on_command)
        self.app.action(ANY)(self._on_action)
        self.app.view_submission(ANY)(self._on_view)
        self.app.shortcut(ANY)(self._on_shortcut)
        self.app.view_closed(ANY)(self._ack_only)
        self.app.options(ANY)(self._ack_only)

    # ---- helpers ----------------------------------------------------------------------

    def _background(self, fn: Callable[[], Any]) -> None:
        self.after_ack.run(fn)

    def _submit(self, fn: Callable[[], Any]) -> None:
        self.pool.submit(fn).add_done_callback(_log_failure)

    def _reply_to(self, event: Event) -> Callable[[str], None]:
        def reply(text: str) -> None:
            url = getattr(event, "response_url", None)
            if url:
                self.chat.respond(url, text)
            elif event.channel_id:
                self.chat.ephemeral(event.channel_id, event.user_id, text)
            else:  # a button of the Home tab: no channel, so a private message
                self.chat.post(event.user_id, text)

        return reply

    def close(self) -> None:
        """Stop taking work; handlers under way or held for after the acks finish on their
        threads."""
        self.after_ack.release_all()
        self.pool.shutdown(wait=False)
        self.batch_pool.shutdown(wait=False)
        self.spool_pool.shutdown(wait=True)

    # ---- listeners --------------------------------------------------------------------

    async def _only_our_workspaces(
        self, body: dict[str, Any], next: Callable[[], Awaitable[None]]
    ) -> BoltResponse | None:
        """Requests from other workspaces than ``team_ids`` are answered 200 and dropped, over
        HTTP and Socket Mode alike. With no ``team_ids`` known yet every workspace passes.
        Every request passes here first, so it also tells ``after_ack`` of the arrival."""
        self.after_ack.arrived()
        team = translate.team_of(body)
        if self.team_ids and team is not None and team not in self.team_ids:
            FOREIGN_TEAM_REQUESTS.inc()
            log.warning("ignored a request from another workspace", extra={"team_id": team})
            return BoltResponse(status=200, body="")
        await next()
        return None

    async def _ack_only(self, ack: Any) -> None:
        await ack()

    async def _on_event(self, body: dict[str, Any]) -> None:
        event = translate.from_event(body)
        if event is None:
            kind = (body.get("event") or {}).get("type")
            log.debug("event %s not for plugins", kind, extra={"event_id": body.get("event_id")})
            return
        loop = asyncio.get_running_loop()
        try:
            if self.runtime.batchable(event):
                result = await self.batcher.submit(event)
            else:
                result = await loop.run_in_executor(self.pool, self.runtime.handle, event)
        except NotAllowed:
            return
        except Busy:  # it took effect; only its job found the queue full (a sweep takes it up)
            log.warning("event handled but its job was refused: the job queue is full",
                        extra={"event_id": event.event_id})  # fmt: skip
            return
        except DatabaseUnavailable:
            kept = self.spool is not None and await loop.run_in_executor(
                self.spool_pool, self.spool.keep, body
            )
            if kept:
                log.warning("database unreachable: event kept for replay",
                            extra={"event_id": event.event_id})  # fmt: skip
                return
            raise
        except Exception:
            error_id = uuid.uuid4().hex[:8]
            log.exception(
                "event handler failed; Slack will retry",
                extra={"error_id": error_id, "event_id": event.event_id,
                       "channel_id": event.channel_id, "user_id": event.user_id},
            )  # fmt: skip
            raise
        if result.outcome is Outcome.DUPLICATE:
            log.info("duplicate event dropped", extra={"event_id": event.event_id})

    def replay_event(self, body: dict[str, Any]) -> None:
        """Run a kept Events API envelope (see ``bot.event_spool``) as if it arrived now.
        Raises DatabaseUnavailable while the database is still away."""
        event = translate.from_event(body)
        if event is None:
            return
        try:
            result = self.runtime.handle(event)
        except (NotAllowed, Busy):
            return
        if result.outcome is Outcome.DUPLICATE:
            log.info("kept event was already handled", extra={"event_id": event.event_id})

    async def _on_command(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        event = translate.from_command(body)
        if event is None:
            log.warning("malformed slash command payload")
            return
        self._background(lambda: self._run_command(event))

    def _run_command(self, event: CommandEvent) -> None:
        self.runtime.handle_reporting(event, self._reply_to(event))

    async def _on_action(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        event = translate.from_block_action(body)
        if event is None:
            log.warning("malformed block_actions payload")
            return
        self._background(lambda: self.runtime.handle_reporting(event, self._reply_to(event)))

    async def _on_shortcut(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        event = translate.from_shortcut(body)
        if event is None:
            log.warning("malformed shortcut payload")
            return
        self._background(lambda: self.runtime.handle_reporting(event, self._reply_to(event)))

    async def _on_view(self, ack: Any, body: dict[str, Any]) -> None:
        event = translate.from_view_submission(body)
        if event is None:
            await ack()
            return
        loop = asyncio.get_running_loop()
        errors = await loop.run_in_executor(self.pool, self._run_view, event)
        if errors:
            await ack(response_action="errors", errors=errors)
        else:
            await ack()

    def _run_view(self, event: ActionEvent) -> dict[str, str] | None:
        messages: list[str] = []
        result = self.runtime.handle_reporting(event, messages.append)
        if messages:
            block = next(iter(event.values), "error").split(".")[0]
            return {block: messages[0][:150]}
        value = result.value
        return value if isinstance(value, dict) and value else None
