"""Voice templates (biometric data): sealed under their own data key, shredded with the
caller."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from appliance.storage.base import StoreBase
from appliance.storage.schema import Caller, DataKey, Voiceprint, new_id


class Voiceprints(StoreBase):
    """Voice templates, sealed, one per caller."""

    def save_voiceprint(self, caller_id: str, template: bytes, actor: str) -> None:
        """Enrol (or re-enrol) a caller's voice template, sealed under a fresh data key."""
        hashed = self.caller_hash(caller_id)
        with self.session("save voiceprint") as session:
            caller = self._caller_in(session, hashed)
            old = session.scalars(select(Voiceprint).where(Voiceprint.caller_id == caller.id))
            for row in old.all():
                self._delete_voiceprint(session, row)
            key_id, key = self._new_data_key(session, "voice")
            row_id = new_id()
            sealed = self._seal(key, template, "voiceprints", "template", row_id)
            session.add(
                Voiceprint(
                    id=row_id, caller_id=caller.id, data_key_id=key_id or None, template=sealed
                )
            )
            self.audit_in(session, actor, "voice_enrol", f"caller:{hashed[:16]}", "ok")

    def voiceprint(self, caller_id: str) -> bytes | None:
        """The caller's voice template, or None when they have not enrolled."""
        hashed = self.caller_hash(caller_id)
        with self.session("read voiceprint") as session:
            row = next(iter(self._voiceprints_of(session, hashed)), None)
            if row is None:
                return None
            key = self._data_key(session, row.data_key_id)
            return self._open(key, row.template, "voiceprints", "template", row.id)

    def forget_voiceprint(self, caller_id: str, actor: str) -> bool:
        """Erase a caller's voice template (crypto-shred its key); True if there was one."""
        hashed = self.caller_hash(caller_id)
        with self.session("forget voiceprint") as session:
            rows = self._voiceprints_of(session, hashed)
            for row in rows:
                self._delete_voiceprint(session, row)
            outcome = "ok" if rows else "not_found"
            self.audit_in(session, actor, "voice_forget", f"caller:{hashed[:16]}", outcome)
        self.after_erasure()
        return bool(rows)

    @staticmethod
    def _voiceprints_of(session: Session, hashed: str) -> list[Voiceprint]:
        query = (
            select(Voiceprint)
            .join(Caller, Caller.id == Voiceprint.caller_id)
            .where(Caller.caller_hash == hashed)
        )
        return list(session.scalars(query))

    def _delete_voiceprint(self, session: Session, row: Voiceprint) -> None:
        key_id = row.data_key_id
        session.delete(row)
        session.flush()
        if key_id:
            session.execute(delete(DataKey).where(DataKey.id == key_id))
            self._forget_keys([key_id])
