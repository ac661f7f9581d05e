"""The scrubber: the patterns of every kind, and :func:`scrub`, which replaces each match with
its placeholder and reports the spans it replaced as offsets into the original text.

Pure standard library; every pattern is compiled once at import (custom patterns once per
configuration).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from trainer.pii.checks import (
    PHONE_CONTEXT,
    card_ok,
    email_ok,
    generic_secret_ok,
    iban_refine,
    looks_random,
    phone_ok_intl,
    phone_ok_national,
    phone_refine,
)

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
        refine=iban_refine,
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
        check=card_ok,
    ),
    # ---- e-mail
    _Rule(
        "email",
        6,
        re.compile(
            r"(?<![\w.+\-%])[A-Za-z0-9](?:[A-Za-z0-9._%+\-]*[A-Za-z0-9_%+\-])?"
            r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b"
        ),
        check=email_ok,
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
        check=generic_secret_ok,
    ),
    # long random-looking strings (mixed case and digits, 32+ characters) are secrets too
    _Rule(
        "api_key",
        10,
        re.compile(r"(?<![\w/+\-.=@:%])[A-Za-z0-9/+_\-]{32,}={0,2}(?![\w/+\-@]|\.\w)"),
        check=looks_random,
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
        check=generic_secret_ok,
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
        refine=phone_refine(phone_ok_intl),
        context=PHONE_CONTEXT,
    ),
    # ---- phone numbers, national with trunk 0: 07700 900123, (020) 7946 0018, 06.39.98.12.34
    _Rule(
        "phone",
        9,
        re.compile(
            r"(?<![\w+\-/.,:])(?<!\d" + _SEP + r")(?:\(0\d{1,4}\)|0\d{1,4})"
            r"(?:" + _SEP + r"?\d++){1,5}(?!" + _SEP + r"?\d)(?![\w/:])"
        ),
        refine=phone_refine(phone_ok_national),
        context=PHONE_CONTEXT,
    ),
    # ---- phone numbers, German style with a slash after the area code: 0151/23456789
    _Rule(
        "phone",
        9,
        re.compile(r"(?<![\w+\-/.,:])\(?0\d{2,4}\)?/ ?\d{3,8}(?:[ \-]\d{2,5})?(?![\w/]|[ .\-]?\d)"),
        check=phone_ok_national,
        context=PHONE_CONTEXT,
    ),
    # ---- phone numbers, North American: (415) 555-0134, 202-555-0143, 202.555.0143
    _Rule(
        "phone",
        9,
        re.compile(
            r"(?<![\w+\-/.,:])(?<!\d" + _SEP + r")(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[.\-])"
            r"\d{3}[.\-]\d{4}(?!" + _SEP + r"?\d)(?![\w/:])"
        ),
        context=PHONE_CONTEXT,
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
