"""Factors, assurance levels and limits: pure logic with a clock the test moves."""

from __future__ import annotations

import pytest

from appliance.identity.factors import (
    AttemptLimiter,
    FactorError,
    OneTimeCodes,
    SecretFactor,
    TotpFactor,
    hash_secret,
    totp,
    totp_secret_from_base32,
)
from appliance.identity.levels import Assurance, Factor, assurance
from appliance.identity.limits import ConcurrencyLimit, SlidingWindow


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_levels_follow_nist_800_63b() -> None:
    assert assurance([]) is Assurance.ANONYMOUS
    assert assurance([Factor.PIN]) is Assurance.ONE_FACTOR
    assert assurance([Factor.VOICE]) is Assurance.ONE_FACTOR
    assert assurance([Factor.PIN, Factor.KNOWLEDGE]) is Assurance.ONE_FACTOR  # both known
    assert assurance([Factor.VOICE, Factor.PIN]) is Assurance.ONE_FACTOR  # no possession
    assert assurance([Factor.PIN, Factor.TOTP]) is Assurance.TWO_FACTORS
    assert assurance([Factor.VOICE, Factor.OUT_OF_BAND]) is Assurance.TWO_FACTORS
    assert assurance([Factor.TOTP]) is Assurance.ONE_FACTOR


