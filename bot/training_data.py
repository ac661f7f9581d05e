"""A dataset's examples and preference pairs as the trainer takes them: active rows of one
split, in id order, with their ids (recorded on the run, so forgetting a person finds every
adapter trained on their data)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.storage.models import Dataset, Example


def train_examples(session: Any, dataset: Dataset, split: str) -> tuple[list[Any], list[int]]:
    """The dataset's active positive examples of ``split`` as trainer examples, and their ids.
    Copy examples without a brief yet are left out (a queued job is writing it)."""
    from trainer.data import TrainExample

    rows = session.scalars(
        select(Example)
        .where(
            Example.dataset_id == dataset.id,
            Example.status == "active",
            Example.kind == "positive",
            Example.split == split,
        )
        .order_by(Example.id)
    ).all()
    out, ids = [], []
    for ex in rows:
        if dataset.task == "classify":
            if not ex.label:
                continue
            out.append(TrainExample(system=dataset.system_prompt, prompt=ex.text, answer=ex.label))
        else:
            if not ex.prompt:
                continue
            out.append(TrainExample(system=dataset.system_prompt, prompt=ex.prompt, answer=ex.text))
        ids.append(ex.id)
    return out, ids


def preference_pairs(session: Any, dataset: Dataset, split: str) -> tuple[list[Any], list[int]]:
    """The dataset's active preference pairs of ``split`` (chosen = ``text``, rejected =
    ``rejected_text``) as trainer pairs, and their ids. Pairs lacking a side are left out."""
    from trainer.data import PreferencePair

    rows = session.scalars(
        select(Example)
        .where(
            Example.dataset_id == dataset.id,
            Example.status == "active",
            Example.kind == "preference",
            Example.split == split,
        )
        .order_by(Example.id)
    ).all()
    out, ids = [], []
    for ex in rows:
        if not ex.prompt or not ex.rejected_text:
            continue
        system = dataset.system_prompt
        out.append(PreferencePair(system, ex.prompt, ex.text, ex.rejected_text))
        ids.append(ex.id)
    return out, ids
