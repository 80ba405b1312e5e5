"""What the admin panel shows beyond one call: activity per day, the latest audit events, calls
on legal hold and each account's last log-in. Metadata only, never content: the panel reaches
the data through this module and the ``Storage`` facade, not through the tables."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from appliance.core.errors import StorageError
from appliance.core.ports import IncidentState
from appliance.storage import crypto, postgresql, sqlite
from appliance.storage.repository import Storage
from appliance.storage.schema import AuditEvent, Call, ErasureRequest, Incident, Turn


@dataclass(frozen=True)
class Activity:
    """From a day on: calls, incidents, voice-to-voice times and the input guard's verdicts,
    per day (days as ``YYYY-MM-DD``, UTC, as the store keeps its times); and now: the calls
    in progress and the incidents not yet resolved."""

    calls_total: int
    calls_by_day: dict[str, int]
    incidents_by_day: dict[str, int]
    latency_by_day: dict[str, list[float]]
    """Voice-to-voice milliseconds of each turn, by day."""
    input_blocks_by_day: dict[str, int]
    """Turns the input guard blocked, by day."""
    input_verdicts_by_day: dict[str, dict[str, int]] = field(default_factory=dict)
    """Turns by the input guard's verdict (its value as stored: allow, flag, block), by day."""
    calls_live: int = 0
    """Calls with no end recorded: in progress now."""
    incidents_unresolved: int = 0
    """Incidents open or acknowledged (not resolved)."""


def _per_day(session: Session, column: Any, since: datetime) -> dict[str, int]:
    day = func.date(column)
    rows = session.execute(select(day, func.count()).where(column >= since).group_by(day))
    return {str(d): int(n) for d, n in rows.all()}


def activity(storage: Storage, since: datetime) -> Activity:
    with storage.session("dashboard") as session:
        calls_by_day = _per_day(session, Call.started_at, since)
        turns = session.execute(
            select(func.date(Turn.created_at), Turn.voice_to_voice_ms, Turn.guard).where(
                Turn.created_at >= since
            )
        ).all()
        incidents_by_day = _per_day(session, Incident.opened_at, since)
        calls = session.scalar(select(func.count()).select_from(Call)) or 0
        live = session.scalar(select(func.count()).where(Call.ended_at.is_(None))) or 0
        unresolved = session.scalar(
            select(func.count()).where(Incident.state != IncidentState.RESOLVED.value)
        )
    latency: dict[str, list[float]] = {}
    verdicts: dict[str, dict[str, int]] = {}
    for day, v2v, guard in turns:
        if v2v:
            latency.setdefault(str(day), []).append(float(v2v))
        verdict = _input_verdict(guard)
        if verdict:
            counts = verdicts.setdefault(str(day), {})
            counts[verdict] = counts.get(verdict, 0) + 1
    blocks = {day: n["block"] for day, n in verdicts.items() if n.get("block")}
    return Activity(
        int(calls),
        calls_by_day,
        incidents_by_day,
        latency,
        blocks,
        verdicts,
        int(live),
        int(unresolved or 0),
    )


def _input_verdict(guard: str | None) -> str:
    """The input guard's verdict a turn's stored verdicts name ("" for none or unreadable)."""
    try:
        verdicts = json.loads(guard) if guard else {}
    except ValueError:
        return ""
    value = verdicts.get("input") if isinstance(verdicts, dict) else None
    return value if isinstance(value, str) else ""


def recent_audit_events(storage: Storage, limit: int) -> list[AuditEvent]:
    """The newest ``limit`` audit events, newest first."""
    with storage.session("audit page") as session:
        return list(
            session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(limit))
        )


def held_calls(storage: Storage) -> list[Call]:
    with storage.session("holds") as session:
        return list(session.scalars(select(Call).where(Call.legal_hold.is_(True))))


