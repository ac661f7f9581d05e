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


def answer_tokens(prompt: list[int], full: list[int], closing: list[int]) -> list[int]:
    """The tokens of an assistant answer, through its end-of-turn token and no further.

    ``full`` is the chat rendered with the answer, ``prompt`` the same chat with the generation
    prompt, and ``closing`` what the template adds after ``prompt`` for an *empty* answer (for
    SmolLM2 ``<|im_end|>`` and a newline). The answer is what ``full`` adds after ``prompt``,
    minus whatever ``closing`` has after its first token: a label is scored as the whole answer,
    its end of turn included (so ``bill`` and ``billing`` differ), and nothing the model would
    only write after the turn ended. The local engine and the HTTP client both score exactly
    these tokens, so the two give the same numbers on any server.

    Raises ValueError when the template does not render an answer after the prompt.
    """
    if full[: len(prompt)] != prompt or len(full) == len(prompt):
        raise ValueError("the chat template does not render an assistant answer after the prompt")
    answer = full[len(prompt) :]
    trailing = closing[1:]
    if trailing and len(answer) > len(trailing) and answer[-len(trailing) :] == trailing:
        answer = answer[: -len(trailing)]
    return answer
