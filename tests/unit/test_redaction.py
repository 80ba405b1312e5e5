"""Personal and payment data: each redactor, Luhn, spoken digits, numbers split over turns."""

from __future__ import annotations

import pytest

from appliance.config.settings import PolicySettings
from appliance.guard.call import PAYMENT_NOT_RECORDED, CallGuard
from appliance.guard.normalize import normalize
from appliance.guard.pii import luhn_valid, redact

VALID_CARDS = ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"]


@pytest.mark.parametrize("number", VALID_CARDS)
def test_luhn_accepts_real_test_card_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize(
    "number", ["4111111111111112", "1234567890123456", "411111111111", "4" * 20]
)
def test_luhn_refuses_the_rest(number: str) -> None:
    assert not luhn_valid(number)


@pytest.mark.parametrize(
    ("said", "redacted"),
    [
        ("my card is 4111 1111 1111 1111", "my card is [CARD]"),
        ("card 4111-1111-1111-1111 please", "card [CARD] please"),
        ("four one one one one one one one one one one one one one one one", "[CARD]"),
        ("the cvv is 123", "the cvv is [CVV]"),
        ("security code nine eight seven", "security code [CVV]"),
        ("it's 321, the code on the back", "it's [CVV], the code on the back"),
        ("my social security number is 123-45-6789", "my social security number is [NATIONAL_ID]"),
        ("my NI number is QQ 12 34 56 C", "my NI number is [NATIONAL_ID]"),
        ("IBAN GB82 WEST 1234 5698 7654 32", "IBAN [BANK_ACCOUNT]"),
        ("account number 12345678", "account number [BANK_ACCOUNT]"),
        ("call me on +44 20 7946 0958", "call me on [PHONE]"),
        ("jane.doe@example.com", "[EMAIL]"),
        ("john dot smith at example dot com", "[EMAIL]"),
        ("I was born on 12/05/1980", "I was born on [DATE_OF_BIRTH]"),
        ("date of birth the 3rd of May 1975", "date of birth the [DATE_OF_BIRTH]"),
    ],
)
def test_each_redactor(said: str, redacted: str) -> None:
    assert redact(normalize(said)).text == normalize(redacted)


@pytest.mark.parametrize(
    "said",
    [
        "order 1234 5678 9012 3456",  # 16 digits, not Luhn-valid: not a card
        "my appointment is at 3 pm on the 5th",
        "I need 2 boxes of 12",
        "the code is ready",
    ],
)
def test_numbers_that_are_not_personal_are_left(said: str) -> None:
    assert redact(normalize(said)).findings == []


def test_only_the_configured_kinds_are_redacted() -> None:
    text = "email jane@example.com card 4111 1111 1111 1111"
    assert redact(text, kinds=("card",)).text == "email jane@example.com card [CARD]"


def guard() -> CallGuard:
    return CallGuard(PolicySettings(), "Be brief.", canary="CNRY-TEST0001")


def test_a_card_number_split_across_turns_never_reaches_the_model_or_storage() -> None:
    g = guard()
    first = g.screen_input("my card number is four one one one one one one one")
    g.commit(first)
    second = g.screen_input("one one one one one one one one")
    g.commit(second)
    for decision in (first, second):
        assert "1111" not in decision.llm_text and "4111" not in decision.llm_text
        assert decision.stored_text == PAYMENT_NOT_RECORDED
        assert not decision.record_audio
    assert "redacted.card_part" in second.reasons


def test_a_payment_flow_pauses_recording_then_resumes() -> None:
    g = guard()
    decisions = []
    for said in [
        "I'll pay by card: 5555 5555 5555 4444",
        "expiry 12 28, cvv 123",
        "thanks",
        "what else",
        "and one more",
        "what time do you open?",
    ]:
        decision = g.screen_input(said)
        g.commit(decision)
        decisions.append(decision)
    assert [d.record_audio for d in decisions] == [False, False, False, False, False, True]
    assert decisions[-1].stored_text == "what time do you open?"
    assert all("5555" not in d.llm_text and "123" not in d.llm_text for d in decisions)


def test_the_caller_may_hear_their_own_data_but_nobody_elses() -> None:
    g = guard()
    g.commit(g.screen_input("my email is jane@example.com"))
    assert g.screen_output("I'll send it to jane@example.com.") == ()
    assert "output.personal_data.email" in g.screen_output("It went to bob@example.org.")
    assert "output.personal_data.card" in g.screen_output("Card 4111 1111 1111 1111 is on file.")
