"""Incidents: codes and counts for a person to follow up, never what was said.

An incident is open, then acknowledged (someone has it), then resolved, or resolved straight
from open; never back (``IncidentState``). Each change keeps who and when on the row and leaves
an audit event in the same transaction; a change the states do not allow (resolving twice,
acknowledging a resolved or acknowledged incident) or of an incident that does not exist
changes nothing, leaves a ``refused`` or ``unknown`` event, and raises ``IncidentError``.

Response times (``overdue_incidents``) run from opening to resolution: acknowledging does not
stop the clock. An acknowledgement is one click; what an auditor asks is whether incidents were
dealt with in time, and a count that a click could empty would not answer it. The minutes per
severity come from the caller (``[incidents] response_minutes``): storage reads no settings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.core.errors import IncidentError
from appliance.core.ports import IncidentState
from appliance.storage.base import SYSTEM_ACTOR, StoreBase
from appliance.storage.schema import Caller, Incident

NOTE_CODE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
"""A resolution's note: a code (``false_alarm``, ``called_back``), never free text, so no
personal data can reach the row or the audit trail through it."""
NEXT_STATES: dict[IncidentState, frozenset[IncidentState]] = {
    IncidentState.OPEN: frozenset({IncidentState.ACKNOWLEDGED, IncidentState.RESOLVED}),
    IncidentState.ACKNOWLEDGED: frozenset({IncidentState.RESOLVED}),
    IncidentState.RESOLVED: frozenset(),
}
"""The changes each state allows: forward only, each once."""


@dataclass(frozen=True)
class IncidentView:
    """One incident as staff see it: metadata and codes, no content."""

    id: str
    kind: str
    severity: str
    summary: str
    call_id: str | None
    opened_at: datetime
    state: IncidentState
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None

    def record(self) -> dict[str, str | None]:
        """As the API and ``appliance incidents list --json`` give it (times in ISO 8601)."""

        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id,
            "opened_at": self.opened_at.isoformat(),
            "kind": self.kind,
            "severity": self.severity,
            "call_id": self.call_id,
            "summary": self.summary,
            "state": self.state.value,
            "acknowledged_at": when(self.acknowledged_at),
            "acknowledged_by": self.acknowledged_by,
            "resolved_at": when(self.resolved_at),
            "resolved_by": self.resolved_by,
            "resolution": self.resolution,
        }


def view_of(row: Incident) -> IncidentView:
    return IncidentView(
        id=row.id,
        kind=row.kind,
        severity=row.severity,
        summary=row.summary,
        call_id=row.call_id,
        opened_at=row.opened_at,
        state=IncidentState(row.state),
        acknowledged_at=row.acknowledged_at,
        acknowledged_by=row.acknowledged_by,
        resolved_at=row.resolved_at,
        resolved_by=row.resolved_by,
        resolution=row.resolution,
    )


class Incidents(StoreBase):
    """Incidents opened by the guards, floods and probing, and their handling by staff."""

    def open_incident(
        self,
        kind: str,
        severity: str,
        summary: str,
        *,
        call_id: str | None = None,
        caller_hash: str | None = None,
    ) -> str:
        """An incident for a person to follow up (codes and counts only), and its audit event."""
        with self.session("open incident") as session:
            caller_row = None
            if caller_hash:
                caller = session.scalars(
                    select(Caller).where(Caller.caller_hash == caller_hash)
                ).first()
                caller_row = caller.id if caller else None
            incident = Incident(
                call_id=call_id,
                caller_id=caller_row,
                kind=kind,
                severity=severity,
                summary=summary,
                opened_at=self.clock(),
                state=IncidentState.OPEN.value,
            )
            session.add(incident)
            session.flush()
            self.audit_in(session, SYSTEM_ACTOR, "incident_opened", f"incident:{incident.id}", kind)
            return incident.id

    def incidents(self, state: IncidentState | None = None, limit: int = 200) -> list[IncidentView]:
        """Newest first; ``state`` keeps those in it. Codes and counts, never what was said:
        no content, so no audit event."""
        with self.session("list incidents") as session:
            query = select(Incident).order_by(Incident.opened_at.desc()).limit(limit)
            if state is not None:
                query = query.where(Incident.state == state.value)
            return [view_of(r) for r in session.scalars(query).all()]

    def list_incidents(self, limit: int = 200) -> list[dict[str, str | None]]:
        """``incidents`` as plain records (the API, the CLI's JSON)."""
        return [view.record() for view in self.incidents(limit=limit)]

    def incident(self, incident_id: str) -> IncidentView:
        """One incident; ``incident.unknown`` when there is none of that id."""
        with self.session("read incident") as session:
            row = session.get(Incident, incident_id)
            if row is None:
                raise _unknown(incident_id)
            return view_of(row)

    def acknowledge_incident(self, incident_id: str, actor: str) -> IncidentView:
        """``actor`` has the incident (who and when kept, and audited: ``incident_ack``)."""
        return self._change(incident_id, IncidentState.ACKNOWLEDGED, actor, None)

    def resolve_incident(
        self, incident_id: str, actor: str, note_code: str | None = None
    ) -> IncidentView:
        """``actor`` resolved the incident, with an optional note code (``NOTE_CODE``: a code,
        not a text); audited as ``incident_resolve``."""
        if note_code is not None and not NOTE_CODE.fullmatch(note_code):
            raise IncidentError(
                "incident.bad_note",
                "a resolution note is a code: lower-case letters, digits, _ . - (at most 64)",
            )
        return self._change(incident_id, IncidentState.RESOLVED, actor, note_code)

    def _change(
        self, incident_id: str, target: IncidentState, actor: str, note_code: str | None
    ) -> IncidentView:
        action = "incident_ack" if target is IncidentState.ACKNOWLEDGED else "incident_resolve"
        obj = f"incident:{incident_id[:64]}"
        refusal: IncidentError | None = None
        view: IncidentView | None = None
        with self.session("change incident") as session:
            row = session.get(Incident, incident_id)
            if row is None:
                refusal = _unknown(incident_id)
                self.audit_in(session, actor, action, obj, "unknown")
            elif target not in NEXT_STATES[IncidentState(row.state)]:
                refusal = _refused(row, target)
                details = {"state": row.state, "code": refusal.code}
                self.audit_in(session, actor, action, obj, "refused", details)
            else:
                view = self._apply(session, row, target, actor, note_code, action, obj)
        if refusal is not None:
            raise refusal  # after the commit: the refused attempt stays in the audit trail
        assert view is not None
        return view

    def _apply(
        self,
        session: Session,
        row: Incident,
        target: IncidentState,
        actor: str,
        note_code: str | None,
        action: str,
        obj: str,
    ) -> IncidentView:
        now = self.clock()
        previous = row.state
        row.state = target.value
        if target is IncidentState.ACKNOWLEDGED:
            row.acknowledged_at, row.acknowledged_by = now, actor
        else:
            row.resolved_at, row.resolved_by, row.resolution = now, actor, note_code
        details: dict[str, str] = {"from": previous, "kind": row.kind, "severity": row.severity}
        if note_code:
            details["note"] = note_code
        self.audit_in(session, actor, action, obj, "ok", details)
        return view_of(row)


def overdue_incidents(
    storage: Incidents, response_minutes: Mapping[str, int], now: datetime
) -> list[IncidentView]:
    """Incidents not resolved (open or acknowledged) opened longer ago than their severity's
    response time, oldest first. The clock runs until resolution (acknowledging does not stop
    it); a severity missing from ``response_minutes`` gets the shortest time given (the
    strictest reading), and with no times at all nothing is overdue."""
    if not response_minutes:
        return []
    unresolved = Incident.state != IncidentState.RESOLVED.value
    strictest = min(response_minutes.values())
    with storage.session("overdue incidents") as session:
        rows: list[Incident] = []
        for severity, minutes in response_minutes.items():
            due = now - timedelta(minutes=minutes)
            query = select(Incident).where(
                unresolved, Incident.severity == severity, Incident.opened_at < due
            )
            rows.extend(session.scalars(query).all())
        others = select(Incident).where(
            unresolved,
            Incident.severity.not_in(list(response_minutes)),
            Incident.opened_at < now - timedelta(minutes=strictest),
        )
        rows.extend(session.scalars(others).all())
        return sorted((view_of(r) for r in rows), key=lambda v: (v.opened_at, v.id))


def _unknown(incident_id: str) -> IncidentError:
    return IncidentError("incident.unknown", f"no incident {incident_id[:64]}")


def _refused(row: Incident, target: IncidentState) -> IncidentError:
    if row.state == IncidentState.RESOLVED.value:
        return IncidentError(
            "incident.resolved", f"incident {row.id} is resolved already: not changed"
        )
    verb = "acknowledged" if target is IncidentState.ACKNOWLEDGED else target.value
    return IncidentError(
        f"incident.{row.state}", f"incident {row.id} is {row.state} already: not {verb} again"
    )
