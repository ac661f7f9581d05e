"""Pending examples in front of their approvers: a private message with Approve and Reject,
and what pressing them does. Contributions from people who are not approvers wait here
(``status`` pending) and are never trained on until an approver approves them."""

from __future__ import annotations

from sqlalchemy import select

from bot.access import approvers_of, is_approver
from bot.gate import Gate
from bot.plugin import ActionEvent, Button, Context
from bot.storage.models import Dataset, Example
from bot.storage.repositories import ProcessedEvents


def ask_approvers(ctx: Context, example_id: int) -> None:
    """Show a pending example to its dataset's approvers, privately, after the commit."""
    example = ctx.session.get(Example, example_id)
    dataset = ctx.session.get(Dataset, example.dataset_id) if example else None
    if example is None or dataset is None or example.status != "pending":
        return
    shown = (example.pending_text or example.text)[:600]
    about = f" labelled *{example.label}*" if example.label else ""
    text = (f"<@{example.author_id}> contributed an example to `{dataset.name}`{about}; "
            f"it is not trained on until an approver approves it:\n> {shown}")  # fmt: skip
    buttons = [Button("Approve", "example_approve", str(example.id), "primary"),
               Button("Reject", "example_reject", str(example.id), "danger")]  # fmt: skip
    people = approvers_of(dataset, ctx.chat, ctx.services.settings.admins)
    chat = ctx.services.chat
    ctx.after_commit(lambda: [chat.post(p, text, buttons=buttons) for p in people])


def settle(
    ctx: Context,
    gate: Gate,
    value: str,
    user: str,
    *,
    approve: bool,
    groups: dict[str, set[str]] | None = None,
) -> tuple[str, str]:
    """Approve or reject the pending example ``value`` (its id) as ``user``: only the dataset's
    approvers decide, once. Returns (``gone`` | ``denied`` | ``already`` | ``approved`` |
    ``rejected``, what to tell ``user``). A decision also publishes
    ``example.decided`` (the other approvers' Home views drop the example). ``groups`` caches
    user group members across the examples of one batch."""
    example = ctx.session.get(Example, int(value)) if value.isdigit() else None
    dataset = ctx.session.get(Dataset, example.dataset_id) if example else None
    if example is None or dataset is None:
        return "gone", "That example is gone."
    if not is_approver(dataset, user, ctx.chat, ctx.services.settings.admins, groups):
        return "denied", f"Only the approvers of `{dataset.name}` can decide on it."
    if example.status != "pending":
        return "already", f"Example {example.id} is already {example.status}."
    ctx.publish("example.decided", {"example_id": example.id, "dataset_id": dataset.id,
                                    "by": user, "approved": approve})  # fmt: skip
    if approve:
        gate.approve(example, user, "button", "label" if example.label else "approve")
        return "approved", (f"Approved by <@{user}>: example {example.id} is training data "
                            f"for `{dataset.name}` now.")  # fmt: skip
    gate.withdraw(example, user, "rejected")
    return "rejected", f"Rejected by <@{user}>: example {example.id} is not trained on."


def settle_author(
    ctx: Context, gate: Gate, author: str, last_id: int, user: str
) -> tuple[str, int]:
    """Approve, as ``user``, every pending example of ``author`` up to id ``last_id`` (the
    newest the button's view showed) in the datasets ``user`` approves, each through ``settle``
    (the same rules, audit and events as one Approve). Returns (``denied`` | ``again`` |
    ``done``, how many were approved): ``denied`` when ``user`` approves no dataset, ``again``
    for the same press arriving once more. The press is claimed before the examples are read:
    a duplicate waits for the first one's commit, and on PostgreSQL the rows are locked, so
    another approver pressing at the same time finds them decided."""
    admins, groups = ctx.services.settings.admins, dict[str, set[str]]()
    mine = [d.id for d in ctx.session.scalars(select(Dataset))
            if is_approver(d, user, ctx.chat, admins, groups)]  # fmt: skip
    if not mine:
        return "denied", 0
    if not ProcessedEvents(ctx.session).claim(f"approve_all:{user}:{author}:{last_id}", "action"):
        return "again", 0
    stmt = select(Example.id).where(
        Example.author_id == author, Example.status == "pending", Example.id <= last_id,
        Example.dataset_id.in_(mine),
    ).order_by(Example.id)  # fmt: skip
    if ctx.session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    ids = list(ctx.session.scalars(stmt))
    outcomes = [settle(ctx, gate, str(i), user, approve=True, groups=groups)[0] for i in ids]
    return "done", outcomes.count("approved")


def decide(ctx: Context, gate: Gate, event: ActionEvent, *, approve: bool) -> None:
    """An Approve or Reject press under a private message: ``settle``, answered in place."""
    outcome, message = settle(ctx, gate, event.value, event.user_id, approve=approve)
    ctx.respond(message, replace_original=outcome != "denied")
