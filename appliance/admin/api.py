"""The JSON API under /api/v1: the panel's data for scripts, with bearer tokens scoped to one
role (hashed at rest). Read only; every transcript read is audited like a page view. The
OpenAPI description is served at /api/v1/openapi.json (``openapi.json`` beside this file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, g, jsonify, request
from flask.typing import ResponseReturnValue

from appliance.admin.access import PUBLIC, mask, requires
from appliance.core.errors import StorageError
from appliance.storage import reports
from appliance.storage.repository import Storage

OPENAPI = Path(__file__).parent / "openapi.json"


def _limit() -> int:
    raw = request.args.get("limit", "100")
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 500:
        abort(400)
    return int(raw)


def api_blueprint(storage: Storage) -> Blueprint:
    api = Blueprint("api", __name__, url_prefix="/api/v1")

    def actor() -> str:
        return f"token:{g.api_role}"

    @api.route("/openapi.json")
    @requires(*PUBLIC)
    def openapi() -> ResponseReturnValue:
        return jsonify(json.loads(OPENAPI.read_text(encoding="utf-8")))

    @api.route("/calls")
    @requires("admin", "operator")
    def calls() -> ResponseReturnValue:
        rows = storage.list_calls(limit=_limit())
        return jsonify(
            [
                {
                    "id": c.id,
                    "channel": c.channel,
                    "status": c.status,
                    "started_at": c.started_at.isoformat(),
                    "legal_hold": c.legal_hold,
                }
                for c in rows
            ]
        )

    @api.route("/calls/<call_id>")
    @requires("admin", "operator")
    def call(call_id: str) -> ResponseReturnValue:
        reason = request.args.get("reason", "").strip()[:200]
        try:
            view = storage.read_call(call_id, actor(), reason or "masked view (api)")
        except StorageError as exc:
            if exc.code == "storage.no_call":
                abort(404)
            raise
        show: Any = (lambda t: t or "") if reason else mask
        turns = [
            {
                "index": t.index,
                "transcript": show(t.transcript),
                "reply": show(t.reply),
                "route": t.route or None,
                "citations": list(t.citations),
            }
            for t in view.turns
        ]
        return jsonify({"id": view.id, "status": view.status, "masked": not reason, "turns": turns})

    @api.route("/incidents")
    @requires("admin", "operator")
    def incidents() -> ResponseReturnValue:
        return jsonify(storage.list_incidents(limit=_limit()))

    @api.route("/audit")
    @requires("admin", "auditor")
    def audit() -> ResponseReturnValue:
        report = storage.verify_audit()
        events = reports.recent_audit_events(storage, _limit())
        return jsonify(
            {
                "chain": {"ok": report.ok, "events": report.events, "broken_at": report.broken_seq},
                "events": [
                    {
                        "seq": e.seq,
                        "at": e.at.isoformat(),
                        "actor": e.actor,
                        "action": e.action,
                        "object": e.object,
                        "outcome": e.outcome,
                    }
                    for e in events
                ],
            }
        )

    return api
