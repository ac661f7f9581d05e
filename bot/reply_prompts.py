"""Suggested replies to support tickets: which datasets suggest them, and the prompt they learn.

A *reply dataset* is a draft dataset tied to ticket channels with a reply mode other than
``off``. Its examples are (ticket -> approved answer) pairs, and the prompt that trains it must
be the prompt that asks it, so both the collector (an agent's approved thread reply) and the
replies plugin (a suggestion) build it here, from the ticket and its label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bot.storage.models import Dataset
from trainer.cleaning import normalize_text

CUT_NOTE = "[… {n} characters cut from the middle …]"
TEMPLATE_MARGIN = 64  # tokens the chat template adds around the messages


def reply_mode(dataset: Dataset, channel: str) -> str:
    """``thread``, ``ephemeral`` or ``off`` for a ticket in ``channel``."""
    if dataset.task != "draft" or channel not in dataset.ticket_channels:
        return "off"
    return (dataset.reply_channel_modes or {}).get(channel, dataset.reply_mode or "off")


def reply_datasets(datasets: Iterable[Dataset], channel: str) -> list[Dataset]:
    return [d for d in datasets if reply_mode(d, channel) != "off"]


def is_reply_dataset(dataset: Dataset) -> bool:
    return any(reply_mode(dataset, c) != "off" for c in dataset.ticket_channels)


def reply_prompt(ticket: str, label: str | None) -> str:
    """The user turn for a ticket: its label (when known) and its text, on one line.

    Normalized as stored examples are (whitespace collapsed), so the prompt a suggestion is
    asked with is the prompt its training examples were stored with.
    """
    head = f"Intent: {label} | " if label else ""
    return normalize_text(f"{head}Ticket: {ticket}")


def cut_middle(text: str, keep: int) -> tuple[str, int]:
    """Keep ``keep`` characters, from the start and the end, with a visible note in between.

    Returns (text, characters cut). The start usually says what the customer wants and the end
    what they ask for now, so the middle goes first.
    """
    if keep <= 0 or len(text) <= keep:
        return text, 0
    cut = len(text) - keep
    head = keep - keep // 3
    tail = keep - head
    start, end = text[:head].rstrip(), text[len(text) - tail :].lstrip()
    return f"{start}\n{CUT_NOTE.format(n=cut)}\n{end}", cut


def fit_ticket(
    ticket: str,
    label: str | None,
    count_tokens: Callable[[str], int],
    budget: int,
    *,
    fixed_bytes: int = 0,
    rounds: int = 4,
) -> tuple[str, int]:
    """Cut ``ticket`` from the middle until its prompt takes at most ``budget`` tokens.

    ``count_tokens`` counts the whole prompt (chat template included) for a candidate ticket;
    ``fixed_bytes`` is the UTF-8 size of the rest of the prompt (the system prompt). A token
    covers at least one byte, so a prompt whose bytes (plus a margin for the template's special
    tokens) fit the budget is not counted at all: the usual ticket costs no tokenizer call.
    Returns (ticket text to use, characters cut; 0 when it fit).
    """
    if fixed_bytes + len(reply_prompt(ticket, label).encode()) + TEMPLATE_MARGIN <= budget:
        return ticket, 0
    text, cut = ticket, 0
    for _ in range(rounds):
        used = count_tokens(text)
        if used <= budget:
            return text, cut
        keep = int(len(text) * budget / used * 0.9)  # the template's tokens do not shrink
        text, cut = cut_middle(ticket, max(keep, 1))
    return text, cut
