"""The App Home view of one person, as Block Kit: pure functions of ``HomeData``.

Three sections: *Waiting for you* (approvers: pending examples with Approve / Reject), *Datasets*
(counts, the active adapter and its headline metric against the base model, the next training,
the production signals of the last 30 days, the chart of the metric history: ``bot.home_charts``)
and, for admins, Retrain / Roll back buttons behind a confirmation dialog and the last runs.

Slack refuses a view of more than 100 blocks and clips nothing itself (a section's text holds
3,000 characters, a header 150, a button 75, a confirmation's text 300), so every text here is
clipped and long lists are paged: ``PENDING_PAGE`` items and ``DATASET_PAGE`` datasets a page,
with Previous / Next buttons (``home_page_*``, value ``pending:N`` or ``datasets:N``). An approver
also gets "approve all from this person" for the ``AUTHORS`` people with most pending items (value
``author:last_id``). With those sizes a view holds at most 95 blocks (an admin who approves:
1 + 5 + 2 * 10 + 2 pending, 1 + 3 * 20 + 2 datasets with their charts, 2 runs, 2 dividers).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

MAX_BLOCKS = 100
PENDING_PAGE = 10
DATASET_PAGE = 20
PREVIEW = 280
AUTHORS = 5  # "approve all from this person" buttons, the authors with most pending first
LOWER_IS_BETTER = {"answer_perplexity"}


@dataclass(frozen=True)
class PendingItem:
    """A pending example an approver may decide on."""

    example_id: int
    dataset: str
    source: str
    author: str | None
    channel: str | None
    preview: str
    label: str | None = None
    kind: str = "positive"


@dataclass(frozen=True)
class AuthorLine:
    """Someone whose pending contributions an approver may approve at once: ``count`` of them,
    the newest ``last_id`` (the press approves none newer than what the view showed)."""

    author: str
    count: int
    last_id: int


@dataclass(frozen=True)
class DatasetCard:
    name: str
    task: str
    private: bool
    active: int
    pending: int
    heldout: int
    new_since_training: int
    adapter: str | None = None
    metric: str = ""
    value: float | None = None
    base_value: float | None = None
    next_training: dt.datetime | None = None
    dataset_id: int = 0
    retrain_token: str = ""  # the latest run id when the view was built ("0": none)
    signals: str = ""  # production signals of the last 30 days, one line ("": none yet)
    chart_adapter_id: int = 0  # the newest adapter, whose chart of the metric history shows
    chart_file: str = ""  # that chart's uploaded file ("": none)


@dataclass(frozen=True)
class RunLine:
    run_id: int
    dataset: str
    status: str
    trigger: str
    created_at: dt.datetime
    outcome: str = ""


@dataclass(frozen=True)
class HomeData:
    """What one person's Home shows; ``pending`` is the current page of ``pending_total``."""

    user: str
    is_admin: bool = False
    is_approver: bool = False
    pending: list[PendingItem] = field(default_factory=list)
    pending_total: int = 0
    pending_page: int = 0
    authors: list[AuthorLine] = field(default_factory=list)
    datasets: list[DatasetCard] = field(default_factory=list)
    datasets_total: int = 0
    dataset_page: int = 0
    runs: list[RunLine] = field(default_factory=list)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": clip(text, limit), "emoji": True}


def _mrkdwn(text: str, limit: int = 3000) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": clip(text, limit)}


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": _plain(text, 150)}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(text)}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [_mrkdwn(text)]}


def button(
    text: str,
    action_id: str,
    value: str,
    *,
    style: str | None = None,
    confirm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "text": _plain(text, 75),
        "action_id": action_id,
        "value": value[:2000],
    }
    if style:
        element["style"] = style
    if confirm:
        element["confirm"] = confirm
    return element


def confirm(title: str, text: str, yes: str) -> dict[str, Any]:
    """A Block Kit confirmation dialog (Slack asks before it sends the press)."""
    return {
        "title": _plain(title, 100),
        "text": _mrkdwn(text, 300),
        "confirm": _plain(yes, 30),
        "deny": _plain("Cancel", 30),
        "style": "danger" if yes.lower().startswith("roll") else "primary",
    }


