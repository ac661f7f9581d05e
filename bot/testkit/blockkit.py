"""Slack's limits on a view, checked as Slack checks them before it accepts one.

slack_sdk's Block Kit models know most limits (100 blocks a view, 3,000 characters a section,
150 a header, 75 a button, a confirmation's 100/300/30); :func:`view_problems` adds the ones
they leave out (a section field's 2,000 characters, a context's 10 elements and their text,
unknown block types, action ids repeated within a block, an image's source) and returns every
problem found.
"""

from __future__ import annotations

from typing import Any

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.views import View

__all__ = ["BLOCK_TYPES", "view_problems"]

BLOCK_TYPES = frozenset(
    {"actions", "context", "divider", "header", "image", "input", "section", "rich_text",
     "video", "file", "markdown"}
)  # fmt: skip


def _text_len(obj: Any) -> int:
    return len(str(obj.get("text", ""))) if isinstance(obj, dict) else 0


def _image_problems(block: dict[str, Any]) -> list[str]:
    """An image shows a public ``image_url`` or an uploaded ``slack_file`` (by id or by url,
    not both); Slack refuses both or neither."""
    source = block.get("slack_file")
    if ("image_url" in block) == (source is not None):
        return ["an image needs image_url or slack_file, not both"]
    if source is not None and (
        not isinstance(source, dict) or ("id" in source) == ("url" in source)
    ):
        return ["a slack_file names its file by id or by url, not both"]
    return []


def view_problems(view: dict[str, Any]) -> list[str]:
    """What Slack would refuse in ``view`` (a modal or home view dict); empty when valid."""
    problems: list[str] = []
    blocks = view.get("blocks") or []
    if len(blocks) > 100:
        problems.append(f"a view holds at most 100 blocks, not {len(blocks)}")
    elif blocks:  # an empty Home view clears the tab; slack_sdk's models refuse it
        try:
            View(**view).to_dict()
        except (SlackObjectFormationError, TypeError, KeyError) as exc:
            problems.append(str(exc))
    block_ids = [b.get("block_id") for b in blocks if b.get("block_id")]
    if len(block_ids) != len(set(block_ids)):
        problems.append("block_id repeated")
    for i, block in enumerate(blocks):
        kind = block.get("type")
        if kind not in BLOCK_TYPES:
            problems.append(f"block {i}: unknown type {kind!r}")
        for field in block.get("fields") or []:
            if _text_len(field) > 2000:
                problems.append(f"block {i}: a field is longer than 2000 characters")
        if kind == "context":
            elements = block.get("elements") or []
            if not 0 < len(elements) <= 10:
                problems.append(f"block {i}: a context holds 1 to 10 elements")
            if any(_text_len(e) > 3000 for e in elements):
                problems.append(f"block {i}: a context text is longer than 3000 characters")
        if kind == "image":
            problems += [f"block {i}: {p}" for p in _image_problems(block)]
        if kind == "actions":
            ids = [e.get("action_id") for e in block.get("elements") or []]
            if len(ids) != len(set(ids)):
                problems.append(f"block {i}: action_id repeated within the block")
            for element in block.get("elements") or []:
                if len(str(element.get("value", ""))) > 2000:
                    problems.append(f"block {i}: a button value is longer than 2000 characters")
    return problems
