"""The App Home tab: each person's view of what waits for them and how the models are doing.

Opening the tab publishes a view built for that person (``bot.home_data`` reads it,
``bot.home_view`` draws it). Its buttons act here: approvers approve or reject pending examples,
anyone pages through long lists, admins retrain or roll back (Slack asks them to confirm first).
Each dataset's chart of its metric history is uploaded once per adapter version
(``bot.home_charts``).
A view that is open is re-published when what it shows changes for its person (their decision,
another approver's, a new pending example, a training run that finished), coalesced per person
(``bot.debounce``) so a burst of events costs one publish.

Who has the tab open is known to the replica that published it: with several replicas, an event
handled by another one refreshes nobody's view there, and the view is current again the next
time the person opens the tab (Slack sends ``app_home_opened`` each time).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from pydantic import BaseModel, Field
from sqlalchemy import select

from bot.access import is_approver, may_see, valid_user_id
from bot.debounce import Debouncer
from bot.gate import Gate, scrubber_for_settings
from bot.home_charts import Charts
from bot.home_data import home_data
from bot.home_view import build_home
from bot.plugin import (
    ActionEvent,
    ChatError,
    Context,
    HomeOpenedEvent,
    InternalEvent,
    Plugin,
    on_action,
    on_event,
    on_home_opened,
    require,
)
from bot.review import settle, settle_author
from bot.storage.models import Adapter, Dataset, Example, ProcessedEvent, TrainingRun
from bot.storage.repositories import ProcessedEvents, Runs

log = logging.getLogger("brandbot.home")


class HomeSettings(BaseModel):
    """``[plugins.home]`` in brandbot.toml."""

    refresh_delay: float = Field(
        default=2.0, ge=0, le=60,
        description="Seconds an open Home view waits before it is re-published after a change; "
        "the changes of that while are shown by one publish.",
    )  # fmt: skip
    open_for_minutes: int = Field(
        default=60, ge=1,
        description="How long after opening the tab a person's view is kept current.",
    )  # fmt: skip


class HomePlugin(Plugin):
    """The App Home tab."""

    Settings = HomeSettings

    @property
    def cfg(self) -> HomeSettings:
        assert isinstance(self.settings, HomeSettings)
        return self.settings

    def setup(self) -> None:
        self.viewers: dict[str, float] = {}  # user -> when they last opened the tab
        self.pages: dict[str, dict[str, int]] = {}
        self.charts = Charts(self.services.db, self.services.chat)
        self.refresher: Debouncer[str] = Debouncer(
            self.cfg.refresh_delay, self.publish, name="brandbot-home"
        )

    # ---- publishing ---------------------------------------------------------------------

    def publish(self, user: str) -> None:
        """Build ``user``'s view in a transaction of its own and publish it."""
        pages = self.pages.get(user, {})
        with self.services.db.session() as session:
            data = home_data(
                session, user, self.services.chat, self.services.settings.admins,
                pending_page=pages.get("pending", 0), dataset_page=pages.get("datasets", 0),
            )  # fmt: skip
        data = self.charts.attach(data)
        view = build_home(data)
        try:
            self.services.chat.publish_home(user, view)
        except ChatError as exc:
            if not any(b["type"] == "image" for b in view["blocks"]):
                raise
            # a chart Slack will not show (its file deleted, say) must not cost the whole tab
            log.warning("home view refused with its charts (%s); published without", exc.code)
            plain = [replace(c, chart_file="") for c in data.datasets]
            self.services.chat.publish_home(user, build_home(replace(data, datasets=plain)))

    def open_viewers(self) -> list[str]:
        horizon = time.monotonic() - self.cfg.open_for_minutes * 60
        return [user for user, at in list(self.viewers.items()) if at >= horizon]

    def refresh(self, users: list[str]) -> None:
        for user in dict.fromkeys(users):
            self.refresher.trigger(user)

    def _refresh_for(self, ctx: Context, dataset: Dataset | None, *, approvers: bool) -> None:
        """After the commit, refresh the open views that show ``dataset``: its approvers'
        (``approvers``: the pending list changed) or everyone's who may see it."""
        chat, admins = ctx.chat, ctx.services.settings.admins
        if dataset is None:
            return
        check = is_approver if approvers else may_see
        people = [u for u in self.open_viewers() if check(dataset, u, chat, admins)]
        if people:
            ctx.after_commit(self.refresh, people)

    @staticmethod
    def _tell(ctx: Context, user: str, text: str) -> None:
        """Answer the press after the commit: privately where it came with somewhere to answer
        (the console), else as a message from the app (a Slack Home button has neither)."""
        event = ctx.event
        if getattr(event, "response_url", None) or getattr(event, "channel_id", None):
            ctx.after_commit(ctx.respond, text)
        else:
            chat = ctx.chat
            ctx.after_commit(lambda: chat.post(user, text))

    # ---- the tab ------------------------------------------------------------------------

    @on_home_opened()
    def opened(self, event: HomeOpenedEvent, ctx: Context) -> None:
        """Publish the person's Home view, after the ack: reading a workspace's datasets and
        their channels' privacy may take Slack longer than the 3 seconds an event may."""
        self.viewers[event.user_id] = time.monotonic()
        ctx.submit_after_commit(self.publish, event.user_id, name="home.publish")

    @on_action("home_page_*")
    def page(self, event: ActionEvent, ctx: Context) -> None:
        kind, _, number = event.value.partition(":")
        if kind not in ("pending", "datasets") or not number.isdigit():
            return
        self.pages.setdefault(event.user_id, {})[kind] = int(number)
        ctx.after_commit(self.publish, event.user_id)

    # ---- approvals ----------------------------------------------------------------------

    @on_action("home_approve")
    def approve(self, event: ActionEvent, ctx: Context) -> None:
        self._decide(event, ctx, approve=True)

    @on_action("home_reject")
    def reject(self, event: ActionEvent, ctx: Context) -> None:
        self._decide(event, ctx, approve=False)

    def _decide(self, event: ActionEvent, ctx: Context, *, approve: bool) -> None:
        gate = Gate(ctx.session, scrubber=scrubber_for_settings(ctx.services.settings))
        outcome, message = settle(ctx, gate, event.value, event.user_id, approve=approve)
        if outcome in ("gone", "denied"):
            log.info("home %s refused: %s", event.action_id, outcome,
                     extra={"user_id": event.user_id})  # fmt: skip
            self._tell(ctx, event.user_id, message)
            return
        ctx.after_commit(self.refresh, [event.user_id])  # the others: ``example.decided``

    @on_action("home_approve_all")
    def approve_all(self, event: ActionEvent, ctx: Context) -> None:
        """ "Approve all from this person": their pending examples the view counted, in the
        datasets the presser approves; a replayed or repeated press approves nothing more."""
        author, _, last = event.value.partition(":")
        if not valid_user_id(author) or not last.isdigit():
            return
        gate = Gate(ctx.session, scrubber=scrubber_for_settings(ctx.services.settings))
        outcome, n = settle_author(ctx, gate, author, int(last), event.user_id)
        if outcome == "denied":
            log.info("home approve all refused", extra={"user_id": event.user_id})
            self._tell(ctx, event.user_id, "Only a dataset's approvers can approve its examples.")
            return
        many = "example" if n == 1 else "examples"
        if outcome == "again":
            self._tell(ctx, event.user_id, f"Already done: the examples from <@{author}> "
                       "that view showed were approved.")  # fmt: skip
        else:
            self._tell(ctx, event.user_id, f"Approved {n} {many} from <@{author}>; "
                       "they are training data now.")  # fmt: skip
        ctx.after_commit(self.refresh, [event.user_id])

    @on_event("example.pending")
    @on_event("example.decided")
    def pending(self, event: InternalEvent, ctx: Context) -> None:
        """A new pending example, or one decided (here or under a private message): its
        approvers' open views list it or drop it."""
        example = ctx.session.get(Example, int(event.payload["example_id"]))
        dataset = ctx.session.get(Dataset, example.dataset_id) if example else None
        self._refresh_for(ctx, dataset, approvers=True)

    @on_event("run.finished")
    @on_event("run.failed")
    @on_event("adapter.promoted")
    def trained(self, event: InternalEvent, ctx: Context) -> None:
        """A run finished or an adapter went live: the dataset's counts, adapter and metric."""
        dataset_id = event.payload.get("dataset_id")
        run_id = event.payload.get("run_id")
        if dataset_id is None and run_id is not None:
            run = ctx.session.get(TrainingRun, int(run_id))
            dataset_id = run.dataset_id if run else None
        dataset = ctx.session.get(Dataset, int(dataset_id)) if dataset_id is not None else None
        self._refresh_for(ctx, dataset, approvers=False)

    # ---- admins -------------------------------------------------------------------------

    @on_action("home_retrain")
    @require(admins=True)
    def retrain(self, event: ActionEvent, ctx: Context) -> None:
        """Queue a run, once per press of a view's button however often it arrives, and never
        while the dataset has one queued or running."""
        dataset_id, _, token = event.value.partition(":")
        if not (dataset_id.isdigit() and token.isdigit()):
            return
        claimed = ProcessedEvents(ctx.session).claim(f"home_retrain:{dataset_id}:{token}", "action")
        dataset = ctx.session.get(Dataset, int(dataset_id))
        if dataset is None:
            return
        busy = ctx.session.scalar(
            select(TrainingRun).where(
                TrainingRun.dataset_id == dataset.id,
                TrainingRun.status.in_(("queued", "running")),
            ).order_by(TrainingRun.id)
        )  # fmt: skip
        if not claimed or busy is not None:
            state = f"run {busy.id} is {busy.status}" if busy else "a run was already queued"
            self._tell(ctx, event.user_id, f"Not queued: for `{dataset.name}`, {state}.")
        else:
            run = Runs(ctx.session).enqueue(dataset, trigger="manual", requested_by=event.user_id)
            assert run is not None
            self._tell(ctx, event.user_id, f"Queued training run {run.id} for `{dataset.name}`; "
                       "the report will be posted when it finishes.")  # fmt: skip
        self._refresh_admins(ctx, event.user_id)

    @on_action("home_rollback")
    @require(admins=True)
    def rollback(self, event: ActionEvent, ctx: Context) -> None:
        """Roll back the adapter the view showed, once, and only while it is still active."""
        from bot.registry import roll_back

        dataset_id, _, name = event.value.partition(":")
        key = f"home_rollback:{name}"
        if not dataset_id.isdigit() or not ProcessedEvents(ctx.session).claim(key, "action"):
            return
        dataset = ctx.session.get(Dataset, int(dataset_id))
        active = ctx.session.scalar(
            select(Adapter).where(Adapter.dataset_id == int(dataset_id), Adapter.status == "active")
        )
        if dataset is None or active is None or active.name != name:
            self._tell(ctx, event.user_id, f"Not rolled back: `{name}` is no longer active.")
        elif ctx.services.inference is None:
            ctx.session.delete(ctx.session.get(ProcessedEvent, key))
            self._tell(ctx, event.user_id, "Not rolled back: no model server is configured.")
        else:
            result = roll_back(ctx.session, dataset, actor=event.user_id)
            if not result.ok:
                ctx.session.delete(ctx.session.get(ProcessedEvent, key))
            word = "Rolled back: " if result.ok else "Not rolled back: "
            self._tell(ctx, event.user_id, word + result.reason + ".")
            self._refresh_for(ctx, dataset, approvers=False)
        self._refresh_admins(ctx, event.user_id)

    def _refresh_admins(self, ctx: Context, actor: str) -> None:
        admins = set(ctx.services.settings.admins)
        ctx.after_commit(self.refresh, [actor, *(u for u in self.open_viewers() if u in admins)])
