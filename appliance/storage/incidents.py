"""Incidents: codes and counts for a person to follow up, never what was said."""

from __future__ import annotations

from sqlalchemy import select

from appliance.storage.base import SYSTEM_ACTOR, StoreBase
from appliance.storage.schema import Caller, Incident


class Incidents(StoreBase):
    """Incidents opened by the guards, floods and probing."""

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
            )
            session.add(incident)
            session.flush()
            self.audit_in(session, SYSTEM_ACTOR, "incident_opened", f"incident:{incident.id}", kind)
            return incident.id

    def list_incidents(self, limit: int = 200) -> list[dict[str, str | None]]:
        """Incidents carry codes and counts, never what was said: no content, no audit."""
        with self.session("list incidents") as session:
            rows = session.scalars(
                select(Incident).order_by(Incident.opened_at.desc()).limit(limit)
            ).all()
            return [
                {
                    "id": r.id,
                    "opened_at": r.opened_at.isoformat(),
                    "kind": r.kind,
                    "severity": r.severity,
                    "call_id": r.call_id,
                    "summary": r.summary,
                    "closed_at": r.closed_at.isoformat() if r.closed_at else None,
                }
                for r in rows
            ]
