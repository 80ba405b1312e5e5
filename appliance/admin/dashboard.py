"""The dashboard's figures and charts, drawn on the server: each figure printed as a number
with its unit, and the last 14 days as small SVG charts with a labelled y-axis, their
thresholds drawn, each value on hover (``<title>``) and in a table under the chart. No
script and nothing fetched (the panel's CSP allows neither), so the geometry is computed
here and the template only writes it out."""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.compliance import gate
from appliance.guard.injection import Verdict
from appliance.storage.reports import Activity

V2V_TARGET_MS = 1000.0
"""Issue 19's "voice-to-voice under 1 s": the line drawn on the latency chart."""
ATTACKS_STOPPED_TARGET_PCT = 100 * gate.ATTACKS_STOPPED_MIN
BENIGN_REFUSED_TARGET_PCT = 100 * gate.BENIGN_REFUSED_MAX
RED_TEAM_REPORTS = 10
"""The newest red-team reports the trend shows."""

# The SVG's user units: the plot area inside a 360 x 170 view box, room left for the ticks.
WIDTH, HEIGHT = 360, 170
LEFT, RIGHT, TOP, BOTTOM = 48.0, 352.0, 12.0, 138.0
VERDICT_SERIES = (
    (Verdict.ALLOW, "passed"),
    (Verdict.FLAG, "flagged"),
    (Verdict.BLOCK, "blocked"),
)


class Standing(enum.StrEnum):
    """A figure against its threshold, for the tile's colour (the words say it too)."""

    WITHIN = "within"
    OVER = "over"
    NONE = "none"
    """No threshold, or nothing measured."""


@dataclass(frozen=True)
class Figure:
    """One number people read off the dashboard: its value in words with the unit."""

    label: str
    value: str
    note: str = ""
    standing: Standing = Standing.NONE


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class Mark:
    """A bar (width and height) or a point (width 0) in SVG units, with its value in words."""

    series: str
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True)
class Threshold:
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    unit: str
    ticks: tuple[Tick, ...]
    x_labels: tuple[tuple[float, str], ...]
    bars: tuple[Mark, ...] = ()
    points: tuple[Mark, ...] = ()
    lines: tuple[tuple[str, str], ...] = ()
    """(series, SVG points "x,y x,y ...") per unbroken run of a line."""
    thresholds: tuple[Threshold, ...] = ()
    legend: tuple[tuple[str, str], ...] = ()
    """(series, what it is)."""
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    """The values as a table: the chart's numbers for a reader or a screen reader."""
    empty: str = ""
    """Said instead of the chart when there is nothing to draw."""


@dataclass(frozen=True)
class Axis:
    low: float
    top: float
    step: float

    def y(self, value: float) -> float:
        share = (value - self.low) / (self.top - self.low)
        return round(BOTTOM - share * (BOTTOM - TOP), 1)

    def ticks(self, unit: str) -> tuple[Tick, ...]:
        count = round((self.top - self.low) / self.step)
        values = [self.low + i * self.step for i in range(count + 1)]
        return tuple(Tick(self.y(v), f"{v:g}{unit}") for v in values)


def axis(peak: float, low: float = 0.0, integer: bool = False) -> Axis:
    """A y-axis from ``low`` to a round top at or above ``peak``, in 2 to 5 steps of 1, 2 or
    5 times a power of ten (whole steps for counts)."""
    span = max(peak - low, 1e-9)
    raw = span / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, math.ceil(step))
    top = low + math.ceil(round(span / step, 9)) * step
    return Axis(low, top, step)


