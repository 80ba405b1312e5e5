"""Personal and payment data: find it, and replace it with a typed placeholder.

Card numbers are checked with Luhn (ISO/IEC 7812) so an order number is not taken for one; a
card number spoken over two turns is caught by carrying the trailing digits of one turn into
the next. A CVV needs its context ("security code", "CVV", "on the back"); so do bank account
numbers and dates of birth. PCI DSS 3.3: the CVV is never stored, not even encrypted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

PLACEHOLDERS = {
    "card": "[CARD]",
    "card_part": "[CARD]",
    "cvv": "[CVV]",
    "ssn": "[NATIONAL_ID]",
    "national_id": "[NATIONAL_ID]",
    "iban": "[BANK_ACCOUNT]",
    "account": "[BANK_ACCOUNT]",
    "phone": "[PHONE]",
    "email": "[EMAIL]",
    "dob": "[DATE_OF_BIRTH]",
}
ALL_KINDS = ("card", "cvv", "ssn", "national_id", "iban", "account", "phone", "email", "dob")

_DIGIT_RUN = re.compile(r"(?<![\d])\d(?:[ \-.()]{0,2}\d){3,22}(?![\d])")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_EMAIL_SPOKEN = re.compile(
    r"\b[\w+-]+(?:\s+dot\s+[\w+-]+)*\s+at\s+[\w-]+(?:\s+dot\s+[\w-]+)+\b", re.I
)
_CVV = re.compile(
    r"(?:cvv2?|cvc2?|csc|security\s+code|verification\s+(?:code|number|value)|"
    r"(?:three|four|3|4)[\s-]digit\s+code|code\s+on\s+the\s+back|card\s+code)"
    r"[^\d]{0,30}?(\d(?:[ \-]?\d){2,3})(?![\d])",
    re.I,
)
_CVV_BEFORE = re.compile(
    r"(?<![\d])(\d(?:[ \-]?\d){2,3})(?![\d])[^\d]{0,20}?"
    r"(?:is\s+(?:the|my)\s+)?(?:cvv|cvc|security\s+code|code\s+on\s+the\s+back)",
    re.I,
)
_SSN = re.compile(r"(?<![\d])\d{3}[ \-]?\d{2}[ \-]?\d{4}(?![\d])")
_SSN_CONTEXT = re.compile(
    r"social\s+security|\bssn\b|national\s+(?:id|insurance)|\bni\s+number|\bnino\b|tax\s+id", re.I
)
_NI_UK = re.compile(r"\b[A-Z]{2}\s?\d{2}\s?\d{2}\s?\d{2}\s?[A-D]\b", re.I)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){2,7}(?:\s?[A-Z0-9]{1,4})?\b")
_ACCOUNT_CONTEXT = re.compile(
    r"(?:account|routing|sort\s+code|bank)\s+(?:number|no\.?|code|#)?[^\d]{0,15}?"
    r"(\d(?:[ \-]?\d){5,16})(?![\d])",
    re.I,
)
_DOB = re.compile(
    r"(?:born|birth|d\.?o\.?b\.?|birthday)[^\d]{0,25}?"
    r"((?:\d{1,4}[/\-. ]\d{1,2}[/\-. ]\d{2,4})|"
    r"(?:\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?[a-z]+\s*,?\s*\d{2,4})|"
    r"(?:[a-z]+\s+\d{1,2}(?:st|nd|rd|th)?\s*,?\s*\d{2,4})|"
    r"(?:\d{1,2}\s+\d{1,2}\s+\d{2,4}))",
    re.I,
)
_CARD_WORDS = re.compile(r"\b(?:card|credit|debit|visa|master\s?card|amex)\b", re.I)
_PAYMENT_WORDS = re.compile(
    r"\b(?:card|credit|debit|visa|master\s?card|amex|american\s+express|pay(?:ment)?|"
    r"expir\w*|cvv|cvc|security\s+code)\b",
    re.I,
)


def luhn_valid(digits: str) -> bool:
    if not 13 <= len(digits) <= 19 or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def digits_of(text: str) -> str:
    return re.sub(r"\D", "", text)


def value_of(text: str, finding: Finding) -> str:
    """What ``finding`` in ``text`` is, to compare with another: its digits (a number however
    spaced), or the text itself."""
    raw = text[finding.start : finding.end]
    return digits_of(raw) or raw


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


@dataclass
class Redaction:
    text: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}


def find(text: str, kinds: Iterable[str] = ALL_KINDS, carried_digits: str = "") -> list[Finding]:
    """Every finding in ``text``; ``carried_digits`` are the trailing digits of the previous
    turn, so a card number split across turns is still a card number."""
    wanted = set(kinds)
    found: list[Finding] = []

    def add(kind: str, start: int, end: int) -> None:
        wanted_kind = kind in wanted or (kind == "card_part" and "card" in wanted)
        if wanted_kind and not any(f.start < end and start < f.end for f in found):
            found.append(Finding(kind, start, end))

    card_context = bool(_CARD_WORDS.search(text))
    for pattern in (_EMAIL, _EMAIL_SPOKEN):
        for match in pattern.finditer(text):
            add("email", match.start(), match.end())
    for match in _IBAN.finditer(text):
        add("iban", match.start(), match.end())
    for match in _DIGIT_RUN.finditer(text):
        digits = digits_of(match.group(0))
        if luhn_valid(digits) or (12 <= len(digits) <= 19 and card_context):
            # In card context a long number is a card number even when Luhn fails: speech
            # recognition drops or doubles digits, and a near-miss is still cardholder data.
            add("card", match.start(), match.end())
        elif carried_digits and match.start() < 3 and luhn_valid(carried_digits + digits):
            add("card_part", match.start(), match.end())
    for pattern in (_CVV, _CVV_BEFORE):
        for match in pattern.finditer(text):
            add("cvv", match.start(1), match.end(1))
    if _SSN_CONTEXT.search(text):
        for match in _SSN.finditer(text):
            add("ssn", match.start(), match.end())
        for match in _NI_UK.finditer(text):
            add("national_id", match.start(), match.end())
    for match in _ACCOUNT_CONTEXT.finditer(text):
        add("account", match.start(1), match.end(1))
    for match in _DOB.finditer(text):
        add("dob", match.start(1), match.end(1))
    for match in _DIGIT_RUN.finditer(text):
        if 10 <= len(digits_of(match.group(0))) <= 15:
            start = match.start() - (1 if match.start() and text[match.start() - 1] == "+" else 0)
            add("phone", start, match.end())
    return sorted(found, key=lambda f: f.start)


def redact(text: str, kinds: Iterable[str] = ALL_KINDS, carried_digits: str = "") -> Redaction:
    findings = find(text, kinds, carried_digits)
    out = []
    last = 0
    for finding in findings:
        out.append(text[last : finding.start])
        out.append(PLACEHOLDERS[finding.kind])
        last = finding.end
    out.append(text[last:])
    return Redaction("".join(out), findings)


def mentions_payment(text: str) -> bool:
    return bool(_PAYMENT_WORDS.search(text))


def trailing_digits(text: str, limit: int = 18) -> str:
    """The digits at the end of a turn (a card number may go on in the next one)."""
    match = re.search(r"(\d(?:[ \-]?\d)*)\W*$", text)
    return digits_of(match.group(1))[-limit:] if match else ""


def leading_partial_card(text: str) -> bool:
    """Digits that may be the start of a card number (a known card prefix, 4+ digits)."""
    match = _DIGIT_RUN.search(text)
    if match is None:
        return False
    digits = digits_of(match.group(0))
    return len(digits) >= 4 and bool(re.match(r"4|5[1-5]|2[2-7]|3[47]|6(?:011|5)", digits))