def last_logins(storage: Storage) -> dict[str, datetime]:
    """Each actor's last successful log-in to the panel (``admin:<user>`` -> when)."""
    with storage.session("access review") as session:
        rows = session.execute(
            select(AuditEvent.actor, func.max(AuditEvent.at))
            .where(AuditEvent.action == "login", AuditEvent.outcome == "ok")
            .group_by(AuditEvent.actor)
        ).all()
    return {str(actor): at for actor, at in rows}


def last_event(storage: Storage, action: str, obj: str | None = None) -> AuditEvent | None:
    """The newest successful audit event of ``action`` (on ``obj``, where given): a backup,
    an export of the audit trail, an access review."""
    query = select(AuditEvent).where(AuditEvent.action == action, AuditEvent.outcome == "ok")
    if obj is not None:
        query = query.where(AuditEvent.object == obj)
    with storage.session("last audit event") as session:
        return session.scalars(query.order_by(AuditEvent.seq.desc()).limit(1)).first()


def sealing_sample(storage: Storage, limit: int = 50) -> tuple[int, int]:
    """Of the newest ``limit`` stored transcripts, how many are in the sealed envelope (the
    version byte, a nonce and a GCM tag at least): (sealed, sampled)."""
    with storage.session("sealing sample") as session:
        values = session.scalars(
            select(Turn.transcript)
            .where(Turn.transcript.is_not(None))
            .order_by(Turn.created_at.desc())
            .limit(limit)
        ).all()
    minimum = 1 + crypto.NONCE_BYTES + 16
    sealed = sum(1 for v in values if v and v[:1] == crypto.VERSION and len(v) >= minimum)
    return sealed, len(values)


def database_facts(storage: Storage) -> dict[str, str]:
    """What the database says of its own encryption: SQLCipher's settings, or the TLS of
    the connection to another server (PostgreSQL's pg_stat_ssl)."""
    engine = storage.engine
    if engine.dialect.name == "sqlite" and storage.path is not None:
        return sqlite.cipher_facts(engine, storage.path)
    if engine.dialect.name != "postgresql":
        return {}
    return {k: str(v) for k, v in postgresql.server_facts(engine).items()}


@dataclass(frozen=True)
class ErasureView:
    subject: str
    requested_at: datetime
    completed_at: datetime | None
    calls_held: int


def erasure_requests(storage: Storage) -> list[ErasureView]:
    with storage.session("erasure requests") as session:
        rows = session.scalars(select(ErasureRequest).order_by(ErasureRequest.requested_at))
        return [ErasureView(r.subject, r.requested_at, r.completed_at, r.calls_held) for r in rows]


def event_details(event: AuditEvent) -> dict[str, Any]:
    try:
        details = json.loads(event.details or "{}")
    except ValueError:
        return {}
    return details if isinstance(details, dict) else {}


def incident_counts(storage: Storage) -> dict[tuple[str, str], int]:
    """Incidents by kind and state (``IncidentState`` values), every one kept: for monitoring."""
    with storage.session("metrics") as session:
        rows = session.execute(
            select(Incident.kind, Incident.state, func.count()).group_by(
                Incident.kind, Incident.state
            )
        ).all()
    return {(str(kind), str(state)): int(n) for kind, state, n in rows}


def login_counts(storage: Storage) -> dict[str, int]:
    """The panel's password log-ins by outcome (``ok``, ``failed``, ``limited``), from the
    audit trail: the same count whichever process reads it, and a restart loses none."""
    with storage.session("metrics") as session:
        rows = session.execute(
            select(AuditEvent.outcome, func.count())
            .where(AuditEvent.action == "login")
            .group_by(AuditEvent.outcome)
        ).all()
    return {str(outcome): int(n) for outcome, n in rows}


def reachable(storage: Storage) -> bool:
    """Whether the store answers a query now (the panel's ``/healthz``)."""
    try:
        with storage.session("health") as session:
            session.execute(text("SELECT 1"))
    except StorageError:  # the store failed: "not healthy", never a 500
        return False
    return True