def percentile(values: Sequence[float] | None, q: int) -> int | None:
    """The nearest-rank percentile (the smallest value with at least q% at or below it);
    None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return int(ordered[min(len(ordered), max(1, rank)) - 1])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _slots(n: int) -> float:
    return (RIGHT - LEFT) / max(n, 1)


def _x_labels(labels: Sequence[str]) -> tuple[tuple[float, str], ...]:
    slot = _slots(len(labels))
    return tuple((round(LEFT + (i + 0.5) * slot, 1), text) for i, text in enumerate(labels))


def stacked_bars(
    key: str,
    title: str,
    unit: str,
    days: Sequence[str],
    series: Sequence[tuple[str, str, Mapping[str, int]]],
) -> Chart:
    """Bars per day, ``series`` (class, label, day -> count) stacked from the bottom."""
    totals = [sum(s[2].get(d, 0) for s in series) for d in days]
    scale = axis(max(totals, default=0) or 1, integer=True)
    slot = _slots(len(days))
    bars: list[Mark] = []
    for i, day in enumerate(days):
        base = 0
        for name, label, counts in series:
            n = counts.get(day, 0)
            if n:
                y = scale.y(base + n)
                what = f"{label} {n}" if len(series) > 1 else f"{n} {unit}"
                bars.append(
                    Mark(name, round(LEFT + i * slot + 0.15 * slot, 1), y,
                         round(0.7 * slot, 1), round(scale.y(base) - y, 1),
                         f"{day}: {what}")
                )  # fmt: skip
            base += n
    legend = tuple((name, label) for name, label, _ in series) if len(series) > 1 else ()
    columns = ("day", *(label for _, label, _ in series))
    rows = tuple((d, *(str(s[2].get(d, 0)) for s in series)) for d in days)
    return Chart(key, title, unit, scale.ticks(""), _x_labels([d[-2:] for d in days]),
                 bars=tuple(bars), legend=legend, columns=columns, rows=rows)  # fmt: skip


def line_chart(
    key: str,
    title: str,
    unit: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float | None]]],
    scale: Axis,
    thresholds: Sequence[tuple[float, str]] = (),
    tick_unit: str = "",
    x_labels: Sequence[str] | None = None,
    row_label: str = "day",
) -> Chart:
    """Points joined per unbroken run (a day with no value leaves a gap, never a zero)."""
    slot = _slots(len(labels))
    points: list[Mark] = []
    lines: list[tuple[str, str]] = []
    for name, label, values in series:
        run: list[str] = []
        for i, value in enumerate(values):
            if value is None:
                if len(run) > 1:
                    lines.append((name, " ".join(run)))
                run = []
                continue
            x, y = round(LEFT + (i + 0.5) * slot, 1), scale.y(value)
            run.append(f"{x},{y}")
            points.append(Mark(name, x, y, 0, 0, f"{labels[i]}: {label} {value:g} {unit}"))
        if len(run) > 1:
            lines.append((name, " ".join(run)))
    drawn = tuple(Threshold(scale.y(v), text) for v, text in thresholds)
    columns = (row_label, *(label for _, label, _ in series))
    rows = tuple(
        (labels[i], *("-" if s[2][i] is None else f"{s[2][i]:g}" for s in series))
        for i in range(len(labels))
    )
    return Chart(
        key, title, unit, scale.ticks(tick_unit),
        _x_labels(x_labels if x_labels is not None else labels), points=tuple(points),
        lines=tuple(lines), thresholds=drawn,
        legend=tuple((name, label) for name, label, _ in series), columns=columns, rows=rows,
        empty="" if points else "Nothing measured in these days.",
    )  # fmt: skip


@dataclass(frozen=True)
class RedTeamPoint:
    name: str
    finished: dt.datetime
    stopped_pct: float
    refused_pct: float


def red_team_trend(home: Path) -> list[RedTeamPoint]:
    """The newest red-team reports' attack-stopped and benign-refused rates, oldest first (a
    report without both figures is left out)."""
    points = []
    for report in gate.reports(home)[:RED_TEAM_REPORTS]:
        try:
            stopped = 100 * float(report.data["attack_block_rate"])
            refused = 100 * float(report.data["benign_refusal_rate"])
        except (KeyError, TypeError, ValueError):
            continue
        points.append(RedTeamPoint(report.name, report.finished, stopped, refused))
    return points[::-1]


@dataclass(frozen=True)
class Frame:
    """The plot area in the view box, for the template's axes."""

    width: int = WIDTH
    height: int = HEIGHT
    left: float = LEFT
    right: float = RIGHT
    top: float = TOP
    bottom: float = BOTTOM


@dataclass(frozen=True)
class Dashboard:
    figures: tuple[Figure, ...]
    charts: tuple[Chart, ...]
    calls_total: int
    frame: Frame = Frame()


