"""Callback requests: a caller who could not be put through to a person, and said yes to being
called back, leaves one for staff (``appliance callbacks``).

The number is sealed under the request's own data key, bound to its row, and kept as its
pseudonym to find a caller's requests (erasure); the list opens the numbers and so is audited.
Each change of state is audited by action, request id and pseudonym: no number reaches the
audit trail or a log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from appliance.core.errors import StorageError
from appliance.core.ports import CallbackState
from appliance.storage.base import StoreBase
from appliance.storage.schema import CallbackRequest, DataKey, new_id


@dataclass(frozen=True)
class CallbackView:
    id: str
    number: str
    """The caller ID to call back (empty: the call had none)."""
    state: CallbackState
    reason: str
    call_id: str
    created_at: datetime
    changed_at: datetime
    changed_by: str


class Callbacks(StoreBase):
    """The staff's queue of callback requests (the CallbackDesk port)."""

    def request_callback(self, call_id: str, caller: str | None, reason: str) -> str:
        row_id = new_id()
        hashed = self.caller_hash(caller) if caller else None
        with self.session("request callback") as session:
            key_id, key = self._new_data_key(session, "callback")
            number = (
                self._seal(key, caller.encode(), "callback_requests", "number", row_id)
                if caller
                else None
            )
            session.add(
                CallbackRequest(
                    id=row_id,
                    call_id=call_id or None,
                    caller_hash=hashed,
                    data_key_id=key_id or None,
                    number=number,
                    reason=reason[:32],
                    state=CallbackState.OPEN.value,
                    created_at=self.clock(),
                    changed_at=self.clock(),
                    changed_by="system:agent",
                )
            )
            who = f"caller:{hashed[:16]}" if hashed else "caller:anonymous"
            self.audit_in(
                session, who, "callback_request", f"callback:{row_id}", "ok", {"reason": reason}
            )
        return row_id

    def callbacks(self, actor: str, state: CallbackState | None = None) -> list[CallbackView]:
        """The requests, oldest first (audited: the list holds numbers)."""
        with self.session("list callbacks") as session:
            query = select(CallbackRequest).order_by(CallbackRequest.created_at)
            if state is not None:
                query = query.where(CallbackRequest.state == state.value)
            views = [self._callback_view(session, row) for row in session.scalars(query).all()]
            self.audit_in(
                session, actor, "callback_list", "callbacks", "ok", {"requests": len(views)}
            )
        return views

    def set_callback_state(self, request_id: str, state: CallbackState, actor: str) -> None:
        """Mark a request called back or closed (who and when are kept, and audited);
        ``storage.no_callback`` when there is no such request."""
        with self.session("change callback") as session:
            row = session.get(CallbackRequest, request_id)
            if row is not None:
                previous = row.state
                row.state, row.changed_at, row.changed_by = state.value, self.clock(), actor
            details = {"state": state.value}
            if row is not None:
                details["from"] = previous
                if row.caller_hash:
                    details["caller"] = row.caller_hash[:16]
            outcome = "ok" if row is not None else "unknown"
            self.audit_in(
                session, actor, f"callback_{state.value}", f"callback:{request_id}", outcome,
                details,
            )  # fmt: skip
        if row is None:
            raise StorageError("storage.no_callback", f"no callback request {request_id}")

    def _erase_callbacks_in(self, session: Session, hashed: str) -> int:
        """Delete a caller's requests and shred their keys, in ``session``."""
        rows = session.scalars(
            select(CallbackRequest).where(CallbackRequest.caller_hash == hashed)
        ).all()
        return self.delete_callbacks_in(session, rows)

    def delete_callbacks_in(self, session: Session, rows: Sequence[CallbackRequest]) -> int:
        """Delete ``rows`` and shred their keys, in ``session`` (erasure, retention)."""
        for row in rows:
            key_id = row.data_key_id
            session.delete(row)
            session.flush()
            if key_id:
                session.execute(delete(DataKey).where(DataKey.id == key_id))
        self._forget_keys([r.data_key_id for r in rows if r.data_key_id])
        return len(rows)

    def _callback_view(self, session: Session, row: CallbackRequest) -> CallbackView:
        number = ""
        if row.number is not None:
            key = self._data_key(session, row.data_key_id)
            number = self._open(key, row.number, "callback_requests", "number", row.id).decode()
        return CallbackView(
            id=row.id,
            number=number,
            state=CallbackState(row.state),
            reason=row.reason,
            call_id=row.call_id or "",
            created_at=row.created_at,
            changed_at=row.changed_at,
            changed_by=row.changed_by,
        )
