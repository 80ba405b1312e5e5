"""When the organization's staff take calls: weekly opening hours, holidays, one time zone.

Written in the configuration as plain lines (``[transfer] hours``)::

    hours = ["mon-fri 09:00-17:30", "sat 10:00-14:00"]
    holidays = ["2026-12-25", "2026-12-26"]
    timezone = "Europe/London"

A day may have several ranges ("mon 09:00-12:00", "mon 13:00-17:00"); a range ends before its
end minute (17:30 is closed). No hours at all: staff are taken to be there at any time.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_LINE = re.compile(
    r"(?P<first>[a-z]{3})(?:-(?P<last>[a-z]{3}))?\s+"
    r"(?P<open>\d{2}:\d{2})-(?P<close>\d{2}:\d{2})"
)


class HoursError(ValueError):
    """A line of the hours, a holiday or the time zone cannot be read (the message says which)."""


@dataclass(frozen=True)
class OpeningHours:
    ranges: tuple[tuple[int, int, int], ...] = ()
    """(weekday 0 = Monday, first minute open, first minute closed again)."""
    holidays: frozenset[dt.date] = frozenset()
    zone: dt.tzinfo = dt.UTC

    @classmethod
    def parse(
        cls, hours: tuple[str, ...], holidays: tuple[str, ...] = (), timezone: str = "UTC"
    ) -> OpeningHours:
        ranges = tuple(r for line in hours for r in _ranges(line))
        days = frozenset(_holiday(text) for text in holidays)
        return cls(ranges, days, _zone(timezone))

    @property
    def always(self) -> bool:
        """No hours are configured: staff are there whenever a call comes."""
        return not self.ranges and not self.holidays

    def open_at(self, when: dt.datetime) -> bool:
        """Whether staff take calls at ``when`` (an aware time; read in the configured zone)."""
        if self.always:
            return True
        local = when.astimezone(self.zone)
        if local.date() in self.holidays:
            return False
        if not self.ranges:
            return True  # holidays alone: every other day is open
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        return any(d == day and start <= minute < end for d, start, end in self.ranges)


def _ranges(line: str) -> list[tuple[int, int, int]]:
    found = _LINE.fullmatch(line.strip().lower())
    if found is None:
        example = "for example 'mon-fri 09:00-17:00'"
        raise HoursError(f"{line!r} is not 'day[-day] HH:MM-HH:MM' ({example})")
    first, last = found["first"], found["last"] or found["first"]
    for name in (first, last):
        if name not in DAYS:
            raise HoursError(f"{line!r}: {name!r} is not a day ({', '.join(DAYS)})")
    start, end = _minute(line, found["open"]), _minute(line, found["close"])
    if end <= start:
        raise HoursError(f"{line!r}: the range must end after it starts (on the same day)")
    a, b = DAYS.index(first), DAYS.index(last)
    days = range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)]
    return [(day, start, end) for day in days]


def _minute(line: str, text: str) -> int:
    hour, minute = (int(part) for part in text.split(":"))
    if hour > 24 or minute > 59 or (hour == 24 and minute):
        raise HoursError(f"{line!r}: {text} is not a time of day")
    return hour * 60 + minute


def _holiday(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError as exc:
        raise HoursError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


def _zone(name: str) -> dt.tzinfo:
    if name.upper() == "UTC":
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        example = "for example 'Europe/London'"
        raise HoursError(f"{name!r} is not a known time zone ({example})") from exc
