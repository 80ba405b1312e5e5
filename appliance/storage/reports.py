"""What the admin panel shows beyond one call: activity per day, the latest audit events, calls
on legal hold and each account's last log-in. Metadata only, never content: the panel reaches
the data through this module and the ``Storage`` facade, not through the tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.storage.repository import Storage
from appliance.storage.schema import AuditEvent, Call, Incident, Turn


@dataclass(frozen=True)
class Activity:
    """From a day on: calls, incidents, voice-to-voice times and guard blocks, per day."""

    calls_total: int
    calls_by_day: dict[str, int]
    incidents_by_day: dict[str, int]
    latency_by_day: dict[str, list[float]]
    """Voice-to-voice milliseconds of each turn, by day."""
    input_blocks_by_day: dict[str, int]
    """Turns the input guard blocked, by day."""


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
    latency: dict[str, list[float]] = {}
    blocks: dict[str, int] = {}
    for day, v2v, guard in turns:
        if v2v:
            latency.setdefault(str(day), []).append(float(v2v))
        if guard and '"input": "block"' in guard:
            blocks[str(day)] = blocks.get(str(day), 0) + 1
    return Activity(int(calls), calls_by_day, incidents_by_day, latency, blocks)


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
