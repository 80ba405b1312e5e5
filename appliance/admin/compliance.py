"""Pages an auditor asks for, built from the running configuration: incidents, retention and
holds, consent and disclosure, tools and their levels, the quarterly access review, red-team
reports, the data-flow diagram, and the compliance report mapping controls to evidence."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, g, render_template, request
from flask.typing import ResponseReturnValue

from appliance.admin.access import requires
from appliance.admin.incidents import incident_page  # its actions: admin/incidents.py
from appliance.compliance import checks, export
from appliance.config.consent import configured_scripts, missing_scripts
from appliance.config.settings import Settings
from appliance.storage import reports
from appliance.storage.repository import Storage


@dataclass(frozen=True)
class Flow:
    data: str
    path: str
    protection: str
    kept: str
    who: str


SRTP_FLOW = {
    "required": "SRTP required (a call without it gets 488)",
    "optional": "SRTP when the peer offers it, else plain RTP",
    "off": "plain RTP (SRTP off)",
}


@dataclass(frozen=True)
class Peer:
    """Where data goes: a part in this process, or a peer on the network (from the running
    configuration; everything else is refused by the egress guard)."""

    who: str
    address: str
    what: str
    protection: str


def peers(settings: Settings) -> list[Peer]:
    sip, tools, notify = settings.sip, settings.tools, settings.notify
    media = SRTP_FLOW[sip.srtp]
    signalling = f"SIP over TLS ({sip.tls_listen}) or UDP/TCP" if sip.tls_listen else "SIP UDP/TCP"
    rows = [
        Peer("Speech recognition (faster-whisper), the language model (llama.cpp), speech "
             "synthesis (Piper), embeddings (onnxruntime)", "in this process",
             "the caller's audio and text", "never leave the process"),
        Peer("Callers' trunks and peers (allowed_peers)", ", ".join(sip.allowed_peers),
             "calls: signalling and media", f"{signalling}; {media}"),
    ]  # fmt: skip
    if sip.registrar:
        rows.append(
            Peer(
                "PBX (registrar)",
                sip.registrar,
                "registration, calls",
                f"{signalling}; digest authentication",
            )
        )
    if settings.transfer.destinations:
        rows.append(
            Peer(
                "Transfer destinations (people)",
                ", ".join(settings.transfer.destinations),
                f"the call ({settings.transfer.mode.value} transfer) and a redacted briefing",
                f"{signalling}; {media}",
            )
        )
    pinned = {h.name: h.address for h in tools.allowed_hosts}
    for tool in tools.http:
        if tool.name not in tools.enabled:
            continue
        host = urlsplit(tool.url).hostname or "?"
        mtls = ", client certificate" if tools.client_cert else ""
        rows.append(
            Peer(
                f"Tool {tool.name}",
                f"{host} ({pinned.get(host, 'unpinned')})",
                "only the tool's parameters; only the fields named in speak come back",
                f"HTTPS, TLS verified against {tools.ca_file or 'the system CAs'}{mtls}",
            )
        )
    if notify.relay:
        rows.append(
            Peer(
                "SMTP relay",
                f"{notify.relay}:{notify.port}",
                "one-time codes; callback notices (the request id only)",
                "STARTTLS",
            )
        )
    for network in settings.service.egress_allow:
        rows.append(Peer("Other allowed address ([service] egress_allow)", network, "-", "-"))
    return rows


def flows(settings: Settings) -> list[Flow]:
    r = settings.retention
    audio = f"{r.recordings_hours} h" if r.recordings_hours else "not kept"
    return [
        Flow("Caller audio", "SIP/RTP or microphone -> VAD -> STT (memory only)",
             SRTP_FLOW[settings.sip.srtp] + (", keys over SIP TLS" if settings.sip.tls_listen
                                             else ", keys in clear signalling (no SIP TLS)"),
             audio, "nobody (no audio player)"),
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


def compliance_blueprint(
    settings: Settings, storage: Storage, actor: Callable[[], str]
) -> Blueprint:
    pages = Blueprint("compliance", __name__)

    @pages.route("/incidents")
    @requires("admin", "operator", "auditor")
    def incidents() -> ResponseReturnValue:
        return incident_page(storage, settings.incidents)

    @pages.route("/retention")
    @requires("admin", "auditor")
    def retention() -> ResponseReturnValue:
        holds = reports.held_calls(storage)
        return render_template("retention.html", retention=settings.retention, holds=holds)

    @pages.route("/consent")
    @requires("admin", "auditor")
    def consent() -> ResponseReturnValue:
        return render_template(
            "consent.html",
            scripts=configured_scripts(settings),
            missing=missing_scripts(settings),
            policy=settings.policy,
        )

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

    @pages.route("/access-review", methods=["GET", "POST"])
    @requires("admin", "auditor")
    def access_review() -> ResponseReturnValue:
        """The accounts, roles and last log-ins (GET); an admin records the review (POST):
        each account confirmed in its role, or removed (disabled), with who and when in the
        audit trail (SOC 2 CC6.1, HIPAA 164.308(a)(3)(ii)(B))."""
        today = dt.datetime.now(dt.UTC).date()
        quarter = f"{today.year}-Q{(today.month - 1) // 3 + 1}"
        message = ""
        if request.method == "POST":
            if g.panel.role != "admin":
                return render_template("error.html", message="only an admin records a review"), 403
            kept = set(request.form.getlist("confirm"))
            if g.panel.username not in kept:  # nor the last admin: the reviewer is one
                message = "A review cannot remove the reviewer's own account: nothing changed."
                return render_template("error.html", message=message), 400
            confirmed, removed = [], []
            for user in storage.admin_users():
                if user.disabled:
                    continue
                if user.username in kept:
                    confirmed.append(f"{user.username}:{user.role}")
                else:
                    storage.set_admin_disabled(user.username, True, actor())
                    removed.append(f"{user.username}:{user.role}")
            details = {"quarter": quarter, "confirmed": confirmed, "removed": removed}
            storage.log_event(actor(), "access_review", "admin_users", "ok", details)
            message = f"Review recorded: {len(confirmed)} confirmed, {len(removed)} removed."
        users = storage.admin_users()
        last = reports.last_logins(storage)
        rows = [(u, last.get(f"admin:{u.username}")) for u in users]
        review = reports.last_event(storage, "access_review")
        storage.log_event(actor(), "view", "access_review", "ok", {"quarter": quarter})
        return render_template(
            "access_review.html",
            rows=rows,
            quarter=quarter,
            message=message,
            review=review,
            review_details=reports.event_details(review) if review else {},
        )

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
        return render_template("dataflow.html", flows=flows(settings), peers=peers(settings))

    @pages.route("/compliance")
    @requires("admin", "auditor")
    def report() -> ResponseReturnValue:
        """Every control read now; ``?download=html`` is the signed page an auditor keeps,
        ``?download=pdf`` a zip of the PDF and its detached signature (one reading: a PDF
        and a signature fetched apart would be two readings that do not match); ``appliance
        compliance verify`` checks either, and each export is audited."""
        rows = checks.controls(settings, storage)
        body = export.document(settings, rows)
        download = request.args.get("download")
        if download in ("html", "pdf"):
            signed = export.sign(body, settings)
            if download == "html":
                data = export.render_html(signed).encode("utf-8")
                mimetype, name = "text/html", "compliance-report.html"
            else:
                data = export.pdf_bundle(export.sign_pdf(signed, settings))
                mimetype, name = "application/zip", "compliance-report-pdf.zip"
            details = {"summary": body["summary"], "format": download}
            storage.log_event(actor(), "export", "compliance_report", "ok", details)
            return Response(
                data,
                mimetype=mimetype,
                headers={"Content-Disposition": f"attachment; filename={name}"},
            )
        storage.log_event(actor(), "view", "compliance_report", "ok")
        return render_template("compliance.html", controls=rows, summary=body["summary"])

    return pages
