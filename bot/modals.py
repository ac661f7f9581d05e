"""Modals the built-in plugins open through ``ChatAPI.open_modal`` (Slack's view JSON)."""

from __future__ import annotations

from typing import Any

EDIT_LIMIT = 3000  # a Slack plain_text_input holds at most 3,000 characters


def text_edit_modal(
    callback_id: str, metadata: str, text: str, *, title: str, submit: str, label: str
) -> dict[str, Any]:
    """A modal with one multi-line text field (block ``text``, action ``value``), pre-filled,
    for ``ChatAPI.open_modal``; its submission arrives with ``values["text.value"]``."""
    return {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": metadata,
        "title": {"type": "plain_text", "text": title[:24]},
        "submit": {"type": "plain_text", "text": submit[:24]},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": "text",
                "label": {"type": "plain_text", "text": label},
                "element": {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "multiline": True,
                    "max_length": EDIT_LIMIT,
                    "initial_value": text[:EDIT_LIMIT],
                },
            }
        ],
    }
