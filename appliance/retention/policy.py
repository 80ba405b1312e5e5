"""The retention policy as pure data and arithmetic: no clock, no database."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from appliance.config.settings import RetentionSettings


class DataClass(enum.StrEnum):
    """What is kept, each with its own period. Order: what a caller said goes first."""

    RECORDINGS = "recordings"
    TRANSCRIPTS = "transcripts"
    TOOL_CALLS = "tool_calls"
    CALLS = "calls"
    INCIDENTS = "incidents"
    """Resolved ones, counted from their resolution; an incident not resolved stays."""
    CALLBACKS = "callback_requests"
    """Handled ones (called back, closed), counted from when they were handled; an open
    request stays until staff handle it."""
    AUDIT = "audit_events"


@dataclass(frozen=True)
class RetentionPolicy:
    periods: dict[DataClass, timedelta]

    @classmethod
    def from_settings(cls, settings: RetentionSettings) -> RetentionPolicy:
        return cls(
            {
                # Recordings of 0 hours are never written; any that exist go at once.
                DataClass.RECORDINGS: timedelta(hours=settings.recordings_hours),
                DataClass.TRANSCRIPTS: timedelta(days=settings.transcripts_days),
                DataClass.TOOL_CALLS: timedelta(days=settings.tool_calls_days),
                DataClass.CALLS: timedelta(days=settings.calls_days),
                DataClass.INCIDENTS: timedelta(days=settings.incidents_days),
                DataClass.CALLBACKS: timedelta(days=settings.callbacks_days),
                DataClass.AUDIT: timedelta(days=365 * settings.audit_years),
            }
        )

    def cutoff(self, data_class: DataClass, now: datetime) -> datetime:
        """Rows of ``data_class`` created before this moment are due."""
        return now - self.periods[data_class]

    def is_due(
        self, data_class: DataClass, created_at: datetime, now: datetime, held: bool = False
    ) -> bool:
        """Legal hold wins over every period."""
        return not held and created_at < self.cutoff(data_class, now)
