"""PII and secrets scrubbing for examples on their way into a dataset.

``scrub(text)`` finds e-mail addresses, phone numbers, payment card numbers (Luhn-checked),
IBANs (mod-97-checked), Slack tokens, API keys and secrets, and credentials carried in URLs,
and replaces each with a placeholder such as ``[EMAIL]``. It returns the new text and the
spans it replaced, as offsets into the *original* text.

``evaluate(corpus)`` measures the scrubber on a labelled corpus (``tests/data/pii_corpus.jsonl``):
the share of labelled spans fully removed, and the share of clean words changed.

Pure standard library; every pattern is compiled once at import (custom patterns once per
configuration).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

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

KINDS: tuple[str, ...] = (
    "email",
    "phone",
    "card",
    "iban",
    "slack_token",
    "api_key",
    "url_credentials",
)

PLACEHOLDERS: dict[str, str] = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "card": "[CARD]",
    "iban": "[IBAN]",
    "slack_token": "[SLACK_TOKEN]",
    "api_key": "[API_KEY]",
    "url_credentials": "[URL_CREDENTIALS]",
}


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Span:
    """A found span: ``kind`` and offsets ``[start, end)`` into the original text."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class ScrubResult:
    """The scrubbed text and the spans of the original text that were replaced."""

    text: str
    spans: list[Span]


@dataclass(frozen=True)
class CustomPattern:
    """An extra pattern: every match of ``pattern`` (or of its ``group``) becomes ``placeholder``.

    ``kind`` names the span in results and reports. Custom patterns win over built-in ones
    when they overlap. The placeholder should not itself match the pattern, or scrubbing
    would not be idempotent.
    """

    kind: str
    pattern: str
    placeholder: str
    group: int = 0
    flags: int = 0


@dataclass(frozen=True)
class ScrubConfig:
    """Which kinds to scrub, plus extra patterns. Every built-in kind is on by default."""

    email: bool = True
    phone: bool = True
    card: bool = True
    iban: bool = True
    slack_token: bool = True
    api_key: bool = True
    url_credentials: bool = True
    custom: tuple[CustomPattern, ...] = ()

    def enabled(self, kind: str) -> bool:
        return bool(getattr(self, kind))

    @classmethod
    def only(cls, *kinds: str, custom: Iterable[CustomPattern] = ()) -> ScrubConfig:
        """A configuration with just ``kinds`` switched on (and ``custom`` patterns)."""
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds: {sorted(unknown)}")
        flags = {kind: kind in kinds for kind in KINDS}
        return cls(**flags, custom=tuple(custom))


