"""A tool's arguments read from what the caller said: never guessed.

A small model asked for a booking under a JSON grammar fills every field, and so invents the
day and the branch the caller never named. So each argument is taken from the caller's own
words by rules (a weekday or a date, a time among the offered ones, a choice named aloud); what
the caller did not say is asked for, one question at a time.
"""

from __future__ import annotations

import datetime as dt
import re

from appliance.tools.registry import Param

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
_HOURS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "noon": 12, "midday": 12,
}  # fmt: skip
_HOUR = r"\d{1,2}|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|noon|midday"
_MINUTE_WORDS = {"five": 5, "ten": 10, "fifteen": 15, "twenty": 20, "thirty": 30, "forty five": 45}
_TIME = re.compile(
    rf"\b(?P<lead>at|around|about)?\s*(?P<hour>{_HOUR})\b"
    r"(?:[:.](?P<minutes>\d{2})|\s+(?P<minute_word>fifteen|thirty|forty\s?five|twenty|ten|five)\b)?"
    r"\s*(?P<suffix>o'?\s?clock|[ap]\.?\s?m\b\.?)?",
    re.I,
)
_ORDINAL = re.compile(
    r"\b(\d{1,2})(?:st|nd|rd|th)?(?:\s+of)?\s+("
    + "|".join(MONTHS)
    + r")\b|\b("
    + "|".join(MONTHS)
    + r")\s+(?:the\s+)?(\d{1,2})(?:st|nd|rd|th)?\b",
    re.I,
)


def dates_in(text: str, today: dt.date) -> list[dt.date]:
    """Every day the text names, in order: weekdays (the next one after today), today,
    tomorrow, ISO dates and '3rd of December'."""
    lowered = text.lower()
    found: list[tuple[int, dt.date]] = []
    for match in re.finditer(r"\b(" + "|".join(WEEKDAYS) + r")s?\b", lowered):
        ahead = (WEEKDAYS.index(match.group(1)) - today.weekday()) % 7 or 7
        found.append((match.start(), today + dt.timedelta(days=ahead)))
    for match in re.finditer(r"\b(today|tomorrow)\b", lowered):
        days = 0 if match.group(1) == "today" else 1
        found.append((match.start(), today + dt.timedelta(days=days)))
    for match in re.finditer(r"\b(\d{4})-(\d{2})-(\d{2})\b", lowered):
        try:
            found.append((match.start(), dt.date(*(int(g) for g in match.groups()))))
        except ValueError:
            continue
    for match in _ORDINAL.finditer(lowered):
        day = match.group(1) or match.group(4)
        month = match.group(2) or match.group(3)
        try:
            candidate = dt.date(today.year, MONTHS.index(month) + 1, int(day))
        except ValueError:
            continue
        if candidate < today:
            candidate = candidate.replace(year=today.year + 1)
        found.append((match.start(), candidate))
    return [d for _, d in sorted(found, key=lambda f: f[0])]


def hours_in(text: str) -> list[tuple[int, int]]:
    """(hour on a 24-hour clock, minutes) of every time the text names. A bare number is not
    a time ("two people"): it needs "at", "around", "o'clock", "am"/"pm" or its minutes."""
    out = []
    for match in _TIME.finditer(text):
        raw = match.group("hour").lower()
        hour = int(raw) if raw.isdigit() else _HOURS[raw]
        suffix = (match.group("suffix") or "").lower()
        minutes = match.group("minutes")
        word = (match.group("minute_word") or "").lower().replace("fortyfive", "forty five")
        if not (match.group("lead") or minutes or word or suffix) or hour > 23:
            continue
        if suffix.startswith("p") and hour < 12:
            hour += 12
        elif not suffix.startswith(("a", "p")) and 1 <= hour <= 7:
            hour += 12  # "at four": opening hours make it the afternoon
        out.append((hour, int(minutes) if minutes else _MINUTE_WORDS.get(word, 0)))
    for match in re.finditer(rf"\bhalf\s+past\s+({_HOUR})\b", text, re.I):
        raw = match.group(1).lower()
        hour = int(raw) if raw.isdigit() else _HOURS[raw]
        out.append((hour + 12 if 1 <= hour <= 7 else hour, 30))
    return out


def extract(param: Param, text: str, today: dt.date, *, last: bool = False) -> str | None:
    """The value of ``param`` the caller said in ``text``, in the form the tool takes, or
    None. ``last``: take the last one named ("move it from Wednesday to Thursday")."""
    if param.kind == "date":
        days = [d for d in dates_in(text, today) if d >= today]
        if not days:
            return None
        return (days[-1] if last else days[0]).isoformat()
    if param.kind == "choice":
        times = [c for c in param.choices if re.fullmatch(r"\d{2}:\d{2}", c)]
        if times and len(times) == len(param.choices):
            said = hours_in(text)
            offered = {(int(c[:2]), int(c[3:])): c for c in times}
            picks = [offered[h] for h in said if h in offered]
            if picks:
                return picks[-1] if last else picks[0]
            return None
        lowered = f" {' '.join(re.findall(r'[a-z0-9]+', text.lower()))} "
        named = [
            c
            for c in param.choices
            if f" {' '.join(re.findall(r'[a-z0-9]+', c.lower()))} " in lowered
        ]
        if named:
            return named[-1] if last else named[0]
        return None
    return None
