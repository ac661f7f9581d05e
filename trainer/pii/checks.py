"""The checks that keep the scrubber from replacing what only looks like PII: checksums (Luhn
for cards, mod 97 for IBANs), digit counts and context for phone numbers, and randomness for
generic secrets. Each refines or rejects a regular-expression match."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable


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


def iban_refine(s: str) -> int:
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


def email_ok(s: str) -> bool:
    """Not an asset name such as ``hero@2x.png``."""
    return not _FILE_EXTENSIONS.search(s)


def card_ok(s: str) -> bool:
    return 13 <= _digit_count(s) <= 19 and luhn_valid(s)


PHONE_CONTEXT = re.compile(
    r"(?:#|\b(?:order|invoice|inv|ref|reference|ticket|tracking|sku|batch|lot|po|no|acct|qty)"
    r"\b\.?:?)\s*$",
    re.IGNORECASE,
)


def phone_ok_intl(s: str) -> bool:
    digits = _digit_count(s.replace("(0)", ""))
    return 8 <= digits <= 15


def phone_ok_national(s: str) -> bool:
    return 10 <= _digit_count(s) <= 12


_SHORT_TAIL = re.compile(r"(?<=\d{4}) \d{1,2}$")


def phone_refine(check: Callable[[str], bool]) -> Callable[[str], int]:
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


def generic_secret_ok(s: str) -> bool:
    """After ``key: value`` in prose, require something that looks like a secret."""
    if s.isalpha() and s.islower() and len(s) < 12:
        return False
    return not (s.isalpha() and s[:1].isupper() and s[1:].islower())


def looks_random(s: str) -> bool:
    """Upper, lower and digits mixed through the string, not a word-like identifier."""
    if not (any(c.isupper() for c in s) and any(c.islower() for c in s)):
        return False
    if not any(c.isdigit() for c in s):
        return False
    # many case switches between letters: random, not CamelCase words
    letters = [c for c in s if c.isalpha()]
    switches = sum(a.isupper() != b.isupper() for a, b in itertools.pairwise(letters))
    return switches >= len(letters) // 5
