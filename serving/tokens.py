"""Token-id helpers shared by the engine and the trainer (which may import serving)."""

from __future__ import annotations

from typing import Any


def as_ids(value: Any) -> list[int]:
    """``apply_chat_template``'s result as a flat list of ids, across transformers versions
    (a list, a tensor, a batch of one, or a ``BatchEncoding``)."""
    if isinstance(value, dict) or hasattr(value, "keys"):
        value = value["input_ids"]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if value and isinstance(value[0], list):
        value = value[0]
    return [int(v) for v in value]
