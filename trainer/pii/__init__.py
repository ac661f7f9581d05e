"""PII and secrets scrubbing for examples on their way into a dataset.

``scrub(text)`` (:mod:`trainer.pii.scrubber`) finds e-mail addresses, phone numbers, payment card
numbers (Luhn-checked), IBANs (mod-97-checked), Slack tokens, API keys and secrets, and
credentials carried in URLs, and replaces each with a placeholder such as ``[EMAIL]``. It returns
the new text and the spans it replaced, as offsets into the *original* text. The checks that
reject look-alikes are :mod:`trainer.pii.checks`.

``evaluate(corpus)`` (:mod:`trainer.pii.evaluation`) measures the scrubber on a labelled corpus:
the share of labelled spans fully removed, and the share of clean words changed.
"""

from trainer.pii.checks import iban_valid, luhn_valid
from trainer.pii.evaluation import (
    KindReport,
    LabelledMessage,
    LabelledSpan,
    Report,
    evaluate,
    load_corpus,
)
from trainer.pii.scrubber import (
    KINDS,
    PLACEHOLDERS,
    CustomPattern,
    ScrubConfig,
    ScrubResult,
    Span,
    scrub,
)

__all__ = [
    "KINDS",
    "PLACEHOLDERS",
    "CustomPattern",
    "KindReport",
    "LabelledMessage",
    "LabelledSpan",
    "Report",
    "ScrubConfig",
    "ScrubResult",
    "Span",
    "evaluate",
    "iban_valid",
    "load_corpus",
    "luhn_valid",
    "scrub",
]