def test_rfc_6238_test_vectors() -> None:
    secret = b"12345678901234567890"
    # RFC 6238 appendix B (SHA-1), last six digits of the eight-digit values.
    for unix_time, expected in ((59, "287082"), (1111111109, "081804"), (2000000000, "279037")):
        assert totp(secret, unix_time // 30) == expected
    assert totp_secret_from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ") == secret


def test_a_pin_locks_after_n_failures_with_growing_backoff() -> None:
    clock = Clock()
    pin = SecretFactor("pin", AttemptLimiter(max_failures=3, base_lockout_s=30, clock=clock))
    stored = hash_secret("4921")
    for _ in range(3):
        with pytest.raises(FactorError, match=r"identity\.wrong"):
            pin.verify("caller-1", "0000", stored)
    with pytest.raises(FactorError, match=r"identity\.locked"):
        pin.verify("caller-1", "4921", stored)  # even the right PIN, while locked
    clock.now += 31
    pin.verify("caller-1", "4921", stored)
    for _ in range(3):
        with pytest.raises(FactorError):
            pin.verify("caller-1", "1111", stored)
    clock.now += 31
    with pytest.raises(FactorError, match=r"identity\.locked"):  # second lockout: 60 s
        pin.verify("caller-1", "4921", stored)
    clock.now += 30
    pin.verify("caller-1", "4921", stored)
    pin.verify("caller-2", "4921", stored)  # another caller was never locked


def test_the_backoff_is_capped_at_an_hour_and_starts_over_after_a_quiet_day() -> None:
    """Reviewed: lockouts are keyed on a caller ID anyone can send and now outlive a restart;
    doubling without end would let a stranger lock a customer out for days."""
    clock = Clock()
    pin = SecretFactor("pin", AttemptLimiter(max_failures=1, base_lockout_s=30, clock=clock))
    stored = hash_secret("4921")
    for _ in range(12):  # 30 s, 60 s, ... would reach 17 hours
        with pytest.raises(FactorError, match=r"identity\.wrong"):
            pin.verify("caller-1", "0000", stored)
        clock.now += 3601  # no lockout lasts longer than an hour
    with pytest.raises(FactorError, match=r"identity\.wrong"):
        pin.verify("caller-1", "0000", stored)  # locked for an hour again, not longer
    clock.now += 86_400 + 3601
    with pytest.raises(FactorError, match=r"identity\.wrong"):
        pin.verify("caller-1", "0000", stored)
    clock.now += 31  # after a quiet day the backoff starts over: 30 s
    pin.verify("caller-1", "4921", stored)


def test_spoken_answers_are_normalized_and_unknown_callers_fail_the_same_way() -> None:
    knowledge = SecretFactor("knowledge", AttemptLimiter())
    knowledge.verify("c", "  Fluffy  ", hash_secret("fluffy"))
    with pytest.raises(FactorError, match=r"identity\.wrong"):
        knowledge.verify("nobody", "fluffy", None)


def test_a_totp_code_works_once_and_only_within_its_window() -> None:
    clock = Clock(1_700_000_000.0)
    secret = b"a secret of twenty b"
    factor = TotpFactor(AttemptLimiter(max_failures=10), clock=clock)
    code = totp(secret, int(clock.now // 30))
    factor.verify("c", code, secret)
    with pytest.raises(FactorError, match=r"identity\.reused"):
        factor.verify("c", code, secret)
    clock.now += 31
    factor.verify("c", totp(secret, int(clock.now // 30)), secret)
    old = totp(secret, int(clock.now // 30) - 3)
    with pytest.raises(FactorError, match=r"identity\.wrong"):
        factor.verify("c", old, secret)
    with pytest.raises(FactorError, match=r"identity\.wrong"):
        factor.verify("c", code, None)  # nothing enrolled


def test_out_of_band_codes_are_single_use_and_expire() -> None:
    clock = Clock()
    outbox: list[tuple[str, str]] = []
    codes = OneTimeCodes(
        lambda who, code: outbox.append((who, code)), AttemptLimiter(), ttl_s=300, clock=clock
    )
    codes.issue("c", "c@example.org")
    assert outbox[-1][0] == "c@example.org"
    code = outbox[-1][1]
    codes.verify("c", f"{code[:3]} {code[3:]}")  # read out in two groups
    with pytest.raises(FactorError):
        codes.verify("c", code)
    codes.issue("c", "c@example.org")
    clock.now += 301
    with pytest.raises(FactorError):
        codes.verify("c", outbox[-1][1])


def test_a_lockout_voids_the_pending_code_so_the_right_one_fails_after_it() -> None:
    """OneTimeCodes: "a lockout voids the pending code". Three wrong guesses lock the factor;
    once the lockout is over, the code sent before it (still within its ttl) opens nothing,
    and a fresh code does."""
    clock = Clock()
    outbox: list[str] = []
    limiter = AttemptLimiter(max_failures=3, base_lockout_s=30, clock=clock)
    codes = OneTimeCodes(lambda _, code: outbox.append(code), limiter, ttl_s=300, clock=clock)
    codes.issue("c", "c@example.org")
    earlier = outbox[-1]
    wrong = f"{(int(earlier) + 1) % 10**6:06d}"
    for _ in range(3):
        with pytest.raises(FactorError) as refused:
            codes.verify("c", wrong)
        assert refused.value.code == "identity.wrong"
    assert codes.locked("c")
    with pytest.raises(FactorError) as refused:
        codes.verify("c", earlier)
    assert refused.value.code == "identity.locked"  # during the lockout: locked, not checked
    clock.now += 31  # the lockout is over; the earlier code's 300 s are not
    assert not codes.locked("c")
    with pytest.raises(FactorError) as refused:
        codes.verify("c", earlier)
    assert refused.value.code == "identity.wrong"
    codes.issue("c", "c@example.org")
    codes.verify("c", outbox[-1])


def test_sliding_window_limits_each_key_and_forgets_old_ones() -> None:
    clock = Clock()
    window = SlidingWindow(limit=5, window_s=60, max_keys=100, clock=clock)
    assert [window.allow("flooder") for _ in range(7)] == [True] * 5 + [False] * 2
    assert window.allow("someone else")
    clock.now += 61
    assert window.allow("flooder")
    for i in range(1000):
        window.allow(f"caller-{i}")
    assert window.tracked_keys() == 100  # bounded memory


def test_concurrency_limit_refuses_instead_of_queueing() -> None:
    limit = ConcurrencyLimit(2)
    with limit.slot() as first, limit.slot() as second, limit.slot() as third:
        assert (first, second, third) == (True, True, False)
        assert limit.active == 2
    assert limit.active == 0


def test_voice_enrolment_verification_and_the_spoken_challenge() -> None:
    from appliance.identity.voice import VoiceTemplate, VoiceVerifier, digits_heard, enrol

    with pytest.raises(FactorError, match="3 utterances"):
        enrol([(1.0, 0.0)] * 2)
    template = enrol([(1.0, 0.1), (0.9, 0.0), (1.0, -0.1)])
    assert VoiceTemplate.from_bytes(template.to_bytes()) == template
    with pytest.raises(FactorError, match="unreadable"):
        VoiceTemplate.from_bytes(b"not json")
    verifier = VoiceVerifier(0.8, AttemptLimiter(max_failures=3))
    challenge = verifier.challenge()
    assert len(challenge) == 6 and challenge.isdigit() and challenge != verifier.challenge()
    assert digits_heard("My code is four one oh seven, 2 9.") == "410729"
    assert digits_heard("For one ate two zero five.") == "418205"  # ASR's homophones
    assert digits_heard("The code is 2, A, 3, 1, 1, 2.") == "283112"  # a clipped "eight"
    assert digits_heard("My PIN is a 4 9 2 1") == "4921"  # "a" only between two digits
    assert digits_heard("I'd like to give you my PIN: 4 9 2 1") == "4921"
    said = " ".join(challenge)
    assert verifier.verify("c", template, (1.0, 0.05), said, challenge).passed
    assert verifier.verify("c", template, (0.0, 1.0), said, challenge).reason == "voice.no_match"
    wrong = verifier.verify("c", template, (1.0, 0.05), "hello", challenge)
    assert (wrong.passed, wrong.reason) == (False, "voice.wrong_challenge")


def test_call_anomalies_report_a_spike_over_the_median_and_a_run_of_off_topic_turns() -> None:
    from appliance.config.settings import LimitsSettings
    from appliance.identity.abuse import CallAnomalies

    anomalies = CallAnomalies(LimitsSettings(volume_spike_db=15, topic_drift_turns=3))
    assert anomalies.utterance(-40.0) == ""  # no baseline yet: never a spike
    assert anomalies.utterance(-20.0) == ""
    assert anomalies.utterance(-38.0) == ""
    assert anomalies.utterance(-22.0) == "volume_spike"  # 16 dB over the median (-38)
    assert anomalies.utterance(-10.0) == ""  # reported once a call
    assert [anomalies.turn(t) for t in (False, False, True, False, False)] == [""] * 5
    assert anomalies.turn(False) == "topic_drift"


def test_topics_and_levels() -> None:
    from appliance.config.settings import PolicySettings
    from appliance.core.audio import level_dbfs
    from appliance.guard.topics import on_topic, vocabulary

    vocab = vocabulary(PolicySettings(), ["You can book, move or cancel an appointment here."])
    assert on_topic("I want to move my booking to Friday", vocab)
    assert on_topic("yes please", vocab)  # too short to count against anyone
    assert not on_topic("write me a poem about pirates", vocab)
    assert level_dbfs(b"") == -120.0 and level_dbfs(bytes(320)) == -120.0
    full = (32767).to_bytes(2, "little", signed=True) * 160
    assert -0.01 < level_dbfs(full) <= 0.0
