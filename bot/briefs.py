"""The queued job that writes a one-line brief for an approved post that has none: the base
model is asked, and the brief goes through the gate (scrubbed, hashed, audited)."""

from __future__ import annotations

from bot.gate import Gate, scrubber_for_settings
from bot.storage.models import Example

BRIEF_PROMPT = (
    "Write the one-line request (a brief, at most 15 words) that a marketing lead would have "
    "given a copywriter to get this post. Answer with the brief only.\n\nPost: {text}"
)


def write_brief(services: object, example_id: int) -> None:
    """The queued job: ask the base model for a one-line brief and store it."""
    from bot.plugin import Services
    from trainer.cleaning import normalize_text

    assert isinstance(services, Services)
    with services.db.session() as session:
        example = session.get(Example, example_id)
        if example is None or example.prompt:
            return
        text = example.text
    result = services.require_inference().chat(
        [{"role": "user", "content": BRIEF_PROMPT.format(text=text)}],
        max_tokens=40,
        temperature=0.0,
    )
    brief = normalize_text(str(result.text).splitlines()[0] if result.text else "")[:300]
    if not brief:
        return
    with services.db.session() as session:
        example = session.get(Example, example_id)
        if example is None or example.prompt:
            return
        gate = Gate(session, scrubber=scrubber_for_settings(services.settings))
        gate.set_prompt(example, brief, None, source="generated")