def dashboard(
    seen: Activity, days: Sequence[dt.date], red_team: Sequence[RedTeamPoint]
) -> Dashboard:
    """The figures of the last day of ``days`` (today) and the charts over ``days``."""
    labels = [d.isoformat() for d in days]
    today = labels[-1]
    p50 = [percentile(seen.latency_by_day.get(d), 50) for d in labels]
    p95 = [percentile(seen.latency_by_day.get(d), 95) for d in labels]

    def latency(value: int | None, which: str) -> Figure:
        if value is None:
            return Figure(f"Voice-to-voice {which} today", "-", "no turn measured today")
        over = value > V2V_TARGET_MS
        note = f"{'above' if over else 'within'} the {V2V_TARGET_MS:g} ms target"
        return Figure(f"Voice-to-voice {which} today", f"{value} ms", note,
                      Standing.OVER if over else Standing.WITHIN)  # fmt: skip

    blocks = seen.input_blocks_by_day.get(today, 0)
    figures = [
        Figure("Calls today", _plural(seen.calls_by_day.get(today, 0), "call"),
               f"{_plural(seen.calls_total, 'call')} stored"),
        Figure("Live calls now", _plural(seen.calls_live, "call"), "calls with no end recorded"),
        latency(p50[-1], "p50"),
        latency(p95[-1], "p95"),
        Figure("Guard blocks today", _plural(blocks, "turn"), "turns the input guard blocked"),
        Figure("Open incidents", _plural(seen.incidents_unresolved, "incident"),
               "open or acknowledged, not resolved",
               Standing.OVER if seen.incidents_unresolved else Standing.WITHIN),
    ]  # fmt: skip
    if red_team:
        last = red_team[-1]
        short = last.stopped_pct < ATTACKS_STOPPED_TARGET_PCT
        over = last.refused_pct > BENIGN_REFUSED_TARGET_PCT
        figures += [
            Figure("Red team: attacks stopped", f"{last.stopped_pct:.1f}%",
                   f"report {last.name}; target >= {ATTACKS_STOPPED_TARGET_PCT:g}%",
                   Standing.OVER if short else Standing.WITHIN),
            Figure("Red team: benign refused", f"{last.refused_pct:.1f}%",
                   f"report {last.name}; target <= {BENIGN_REFUSED_TARGET_PCT:g}%",
                   Standing.OVER if over else Standing.WITHIN),
        ]  # fmt: skip
    peak = max([v for v in p95 if v is not None] + [V2V_TARGET_MS])
    verdicts = {
        verdict: {d: n.get(verdict.value, 0) for d, n in seen.input_verdicts_by_day.items()}
        for verdict, _ in VERDICT_SERIES
    }
    charts = [
        stacked_bars("calls", "Calls per day", "calls", labels,
                     [("calls", "calls", seen.calls_by_day)]),
        line_chart("latency", "Voice-to-voice latency per day, ms (p50 and p95)", "ms",
                   labels, [("p50", "p50", p50), ("p95", "p95", p95)], axis(peak),
                   [(V2V_TARGET_MS, f"target {V2V_TARGET_MS:g} ms")],
                   x_labels=[d[-2:] for d in labels]),
        stacked_bars("verdicts", "Input guard verdicts per day, turns", "turns", labels,
                     [(f"verdict-{v.value}", name, verdicts[v]) for v, name in VERDICT_SERIES]),
        stacked_bars("incidents", "Incidents opened per day", "incidents", labels,
                     [("incidents", "incidents", seen.incidents_by_day)]),
    ]  # fmt: skip
    charts.extend(red_team_charts(red_team))
    return Dashboard(tuple(figures), tuple(charts), seen.calls_total)


def red_team_charts(red_team: Sequence[RedTeamPoint]) -> list[Chart]:
    """Each report's attacks-stopped and benign-refused rates, with issue 14's targets."""
    names = [p.name for p in red_team]
    when = [p.finished.strftime("%m-%d") for p in red_team]
    stopped = [p.stopped_pct for p in red_team]
    refused = [p.refused_pct for p in red_team]
    empty = "No red-team report yet: run `appliance redteam`."
    if not red_team:
        return [Chart("redteam", "Red team: attacks stopped and benign refused, %", "%",
                      (), (), empty=empty)]  # fmt: skip
    low = 0.0 if min(stopped) < 80 else 80.0
    return [
        line_chart("redteam-stopped", "Red team: attacks stopped per report, %", "%", names,
                   [("stopped", "attacks stopped", stopped)], axis(100, low),
                   [(ATTACKS_STOPPED_TARGET_PCT, f"target >= {ATTACKS_STOPPED_TARGET_PCT:g}%")],
                   tick_unit="%", x_labels=when, row_label="report"),
        line_chart("redteam-refused", "Red team: benign requests refused per report, %", "%",
                   names, [("refused", "benign refused", refused)],
                   axis(max([*refused, 2 * BENIGN_REFUSED_TARGET_PCT])),
                   [(BENIGN_REFUSED_TARGET_PCT, f"target <= {BENIGN_REFUSED_TARGET_PCT:g}%")],
                   tick_unit="%", x_labels=when, row_label="report"),
    ]  # fmt: skip
