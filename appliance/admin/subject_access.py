"""The caller's right of access (GDPR Art. 15) on the panel: ``POST /callers/export`` with a
caller's number downloads the same JSON document as ``appliance calls export-caller`` (one
function of the store makes both, and audits each: ``access_export``, the actor, the caller by
pseudonym and row id, counts, never content).

Roles: admin only, as the Callers page is. The download holds every transcript of the caller in
full, for the data subject, so it is no operator's to take; it is never cached (the panel's
``Cache-Control: no-store``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from flask import Blueprint, Response, abort, request
from flask.typing import ResponseReturnValue

from appliance.admin.access import requires
from appliance.storage.repository import Storage

MAX_NUMBER_CHARS = 64


def subject_access_blueprint(storage: Storage, actor: Callable[[], str]) -> Blueprint:
    access = Blueprint("subject_access", __name__)

    @access.route("/callers/export", methods=["POST"])
    @requires("admin")
    def export() -> ResponseReturnValue:
        number = request.form.get("number", "").strip()
        if not 0 < len(number) <= MAX_NUMBER_CHARS:
            abort(400)
        document = storage.caller_access_export(number, actor())
        return Response(
            json.dumps(document, indent=2, ensure_ascii=False),
            mimetype="application/json",
            headers={"Content-Disposition": 'attachment; filename="caller-access-export.json"'},
        )

    return access
