"""Pages an auditor asks for, built from the running configuration: incidents, retention and
holds, consent and disclosure, tools and their levels, the quarterly access review, red-team
reports, the data-flow diagram, and the compliance report mapping controls to evidence."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, render_template, request
from flask.typing import ResponseReturnValue

from appliance.admin.access import requires
from appliance.config.settings import Settings
from appliance.storage import reports
from appliance.storage.repository import Storage


@dataclass(frozen=True)
class Control:
    framework: str
    reference: str
    control: str
    evidence: str
    page: str
    """The endpoint of the page that shows the evidence."""
    ok: bool


@dataclass(frozen=True)
class Flow:
    data: str
    path: str
    protection: str
    kept: str
    who: str


def flows(settings: Settings) -> list[Flow]:
    r = settings.retention
    audio = f"{r.recordings_hours} h" if r.recordings_hours else "not kept"
    return [
        Flow("Caller audio", "SIP/RTP or microphone -> VAD -> STT (memory only)",
             "SRTP when the peer offers it" + (" (required)" if settings.sip.srtp == "required"
                                                else ""), audio, "nobody (no audio player)"),
        Flow("Transcripts and replies", "STT -> input guard (redaction) -> model -> storage",
             "redacted; AES-256-GCM per-call key inside SQLCipher (AES-256)",
             f"{r.transcripts_days} days", "operators (masked unless a reason is given)"),
        Flow("Payment card data", "input guard", "never reaches the model or the disk",
             "not kept", "nobody"),
        Flow("Voice templates", "enrolment -> storage", "sealed under their own key",
             "until erased with the caller", "nobody (used by the voice factor only)"),
        Flow("Caller directory (number, name, PIN hash, TOTP secret, contact)",
             "appliance callers -> storage", "sealed under each entry's own key; the number "
             "also as a keyed hash", "until removed or erased with the caller",
             "admins (the CLI and the panel's Callers page, numbers masked; audited); the "
             "factors in a call"),
        Flow("Callback requests (the caller's number)", "transfer tool's callback offer -> "
             "storage", "sealed under each request's own key; the number also as a keyed hash",
             f"open until handled, then {r.callbacks_days} days; erased with the caller",
             "operators, admins (the CLI and the panel's "
             "Callbacks page: masked, a number shown on purpose is audited)"),
        Flow("Call records", "storage", "SQLCipher (AES-256)", f"{r.calls_days} days",
             "operators, admins"),
        Flow("Audit trail", "storage", "hash-chained, signed exports (Ed25519)",
             f"{r.audit_years} years", "auditors, admins"),
        Flow("Anything else", "outbound network", "refused in-process (egress guard) and by "
             "the units' IPAddressDeny=", "-", "-"),
    ]  # fmt: skip


def controls(settings: Settings, storage: Storage) -> list[Control]:
    users = storage.admin_users()
    chain = storage.verify_audit()
    all_totp = bool(users) and all(u.totp_secret for u in users)
    r = settings.retention
    audio = f"kept {r.recordings_hours} h" if r.recordings_hours else "never stored"
    verified = "verified" if chain.ok else "BROKEN"
    rows = [
        ("GDPR", "Art. 5(1)(c), 25", "Data minimisation by default",
         f"raw audio {audio}; personal data redacted before the model and storage",
         "compliance.dataflow", True),
        ("GDPR", "Art. 5(1)(e)", "Storage limitation",
         f"transcripts {r.transcripts_days} d, calls {r.calls_days} d; hourly purge",
         "compliance.retention", True),
        ("GDPR", "Art. 17", "Right to erasure", "crypto-shredding per caller (appliance erase)",
         "compliance.retention", True),
        ("GDPR", "Art. 32", "Encryption at rest", "SQLCipher AES-256 + per-call AES-256-GCM keys",
         "compliance.dataflow", storage.encrypted),
        ("HIPAA", "164.312(a)(1)", "Access control", "roles admin/operator/auditor on every route",
         "compliance.access_review", True),
        ("HIPAA", "164.312(b)", "Audit controls",
         f"hash-chained audit trail, {chain.events} events, chain {verified}",
         "pages.audit", chain.ok),
        ("HIPAA", "164.312(c)(1)", "Integrity", "authenticated encryption; integrity checks",
         "compliance.dataflow", True),
        ("HIPAA", "164.312(d)", "Person or entity authentication",
         "argon2id + TOTP for every panel account; step-up factors for callers",
         "compliance.access_review", all_totp),
        ("HIPAA", "164.312(e)(1)", "Transmission security",
         "panel HTTPS (TLS 1.2+); SIPS and SRTP on the phone line", "compliance.dataflow", True),
        ("PCI DSS", "3.3 / 3.4", "No sensitive authentication data stored; PAN unreadable",
         "card numbers and CVV never reach the model or the disk; recording pauses",
         "compliance.dataflow", True),
        ("PCI DSS", "8.4", "Multi-factor authentication", "TOTP for every account",
         "compliance.access_review", all_totp),
        ("PCI DSS", "10.2", "Audit logs", "every read of content and every admin action",
         "pages.audit", chain.ok),
        ("SOC 2", "CC6.1", "Logical access", "least privilege roles, quarterly access review",
         "compliance.access_review", True),
        ("SOC 2", "CC7.2", "Monitoring", "guard blocks, floods, anomalies open incidents",
         "compliance.incidents", True),
        ("SOC 2", "CC8.1", "Change management", "models pinned by SHA-256; appliance doctor",
         "compliance.tools", True),
    ]  # fmt: skip
    return [Control(*row) for row in rows]


def compliance_blueprint(
    settings: Settings, storage: Storage, actor: Callable[[], str]
) -> Blueprint:
    pages = Blueprint("compliance", __name__)

    @pages.route("/incidents")
    @requires("admin", "operator", "auditor")
    def incidents() -> ResponseReturnValue:
        return render_template("incidents.html", incidents=storage.list_incidents())

    @pages.route("/retention")
    @requires("admin", "auditor")
    def retention() -> ResponseReturnValue:
        holds = reports.held_calls(storage)
        return render_template("retention.html", retention=settings.retention, holds=holds)

    @pages.route("/consent")
    @requires("admin", "auditor")
    def consent() -> ResponseReturnValue:
        return render_template("consent.html", sip=settings.sip, policy=settings.policy)

    @pages.route("/tools")
    @requires("admin", "auditor", "operator")
    def tools() -> ResponseReturnValue:
        from appliance.tools.demo import DemoBank, demo_tools
        from appliance.tools.http import http_tools
        from appliance.tools.plugins import plugin_tools

        enabled = set(settings.tools.enabled)
        known = {
            **demo_tools(DemoBank()),
            **http_tools(settings.tools, load_tls=False),  # a listing: no connection made
            **plugin_tools(),
        }
        rows = [t.describe(t.name in enabled) for t in known.values()]
        return render_template("tools.html", tools=rows)

    @pages.route("/access-review")
    @requires("admin", "auditor")
    def access_review() -> ResponseReturnValue:
        users = storage.admin_users()
        last = reports.last_logins(storage)
        today = dt.date.today()
        quarter = f"{today.year}-Q{(today.month - 1) // 3 + 1}"
        rows = [(u, last.get(f"admin:{u.username}")) for u in users]
        storage.log_event(actor(), "view", "access_review", "ok", {"quarter": quarter})
        return render_template("access_review.html", rows=rows, quarter=quarter)

    @pages.route("/redteam")
    @requires("admin", "auditor")
    def redteam() -> ResponseReturnValue:
        reports = []
        for path in sorted((settings.home / "redteam").glob("*/report.json"), reverse=True):
            try:
                data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            reports.append((path.parent.name, data))
        return render_template("redteam.html", reports=reports)

    @pages.route("/data-flow")
    @requires("admin", "auditor")
    def dataflow() -> ResponseReturnValue:
        return render_template("dataflow.html", flows=flows(settings))

    @pages.route("/compliance")
    @requires("admin", "auditor")
    def report() -> ResponseReturnValue:
        rows = controls(settings, storage)
        storage.log_event(actor(), "view", "compliance_report", "ok")
        html = render_template("compliance.html", controls=rows, now=dt.datetime.now(dt.UTC))
        if request.args.get("download") == "html":
            return Response(
                html,
                mimetype="text/html",
                headers={"Content-Disposition": "attachment; filename=compliance-report.html"},
            )
        return html

    return pages
