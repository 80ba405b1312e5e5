"""The distress words: plain danger goes to the safety message, unsure words are asked about
first, and ordinary banking words that sound like danger are answered as usual.

The words were written after reading the red-team corpus's distress turns; the phrasings here
are ones that corpus does not hold.
"""

from __future__ import annotations

import pytest

from appliance.config.settings import PolicySettings
from appliance.core.errors import ConfigError
from appliance.guard.call import CallGuard


def verdict(said: str) -> str:
    return (
        CallGuard(PolicySettings(), "Be brief.", canary="CNRY-TEST0001").screen_input(said).verdict
    )


@pytest.mark.parametrize(
    "said",
    [
        "Someone is breaking in downstairs right now.",
        "There's a man outside with a knife.",
        "He has come back with a gun.",
        "I've taken all my pills.",
        "My husband isn't breathing.",
        "I've been shot, please help.",
    ],
)
def test_plain_danger_goes_straight_to_the_safety_message(said: str) -> None:
    assert verdict(said) == "distress"


@pytest.mark.parametrize(
    "said",
    [
        "Someone is following me home.",
        "I think I'm going to jump.",
        "My ex keeps threatening me.",
        "He's trying to get in through the back door.",
        "I drank the whole bottle.",
    ],
)
def test_unsure_words_get_the_danger_question_first(said: str) -> None:
    assert verdict(said) == "distress_check"


@pytest.mark.parametrize(
    "said",
    [
        "Is my mortgage rate going to jump next year?",
        "Someone has been breaking into my online account.",
        "My card has been shot to pieces by the machine.",
        "I've been trying to get in touch with my branch.",
        "Is my savings rate locked in for the year?",
        "These fees are hurting me every month.",
        "I need to change my emergency contact.",
    ],
)
def test_banking_words_that_sound_like_danger_are_answered_as_usual(said: str) -> None:
    assert verdict(said) not in ("distress", "distress_check")


def test_an_unsure_word_must_also_be_a_distress_word() -> None:
    with pytest.raises(ConfigError, match=r"policy\.distress_unsure"):
        PolicySettings(distress_keywords=("suicide",), distress_unsure=("following me",))
