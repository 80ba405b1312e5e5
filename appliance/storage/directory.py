"""The caller directory: the callers an organization enrolled, and the factors each is checked
against (a PIN's salted hash, a TOTP secret, the contact for one-time codes).

Each entry has its own data key; its number, name and credentials are sealed under it, bound to
their table, column and row (a credential to its entry and kind), so nothing opens elsewhere.
The number is kept twice: sealed, and as its pseudonym (``caller_hash``) to find the entry. An
entry opens only for the number sealed in it: rows moved from one caller onto another open
nothing. Removing an entry, or erasing its caller, destroys its key (crypto-shredding).

Every change, and every read of the list or of an entry, is audited by action and pseudonym
only: no number, name or secret reaches the audit trail or a log.
"""

from __future__ import annotations

import contextlib
import hmac
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from appliance.core.errors import DirectoryError, IntegrityError
from appliance.core.ports import CredentialKind, EntryState
from appliance.storage.base import SYSTEM_ACTOR, StoreBase
from appliance.storage.schema import (
    Caller,
    CallerCredential,
    DataKey,
    DirectoryEntry,
    Voiceprint,
    new_id,
)

_SEPARATORS = re.compile(r"[\s\-.()/]")
_NUMBER = re.compile(r"\+?[0-9]{3,15}")
"""E.164 allows at most 15 digits; short extensions and numbers without ``+`` also reach a
PBX, so three or more digits, an optional ``+``."""
PIN_RECORD_BYTES = 16 + 32
"""A PIN's scrypt salt and hash (identity/factors.py ``hash_secret``)."""
MIN_TOTP_SECRET_BYTES = 16
"""RFC 4226 4 R6: the shared secret is at least 128 bits (160 recommended)."""
MAX_NAME_CHARS = 200
MAX_CONTACT_CHARS = 254


def normalize_number(number: str) -> str | None:
    """The caller ID as the directory keys it (visual separators dropped), or None when it is
    not a phone number."""
    compact = _SEPARATORS.sub("", number)
    return compact if _NUMBER.fullmatch(compact) else None


@dataclass(frozen=True)
class DirectoryView:
    """One enrolled caller as staff see it: which factors are enrolled, never their values."""

    number: str
    name: str
    factors: tuple[str, ...]
    """Enrolled ``CredentialKind`` values, and ``voice`` when a voice template exists."""
    state: EntryState
    created_at: datetime
    updated_at: datetime


