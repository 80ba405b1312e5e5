from __future__ import annotations

from datetime import datetime, timedelta

from appliance.config.settings import RetentionSettings
from appliance.retention.policy import DataClass, RetentionPolicy

NOW = datetime(2026, 11, 28, 12, 0, 0)
POLICY = RetentionPolicy.from_settings(
    RetentionSettings(recordings_hours=24, transcripts_days=30, calls_days=90, audit_years=7)
)


def test_each_class_has_its_own_period() -> None:
    assert POLICY.cutoff(DataClass.RECORDINGS, NOW) == NOW - timedelta(hours=24)
    assert POLICY.cutoff(DataClass.TRANSCRIPTS, NOW) == NOW - timedelta(days=30)
    assert POLICY.cutoff(DataClass.CALLS, NOW) == NOW - timedelta(days=90)
    assert POLICY.cutoff(DataClass.AUDIT, NOW) == NOW - timedelta(days=7 * 365)


def test_rows_become_due_exactly_after_their_period() -> None:
    born = NOW - timedelta(days=30)
    assert not POLICY.is_due(DataClass.TRANSCRIPTS, born, NOW)
    assert POLICY.is_due(DataClass.TRANSCRIPTS, born - timedelta(seconds=1), NOW)
    assert not POLICY.is_due(DataClass.CALLS, born - timedelta(seconds=1), NOW)


def test_legal_hold_wins_over_every_period() -> None:
    ancient = NOW - timedelta(days=10_000)
    for data_class in DataClass:
        assert not POLICY.is_due(data_class, ancient, NOW, held=True)
        assert POLICY.is_due(data_class, ancient, NOW)


def test_audio_that_is_not_kept_is_due_at_once() -> None:
    policy = RetentionPolicy.from_settings(RetentionSettings())
    assert not RetentionSettings().record_audio
    assert policy.is_due(DataClass.RECORDINGS, NOW - timedelta(seconds=1), NOW)
