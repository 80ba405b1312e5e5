"""Erasure by crypto-shredding: a caller's or a call's data keys and rows go; held calls stay.
Erasing a caller also removes their directory entry and destroys its key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from appliance.core.errors import StorageError
from appliance.storage.callbacks import Callbacks
from appliance.storage.directory import Directory, normalize_number
from appliance.storage.schema import (
    Call,
    Caller,
    Consent,
    DataKey,
    ErasureRequest,
    Recording,
    ToolCall,
    Turn,
    Voiceprint,
)
from appliance.storage.voiceprints import Voiceprints


@dataclass(frozen=True)
class ErasureReport:
    calls_erased: int
    calls_held: int
    caller_erased: bool
    directory_removed: bool = False
    """The caller's directory entry (their credentials) was removed and its key shredded."""


class Erasure(Voiceprints, Directory, Callbacks):
    """Crypto-shredding of a caller or a call."""

    def erase_caller(self, caller_id: str, actor: str) -> ErasureReport:
        """Erase everything of one caller (by caller ID): their calls, voice template and
        directory entry; crypto-shred, delete, audit."""
        hashed = self.caller_hash(caller_id)
        # The directory keys a number without its separators, a call's record as it came.
        listed = self.caller_hash(normalize_number(caller_id) or caller_id)
        with self.session("erase caller") as session:
            removed = self._remove_entry_in(session, listed)  # credentials: never held
            callbacks = self._erase_callbacks_in(session, hashed)
            caller = session.scalars(select(Caller).where(Caller.caller_hash == hashed)).first()
            report = ErasureReport(0, 0, False)
            if caller is not None:
                calls = session.scalars(select(Call).where(Call.caller_id == caller.id)).all()
                report = self.erase_calls_in(session, calls)
                prints = session.scalars(
                    select(Voiceprint).where(Voiceprint.caller_id == caller.id)
                )
                for row in prints.all():
                    self._delete_voiceprint(session, row)  # biometric data: never held
                if report.calls_held == 0:
                    session.delete(caller)
            caller_erased = caller is not None and report.calls_held == 0
            if caller is None:
                outcome = "ok" if removed or callbacks else "not_found"
            else:
                outcome = "ok" if caller_erased else "partial"
            self._record_request(session, f"caller:{hashed[:16]}", actor, report.calls_held)
            self.audit_in(
                session,
                actor,
                "erase",
                f"caller:{hashed[:16]}",
                outcome,
                {
                    "calls_erased": report.calls_erased,
                    "calls_held": report.calls_held,
                    "directory_removed": removed,
                    "callbacks_erased": callbacks,
                },
            )
        if caller is not None or removed or callbacks:
            self.after_erasure()
        return ErasureReport(report.calls_erased, report.calls_held, caller_erased, removed)

    def erase_call(self, call_id: str, actor: str) -> ErasureReport:
        with self.session("erase call") as session:
            call = session.get(Call, call_id)
            if call is None:
                raise StorageError("storage.no_call", f"call {call_id} does not exist")
            report = self.erase_calls_in(session, [call])
            self._record_request(session, f"call:{call_id}", actor, report.calls_held)
            self.audit_in(
                session,
                actor,
                "erase",
                f"call:{call_id}",
                "ok" if report.calls_erased else "held",
                {"calls_erased": report.calls_erased, "calls_held": report.calls_held},
            )
        self.after_erasure()
        return report

    def _record_request(self, session: Session, subject: str, actor: str, held: int) -> None:
        """The request and, unless a legal hold kept something back, its completion; a
        complete erasure also completes the subject's earlier requests that a hold kept open."""
        now = self.clock()
        done = now if held == 0 else None
        if done is not None:
            earlier = select(ErasureRequest).where(
                ErasureRequest.subject == subject, ErasureRequest.completed_at.is_(None)
            )
            for row in session.scalars(earlier):
                row.completed_at = done
        session.add(
            ErasureRequest(
                subject=subject,
                requested_at=now,
                requested_by=actor,
                completed_at=done,
                calls_held=held,
            )
        )

    def erase_calls_in(self, session: Session, calls: Sequence[Call]) -> ErasureReport:
        """Crypto-shred and delete ``calls`` (those not on legal hold) in ``session``."""
        erased = held = 0
        shredded = []
        for call in calls:
            if call.legal_hold:
                held += 1
                continue
            for table in (Turn, Recording, ToolCall, Consent):
                session.execute(delete(table).where(table.call_id == call.id))
            if call.data_key_id:
                shredded.append(call.data_key_id)
            key_id = call.data_key_id
            session.delete(call)
            session.flush()
            if key_id:
                session.execute(delete(DataKey).where(DataKey.id == key_id))
            erased += 1
        self._forget_keys(shredded)
        return ErasureReport(erased, held, False)
