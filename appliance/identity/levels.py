"""Assurance levels from the factors a caller has passed in this call."""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Assurance(enum.IntEnum):
    ANONYMOUS = 0
    ONE_FACTOR = 1
    TWO_FACTORS = 2


class Factor(enum.StrEnum):
    PIN = "pin"
    KNOWLEDGE = "knowledge"
    VOICE = "voice"
    TOTP = "totp"
    OUT_OF_BAND = "out_of_band"
    APP_TOKEN = "app_token"
    """A signed session token from the organization's app (identity/app_token.py)."""


POSSESSION = frozenset({Factor.TOTP, Factor.OUT_OF_BAND, Factor.APP_TOKEN})


def assurance(passed: Iterable[Factor]) -> Assurance:
    """Level 2 needs two distinct factors, one of them a possession factor: voice (which a
    recording or a synthesizer can replay) and what the caller knows never reach it together
    (NIST SP 800-63B 5.2.3: a biometric only counts beside a physical authenticator)."""
    factors = set(passed)
    if len(factors) >= 2 and factors & POSSESSION:
        return Assurance.TWO_FACTORS
    if factors:
        return Assurance.ONE_FACTOR
    return Assurance.ANONYMOUS