# --------------------------------------------------------------------------- validators


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod-10) check used by payment card numbers. Non-digits are ignored."""
    nums = [int(c) for c in digits if c.isdigit()]
    if not nums:
        return False
    total = 0
    for i, d in enumerate(reversed(nums)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Lengths of IBANs by country (ISO 13616 registry, common SEPA and nearby countries).
_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22,
    "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27,
    "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(candidate: str) -> bool:
    """Country length and ISO 7064 mod-97 check of an IBAN; spaces are ignored."""
    iban = re.sub(r"\s+", "", candidate).upper()
    if len(iban) < 15 or not iban.isalnum() or not iban.isascii():
        return False
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def _iban_refine(s: str) -> int:
    """Length of the valid IBAN at the start of ``s`` (which may run into the next word), or 0."""
    length = _IBAN_LENGTHS.get(s[:2].upper())
    if length is None:
        return 0
    seen = 0
    for i, c in enumerate(s):
        if c.isalnum():
            seen += 1
            if seen == length:
                end = i + 1
                if end < len(s) and s[end].isalnum():
                    return 0
                return end if iban_valid(s[:end]) else 0
    return 0


def _digit_count(s: str) -> int:
    return sum(c.isdigit() for c in s)


_FILE_EXTENSIONS = re.compile(
    r"\.(?:png|jpe?g|gif|svg|webp|avif|pdf|psd|ai|mp4|mov|zip|csv|xlsx?|docx?)$", re.IGNORECASE
)


def _email_ok(s: str) -> bool:
    """Not an asset name such as ``hero@2x.png``."""
    return not _FILE_EXTENSIONS.search(s)


def _card_ok(s: str) -> bool:
    return 13 <= _digit_count(s) <= 19 and luhn_valid(s)


_PHONE_CONTEXT = re.compile(
    r"(?:#|\b(?:order|invoice|inv|ref|reference|ticket|tracking|sku|batch|lot|po|no|acct|qty)"
    r"\b\.?:?)\s*$",
    re.IGNORECASE,
)


def _phone_ok_intl(s: str) -> bool:
    digits = _digit_count(s.replace("(0)", ""))
    return 8 <= digits <= 15


def _phone_ok_national(s: str) -> bool:
    return 10 <= _digit_count(s) <= 12


_SHORT_TAIL = re.compile(r"(?<=\d{4}) \d{1,2}$")


def _phone_refine(check: Callable[[str], bool]) -> Callable[[str], int]:
    """Length of the phone number at the start of a match, 0 if there is none.

    A trailing " 2" is usually a quantity after the number ("... 900123 2 boxes"): it is
    left out when the number is valid without it.
    """

    def refine(s: str) -> int:
        tail = _SHORT_TAIL.search(s)
        if tail and check(s[: tail.start()]):
            return tail.start()
        return len(s) if check(s) else 0

    return refine


def _generic_secret_ok(s: str) -> bool:
    """After ``key: value`` in prose, require something that looks like a secret."""
    if s.isalpha() and s.islower() and len(s) < 12:
        return False
    return not (s.isalpha() and s[:1].isupper() and s[1:].islower())


def _looks_random(s: str) -> bool:
    """Upper, lower and digits mixed through the string, not a word-like identifier."""
    if not (any(c.isupper() for c in s) and any(c.islower() for c in s)):
        return False
    if not any(c.isdigit() for c in s):
        return False
    # many case switches between letters: random, not CamelCase words
    letters = [c for c in s if c.isalpha()]
    switches = sum(a.isupper() != b.isupper() for a, b in itertools.pairwise(letters))
    return switches >= len(letters) // 5


# --------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class _Rule:
    kind: str
    rank: int  # lower wins an overlap; equal ranks prefer the longer span
    regex: re.Pattern[str]
    group: int | str = 0
    check: Callable[[str], bool] | None = None
    refine: Callable[[str], int] | None = None  # length of the span to keep, 0 to drop it
    trim: bool = False  # strip trailing sentence punctuation from the span
    context: re.Pattern[str] | None = None  # skip when the text before the match fits this
    placeholder: str | None = None


_MASK = "]"  # stands in for a placeholder when looking again; no rule matches it
_TRAILING = ".,;:)]}'\"*_~>"
_SEP = r"[ .\-\u00a0]"

_BUILTIN: tuple[_Rule, ...] = (
    # ---- URLs carrying credentials: scheme://user:password@host -> scheme://[URL_CREDENTIALS]@host
    _Rule(
        "url_credentials",
        1,
        re.compile(
            r"(?i)\b[a-z][a-z0-9+.\-]{1,15}://([^\s/@:<>|\[\]]+:[^\s/@<>|\[\]]+)@(?=[\w\[])"
        ),
        group=1,
    ),
    # ---- Slack tokens
    _Rule(
        "slack_token",
        2,
        re.compile(r"\b(?:xox[abposer]|xapp)-[A-Za-z0-9][A-Za-z0-9\-]{8,}"),
        trim=True,
    ),
    # ---- API keys with a recognisable shape
    _Rule("api_key", 3, re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b")),
    _Rule("api_key", 3, re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b")),
    _Rule("api_key", 3, re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}")),
    _Rule("api_key", 3, re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}")),
    _Rule("api_key", 3, re.compile(r"(?<![\w\-])sk-[A-Za-z0-9_\-]{20,}")),
    _Rule(
        "api_key",
        3,
        re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}|\bwhsec_[A-Za-z0-9]{16,}"),
    ),
    _Rule("api_key", 3, re.compile(r"\bglpat-[A-Za-z0-9_\-]{20,}|\bnpm_[A-Za-z0-9]{36}\b")),
    _Rule(
        "api_key",
        3,
        re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    ),
    # ---- IBAN: country, check digits, BBAN in groups of four (or unbroken)
    _Rule(
        "iban",
        4,
        re.compile(
            r"(?<![\w\-])[A-Za-z]{2}\d{2}(?:[ \u00a0]?[A-Za-z0-9]{4}){2,7}"
            r"(?:[ \u00a0]?[A-Za-z0-9]{1,3})?(?!\w)"
        ),
        refine=_iban_refine,
    ),
    # ---- payment cards: 13-19 digits, optional single spaces or dashes, Luhn-checked
    _Rule(
        "card",
        5,
        re.compile(
            r"(?<![\w+\-.,/])(?<!\d[ \-])[2-6](?:"
            r"\d{12,18}"  # unbroken
            r"|\d{3}([ \-.])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{3})?"  # 4-4-4-4(-3), 4-4-4-1
            r"|\d{3}([ \-])\d{6}\2\d{4,5}"  # 4-6-5 (Amex), 4-6-4 (Diners)
            r")(?![\w/])(?![\-.,]?\d)"
        ),
        check=_card_ok,
    ),
    # ---- e-mail
    _Rule(
        "email",
        6,
        re.compile(
            r"(?<![\w.+\-%])[A-Za-z0-9](?:[A-Za-z0-9._%+\-]*[A-Za-z0-9_%+\-])?"
            r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b"
        ),
        check=_email_ok,
    ),
    # ---- secret values in URL query strings: ?token=VALUE -> ?token=[URL_CREDENTIALS]
    _Rule(
        "url_credentials",
        7,
        re.compile(
            r"(?i)(?<=[?&;#])(?:access_token|refresh_token|id_token|auth_token|token|api_key|"
            r"apikey|api-key|key|sig|signature|password|passwd|pwd|pass|secret|client_secret|"
            r"auth|session|sessionid|x-amz-signature|x-amz-credential|x-amz-security-token)"
            r"=([^&#\s<>|\"'\[\]]+)"
        ),
        group=1,
        trim=True,
    ),
    # ---- generic assignments: api_key=VALUE, password: VALUE, "token": "VALUE"
    _Rule(
        "api_key",
        8,
        re.compile(
            r"(?i)(?<![A-Za-z0-9])(?:api[_\-]?key|api[_\-]?secret|api[_\-]?token|secret[_\-]?key|"
            r"client[_\-]?secret|access[_\-]?key(?:[_\-]?id)?|secret[_\-]?access[_\-]?key|"
            r"access[_\-]?token|auth[_\-]?token|refresh[_\-]?token|bot[_\-]?token|"
            r"signing[_\-]?secret|private[_\-]?key|secret|token|password|passwd|pwd)"
            r"[\"']?\s*=\s*[\"']?([^\s\"'`,;<>\[\]{}()]{3,})"
        ),
        group=1,
        trim=True,
    ),
    _Rule(
        "api_key",
        8,
        re.compile(
            r"(?i)(?<![A-Za-z0-9])(?:api[_\-]?key|api[_\-]?secret|api[_\-]?token|secret[_\-]?key|"
            r"client[_\-]?secret|access[_\-]?token|auth[_\-]?token|bot[_\-]?token|"
            r"signing[_\-]?secret|password|passwd|pwd|pw)"
            r"[\"']?\s*:\s*[\"']?([^\s\"'`,;<>\[\]{}()]{4,})"
        ),
        group=1,
        trim=True,
        check=_generic_secret_ok,
    ),
    # long random-looking strings (mixed case and digits, 32+ characters) are secrets too
    _Rule(
        "api_key",
        10,
        re.compile(r"(?<![\w/+\-.=@:%])[A-Za-z0-9/+_\-]{32,}={0,2}(?![\w/+\-@]|\.\w)"),
        check=_looks_random,
    ),
    # JSON / YAML style: "token": "VALUE"
    _Rule(
        "api_key",
        8,
        re.compile(
            r"(?i)[\"'][\w\-]*(?:key|secret|token|password|passwd|pwd|credentials?)[\"']"
            r"\s*:\s*[\"']([^\"'\s\[\]]{3,})[\"']"
        ),
        group=1,
    ),
    # prose: "the wifi password is Darjeeling2026"
    _Rule(
        "api_key",
        8,
        re.compile(
            r"(?i)\b(?:password|passcode|passwd|pin)\s+(?:is|was|=)\s+[\"'“]?([^\s\"'”`,;<>\[\]]{4,})"
        ),
        group=1,
        trim=True,
        check=_generic_secret_ok,
    ),
    _Rule("api_key", 8, re.compile(r"\bBearer\s+([A-Za-z0-9._~+/\-]{16,}=*)"), group=1),
    # ---- phone numbers, international: +44 7700 900123, 0049 30 1234567, +1 (415) 555-0134
    _Rule(
        "phone",
        9,
        re.compile(
            r"(?<![\w+\-/.,])(?:\+|00)[1-9]\d{0,2}(?:" + _SEP + r"?\(0\))?"
            r"(?:" + _SEP + r"{0,2}(?:\(\d{1,5}+\)|\d++)){1,6}"
            r"(?!" + _SEP + r"?\d)(?![\w/])"
        ),
        refine=_phone_refine(_phone_ok_intl),
        context=_PHONE_CONTEXT,
    ),
    # ---- phone numbers, national with trunk 0: 07700 900123, (020) 7946 0018, 06.39.98.12.34
    _Rule(
        "phone",
        9,
        re.compile(
            r"(?<![\w+\-/.,:])(?<!\d" + _SEP + r")(?:\(0\d{1,4}\)|0\d{1,4})"
            r"(?:" + _SEP + r"?\d++){1,5}(?!" + _SEP + r"?\d)(?![\w/:])"
        ),
        refine=_phone_refine(_phone_ok_national),
        context=_PHONE_CONTEXT,
    ),
    # ---- phone numbers, German style with a slash after the area code: 0151/23456789
    _Rule(
        "phone",
        9,
        re.compile(r"(?<![\w+\-/.,:])\(?0\d{2,4}\)?/ ?\d{3,8}(?:[ \-]\d{2,5})?(?![\w/]|[ .\-]?\d)"),
        check=_phone_ok_national,
        context=_PHONE_CONTEXT,
    ),
    # ---- phone numbers, North American: (415) 555-0134, 202-555-0143, 202.555.0143
    _Rule(
        "phone",
        9,
        re.compile(
            r"(?<![\w+\-/.,:])(?<!\d" + _SEP + r")(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[.\-])"
            r"\d{3}[.\-]\d{4}(?!" + _SEP + r"?\d)(?![\w/:])"
        ),
        context=_PHONE_CONTEXT,
    ),
)


@dataclass(frozen=True)
class _Found:
    kind: str
    rank: int
    start: int
    end: int
    placeholder: str


class _Scrubber:
    def __init__(self, config: ScrubConfig) -> None:
        rules = [
            _Rule(
                c.kind,
                0,
                re.compile(c.pattern, c.flags),
                group=c.group,
                placeholder=c.placeholder,
            )
            for c in config.custom
        ]
        rules.extend(r for r in _BUILTIN if config.enabled(r.kind))
        self.rules = tuple(rules)

    def find(self, text: str) -> list[_Found]:
        found = _resolve(self._candidates(text))
        # Some rules refuse a match right after other digits ("4111 1111 1111 1111 2222 ..."
        # is no card). Once a neighbour is replaced by a placeholder, its digits are gone, so
        # look again with the found spans masked: otherwise a second scrub could find more.
        for _ in range(3):
            if not found:
                break
            masked = list(text)
            for f in found:
                masked[f.start : f.end] = _MASK * (f.end - f.start)
            extra = [
                c
                for c in _resolve(self._candidates("".join(masked)))
                if all(c.end <= f.start or c.start >= f.end for f in found)
            ]
            if not extra:
                break
            found = sorted(found + extra, key=lambda f: f.start)
        return found

    def _candidates(self, text: str) -> list[_Found]:
        found: list[_Found] = []
        for rule in self.rules:
            for m in rule.regex.finditer(text):
                start, end = m.span(rule.group)
                if start < 0 or start == end:
                    continue
                if rule.trim:
                    while end > start and text[end - 1] in _TRAILING:
                        end -= 1
                    if end == start:
                        continue
                value = text[start:end]
                if rule.check is not None and not rule.check(value):
                    continue
                if rule.refine is not None:
                    end = start + rule.refine(value)
                    if end == start:
                        continue
                    value = text[start:end]
                if rule.context is not None and rule.context.search(
                    text, max(0, m.start() - 24), m.start()
                ):
                    continue
                placeholder = rule.placeholder or PLACEHOLDERS[rule.kind]
                if value == placeholder:
                    continue
                found.append(_Found(rule.kind, rule.rank, start, end, placeholder))
        return found

    def scrub(self, text: str) -> ScrubResult:
        found = self.find(text)
        if not found:
            return ScrubResult(text, [])
        out: list[str] = []
        pos = 0
        for f in found:
            out.append(text[pos : f.start])
            out.append(f.placeholder)
            pos = f.end
        out.append(text[pos:])
        return ScrubResult("".join(out), [Span(f.kind, f.start, f.end) for f in found])


def _resolve(found: list[_Found]) -> list[_Found]:
    """Keep non-overlapping spans: most specific rule first, then the longest, then leftmost."""
    if len(found) <= 1:
        return found
    found.sort(key=lambda f: (f.rank, f.start - f.end, f.start))
    kept: list[_Found] = []
    for f in found:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    kept.sort(key=lambda f: f.start)
    return kept


@lru_cache(maxsize=32)
def _scrubber(config: ScrubConfig) -> _Scrubber:
    return _Scrubber(config)


_DEFAULT = ScrubConfig()


def scrub(text: str, config: ScrubConfig | None = None) -> ScrubResult:
    """Replace every PII or secret span in ``text`` with its placeholder.

    Spans in the result are offsets into the original ``text``, in order. Scrubbing is
    idempotent: ``scrub(scrub(x).text).text == scrub(x).text``.
    """
    return _scrubber(config or _DEFAULT).scrub(text)


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class LabelledSpan:
    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class LabelledMessage:
    text: str
    spans: tuple[LabelledSpan, ...] = ()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LabelledMessage:
        spans = tuple(
            LabelledSpan(str(s["kind"]), int(s["start"]), int(s["end"]))
            for s in obj.get("spans", ())
        )
        return cls(str(obj["text"]), spans)


@dataclass(frozen=True)
class KindReport:
    spans: int
    removed: int

    @property
    def recall(self) -> float:
        return self.removed / self.spans if self.spans else 1.0


@dataclass(frozen=True)
class Report:
    """Scrubber quality on a labelled corpus.

    ``span_recall``: share of labelled spans none of whose (non-space) characters survive.
    ``clean_token_change_rate``: share of whitespace-separated tokens that touch no labelled
    span but were altered or removed anyway.
    """

    span_recall: float
    clean_token_change_rate: float
    per_kind: dict[str, KindReport]
    messages: int = 0
    spans: int = 0
    clean_tokens: int = 0
    changed_clean_tokens: int = 0
    missed: list[tuple[str, str]] = field(default_factory=list)  # (kind, value)
    changed: list[str] = field(default_factory=list)  # clean tokens that were changed


def load_corpus(path: str | Path) -> list[LabelledMessage]:
    """Read a JSONL corpus of ``{"text": ..., "spans": [{"kind", "start", "end"}]}`` lines."""
    with Path(path).open(encoding="utf-8") as fh:
        return [LabelledMessage.from_json(json.loads(line)) for line in fh if line.strip()]


_TOKEN = re.compile(r"\S+")


def evaluate(
    corpus: Iterable[LabelledMessage | Mapping[str, Any]],
    config: ScrubConfig | None = None,
) -> Report:
    """Scrub every message of ``corpus`` and compare with its labels (see :class:`Report`)."""
    per_kind_total: dict[str, int] = {}
    per_kind_removed: dict[str, int] = {}
    messages = n_clean = n_changed = 0
    missed: list[tuple[str, str]] = []
    changed: list[str] = []
    for item in corpus:
        msg = item if isinstance(item, LabelledMessage) else LabelledMessage.from_json(item)
        messages += 1
        result = scrub(msg.text, config)
        covered = bytearray(len(msg.text))
        for s in result.spans:
            covered[s.start : s.end] = b"\x01" * (s.end - s.start)
        labelled = bytearray(len(msg.text))
        for ls in msg.spans:
            labelled[ls.start : ls.end] = b"\x01" * (ls.end - ls.start)
            per_kind_total[ls.kind] = per_kind_total.get(ls.kind, 0) + 1
            removed = all(covered[i] or msg.text[i].isspace() for i in range(ls.start, ls.end))
            if removed:
                per_kind_removed[ls.kind] = per_kind_removed.get(ls.kind, 0) + 1
            else:
                missed.append((ls.kind, msg.text[ls.start : ls.end]))
        for tok in _TOKEN.finditer(msg.text):
            a, b = tok.span()
            if any(labelled[a:b]):
                continue
            n_clean += 1
            if any(covered[a:b]):
                n_changed += 1
                changed.append(tok.group())
    total = sum(per_kind_total.values())
    removed_total = sum(per_kind_removed.values())
    per_kind = {
        kind: KindReport(per_kind_total[kind], per_kind_removed.get(kind, 0))
        for kind in sorted(per_kind_total)
    }
    return Report(
        span_recall=removed_total / total if total else 1.0,
        clean_token_change_rate=n_changed / n_clean if n_clean else 0.0,
        per_kind=per_kind,
        messages=messages,
        spans=total,
        clean_tokens=n_clean,
        changed_clean_tokens=n_changed,
        missed=missed,
        changed=changed,
    )
