"""The dashboard's drawing as pure logic (appliance/admin/dashboard.py): round y-axes, the
nearest-rank percentile, a day without a value left as a gap (never drawn as zero), stacked
verdict bars, the 1000 ms target on the latency chart, and the red-team trend read from the
reports on disk."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from appliance.admin import dashboard as board
from appliance.admin.dashboard import Standing, axis, percentile
from appliance.storage.reports import Activity
from tests.unit.test_redteam_gate import write_report

pytestmark = pytest.mark.unit

DAYS = [dt.date(2026, 12, 1), dt.date(2026, 12, 2), dt.date(2026, 12, 3)]


def activity(**changes: object) -> Activity:
    fields: dict[str, object] = {
        "calls_total": 5,
        "calls_by_day": {"2026-12-01": 2, "2026-12-03": 3},
        "incidents_by_day": {},
        "latency_by_day": {"2026-12-01": [800.0], "2026-12-03": [900.0, 1100.0, 2400.0]},
        "input_blocks_by_day": {"2026-12-03": 1},
        "input_verdicts_by_day": {"2026-12-03": {"allow": 4, "flag": 2, "block": 1}},
        "calls_live": 2,
        "incidents_unresolved": 0,
    }
    return Activity(**{**fields, **changes})  # type: ignore[arg-type]


def test_an_axis_has_round_ticks_from_its_floor_to_a_top_at_or_above_the_peak() -> None:
    assert axis(2400) == board.Axis(0, 3000, 1000)
    assert [t.label for t in axis(2400).ticks(" ms")] == ["0 ms", "1000 ms", "2000 ms", "3000 ms"]
    assert axis(1, integer=True) == board.Axis(0, 1, 1)  # counts: no half a call
    assert axis(7, integer=True) == board.Axis(0, 8, 2)
    assert axis(100, 80) == board.Axis(80, 100, 5)
    scale = axis(3000)
    assert scale.y(0) == board.BOTTOM and scale.y(3000) == board.TOP


def test_the_percentile_is_the_nearest_rank() -> None:
    assert percentile([2400.0, 900.0, 1100.0], 50) == 1100
    assert percentile([2400.0, 900.0, 1100.0], 95) == 2400
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3  # rounding half to even gave 2
    assert percentile([], 50) is None and percentile(None, 95) is None


def test_the_figures_are_printed_with_their_units_against_their_thresholds() -> None:
    drawn = board.dashboard(activity(), DAYS, [])
    figures = {f.label: f for f in drawn.figures}
    assert figures["Calls today"].value == "3 calls"
    assert figures["Live calls now"].value == "2 calls"
    p50, p95 = figures["Voice-to-voice p50 today"], figures["Voice-to-voice p95 today"]
    assert (p50.value, p50.standing) == ("1100 ms", Standing.OVER)
    assert (p95.value, p95.note) == ("2400 ms", "above the 1000 ms target")
    assert figures["Guard blocks today"].value == "1 turn"
    assert figures["Open incidents"].standing == Standing.WITHIN
    quiet = board.dashboard(activity(latency_by_day={"2026-12-03": [640.0]}), DAYS, [])
    assert {f.label: f.value for f in quiet.figures}["Voice-to-voice p95 today"] == "640 ms"
    assert {f.label: f.standing for f in quiet.figures}["Voice-to-voice p95 today"] == (
        Standing.WITHIN
    )


def test_latency_leaves_a_day_without_turns_as_a_gap_and_draws_the_target() -> None:
    charts = {c.key: c for c in board.dashboard(activity(), DAYS, []).charts}
    latency = charts["latency"]
    assert [p.title for p in latency.points if p.series == "p50"] == [
        "2026-12-01: p50 800 ms",
        "2026-12-03: p50 1100 ms",
    ]
    assert [series for series, _ in latency.lines] == []  # 12-02 had no turn: no line across
    (target,) = latency.thresholds
    assert target.label == "target 1000 ms" and target.y == axis(2400).y(1000)
    assert latency.rows[1] == ("2026-12-02", "-", "-")


def test_verdicts_stack_per_day_and_their_heights_add_up() -> None:
    verdicts = {c.key: c for c in board.dashboard(activity(), DAYS, []).charts}["verdicts"]
    bars = [b for b in verdicts.bars if b.title.startswith("2026-12-03")]
    assert [b.title for b in bars] == [
        "2026-12-03: passed 4",
        "2026-12-03: flagged 2",
        "2026-12-03: blocked 1",
    ]
    scale = axis(7, integer=True)
    assert sum(b.height for b in bars) == pytest.approx(scale.y(0) - scale.y(7), abs=0.2)
    assert bars[-1].y == scale.y(7)  # blocked on top
    assert verdicts.rows[-1] == ("2026-12-03", "4", "2", "1")


def test_the_red_team_trend_is_each_report_oldest_first_with_its_targets(
    tmp_path: Path,
) -> None:
    now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    write_report(tmp_path, "b", None, stopped=0.99, refused=0.01, finished=now)
    write_report(tmp_path, "a", None, stopped=0.95, refused=0.04,
                 finished=now - dt.timedelta(days=5))  # fmt: skip
    broken = tmp_path / "redteam" / "c"
    broken.mkdir()
    (broken / "report.json").write_text('{"mode": "text"}')  # no figures: left out
    trend = board.red_team_trend(tmp_path)
    assert [(p.name, p.stopped_pct, p.refused_pct) for p in trend] == [
        ("a", 95.0, 4.0),
        ("b", 99.0, 1.0),
    ]
    charts = {c.key: c for c in board.dashboard(activity(), DAYS, trend).charts}
    stopped = charts["redteam-stopped"]
    assert [t.label for t in stopped.thresholds] == ["target >= 97%"]
    assert [t.label for t in stopped.ticks] == ["80%", "85%", "90%", "95%", "100%"]
    assert [t.label for t in charts["redteam-refused"].thresholds] == ["target <= 2%"]
    figures = {f.label: f for f in board.dashboard(activity(), DAYS, trend).figures}
    assert figures["Red team: attacks stopped"].value == "99.0%"
    assert figures["Red team: benign refused"].standing == Standing.WITHIN
    assert board.dashboard(activity(), DAYS, []).charts[-1].empty.startswith("No red-team")
