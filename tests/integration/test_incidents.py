"""Incident response: states (open, acknowledged, resolved) with who and when, audited in the
same transaction; wrong changes refused with a code and nothing changed; response times from
configuration (overdue incidents, on the store's clock); runbooks per kind; retention keeps what
nobody resolved; migration 10 on an older database; the CLI and the panel."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select, text

from appliance.config.settings import (
    DEFAULT_RUNBOOKS,
    IncidentSettings,
    RetentionSettings,
    load_settings,
)
from appliance.core.errors import ConfigError, IncidentError
from appliance.core.ports import IncidentState, TurnRecord
from appliance.retention.job import run_retention
from appliance.retention.policy import RetentionPolicy
from appliance.storage.incidents import overdue_incidents
from appliance.storage.keys import load_or_create
from appliance.storage.migrations import MIGRATIONS, applied_versions
from appliance.storage.repository import Storage
from appliance.storage.schema import AuditEvent, Incident
from tests.conftest import Backend
from tests.integration.helpers import StepClock, upgraded
from tests.integration.test_admin import client, csrf_of, log_in, world  # noqa: F401
from tests.integration.test_storage_cli import cli

T0 = datetime(2026, 12, 1, 9, 0, 0)


pytestmark = pytest.mark.backends


@pytest.fixture
def clocked(backend: Backend, tmp_path: Path) -> Iterator[tuple[Storage, StepClock]]:
    clock = StepClock(T0)
    storage = backend.open(load_or_create(tmp_path / "k"), clock=clock)
    yield storage, clock
    storage.close()


def events(storage: Storage, action: str) -> list[AuditEvent]:
    with storage.session("check") as db:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        return list(db.scalars(query))


def test_acknowledge_then_resolve_keeps_who_and_when_and_audits_each(
    clocked: tuple[Storage, StepClock],
) -> None:
    storage, clock = clocked
    incident = storage.open_incident("distress", "high", "turn 2: distress path taken")
    assert storage.incident(incident).state is IncidentState.OPEN
    clock.now = T0 + timedelta(minutes=3)
    acked = storage.acknowledge_incident(incident, "admin:olga")
    assert acked.state is IncidentState.ACKNOWLEDGED
    assert (acked.acknowledged_at, acked.acknowledged_by) == (clock.now, "admin:olga")
    clock.now = T0 + timedelta(minutes=9)
    done = storage.resolve_incident(incident, "cli:ops", "called_back")
    assert done.state is IncidentState.RESOLVED
    assert (done.resolved_at, done.resolved_by, done.resolution) == (
        clock.now,
        "cli:ops",
        "called_back",
    )
    assert done.acknowledged_by == "admin:olga"  # the first response stays on the record
    (ack,) = events(storage, "incident_ack")
    (resolve,) = events(storage, "incident_resolve")
    assert (ack.actor, ack.object, ack.outcome, ack.at) == (
        "admin:olga",
        f"incident:{incident}",
        "ok",
        T0 + timedelta(minutes=3),
    )
    assert json.loads(ack.details) == {"from": "open", "kind": "distress", "severity": "high"}
    assert (resolve.actor, resolve.outcome, resolve.at) == ("cli:ops", "ok", clock.now)
    assert json.loads(resolve.details)["note"] == "called_back"
    assert json.loads(resolve.details)["from"] == "acknowledged"
    assert storage.verify_audit().ok
    # An incident may also be resolved straight from open.
    other = storage.open_incident("flood", "high", "calls refused: flood")
    assert storage.resolve_incident(other, "cli:ops").state is IncidentState.RESOLVED


@pytest.mark.parametrize(
    ("steps", "wrong", "code"),
    [
        (["resolve"], "resolve", "incident.resolved"),
        (["resolve"], "ack", "incident.resolved"),
        (["ack"], "ack", "incident.acknowledged"),
        ([], "resolve-unknown", "incident.unknown"),
        ([], "ack-unknown", "incident.unknown"),
    ],
)
def test_a_wrong_change_is_refused_with_a_code_and_changes_nothing(
    store: Storage, steps: list[str], wrong: str, code: str
) -> None:
    incident = store.open_incident("probing", "medium", "3 blocked turns; action end_call")
    for step in steps:
        if step == "ack":
            store.acknowledge_incident(incident, "admin:first")
        else:
            store.resolve_incident(incident, "admin:first", "false_alarm")
    before = store.incident(incident)
    target = "no-such-incident" if wrong.endswith("unknown") else incident
    with pytest.raises(IncidentError) as refused:
        if wrong.startswith("ack"):
            store.acknowledge_incident(target, "admin:second")
        else:
            store.resolve_incident(target, "admin:second", "other")
    assert refused.value.code == code
    assert store.incident(incident) == before  # nothing changed
    action = "incident_ack" if wrong.startswith("ack") else "incident_resolve"
    last = events(store, action)[-1]
    assert last.actor == "admin:second"
    assert last.outcome == ("unknown" if code == "incident.unknown" else "refused")


def test_a_resolution_note_is_a_code_not_a_text(store: Storage) -> None:
    incident = store.open_incident("probing", "medium", "3 blocked turns")
    with pytest.raises(IncidentError) as refused:
        store.resolve_incident(incident, "admin:x", "Called Mrs Smith on 555 0100")
    assert refused.value.code == "incident.bad_note"
    assert store.incident(incident).state is IncidentState.OPEN
    assert events(store, "incident_resolve") == []


def test_overdue_counts_an_open_high_incident_past_15_minutes_and_not_a_resolved_one(
    clocked: tuple[Storage, StepClock],
) -> None:
    storage, clock = clocked
    minutes = IncidentSettings().response_minutes
    assert minutes["high"] == 15
    late = storage.open_incident("distress", "high", "turn 1: distress path taken")
    handled = storage.open_incident("flood", "high", "calls refused: flood")
    acked = storage.open_incident("flood", "high", "calls refused: flood")
    medium = storage.open_incident("probing", "medium", "3 blocked turns")
    storage.resolve_incident(handled, "admin:olga")
    storage.acknowledge_incident(acked, "admin:olga")
    clock.now = T0 + timedelta(minutes=15)
    assert overdue_incidents(storage, minutes, clock.now) == []  # not older than 15 minutes yet
    clock.now = T0 + timedelta(minutes=16)
    overdue = overdue_incidents(storage, minutes, clock.now)
    # Acknowledging does not stop the clock; resolving does; medium has 240 minutes.
    assert {v.id for v in overdue} == {late, acked}
    assert medium not in {v.id for v in overdue}
    clock.now = T0 + timedelta(minutes=241)
    assert medium in {v.id for v in overdue_incidents(storage, minutes, clock.now)}


def test_a_severity_without_a_response_time_gets_the_strictest(
    clocked: tuple[Storage, StepClock],
) -> None:
    storage, clock = clocked
    odd = storage.open_incident("custom", "critical", "from elsewhere")
    clock.now = T0 + timedelta(minutes=20)
    assert [v.id for v in overdue_incidents(storage, {"high": 15, "low": 1440}, clock.now)] == [odd]
    assert overdue_incidents(storage, {}, clock.now) == []


def test_every_kind_the_appliance_opens_has_a_runbook_and_others_say_none_is_configured(
    tmp_path: Path,
) -> None:
    # The kinds opened in service.py (flood via identity/abuse.py, probing, volume_spike,
    # topic_drift), by the distress path (guard/call.py escalation), and the red-team gate.
    opened = {"distress", "flood", "probing", "volume_spike", "topic_drift", "redteam_gate"}
    settings = IncidentSettings()
    assert opened <= set(DEFAULT_RUNBOOKS)
    for kind in opened:
        assert settings.runbook(kind) == DEFAULT_RUNBOOKS[kind]
    assert "No runbook is configured" in settings.runbook("tailgating")
    assert "'tailgating'" in settings.runbook("tailgating")
    config = tmp_path / "c.toml"
    config.write_text(
        '[incidents.runbooks]\ndistress = "Ring the duty manager."\n'
        "[incidents.response_minutes]\nhigh = 5\n"
    )
    custom = load_settings(config, environ={}).incidents
    assert custom.runbook("distress") == "Ring the duty manager."
    assert custom.runbook("flood") == DEFAULT_RUNBOOKS["flood"]  # merged over the defaults
    assert custom.response_minutes == {"high": 5, "medium": 240, "low": 1440}


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[incidents.response_minutes]\nurgent = 5\n", "incidents.response_minutes.urgent"),
        ("[incidents.response_minutes]\nhigh = 0\n", "incidents.response_minutes.high"),
        ('[incidents.runbooks]\ndistress = "  "\n', "incidents.runbooks.distress"),
        ('[incidents.runbooks]\n"Bad Kind" = "x"\n', "incidents.runbooks.Bad Kind"),
        ('[incidents]\nrunbooks = "text"\n', "incidents.runbooks"),
    ],
)
def test_bad_incident_settings_are_refused_with_the_key(
    tmp_path: Path, toml: str, key: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as refused:
        load_settings(config, environ={})
    assert key in str(refused.value)


def test_retention_keeps_an_unresolved_incident_and_purges_a_resolved_one_after_its_period(
    clocked: tuple[Storage, StepClock],
) -> None:
    storage, clock = clocked
    unresolved = storage.open_incident("distress", "high", "turn 1: distress path taken")
    acknowledged = storage.open_incident("flood", "high", "calls refused: flood")
    storage.acknowledge_incident(acknowledged, "admin:olga")
    resolved = storage.open_incident("probing", "medium", "3 blocked turns")
    clock.now = T0 + timedelta(days=300)
    storage.resolve_incident(resolved, "admin:olga")
    policy = RetentionPolicy.from_settings(RetentionSettings(incidents_days=365))
    clock.now = T0 + timedelta(days=400)  # all opened over 365 days ago
    run_retention(storage, policy)
    kept = {v.id for v in storage.incidents()}
    assert kept == {unresolved, acknowledged, resolved}  # resolved 100 days ago: kept
    clock.now = T0 + timedelta(days=300 + 366)
    report = run_retention(storage, policy)
    assert report.purged["incidents"] == 1
    assert {v.id for v in storage.incidents()} == {unresolved, acknowledged}


def test_a_database_from_before_migration_10_gains_incident_states(tmp_path: Path) -> None:
    """As schema 8 left it: no state columns, one incident closed (closed_at), one open."""
    at_schema_8 = (
        "DROP INDEX ix_incidents_state_opened",
        *(
            f"ALTER TABLE incidents DROP COLUMN {column}"
            for column in (
                "state",
                "acknowledged_at",
                "acknowledged_by",
                "resolved_at",
                "resolved_by",
                "resolution",
            )
        ),
        "INSERT INTO incidents (id, kind, severity, summary, opened_at, closed_at) VALUES "
        "('old-closed', 'flood', 'high', 'calls refused', '2026-01-01 10:00:00', "
        "'2026-01-01 11:00:00')",
        "INSERT INTO incidents (id, kind, severity, summary, opened_at) VALUES "
        "('old-open', 'probing', 'medium', '3 blocked turns', '2026-01-02 10:00:00')",
        "DELETE FROM schema_migrations WHERE version = 10",
    )
    with upgraded(tmp_path, "+15550100", *at_schema_8) as (store, _):
        closed = store.incident("old-closed")
        assert closed.state is IncidentState.RESOLVED
        assert closed.resolved_at == datetime(2026, 1, 1, 11, 0)
        assert store.incident("old-open").state is IncidentState.OPEN
        assert store.acknowledge_incident("old-open", "admin:x").acknowledged_by == "admin:x"
        assert 10 in applied_versions(store.engine)
        with store.session("columns") as db:
            names = {r[1] for r in db.execute(text("PRAGMA table_info(incidents)"))}
        assert {"state", "acknowledged_at", "resolved_by", "resolution"} <= names


def test_migration_10_is_a_no_op_on_a_new_database(store: Storage) -> None:
    assert applied_versions(store.engine) == {m.version for m in MIGRATIONS}
    assert 10 in applied_versions(store.engine)
    (migration,) = [m for m in MIGRATIONS if m.version == 10]
    with store.engine.begin() as connection:
        migration.apply(connection)  # again: everything exists, nothing fails
    incident = store.open_incident("flood", "high", "calls refused")
    assert store.incident(incident).state is IncidentState.OPEN


def test_a_distress_turn_opens_an_open_incident(store: Storage) -> None:
    handle = store.start_call("+15550100", "wav")
    handle.record_turn(TurnRecord(1, "[redacted]", "help is coming", escalation="distress"))
    (view,) = store.incidents()
    assert (view.kind, view.state) == ("distress", IncidentState.OPEN)
    with store.session("check") as db:
        assert db.scalars(select(Incident.state)).one() == "open"


def test_the_cli_lists_acknowledges_and_resolves(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Storage.open_sqlite(
        home / "appliance.db", load_or_create(home / "keys" / "master.key"), clock=lambda: T0
    )  # opened on a day long past: by the command's clock, far beyond 15 minutes
    first = store.open_incident("distress", "high", "turn 1: distress path taken")
    second = store.open_incident("flood", "high", "calls refused: flood")
    store.close()
    acked = cli(home, "incidents", "ack", first)
    assert acked.returncode == 0, acked.stderr
    assert f"{first}: acknowledged by cli:" in acked.stdout
    resolved = cli(home, "incidents", "resolve", second, "--note", "false_alarm")
    assert resolved.returncode == 0, resolved.stderr
    again = cli(home, "incidents", "resolve", second)
    assert again.returncode == 1 and "incident.resolved" in again.stderr
    rows = json.loads(cli(home, "incidents", "list", "--json").stdout)
    by_id = {r["id"]: r for r in rows}
    assert by_id[first]["state"] == "acknowledged"
    assert by_id[first]["acknowledged_by"].startswith("cli:")
    assert (by_id[second]["state"], by_id[second]["resolution"]) == ("resolved", "false_alarm")
    assert (by_id[first]["overdue"], by_id[second]["overdue"]) == (True, False)
    only = json.loads(cli(home, "incidents", "list", "--state", "resolved", "--json").stdout)
    assert [r["id"] for r in only] == [second]
    table = cli(home, "incidents", "list").stdout
    assert first in table and "acknowledged" in table
    assert [line for line in table.splitlines() if "OVERDUE" in line] == [
        line for line in table.splitlines() if line.startswith(first)
    ]
    wrong = cli(home, "incidents", "list", "--state", "closed")
    assert wrong.returncode == 2 and "acknowledged" in wrong.stderr


def test_the_panel_shows_state_runbook_and_its_buttons_act(world: tuple[Flask, Storage]) -> None:  # noqa: F811
    app, storage = world
    opened_at = datetime(2026, 12, 1, 9, 0)
    storage.clock = lambda: opened_at
    incident = storage.open_incident("distress", "high", "turn 1: distress path taken")
    odd = storage.open_incident("tailgating", "low", "from elsewhere")
    storage.clock = lambda: opened_at + timedelta(minutes=16)
    operator = client(app)
    log_in(operator, storage, "olga")
    page = operator.get("/incidents").get_data(as_text=True)
    row = page[page.index(f'id="incident-{incident}"') :]
    assert "overdue" in row.split("</tr>")[0] and 'id="overdue-count">1 overdue' in page
    assert "call the emergency services for them" in page  # the distress runbook
    assert "No runbook is configured for incidents of kind &#39;tailgating&#39;" in page
    assert 'value="ack">Acknowledge' in page and 'value="resolve">Resolve' in page
    token = csrf_of(page)
    acked = operator.post(f"/incidents/{incident}", data={"csrf": token, "action": "ack"})
    assert acked.status_code == 200
    assert f"Incident {incident}: acknowledged." in acked.get_data(as_text=True)
    view = storage.incident(incident)
    assert (view.state, view.acknowledged_by) == (IncidentState.ACKNOWLEDGED, "admin:olga")
    shown = operator.get("/incidents").get_data(as_text=True)
    assert re.search(r"2026-12-01 09:16 by admin:olga", shown)
    twice = operator.post(f"/incidents/{incident}", data={"csrf": token, "action": "ack"})
    assert twice.status_code == 409 and "acknowledged already" in twice.get_data(as_text=True)
    data = {"csrf": token, "action": "resolve", "note": "called_back"}
    done = operator.post(f"/incidents/{incident}", data=data)
    assert done.status_code == 200
    assert storage.incident(incident).resolution == "called_back"
    missing = operator.post("/incidents/nope", data={"csrf": token, "action": "ack"})
    assert missing.status_code == 404
    assert operator.post(f"/incidents/{odd}", data={"action": "ack"}).status_code == 403  # CSRF
    auditor = client(app)
    log_in(auditor, storage, "audrey")
    read = auditor.get("/incidents").get_data(as_text=True)
    assert "called_back" in read and 'value="resolve"' not in read  # reads, no buttons
    refused = auditor.post(f"/incidents/{odd}", data={"csrf": csrf_of(read), "action": "ack"})
    assert refused.status_code == 403
    assert storage.incident(odd).state is IncidentState.OPEN
    (ack,) = [e for e in events(storage, "incident_ack") if e.outcome == "ok"]
    assert ack.actor == "admin:olga"
