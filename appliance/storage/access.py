"""The caller's right of access (GDPR Art. 15): everything this appliance holds of one caller,
decrypted into one document for the data subject, and the export itself audited.

One function serves the command line (``appliance calls export-caller``) and the panel (the
Callers page). The caller is found by their number as erasure finds them: their calls by the
pseudonym of the caller ID as it came, their directory entry by the number without separators;
both pseudonyms are searched, so a number typed with spaces finds the same calls.

What the document holds: each call (times, channel, outcome, consent records, every turn's
transcript and reply, the tool calls with their arguments), the caller's callback requests
(with the number to call), incidents opened on their calls (codes only, as stored), and their
directory entry (number, name, the contact for one-time codes, which factors are enrolled).
What it withholds, and says so: the PIN's hash and the authenticator's secret (security
credentials: handing them out would let anyone holding the file pass as the caller) and the
voice template (a model of the voice, not a record of what the caller gave). Raw audio is not
in the file: its count per call is.

The audit event names the actor, the caller by pseudonym and by row id, and counts; never a
number, name, transcript or argument.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from appliance.core.errors import KeyringError
from appliance.core.ports import CredentialKind
from appliance.storage.callbacks import Callbacks
from appliance.storage.directory import Directory, _credential_binding, normalize_number
from appliance.storage.schema import (
    Call,
    CallbackRequest,
    Caller,
    CallerCredential,
    Consent,
    DirectoryEntry,
    Incident,
    Recording,
    ToolCall,
    Turn,
    Voiceprint,
)

EXPORT_FORMAT = "appliance-caller-access-export/1"
WITHHELD = (
    "the PIN's hash and the authenticator (TOTP) secret of your directory entry: security "
    "credentials, which would let anyone holding this file pass as you",
    "your voice template, if one is enrolled: a model of your voice made from your enrolment "
    "recordings (you may have it erased)",
    "raw call audio: each call says how many recordings of it are kept (none, unless audio "
    "recording is configured); ask for them separately",
)


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class SubjectAccess(Directory, Callbacks):
    """The access export of one caller (the data subject)."""

    def caller_access_export(self, number: str, actor: str) -> dict[str, Any]:
        """Everything held of the caller of ``number``, decrypted, as one JSON-ready document;
        audited (``access_export``: actor, the caller by pseudonym and row ids, counts)."""
        raw = self.caller_hash(number)
        normal = normalize_number(number)
        listed = self.caller_hash(normal) if normal else None
        hashes = sorted({raw, *([listed] if listed else [])})
        with self.session("caller access export") as session:
            callers = session.scalars(select(Caller).where(Caller.caller_hash.in_(hashes))).all()
            caller_ids = sorted(c.id for c in callers)
            calls = session.scalars(
                select(Call).where(Call.caller_id.in_(caller_ids)).order_by(Call.started_at)
            ).all()
            call_docs = [self._export_call(session, call) for call in calls]
            requests = session.scalars(
                select(CallbackRequest)
                .where(CallbackRequest.caller_hash.in_(hashes))
                .order_by(CallbackRequest.created_at)
            ).all()
            callback_docs = [self._export_callback(session, r) for r in requests]
            call_ids = [c.id for c in calls]
            incidents = session.scalars(
                select(Incident)
                .where(or_(Incident.caller_id.in_(caller_ids), Incident.call_id.in_(call_ids)))
                .order_by(Incident.opened_at)
            ).all()
            entry = self._entry_row(session, listed) if listed and normal else None
            directory = self._export_entry(session, entry, normal) if entry and normal else None
            voice = session.scalar(
                select(func.count())
                .select_from(Voiceprint)
                .where(Voiceprint.caller_id.in_(caller_ids))
            )
            counts = {
                "calls": len(call_docs),
                "turns": sum(len(c["turns"]) for c in call_docs),
                "consents": sum(len(c["consents"]) for c in call_docs),
                "tool_calls": sum(len(c["tool_calls"]) for c in call_docs),
                "callbacks": len(callback_docs),
                "incidents": len(incidents),
                "directory_entry": directory is not None,
            }
            found = bool(callers) or bool(callback_docs) or directory is not None
            self.audit_in(
                session,
                actor,
                "access_export",
                f"caller:{raw[:16]}",
                "ok" if found else "not_found",
                {"callers": caller_ids, **counts},
            )
            exported_at = self.clock()
        return {
            "format": EXPORT_FORMAT,
            "about": (
                "The personal data this voice appliance holds about the caller of one phone "
                "number, as the right of access (GDPR Art. 15) asks. Times are UTC."
            ),
            "exported_at": _when(exported_at),
            "number": number,
            "found": found,
            "counts": counts,
            "calls": call_docs,
            "callback_requests": callback_docs,
            "incidents": [
                {
                    "kind": i.kind,
                    "severity": i.severity,
                    "summary": i.summary,
                    "call_id": i.call_id,
                    "opened_at": _when(i.opened_at),
                    "state": i.state,
                    "resolved_at": _when(i.resolved_at),
                }
                for i in incidents
            ],
            "directory_entry": directory,
            "voice_template_enrolled": bool(voice),
            "withheld": list(WITHHELD),
        }

    def _export_call(self, session: Session, call: Call) -> dict[str, Any]:
        try:
            key: bytes | None = self._data_key(session, call.data_key_id)
            opened = True
        except KeyringError:  # its key was shredded: nothing of its content can be read
            key, opened = None, False

        def text(value: bytes | None, table: str, column: str, row: str) -> str | None:
            if value is None or not opened:
                return None
            return self._open(key, value, table, column, row).decode()

        turns = session.scalars(select(Turn).where(Turn.call_id == call.id).order_by(Turn.index))
        consents = session.scalars(
            select(Consent).where(Consent.call_id == call.id).order_by(Consent.decided_at)
        )
        tools = session.scalars(
            select(ToolCall).where(ToolCall.call_id == call.id).order_by(ToolCall.created_at)
        )
        recordings = session.scalar(
            select(func.count()).select_from(Recording).where(Recording.call_id == call.id)
        )
        tool_docs = []
        for t in tools.all():
            arguments = text(t.arguments, "tool_calls", "arguments", t.id)
            tool_docs.append(
                {
                    "tool": t.tool,
                    "arguments": json.loads(arguments) if arguments is not None else None,
                    "outcome": t.outcome,
                    "at": _when(t.created_at),
                }
            )
        return {
            "id": call.id,
            "channel": call.channel,
            "status": call.status,
            "started_at": _when(call.started_at),
            "ended_at": _when(call.ended_at),
            "disclosure_version": call.disclosure_version,
            "legal_hold": call.legal_hold,
            "content": "readable" if opened else "erased (its key was destroyed)",
            "recordings_kept": int(recordings or 0),
            "consents": [
                {
                    "decision": c.decision,
                    "disclosure_version": c.disclosure_version,
                    "method": c.method,
                    "decided_at": _when(c.decided_at),
                }
                for c in consents.all()
            ],
            "turns": [
                {
                    "index": t.index,
                    "at": _when(t.created_at),
                    "transcript": text(t.transcript, "turns", "transcript", t.id),
                    "reply": text(t.reply, "turns", "reply", t.id),
                    "content_purged_at": _when(t.content_purged_at),
                    "route": t.route,
                }
                for t in turns.all()
            ],
            "tool_calls": tool_docs,
        }

    def _export_callback(self, session: Session, row: CallbackRequest) -> dict[str, Any]:
        view = self._callback_view(session, row)
        return {
            "number": view.number,
            "reason": view.reason,
            "state": view.state.value,
            "call_id": view.call_id or None,
            "requested_at": _when(view.created_at),
            "changed_at": _when(view.changed_at),
        }

    def _export_entry(self, session: Session, entry: DirectoryEntry, number: str) -> dict[str, Any]:
        """The entry, once it opens for ``number`` (an entry moved onto another caller's
        pseudonym does not: ``directory.integrity``)."""
        key = self._entry_key(session, entry, number)
        view = self._view(session, entry)
        contact_row = self._credential_row(session, entry, CredentialKind.CONTACT)
        contact = None
        if contact_row is not None:
            binding = _credential_binding(entry, CredentialKind.CONTACT)
            contact = self._open_entry(key, contact_row.value, entry, binding).decode()
        kinds = set(
            session.scalars(
                select(CallerCredential.kind).where(CallerCredential.entry_id == entry.id)
            )
        )
        return {
            "number": view.number,
            "name": view.name or None,
            "contact_for_codes": contact,
            "factors_enrolled": sorted(kinds),
            "state": view.state.value,
            "enrolled_at": _when(view.created_at),
            "changed_at": _when(view.updated_at),
            "withheld": "the PIN's hash and the authenticator secret are not in this file",
        }
