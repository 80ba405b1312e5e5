"""The incident page (``/incidents``): every incident with its state, who acknowledged and
resolved it and when, whether it is past its severity's response time, and the runbook of its
kind (``[incidents] runbooks``); and the two changes staff make, acknowledge and resolve (POST
``/incidents/<id>``, with the session's CSRF token). As ``appliance incidents`` does on the
command line.

Roles: every role reads the page (an auditor checks that incidents are handled); admins and
operators act on it, auditors do not (they read what was done, in the page and the audit
trail). The store audits each change, and each refused one, with the panel actor.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue

from appliance.admin.access import requires
from appliance.config.settings import IncidentSettings
from appliance.core.errors import ApplianceError
from appliance.core.ports import IncidentState
from appliance.storage.incidents import IncidentView, overdue_incidents
from appliance.storage.repository import Storage

INCIDENT_ID = re.compile(r"[0-9A-Za-z-]{1,64}")
STATUS = {"incident.unknown": 404, "incident.bad_note": 400}
"""The HTTP status of a refusal (any other: 409, the incident's state does not allow it)."""
ACTING_ROLES = ("admin", "operator")


@dataclass(frozen=True)
class IncidentRow:
    """One incident as the page shows it (times UTC, to the minute)."""

    id: str
    opened_at: str
    kind: str
    severity: str
    summary: str
    call_id: str
    state: IncidentState
    acknowledged: str
    resolved: str
    resolution: str
    overdue: bool
    runbook: str


def _at(view: IncidentView, which: str) -> str:
    when = getattr(view, f"{which}_at")
    who = getattr(view, f"{which}_by")
    return f"{when.isoformat(sep=' ', timespec='minutes')} by {who}" if when else ""


def _row(view: IncidentView, settings: IncidentSettings, overdue: set[str]) -> IncidentRow:
    return IncidentRow(
        id=view.id,
        opened_at=view.opened_at.isoformat(sep=" ", timespec="minutes"),
        kind=view.kind,
        severity=view.severity,
        summary=view.summary,
        call_id=view.call_id or "",
        state=view.state,
        acknowledged=_at(view, "acknowledged"),
        resolved=_at(view, "resolved"),
        resolution=view.resolution or "",
        overdue=view.id in overdue,
        runbook=settings.runbook(view.kind),
    )


def incident_page(
    storage: Storage,
    settings: IncidentSettings,
    error: str = "",
    notice: str = "",
    status: int = 200,
) -> ResponseReturnValue:
    """The page as it is now (the GET of ``compliance.incidents``, and each change's answer)."""
    late = overdue_incidents(storage, settings.response_minutes, storage.clock())
    overdue = {v.id for v in late}
    rows = [_row(v, settings, overdue) for v in storage.incidents()]
    page = render_template(
        "incidents.html",
        rows=rows,
        overdue=len(overdue),
        minutes=settings.response_minutes,
        acting_roles=ACTING_ROLES,
        error=error,
        notice=notice,
    )
    return page, status


def incidents_blueprint(
    settings: IncidentSettings, storage: Storage, actor: Callable[[], str]
) -> Blueprint:
    incidents = Blueprint("incidents", __name__)

    @incidents.route("/incidents/<incident_id>", methods=["POST"])
    @requires(*ACTING_ROLES)
    def change(incident_id: str) -> ResponseReturnValue:
        """``action`` = ``ack`` or ``resolve`` (with an optional ``note`` code)."""
        if not INCIDENT_ID.fullmatch(incident_id):
            return incident_page(storage, settings, "that is not an incident id", status=400)
        action = request.form.get("action", "")
        try:
            if action == "ack":
                storage.acknowledge_incident(incident_id, actor())
                notice = f"Incident {incident_id}: acknowledged."
            elif action == "resolve":
                note = request.form.get("note", "").strip() or None
                storage.resolve_incident(incident_id, actor(), note)
                notice = f"Incident {incident_id}: resolved."
            else:
                error = f"no action “{action[:32]}” here"
                return incident_page(storage, settings, error, status=400)
        except ApplianceError as exc:  # the request boundary: say what, no 500
            status = STATUS.get(exc.code, 409)
            return incident_page(storage, settings, exc.message, status=status)
        return incident_page(storage, settings, notice=notice)

    return incidents