def _pager(kind: str, page: int, total: int, size: int) -> list[dict[str, Any]]:
    pages = max(1, -(-total // size))
    if pages == 1:
        return []
    elements = []
    if page > 0:
        elements.append(button("◀ Previous", f"home_page_prev_{kind}", f"{kind}:{page - 1}"))
    if page + 1 < pages:
        elements.append(button("Next ▶", f"home_page_next_{kind}", f"{kind}:{page + 1}"))
    return [
        _context(f"page {page + 1} of {pages}"),
        {"type": "actions", "block_id": f"home_pager_{kind}", "elements": elements},
    ]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def metric_line(card: DatasetCard) -> str:
    """``macro f1 0.812 (base 0.640, better by 0.172)``; the base model's line without one."""
    if card.adapter is None:
        return "base model (no adapter trained yet)"
    name = card.metric.replace("_", " ")
    line = f"`{card.adapter}`: {name} {_fmt(card.value)}"
    if card.value is not None and card.base_value is not None:
        diff = card.value - card.base_value
        better = -diff if card.metric in LOWER_IS_BETTER else diff
        word = "better" if better > 0 else "worse" if better < 0 else "same"
        line += f" (base {_fmt(card.base_value)}, {word} by {_fmt(abs(diff))})"
    return line


def _author_blocks(data: HomeData) -> list[dict[str, Any]]:
    """One section per author with pending contributions, its button behind a confirmation."""
    blocks = []
    for line in data.authors:
        many = "example" if line.count == 1 else "examples"
        blocks.append(
            {
                "type": "section",
                "block_id": f"home_author_{line.author}",
                "text": _mrkdwn(f"<@{line.author}>: {line.count} pending {many}"),
                "accessory": button(
                    "Approve all from this person", "home_approve_all",
                    f"{line.author}:{line.last_id}",
                    confirm=confirm(
                        "Approve all?",
                        f"Approve the {line.count} pending {many} from <@{line.author}> in the "
                        "datasets you approve. They become training data without being read one "
                        "by one: only for someone whose contributions you trust.",
                        "Approve all",
                    ),
                ),
            }
        )  # fmt: skip
    return blocks


def _pending_blocks(data: HomeData) -> list[dict[str, Any]]:
    blocks = [_header(f"Waiting for you ({data.pending_total})")]
    if not data.pending:
        blocks.append(_section("Nothing waits for your approval."))
        return blocks
    blocks += _author_blocks(data)
    for item in data.pending:
        who = f" by <@{item.author}>" if item.author else ""
        where = f" in <#{item.channel}>" if item.channel else ""
        label = f", labelled *{item.label}*" if item.label else ""
        kind = " (preference pair)" if item.kind == "preference" else ""
        quoted = clip(" ".join(item.preview.split()), PREVIEW)
        text = f"*{item.dataset}* · {item.source}{who}{where}{label}{kind}\n> {quoted}"
        value = str(item.example_id)
        blocks.append(_section(text))
        blocks.append(
            {
                "type": "actions",
                "block_id": f"home_pending_{item.example_id}",
                "elements": [
                    button("Approve", "home_approve", value, style="primary"),
                    button("Reject", "home_reject", value, style="danger"),
                ],
            }
        )
    blocks += _pager("pending", data.pending_page, data.pending_total, PENDING_PAGE)
    return blocks


def _dataset_text(card: DatasetCard) -> str:
    lock = " :lock:" if card.private else ""
    nxt = f"{card.next_training:%a %d %b %H:%M %Z}" if card.next_training else "not scheduled"
    return (
        f"*{card.name}*{lock} ({card.task})\n"
        f"{card.active} active · {card.pending} pending · {card.heldout} held out · "
        f"{card.new_since_training} new since the last training\n"
        f"{metric_line(card)}\nnext training: {nxt}"
        + (f"\nlast 30 days: {card.signals}" if card.signals else "")
    )


def _admin_actions(card: DatasetCard) -> dict[str, Any]:
    elements = [
        button(
            "Retrain", "home_retrain", f"{card.dataset_id}:{card.retrain_token}",
            confirm=confirm(f"Retrain {card.name}?",
                            f"Queue a training run for *{card.name}* now. The new adapter is "
                            "promoted only if it beats the current one.", "Retrain"),
        ),
    ]  # fmt: skip
    if card.adapter:
        elements.append(
            button(
                "Roll back", "home_rollback", f"{card.dataset_id}:{card.adapter}", style="danger",
                confirm=confirm(f"Roll back {card.name}?",
                                f"Take `{card.adapter}` out of service and go back to the "
                                "previous adapter (or the base model).", "Roll back"),
            )
        )  # fmt: skip
    return {"type": "actions", "block_id": f"home_admin_{card.dataset_id}", "elements": elements}


def _chart(card: DatasetCard) -> dict[str, Any]:
    """The metric history as an image of the uploaded chart (Slack needs no public URL)."""
    metric = card.metric.replace("_", " ")
    return {
        "type": "image",
        "block_id": f"home_chart_{card.dataset_id}",
        "slack_file": {"id": card.chart_file},
        "alt_text": clip(f"Training loss and held-out {metric} of every adapter of {card.name}",
                         2000),
        "title": _plain(f"{card.name}: model over time", 2000),
    }  # fmt: skip


def _dataset_blocks(data: HomeData) -> list[dict[str, Any]]:
    blocks = [_header(f"Datasets ({data.datasets_total})")]
    if not data.datasets:
        blocks.append(_section("No dataset you can see yet."))
        return blocks
    for card in data.datasets:
        blocks.append(_section(_dataset_text(card)))
        if card.chart_file:
            blocks.append(_chart(card))
        if data.is_admin:
            blocks.append(_admin_actions(card))
    blocks += _pager("datasets", data.dataset_page, data.datasets_total, DATASET_PAGE)
    return blocks


def _run_blocks(data: HomeData) -> list[dict[str, Any]]:
    blocks = [_header("Last runs")]
    if not data.runs:
        return [*blocks, _section("No training run yet.")]
    lines = [
        f"• run {r.run_id} `{r.dataset}` {r.trigger}, {r.created_at:%Y-%m-%d %H:%M}: *{r.status}*"
        + (f", {r.outcome}" if r.outcome else "")
        for r in data.runs
    ]
    return [*blocks, _section("\n".join(lines))]


def build_home(data: HomeData) -> dict[str, Any]:
    """The ``home`` view for ``data.user``; at most ``MAX_BLOCKS`` blocks."""
    blocks: list[dict[str, Any]] = []
    if data.is_approver:
        blocks += _pending_blocks(data)
        blocks.append({"type": "divider"})
    blocks += _dataset_blocks(data)
    if data.is_admin:
        blocks.append({"type": "divider"})
        blocks += _run_blocks(data)
    if len(blocks) > MAX_BLOCKS:  # only if the page sizes above are raised carelessly
        blocks = [*blocks[: MAX_BLOCKS - 1], _context("(more than a view can show)")]
    return {"type": "home", "blocks": blocks}