class Directory(StoreBase):
    """The caller directory, sealed per entry."""

    def add_caller(self, number: str, name: str, actor: str) -> None:
        """Enrol a caller (no factor yet); ``directory.exists`` when the number is enrolled."""
        normal = self._number(number)
        if len(name) > MAX_NAME_CHARS:
            raise DirectoryError("directory.bad_name", f"a name is at most {MAX_NAME_CHARS} chars")
        hashed = self.caller_hash(normal)
        with self.session("directory add") as session:
            exists = self._entry_row(session, hashed) is not None
            if not exists:
                key_id, key = self._new_data_key(session, "directory")
                row_id = new_id()
                session.add(
                    DirectoryEntry(
                        id=row_id,
                        caller_hash=hashed,
                        data_key_id=key_id or None,
                        number=self._seal(
                            key, normal.encode(), "directory_entries", "number", row_id
                        ),
                        name=(
                            self._seal(key, name.encode(), "directory_entries", "name", row_id)
                            if name
                            else None
                        ),
                        created_at=self.clock(),
                        updated_at=self.clock(),
                    )
                )
            outcome = "exists" if exists else "ok"
            self.audit_in(session, actor, "directory_add", _object(hashed), outcome)
        if exists:
            raise DirectoryError("directory.exists", "that number is already in the directory")

    def set_credential(
        self, number: str, kind: CredentialKind, value: bytes, actor: str, *, replace: bool = False
    ) -> bool:
        """Enrol or reset one factor; True when it replaced one. A TOTP secret already enrolled
        is replaced only with ``replace`` (the caller's authenticator would stop working)."""
        _check_value(kind, value)
        hashed = self.caller_hash(self._number(number))
        refused = ""
        old: CallerCredential | None = None
        with self._audited(hashed), self.session("directory credential") as session:
            entry = self._entry_row(session, hashed)
            if entry is None:
                refused = "unknown"
            else:
                key = self._entry_key(session, entry, number)
                old = self._credential_row(session, entry, kind)
                if old is not None and kind is CredentialKind.TOTP and not replace:
                    refused = "exists"
                else:
                    if old is not None:
                        session.delete(old)
                        session.flush()
                    session.add(
                        CallerCredential(
                            id=new_id(),
                            entry_id=entry.id,
                            kind=kind.value,
                            value=self._seal(key, value, *_credential_binding(entry, kind)),
                            created_at=self.clock(),
                        )
                    )
                    entry.updated_at = self.clock()
            details = {"kind": kind.value, "replaced": not refused and old is not None}
            self.audit_in(
                session, actor, "directory_credential", _object(hashed), refused or "ok", details
            )
        if refused == "unknown":
            raise _unknown()
        if refused:
            raise DirectoryError(
                "directory.credential_exists",
                f"a {kind.value} is already enrolled for this caller; replace it explicitly",
            )
        return old is not None

    def credential(self, caller: str, kind: CredentialKind) -> bytes | None:
        """The caller's enrolled ``kind`` (the CallerDirectory port), or None: not enrolled,
        not set, or locked. Raises IntegrityError when the entry does not open for ``caller``."""
        normal = normalize_number(caller)
        if normal is None:
            return None
        hashed = self.caller_hash(normal)
        with self._audited(hashed), self.session("directory read credential") as session:
            entry = self._entry_row(session, hashed)
            if entry is None or entry.locked:
                return None
            key = self._entry_key(session, entry, normal)
            row = self._credential_row(session, entry, kind)
            if row is None:
                return None
            return self._open_entry(key, row.value, entry, _credential_binding(entry, kind))

    def entry_state(self, caller: str) -> EntryState:
        """Whether ``caller`` is enrolled and usable (the CallerDirectory port)."""
        normal = normalize_number(caller)
        if normal is None:
            return EntryState.ABSENT
        hashed = self.caller_hash(normal)
        with self._audited(hashed), self.session("directory state") as session:
            entry = self._entry_row(session, hashed)
            if entry is None:
                return EntryState.ABSENT
            self._entry_key(session, entry, normal)  # an entry moved here is no entry
            return EntryState.LOCKED if entry.locked else EntryState.ACTIVE

    def set_locked(self, number: str, locked: bool, actor: str) -> bool:
        """Lock (every factor fails) or unlock an entry; True when that changed it."""
        hashed = self.caller_hash(self._number(number))
        with self._audited(hashed), self.session("directory lock") as session:
            entry = self._entry_row(session, hashed)
            changed = entry is not None and entry.locked != locked
            if entry is not None:
                self._entry_key(session, entry, number)
                if changed:
                    entry.locked, entry.updated_at = locked, self.clock()
            outcome = "unknown" if entry is None else ("ok" if changed else "unchanged")
            action = "directory_lock" if locked else "directory_unlock"
            self.audit_in(session, actor, action, _object(hashed), outcome)
        if entry is None:
            raise _unknown()
        return changed

    def directory(self, actor: str) -> list[DirectoryView]:
        """Every enrolled caller (audited: the list holds numbers and names)."""
        with self._audited(""), self.session("directory list") as session:
            entries = session.scalars(select(DirectoryEntry).order_by(DirectoryEntry.created_at))
            views = [self._view(session, entry) for entry in entries.all()]
            self.audit_in(
                session, actor, "directory_list", "directory", "ok", {"entries": len(views)}
            )
        return views

    def directory_entry(self, number: str, actor: str) -> DirectoryView:
        """One enrolled caller (audited); ``directory.unknown`` when not enrolled."""
        hashed = self.caller_hash(self._number(number))
        with self._audited(hashed), self.session("directory read") as session:
            entry = self._entry_row(session, hashed)
            view = None
            if entry is not None:
                view = self._view(session, entry)
                if view.number != self._number(number):
                    raise _moved()
            outcome = "ok" if view is not None else "unknown"
            self.audit_in(session, actor, "directory_read", _object(hashed), outcome)
        if view is None:
            raise _unknown()
        return view

    def remove_caller(self, number: str, actor: str) -> None:
        """Remove an entry: its credentials and rows deleted, its key destroyed."""
        hashed = self.caller_hash(self._number(number))
        with self.session("directory remove") as session:
            removed = self._remove_entry_in(session, hashed)
            self.audit_in(
                session, actor, "directory_remove", _object(hashed), "ok" if removed else "unknown"
            )
        if not removed:
            raise _unknown()
        self.after_erasure()

    @contextlib.contextmanager
    def _audited(self, hashed: str) -> Iterator[None]:
        """An entry that does not open leaves an event of its own: the refused transaction,
        and any event in it, is rolled back."""
        try:
            yield
        except IntegrityError:
            obj = _object(hashed) if hashed else "directory"
            self.log_event(SYSTEM_ACTOR, "directory_integrity", obj, "failed")
            raise

    # -- in a session --------------------------------------------------------------------------

    def _remove_entry_in(self, session: Session, hashed: str) -> bool:
        """Delete the entry of ``hashed`` and shred its key, in ``session``; True if there was
        one."""
        entry = self._entry_row(session, hashed)
        if entry is None:
            return False
        session.execute(delete(CallerCredential).where(CallerCredential.entry_id == entry.id))
        key_id = entry.data_key_id
        session.delete(entry)
        session.flush()
        if key_id:
            session.execute(delete(DataKey).where(DataKey.id == key_id))
            self._forget_keys([key_id])
        return True

    def _number(self, number: str) -> str:
        normal = normalize_number(number)
        if normal is None:
            raise DirectoryError(
                "directory.bad_number",
                "a caller's number is 3 to 15 digits, optionally after + (E.164)",
            )
        return normal

    @staticmethod
    def _entry_row(session: Session, hashed: str) -> DirectoryEntry | None:
        query = select(DirectoryEntry).where(DirectoryEntry.caller_hash == hashed)
        return session.scalars(query).first()

    @staticmethod
    def _credential_row(
        session: Session, entry: DirectoryEntry, kind: CredentialKind
    ) -> CallerCredential | None:
        query = select(CallerCredential).where(
            CallerCredential.entry_id == entry.id, CallerCredential.kind == kind.value
        )
        return session.scalars(query).first()

    def _entry_key(self, session: Session, entry: DirectoryEntry, number: str) -> bytes | None:
        """The entry's data key, once its sealed number is ``number``: a lookup finds the entry
        by pseudonym, and the sealed number says whose it really is."""
        key = self._data_key(session, entry.data_key_id)
        sealed = self._open_entry(
            key, entry.number, entry, ("directory_entries", "number", entry.id)
        )
        expected = normalize_number(number) or number
        if not hmac.compare_digest(sealed, expected.encode()):
            raise _moved()
        return key

    def _open_entry(
        self, key: bytes | None, value: bytes, entry: DirectoryEntry, binding: tuple[str, str, str]
    ) -> bytes:
        try:
            return self._open(key, value, *binding)
        except IntegrityError as exc:
            raise _moved() from exc

    def _view(self, session: Session, entry: DirectoryEntry) -> DirectoryView:
        key = self._data_key(session, entry.data_key_id)
        number = self._open_entry(
            key, entry.number, entry, ("directory_entries", "number", entry.id)
        ).decode()
        name = (
            self._open_entry(key, entry.name, entry, ("directory_entries", "name", entry.id))
            if entry.name is not None
            else b""
        )
        kinds = set(
            session.scalars(
                select(CallerCredential.kind).where(CallerCredential.entry_id == entry.id)
            )
        )
        voice = session.scalars(
            select(Voiceprint.id)
            .join(Caller, Caller.id == Voiceprint.caller_id)
            .where(Caller.caller_hash == entry.caller_hash)
        ).first()
        factors = [k.value for k in CredentialKind if k.value in kinds]
        return DirectoryView(
            number=number,
            name=name.decode(),
            factors=(*factors, *(("voice",) if voice else ())),
            state=EntryState.LOCKED if entry.locked else EntryState.ACTIVE,
            created_at=entry.created_at,
            updated_at=entry.updated_at,
        )


def _credential_binding(entry: DirectoryEntry, kind: CredentialKind) -> tuple[str, str, str]:
    """A credential opens only in its entry, as its kind: moved or relabelled, it does not."""
    return "caller_credentials", "value", f"{entry.id}/{kind.value}"


def _check_value(kind: CredentialKind, value: bytes) -> None:
    if kind is CredentialKind.PIN and len(value) != PIN_RECORD_BYTES:
        raise DirectoryError("directory.bad_pin", "a PIN is kept as its scrypt salt and hash")
    if kind is CredentialKind.TOTP and len(value) < MIN_TOTP_SECRET_BYTES:
        raise DirectoryError("directory.bad_totp", "a TOTP secret is at least 128 bits")
    if kind is CredentialKind.CONTACT and not 0 < len(value) <= MAX_CONTACT_CHARS:
        raise DirectoryError("directory.bad_contact", "a contact is 1 to 254 characters")


def _object(hashed: str) -> str:
    return f"caller:{hashed[:16]}"


def _unknown() -> DirectoryError:
    return DirectoryError("directory.unknown", "that number is not in the directory")


def _moved() -> IntegrityError:
    return IntegrityError(
        "directory.integrity",
        "a directory entry does not open for the number it was found by (altered or moved)",
    )
