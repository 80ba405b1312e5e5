"""Which rules a call is under: the number's suggested jurisdiction (NANP area codes, E.164
country codes) and the strictest rule (a number may make a line stricter, never laxer)."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.core.jurisdiction import (
    ALL_PARTY_AREA_CODES,
    CANADA,
    CANADIAN_AREA_CODES,
    EU_COUNTRY_CODES,
    EU_GDPR,
    UK,
    US_ALL_PARTY,
    ConsentScript,
    jurisdiction_of_number,
    strictest,
)

ONE_PARTY = ConsentScript(
    "us-one-party",
    "en",
    "1",
    "18 U.S.C. 2511(2)(d)",
    False,
    "An automated assistant.",
    "1?",
    "Bye.",
)
ALL_PARTY = dataclasses.replace(ONE_PARTY, jurisdiction="us-all-party", consent_required=True)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+14155550142", US_ALL_PARTY),  # San Francisco, CA
        ("+1 (213) 555-0142", US_ALL_PARTY),  # Los Angeles, CA, written with punctuation
        ("14155550142", US_ALL_PARTY),  # 1 + ten digits, no +
        ("4155550142", US_ALL_PARTY),  # ten digits, as a North American trunk sends them
        ("tel:+13125550142", US_ALL_PARTY),  # Chicago, IL
        ("+12065550142", US_ALL_PARTY),  # Seattle, WA
        ("+13025550142", US_ALL_PARTY),  # Delaware
        ("+12125550142", None),  # New York: one-party, the line's own rules
        ("+15125550142", None),  # Austin, TX: one-party
        ("+14165550142", CANADA),  # Toronto
        ("+16045550142", CANADA),  # Vancouver
        ("+18765550142", None),  # Jamaica: NANP, neither the US nor Canada
        ("+442079460000", UK),
        ("00442079460000", UK),  # the international prefix instead of +
        ("+4930123456", EU_GDPR),  # Germany
        ("+33142685300", EU_GDPR),  # France
        ("+35312345678", EU_GDPR),  # Ireland (a three-digit code)
        ("+41441234567", None),  # Switzerland: not in the EU
        ("+15550142", None),  # too short for NANP (the SIPp scenarios' default)
        ("+11235550142", None),  # an area code cannot start with 1
        ("5550100", None),  # a national number of no known plan
        ("02079460000", None),  # a UK national number: no country code, nothing assumed
        ("anonymous", None),
        ("", None),
    ],
)
def test_a_number_suggests_the_jurisdiction_of_its_area_or_country_code(
    number: str, expected: str | None
) -> None:
    assert jurisdiction_of_number(number) == expected


def test_the_tables_hold_every_all_party_state_canada_and_the_27_member_states() -> None:
    states = set(ALL_PARTY_AREA_CODES)
    assert states == {
        "CA", "CT", "DE", "FL", "IL", "MD", "MA", "MI", "MT", "NV", "NH", "OR", "PA", "WA",
    }  # fmt: skip
    every_us = set().union(*ALL_PARTY_AREA_CODES.values())
    assert not every_us & CANADIAN_AREA_CODES  # no code in both countries
    assert len(EU_COUNTRY_CODES) == 27
    # E.164 country codes are prefix-free: a longer code never starts with a shorter one.
    assert not any(a != b and b.startswith(a) for a in EU_COUNTRY_CODES for b in EU_COUNTRY_CODES)
    for state, codes in ALL_PARTY_AREA_CODES.items():
        for code in codes:
            assert jurisdiction_of_number(f"+1{code}5550142") == US_ALL_PARTY, (state, code)
    for code in CANADIAN_AREA_CODES:
        assert jurisdiction_of_number(f"+1{code}5550142") == CANADA, code


def test_a_forged_all_party_number_makes_a_one_party_line_ask_never_the_reverse() -> None:
    assert strictest(ONE_PARTY, ALL_PARTY) is ALL_PARTY  # stricter: the number's rules
    assert strictest(ALL_PARTY, ONE_PARTY) is ALL_PARTY  # laxer: the line's stay
    assert strictest(ALL_PARTY, None) is ALL_PARTY
    assert strictest(ONE_PARTY, None) is ONE_PARTY
    uk = dataclasses.replace(ONE_PARTY, jurisdiction="uk")
    assert strictest(ONE_PARTY, uk) is ONE_PARTY  # a tie: the line's own script is kept
    eu = dataclasses.replace(ALL_PARTY, jurisdiction="eu-gdpr")
    assert strictest(ALL_PARTY, eu) is ALL_PARTY


def test_the_stored_version_names_the_jurisdiction() -> None:
    assert ALL_PARTY.stored_version == "us-all-party/1"
