"""Which consent and disclosure rules a phone call is under: the line's jurisdiction, made
stricter (never laxer) by the one its caller's number suggests.

Pure logic, no I/O: the scripts themselves are files under ``config/consent/``, read by
``appliance.config.consent``. The tables here say which jurisdiction a number suggests:

- NANP (E.164 ``+1``, ITU-T E.164 / the North American Numbering Plan): the area code of a
  US state commonly listed as requiring the consent of every party to record a call suggests
  ``us-all-party``; a Canadian area code suggests ``canada``.
- ``+44`` suggests ``uk``; the country code of an EU member state suggests ``eu-gdpr``.
- Anything else (other US area codes, other countries, a number we cannot read) suggests
  nothing, and the line's own jurisdiction applies.

Caller ID is whatever the caller's phone or trunk writes in the SIP From (RFC 3261 has no
proof of it; STIR/SHAKEN is not checked here), so it may only make the rules stricter: a
forged out-of-state number can make a one-party line ask for consent, never the reverse.

Not legal advice: the tables follow the lists commonly published (see the scripts' comments
for each state's statute and caveats); the operator's counsel decides the line's jurisdiction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def _codes(text: str) -> frozenset[str]:
    return frozenset(text.split())


US_ONE_PARTY = "us-one-party"
US_ALL_PARTY = "us-all-party"
CANADA = "canada"
UK = "uk"
EU_GDPR = "eu-gdpr"
CONFIGURED = "configured"
"""The id of the line's script when ``[sip] jurisdiction`` is empty: the [sip] texts."""

ALL_PARTY_AREA_CODES: dict[str, frozenset[str]] = {
    # NANPA's area codes by state (overlays included: an extra code only makes a call stricter).
    "CA": _codes(
        "209 213 279 310 323 341 350 369 408 415 424 442 510 530 559 562 619 626 628 650 657 "
        "661 669 707 714 747 760 805 818 820 831 840 858 909 916 925 949 951"
    ),
    "CT": _codes("203 475 860 959"),
    "DE": _codes("302"),
    "FL": _codes(
        "239 305 321 324 352 386 407 448 561 645 656 689 727 728 754 772 786 813 850 863 904 "
        "941 954"
    ),
    "IL": _codes("217 224 309 312 331 447 464 618 630 708 730 773 779 815 847 861 872"),
    "MD": _codes("227 240 301 410 443 667"),
    "MA": _codes("339 351 413 508 617 774 781 857 978"),
    "MI": _codes("231 248 269 313 517 586 616 679 734 810 906 947 989"),
    "MT": _codes("406"),
    "NV": _codes("702 725 775"),
    "NH": _codes("603"),
    "OR": _codes("458 503 541 971"),
    "PA": _codes("215 223 267 272 412 445 484 570 582 610 717 724 814 835 878"),
    "WA": _codes("206 253 360 425 509 564"),
}
"""The US states commonly listed as all-party consent states (caveats in
config/consent/us-all-party.en.toml), by their NANP area codes."""

CANADIAN_AREA_CODES = _codes(
    "204 226 236 249 250 257 263 289 306 343 354 365 367 368 382 387 403 416 418 428 431 437 "
    "438 450 460 468 474 506 514 519 548 579 581 584 587 604 613 639 647 672 683 705 709 742 "
    "753 778 780 782 807 819 825 867 873 879 902 905 942"
)
EU_COUNTRY_CODES = _codes(
    # ITU-T E.164 country codes of the 27 member states (Austria ... Sweden).
    "43 32 359 385 357 420 45 372 358 33 49 30 36 353 39 371 370 352 356 31 48 351 40 421 386 34 46"
)
UK_COUNTRY_CODE = "44"

SUGGESTED = (US_ALL_PARTY, CANADA, UK, EU_GDPR)
"""Every jurisdiction a caller's number can suggest: each needs a script."""

_ALL_PARTY = frozenset().union(*ALL_PARTY_AREA_CODES.values())
_NANP_NATIONAL = re.compile(r"[2-9]\d{2}[2-9]\d{6}")
"""A NANP number without its country code: NPA (area code) and NXX both start 2-9."""


@dataclass(frozen=True)
class ConsentScript:
    """What a call in one jurisdiction hears and is asked, in one language."""

    jurisdiction: str
    language: str
    """ISO 639-1, the voice's language ("en")."""
    version: str
    """Changes whenever a text changes; stored with each call as ``stored_version``."""
    legal_basis: str
    """One line: the statute or rule the script follows (shown in the compliance report)."""
    consent_required: bool
    disclosure: str
    """Spoken first, before anything is recorded, transcribed or given to the model."""
    consent_prompt: str
    no_consent_reply: str

    @property
    def stored_version(self) -> str:
        """``<jurisdiction>/<version>``: what the call and consent rows keep."""
        return f"{self.jurisdiction}/{self.version}"


def _digits(number: str) -> tuple[str, bool]:
    """The number's digits and whether they are international (E.164 ``+`` or ``00``)."""
    text = number.strip().removeprefix("tel:")
    international = text.startswith("+")
    digits = re.sub(r"[\s().\-]", "", text.lstrip("+"))
    if not digits.isascii() or not digits.isdigit():
        return "", False
    if not international and digits.startswith("00"):
        return digits[2:], True
    return digits, international


def jurisdiction_of_number(number: str) -> str | None:
    """The jurisdiction a caller's number suggests, or None.

    ``+1 NPA NXX XXXX`` (or ``1`` and ten digits, or ten digits alone, as North American trunks
    send them) is read by its area code; other international numbers by their country code.
    """
    digits, international = _digits(number)
    if not digits:
        return None
    if not international and len(digits) == 10 and _NANP_NATIONAL.fullmatch(digits):
        digits, international = "1" + digits, True
    elif not international and len(digits) == 11 and digits.startswith("1"):
        international = True
    if not international:
        return None
    if digits.startswith("1"):
        if len(digits) != 11 or not _NANP_NATIONAL.fullmatch(digits[1:]):
            return None
        area = digits[1:4]
        if area in _ALL_PARTY:
            return US_ALL_PARTY
        return CANADA if area in CANADIAN_AREA_CODES else None
    if digits.startswith(UK_COUNTRY_CODE):
        return UK
    if any(digits.startswith(code) for code in EU_COUNTRY_CODES):
        return EU_GDPR
    return None


def strictness(script: ConsentScript) -> int:
    """The order the rules are compared in: consent required (1) over disclosure only (0)."""
    return 1 if script.consent_required else 0


def strictest(line: ConsentScript, suggested: ConsentScript | None) -> ConsentScript:
    """The script a call is under: the number's only when it is strictly stricter than the
    line's (a tie keeps the line's own, so a caller ID never changes an equal rule)."""
    if suggested is not None and strictness(suggested) > strictness(line):
        return suggested
    return line
