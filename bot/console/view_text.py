"""A Block Kit view as plain text lines, for the console (and the docs' picture of a view).

Headers are underlined, sections and context print their text (mrkdwn kept as typed), dividers
become a rule, images their alt text, and the buttons of an actions block (or a section's) come
back as ``Button`` choices beside the line they belong to, so the console can number them for
``press N``.
"""

from __future__ import annotations

from typing import Any

from bot.plugin import Button

WIDTH = 72


def _text(obj: Any) -> str:
    return str(obj.get("text", "")) if isinstance(obj, dict) else ""


def _button(element: dict[str, Any]) -> Button:
    return Button(
        _text(element.get("text")),
        str(element.get("action_id", "")),
        str(element.get("value", "")),
        element.get("style"),
    )


def render(view: dict[str, Any]) -> list[tuple[str, list[Button]]]:
    """(line, buttons offered on that line) for every block of ``view``, in order; a section's
    button (its accessory) is offered on its last line."""
    lines: list[tuple[str, list[Button]]] = []
    for block in view.get("blocks", []):
        kind = block.get("type")
        if kind == "header":
            title = _text(block.get("text"))
            lines += [("", []), (title, []), ("=" * min(len(title), WIDTH), [])]
        elif kind == "section":
            text = _text(block.get("text"))
            fields = [_text(f) for f in block.get("fields", [])]
            lines += [(line, []) for line in [*text.splitlines(), *fields]]
            accessory = block.get("accessory") or {}
            if accessory.get("type") == "button" and lines:
                lines[-1] = (lines[-1][0], [_button(accessory)])
        elif kind == "image":
            lines.append((f"[image: {block.get('alt_text', '')}]", []))
        elif kind == "context":
            parts = [_text(e) for e in block.get("elements", [])]
            lines.append(("  " + " · ".join(p for p in parts if p), []))
        elif kind == "divider":
            lines.append(("-" * WIDTH, []))
        elif kind == "actions":
            buttons = [_button(e) for e in block.get("elements", []) if e.get("type") == "button"]
            if buttons:
                lines.append(("", buttons))
    return lines


def as_text(view: dict[str, Any]) -> str:
    """The view as one string, buttons in brackets: ``[Approve] [Reject]``."""
    out = []
    for line, buttons in render(view):
        labels = "  ".join(f"[{b.text}]" for b in buttons)
        out.append(f"{line}  {labels}".strip() if labels else line)
    return "\n".join(out).strip("\n")
