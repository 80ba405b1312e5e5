"""The storage facade: calls and turns in, audited reads out, erasure, holds and key rotation.

Every write is one transaction that commits before the method returns, so a turn that was
acknowledged is durable. Every read of content, export, erasure and key change leaves an
audit event in the same transaction as the change it records.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, delete, func, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from appliance.core.errors import KeyringError, StorageError
from appliance.core.ports import TurnRecord
from appliance.storage import audit, sqlite
from appliance.storage.crypto import (
    associated_data,
    new_key,
    open_sealed,
    seal,
    unwrap_key,
    wrap_key,
)
from appliance.storage.keys import MasterKey
from appliance.storage.migrations import migrate
from appliance.storage.schema import (
    AdminUser,
    ApiToken,
    AuditEvent,
    Call,
    Caller,
    Consent,
    DataKey,
    Incident,
    Meta,
    Recording,
    ToolCall,
    Turn,
    Voiceprint,
    new_id,
    utc_now,
)

PSEUDONYM_KEY = "pseudonym_key_id"
TOTP_KEY = "admin_totp_key_id"
ENROLMENT_KEY = "admin_enrolment:"
"""Meta rows of the hash of each account's one-time enrolment code."""
SYSTEM_ACTOR = "system"
MAX_REPEATED_KINDS = 10_000
"""Kinds of repeated event counted at once (past it, the counts are written out)."""


@contextlib.contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Translate database failures where they enter: a full disk says so."""
    try:
        yield
    except DBAPIError as exc:
        text = str(exc.orig).lower()
        if "full" in text or "no space" in text:
            raise StorageError("storage.full", f"{action}: the disk is full") from exc
        raise StorageError("storage.failed", f"{action}: {type(exc.orig).__name__}") from exc
    except SQLAlchemyError as exc:
        raise StorageError("storage.failed", f"{action}: {type(exc).__name__}") from exc
    except OSError as exc:
        raise StorageError("storage.failed", f"{action}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class TurnView:
    index: int
    transcript: str | None
    reply: str | None
    interrupted: bool
    error_code: str | None
    timings_ms: dict[str, float]
    voice_to_voice_ms: float | None
    route: str = ""
    citations: tuple[str, ...] = ()


@dataclass(frozen=True)
class CallView:
    id: str
    channel: str
    status: str
    started_at: datetime
    ended_at: datetime | None
    legal_hold: bool
    hold_reason: str | None
    turns: list[TurnView] = field(default_factory=list)
    recordings: int = 0


@dataclass(frozen=True)
class ErasureReport:
    calls_erased: int
    calls_held: int
    caller_erased: bool


class Storage:
    """One database and the master key that opens it."""

    def __init__(
        self,
        engine: Engine,
        master: MasterKey | None,
        *,
        reopen: Callable[[MasterKey], Engine] | None = None,
        clock: Callable[[], datetime] = utc_now,
        checkpoint: audit.Checkpoint | None = None,
    ) -> None:
        self.engine = engine
        self._repeats: dict[tuple[str, str, str, str], tuple[datetime, int]] = {}
        self._repeats_lock = threading.Lock()
        self.checkpoint = checkpoint
        """The audit chain's signed head, outside the database: moved on after each commit
        that appended events, compared by ``verify_audit``."""
        self.master = master
        self._reopen = reopen
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._keys: dict[str, bytes] = {}
        self._keys_lock = threading.Lock()
        self._pseudonym_key: bytes | None = None
        self.clock = clock
        with storage_errors("migrate"):
            migrate(engine)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open_sqlite(cls, path: Path, master: MasterKey | None, **kwargs: Any) -> Storage:
        """SQLCipher under the master key's database key; ``master=None`` is plain SQLite and
        plain values (for the benchmark's baseline only)."""
        engine = sqlite.sqlite_engine(path, master.database_key if master else None)
        return cls(
            engine, master, reopen=lambda m: sqlite.sqlite_engine(path, m.database_key), **kwargs
        )

    @classmethod
    def open_url(cls, url: str, master: MasterKey, **kwargs: Any) -> Storage:
        """Another database server (PostgreSQL): values sealed, file encryption is the server's."""
        return cls(create_engine(url, pool_pre_ping=True), master, **kwargs)

    def close(self) -> None:
        with self._repeats_lock, contextlib.suppress(StorageError):
            self._flush_repeated()
        self.engine.dispose()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def session(self, action: str) -> Iterator[Session]:
        with storage_errors(action), self._sessions.begin() as session:
            yield session
        head = session.info.pop(audit.HEAD_KEY, None)
        if head is not None and self.checkpoint is not None:
            with storage_errors(f"{action}: audit checkpoint"):
                self.checkpoint.advance(*head)

    # -- sealing ----------------------------------------------------------------------------

    @property
    def encrypted(self) -> bool:
        return self.master is not None

    def _seal(self, key: bytes | None, value: bytes, table: str, column: str, row: str) -> bytes:
        if key is None:
            return value
        return seal(key, value, associated_data(table, column, row))

    def _open(self, key: bytes | None, value: bytes, table: str, column: str, row: str) -> bytes:
        if key is None:
            return value
        return open_sealed(key, value, associated_data(table, column, row))

    def _new_data_key(self, session: Session, purpose: str) -> tuple[str, bytes | None]:
        if self.master is None:
            return "", None
        key_id = new_id()
        secret = new_key()
        session.add(
            DataKey(
                id=key_id,
                purpose=purpose,
                wrapped=wrap_key(self.master.secret, secret, key_id),
                master_key_id=self.master.fingerprint,
            )
        )
        session.flush()  # before the row that refers to it (no ORM relationships here)
        with self._keys_lock:
            self._keys[key_id] = secret
        return key_id, secret

    def _data_key(self, session: Session, key_id: str | None) -> bytes | None:
        if self.master is None:
            return None
        if not key_id:
            raise KeyringError("keys.shredded", "this call's data key was destroyed (erased)")
        with self._keys_lock:
            cached = self._keys.get(key_id)
        if cached is not None:
            return cached
        row = session.get(DataKey, key_id)
        if row is None:
            raise KeyringError("keys.shredded", f"data key {key_id} was destroyed (erased)")
        secret = unwrap_key(self.master.secret, row.wrapped, key_id)
        with self._keys_lock:
            self._keys[key_id] = secret
        return secret

    def _forget_keys(self, key_ids: list[str]) -> None:
        with self._keys_lock:
            for key_id in key_ids:
                self._keys.pop(key_id, None)

    def caller_hash(self, caller_id: str) -> str:
        """HMAC-SHA256 of the caller ID under the pseudonymization key: stable, not reversible."""
        if self._pseudonym_key is None:
            self._pseudonym_key = self._load_pseudonym_key()
        return hmac.new(self._pseudonym_key, caller_id.encode(), hashlib.sha256).hexdigest()

    def _load_pseudonym_key(self) -> bytes:
        """Once per process (start_call is a hot path): created on first use, kept wrapped."""
        with self.session("pseudonymize") as session:
            meta = session.get(Meta, PSEUDONYM_KEY)
            if meta is None:
                key_id, _ = self._new_data_key(session, "system")
                session.add(Meta(key=PSEUDONYM_KEY, value=key_id))
                session.flush()
            else:
                key_id = meta.value
            key = self._data_key(session, key_id) if self.master else b"unencrypted-baseline"
        assert key is not None
        return key

    # -- calls and turns ---------------------------------------------------------------------

    def start_call(self, caller_id: str | None, channel: str) -> CallHandle:
        hashed = self.caller_hash(caller_id) if caller_id else None
        with self.session("start call") as session:
            caller_row_id = None
            if hashed is not None:
                caller = self._caller_in(session, hashed)
                caller.last_seen_at = self.clock()
                caller_row_id = caller.id
            key_id, _ = self._new_data_key(session, "call")
            call = Call(
                caller_id=caller_row_id,
                data_key_id=key_id or None,
                channel=channel,
                started_at=self.clock(),
            )
            session.add(call)
            session.flush()
            call_id = call.id
        return CallHandle(self, call_id)

    def add_turn(self, call_id: str, record: TurnRecord) -> str:
        """Store one turn; returns its id once committed."""
        turn_id = new_id()
        with self.session("store turn") as session:
            call = session.get(Call, call_id)
            if call is None:
                raise StorageError("storage.no_call", f"call {call_id} does not exist")
            key = self._data_key(session, call.data_key_id)
            session.add(
                Turn(
                    id=turn_id,
                    call_id=call_id,
                    index=record.index,
                    created_at=self.clock(),
                    transcript=self._seal(
                        key, record.transcript.encode(), "turns", "transcript", turn_id
                    ),
                    reply=self._seal(key, record.reply.encode(), "turns", "reply", turn_id),
                    interrupted=record.interrupted,
                    error_code=record.error_code or None,
                    timings=json.dumps(dict(record.timings_ms), sort_keys=True),
                    voice_to_voice_ms=record.voice_to_voice_ms,
                    guard=json.dumps(dict(record.guard), sort_keys=True) if record.guard else None,
                    route=record.route or None,
                    citations=json.dumps(list(record.citations)) if record.citations else None,
                )
            )
            if record.escalation:
                session.add(
                    Incident(
                        call_id=call_id,
                        caller_id=call.caller_id,
                        kind=record.escalation,
                        severity="high",
                        summary=f"turn {record.index}: {record.escalation} path taken",
                        opened_at=self.clock(),
                    )
                )
            if record.audio is not None:
                recording_id = new_id()
                session.add(
                    Recording(
                        id=recording_id,
                        call_id=call_id,
                        turn_id=turn_id,
                        created_at=self.clock(),
                        sample_rate_hz=record.audio_rate_hz,
                        audio=self._seal(key, record.audio, "recordings", "audio", recording_id),
                    )
                )
            call.turn_count = call.turn_count + 1
        return turn_id

    def end_call(self, call_id: str, status: str) -> None:
        with self.session("end call") as session:
            call = session.get(Call, call_id)
            if call is not None:
                call.status = status
                call.ended_at = self.clock()

    def record_consent(
        self, call_id: str, decision: str, disclosure_version: str, method: str
    ) -> None:
        with self.session("record consent") as session:
            session.add(
                Consent(
                    call_id=call_id,
                    decision=decision,
                    disclosure_version=disclosure_version,
                    method=method,
                )
            )
            call = session.get(Call, call_id)
            if call is not None:
                call.disclosure_version = disclosure_version

    def record_tool_call(
        self, call_id: str, tool: str, arguments: Mapping[str, Any], outcome: str, actor: str
    ) -> None:
        row_id = new_id()
        with self.session("record tool call") as session:
            call = session.get(Call, call_id)
            key = self._data_key(session, call.data_key_id if call else None)
            sealed = self._seal(
                key, json.dumps(dict(arguments)).encode(), "tool_calls", "arguments", row_id
            )
            session.add(
                ToolCall(id=row_id, call_id=call_id, tool=tool, arguments=sealed, outcome=outcome)
            )
            self.audit_in(session, actor, "tool_call", f"call:{call_id}", outcome, {"tool": tool})

    # -- voice templates (biometric data) -----------------------------------------------------

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

    def _caller_in(self, session: Session, hashed: str) -> Caller:
        caller = session.scalars(select(Caller).where(Caller.caller_hash == hashed)).first()
        if caller is None:
            caller = Caller(caller_hash=hashed)
            session.add(caller)
            session.flush()
        return caller

    # -- admin panel accounts ----------------------------------------------------------------

    def create_admin_user(self, username: str, password_hash: str, role: str, actor: str) -> str:
        """A panel account; returns its enrolment code (shown once, only its hash is kept):
        the authenticator is enrolled at the first log-in with the password and this code."""
        with self.session("create admin user") as session:
            if session.scalars(select(AdminUser).where(AdminUser.username == username)).first():
                raise StorageError("storage.user_exists", f"user {username!r} already exists")
            session.add(AdminUser(username=username, password_hash=password_hash, role=role))
            self.audit_in(session, actor, "create_user", f"user:{username}", "ok", {"role": role})
            return self._new_enrolment(session, username)

    def new_enrolment_code(self, username: str, actor: str) -> str | None:
        """A new enrolment code for an account (its authenticator is enrolled again: a lost
        phone), or None when there is no such account."""
        with self.session("new enrolment code") as session:
            user = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
            if user is None:
                return None
            user.totp_secret = None
            self.audit_in(session, actor, "enrolment_code", f"user:{username}", "ok")
            return self._new_enrolment(session, username)

    def enrolment_code_ok(self, username: str, code: str) -> bool:
        digest = hashlib.sha256(code.strip().encode()).hexdigest()
        with self.session("check enrolment code") as session:
            row = session.get(Meta, ENROLMENT_KEY + username)
            return row is not None and hmac.compare_digest(row.value, digest)

    @staticmethod
    def _new_enrolment(session: Session, username: str) -> str:
        code = secrets.token_urlsafe(15)
        digest = hashlib.sha256(code.encode()).hexdigest()
        row = session.get(Meta, ENROLMENT_KEY + username)
        if row is None:
            session.add(Meta(key=ENROLMENT_KEY + username, value=digest))
        else:
            row.value = digest
        return code

    def admin_user(self, username: str) -> AdminUser | None:
        with self.session("read admin user") as session:
            return session.scalars(select(AdminUser).where(AdminUser.username == username)).first()

    def admin_users(self) -> list[AdminUser]:
        with self.session("list admin users") as session:
            return list(session.scalars(select(AdminUser).order_by(AdminUser.username)))

    def set_admin_disabled(self, username: str, disabled: bool, actor: str) -> bool:
        """Disable (or enable again) a panel account; False when there is no such account. A
        disabled account cannot log in, and its sessions end at their next request."""
        with self.session("disable admin user") as session:
            user = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
            action = "disable_user" if disabled else "enable_user"
            if user is None:
                self.audit_in(session, actor, action, f"user:{username}", "not_found")
                return False
            user.disabled = disabled
            self.audit_in(session, actor, action, f"user:{username}", "ok")
            return True

    def delete_admin_user(self, username: str, actor: str) -> bool:
        """Delete a panel account (its TOTP secret with it); False when there is none."""
        with self.session("delete admin user") as session:
            user = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
            if user is None:
                self.audit_in(session, actor, "delete_user", f"user:{username}", "not_found")
                return False
            session.delete(user)
            enrolment = session.get(Meta, ENROLMENT_KEY + username)
            if enrolment is not None:
                session.delete(enrolment)
            self.audit_in(session, actor, "delete_user", f"user:{username}", "ok")
            return True

    def set_admin_totp(self, username: str, secret: bytes, actor: str) -> None:
        """Store a user's TOTP secret, sealed under the system key."""
        with self.session("enrol totp") as session:
            user = session.scalars(select(AdminUser).where(AdminUser.username == username)).one()
            key = self._system_key(session, TOTP_KEY)
            user.totp_secret = self._seal(key, secret, "admin_users", "totp_secret", user.id)
            enrolment = session.get(Meta, ENROLMENT_KEY + username)
            if enrolment is not None:  # the enrolment code is good once
                session.delete(enrolment)
            self.audit_in(session, actor, "enrol_totp", f"user:{username}", "ok")

    def admin_totp(self, username: str) -> bytes | None:
        with self.session("read totp") as session:
            user = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
            if user is None or user.totp_secret is None:
                return None
            key = self._system_key(session, TOTP_KEY)
            return self._open(key, user.totp_secret, "admin_users", "totp_secret", user.id)

    def create_api_token(self, name: str, role: str, actor: str) -> str:
        """A new bearer token for the admin API (shown once; only its hash is kept)."""
        token = secrets.token_urlsafe(32)
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self.session("create api token") as session:
            session.add(ApiToken(name=name, role=role, token_hash=digest))
            self.audit_in(session, actor, "create_token", f"token:{name}", "ok", {"role": role})
        return token

    def api_tokens(self) -> list[ApiToken]:
        with self.session("list api tokens") as session:
            return list(session.scalars(select(ApiToken).order_by(ApiToken.created_at)))

    def revoke_api_token(self, name: str, actor: str) -> int:
        """Revoke every token of that name (kept, marked revoked: the API refuses it from the
        next request); returns how many were live."""
        with self.session("revoke api token") as session:
            rows = list(
                session.scalars(
                    select(ApiToken).where(ApiToken.name == name, ApiToken.revoked.is_(False))
                )
            )
            for row in rows:
                row.revoked = True
            outcome = "ok" if rows else "not_found"
            self.audit_in(session, actor, "revoke_token", f"token:{name}", outcome)
            return len(rows)

    def api_token_role(self, token: str) -> str | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self.session("check api token") as session:
            row = session.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).first()
            return None if row is None or row.revoked else row.role

    def _system_key(self, session: Session, name: str) -> bytes | None:
        """A data key for system secrets (created on first use, wrapped by the master key)."""
        meta = session.get(Meta, name)
        if meta is None:
            key_id, key = self._new_data_key(session, "system")
            session.add(Meta(key=name, value=key_id))
            session.flush()
            return key
        return self._data_key(session, meta.value)

    # -- reading (audited) ---------------------------------------------------------------------

    def list_calls(self, limit: int = 100) -> list[CallView]:
        """Call metadata only: no content, so no audit event."""
        with self.session("list calls") as session:
            calls = session.scalars(
                select(Call).order_by(Call.started_at.desc()).limit(limit)
            ).all()
            return [self._call_view(c, []) for c in calls]

    def open_incident(
        self,
        kind: str,
        severity: str,
        summary: str,
        *,
        call_id: str | None = None,
        caller_hash: str | None = None,
    ) -> str:
        """An incident for a person to follow up (codes and counts only), and its audit event."""
        with self.session("open incident") as session:
            caller_row = None
            if caller_hash:
                caller = session.scalars(
                    select(Caller).where(Caller.caller_hash == caller_hash)
                ).first()
                caller_row = caller.id if caller else None
            incident = Incident(
                call_id=call_id,
                caller_id=caller_row,
                kind=kind,
                severity=severity,
                summary=summary,
                opened_at=self.clock(),
            )
            session.add(incident)
            session.flush()
            self.audit_in(session, SYSTEM_ACTOR, "incident_opened", f"incident:{incident.id}", kind)
            return incident.id

    def list_incidents(self, limit: int = 200) -> list[dict[str, str | None]]:
        """Incidents carry codes and counts, never what was said: no content, no audit."""
        with self.session("list incidents") as session:
            rows = session.scalars(
                select(Incident).order_by(Incident.opened_at.desc()).limit(limit)
            ).all()
            return [
                {
                    "id": r.id,
                    "opened_at": r.opened_at.isoformat(),
                    "kind": r.kind,
                    "severity": r.severity,
                    "call_id": r.call_id,
                    "summary": r.summary,
                    "closed_at": r.closed_at.isoformat() if r.closed_at else None,
                }
                for r in rows
            ]

    def read_call(self, call_id: str, actor: str, reason: str = "") -> CallView:
        """Decrypt a call's turns; leaves an audit event (the read is recorded even if it fails)."""
        try:
            with self.session("read call") as session:
                call = session.get(Call, call_id)
                if call is None:
                    raise StorageError("storage.no_call", f"call {call_id} does not exist")
                key = self._data_key(session, call.data_key_id)
                turns = session.scalars(
                    select(Turn).where(Turn.call_id == call_id).order_by(Turn.index)
                ).all()
                views = [self._turn_view(key, t) for t in turns]
                recordings = (
                    session.scalar(
                        select(func.count())
                        .select_from(Recording)
                        .where(Recording.call_id == call_id)
                    )
                    or 0
                )
                self.audit_in(session, actor, "read", f"call:{call_id}", "ok", {"reason": reason})
                return self._call_view(call, views, int(recordings))
        except Exception as exc:
            with self.session("audit failed read") as session:
                self.audit_in(
                    session,
                    actor,
                    "read",
                    f"call:{call_id}",
                    "failed",
                    {"reason": reason, "error": getattr(exc, "code", type(exc).__name__)},
                )
            raise

    def _turn_view(self, key: bytes | None, turn: Turn) -> TurnView:
        def text(column: str, value: bytes | None) -> str | None:
            if value is None:
                return None
            return self._open(key, value, "turns", column, turn.id).decode()

        return TurnView(
            index=turn.index,
            transcript=text("transcript", turn.transcript),
            reply=text("reply", turn.reply),
            interrupted=turn.interrupted,
            error_code=turn.error_code,
            timings_ms=json.loads(turn.timings or "{}"),
            voice_to_voice_ms=turn.voice_to_voice_ms,
            route=turn.route or "",
            citations=tuple(json.loads(turn.citations or "[]")),
        )

    @staticmethod
    def _call_view(call: Call, turns: list[TurnView], recordings: int = 0) -> CallView:
        return CallView(
            call.id,
            call.channel,
            call.status,
            call.started_at,
            call.ended_at,
            call.legal_hold,
            call.hold_reason,
            turns,
            recordings,
        )

    def knowledge_gaps(self, actor: str, days: int = 30) -> list[tuple[str, int]]:
        """What callers asked that nothing in the knowledge base answered (turns routed to
        the honest unknown in the last ``days``): the stored wording, already redacted by the
        input guard, with how often it was asked, most asked first. Reading it is audited,
        like any read of transcripts; purged or erased turns are gone from it too."""
        since = self.clock() - timedelta(days=days)
        counts: dict[str, int] = {}
        with self.session("knowledge gaps") as session:
            rows = session.execute(
                select(Turn, Call.data_key_id)
                .join(Call, Call.id == Turn.call_id)
                .where(Turn.route == "unknown", Turn.created_at >= since)
            ).all()
            for turn, key_id in rows:
                if turn.transcript is None:
                    continue
                try:
                    key = self._data_key(session, key_id)
                except KeyringError:
                    continue  # erased: its key was shredded
                wording = self._open(key, turn.transcript, "turns", "transcript", turn.id)
                question = " ".join(wording.decode().split()).strip().lower().rstrip("?.! ")
                if question:
                    counts[question] = counts.get(question, 0) + 1
            self.audit_in(
                session, actor, "read", "knowledge_gaps", "ok", {"days": days, "turns": len(rows)}
            )
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))

    def read_recording(self, call_id: str, actor: str) -> list[bytes]:
        with self.session("read recording") as session:
            call = session.get(Call, call_id)
            if call is None:
                raise StorageError("storage.no_call", f"call {call_id} does not exist")
            key = self._data_key(session, call.data_key_id)
            rows = session.scalars(select(Recording).where(Recording.call_id == call_id)).all()
            audio = [self._open(key, r.audio, "recordings", "audio", r.id) for r in rows]
            self.audit_in(session, actor, "read_recording", f"call:{call_id}", "ok")
            return audio

    # -- legal hold and erasure ----------------------------------------------------------------

    def set_legal_hold(self, call_id: str, reason: str | None, actor: str) -> None:
        """Hold (with a reason) or release a call: held data outlives retention and erasure."""
        with self.session("legal hold") as session:
            call = session.get(Call, call_id)
            if call is None:
                raise StorageError("storage.no_call", f"call {call_id} does not exist")
            if reason is not None and not reason.strip():
                raise StorageError("storage.hold_reason", "a legal hold needs a reason")
            call.legal_hold = reason is not None
            call.hold_reason = reason
            self.audit_in(
                session,
                actor,
                "legal_hold" if reason else "legal_hold_release",
                f"call:{call_id}",
                "ok",
                {"reason": reason or ""},
            )

    def erase_caller(self, caller_id: str, actor: str) -> ErasureReport:
        """Erase everything of one caller (by caller ID): crypto-shred, delete, audit."""
        hashed = self.caller_hash(caller_id)
        with self.session("erase caller") as session:
            caller = session.scalars(select(Caller).where(Caller.caller_hash == hashed)).first()
            if caller is None:
                self.audit_in(session, actor, "erase", f"caller:{hashed[:16]}", "not_found")
                return ErasureReport(0, 0, False)
            calls = session.scalars(select(Call).where(Call.caller_id == caller.id)).all()
            report = self.erase_calls_in(session, calls)
            prints = session.scalars(select(Voiceprint).where(Voiceprint.caller_id == caller.id))
            for row in prints.all():
                self._delete_voiceprint(session, row)  # biometric data: never held
            caller_erased = report.calls_held == 0
            if caller_erased:
                session.delete(caller)
            self.audit_in(
                session,
                actor,
                "erase",
                f"caller:{hashed[:16]}",
                "ok" if caller_erased else "partial",
                {"calls_erased": report.calls_erased, "calls_held": report.calls_held},
            )
        self.after_erasure()
        return ErasureReport(report.calls_erased, report.calls_held, caller_erased)

    def erase_call(self, call_id: str, actor: str) -> ErasureReport:
        with self.session("erase call") as session:
            call = session.get(Call, call_id)
            if call is None:
                raise StorageError("storage.no_call", f"call {call_id} does not exist")
            report = self.erase_calls_in(session, [call])
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

    def after_erasure(self) -> None:
        """Truncate the WAL so that no copy of deleted pages stays behind it."""
        if self.engine.dialect.name == "sqlite":
            with storage_errors("checkpoint"):
                sqlite.checkpoint(self.engine)

    # -- keys ----------------------------------------------------------------------------------

    def rotate_master_key(
        self, new: MasterKey, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Re-wrap every data key under ``new`` (content is not re-encrypted) and re-key the
        database file; returns how many data keys were re-wrapped. Resumable: keys already
        under ``new`` are skipped."""
        old = self.master
        if old is None:
            raise KeyringError("keys.unencrypted", "this storage is not encrypted")
        with self.session("count keys") as session:
            total = session.scalar(select(func.count()).select_from(DataKey)) or 0
            ids = list(session.scalars(select(DataKey.id).order_by(DataKey.id)))
        done = 0
        for start in range(0, len(ids), 500):
            with self.session("re-wrap keys") as session:
                for row in session.scalars(
                    select(DataKey).where(DataKey.id.in_(ids[start : start + 500]))
                ):
                    if row.master_key_id == new.fingerprint:
                        continue
                    secret = unwrap_key(old.secret, row.wrapped, row.id)
                    row.wrapped = wrap_key(new.secret, secret, row.id)
                    row.master_key_id = new.fingerprint
                done = min(total, start + 500)
            if progress is not None:
                progress(done, total)
        with self.session("audit rotation") as session:
            self.audit_in(
                session,
                SYSTEM_ACTOR,
                "rotate_master_key",
                f"key:{new.fingerprint}",
                "ok",
                {"previous": old.fingerprint, "data_keys": total},
            )
        if self.engine.dialect.name == "sqlite" and self._reopen is not None:
            sqlite.rekey(self.engine, new.database_key)
            self.engine = self._reopen(new)
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.master = new
        return int(total)

    # -- audit -----------------------------------------------------------------------------------

    def audit_in(
        self,
        session: Session,
        actor: str,
        action: str,
        obj: str,
        outcome: str,
        details: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Append an audit event in ``session``'s transaction, on this store's clock."""
        return audit.append(session, actor, action, obj, outcome, details, at=self.clock())

    def log_event(
        self,
        actor: str,
        action: str,
        obj: str,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> None:
        with self.session("audit") as session:
            self.audit_in(session, actor, action, obj, outcome, details)

    def log_repeated(
        self, actor: str, action: str, obj: str, outcome: str, window_s: float = 60.0
    ) -> None:
        """An event that an attacker can repeat at will (a refusal while locked out, a blocked
        packet): the first of each ``window_s`` per kind is written, the rest are counted and
        their number goes into the next one written (``"repeated"``) or, at ``close``, into a
        last one. A flood costs the trail a few events a minute, and loses no count."""
        key = (actor, action, obj, outcome)
        now = self.clock()
        with self._repeats_lock:
            started, repeated = self._repeats.get(key, (None, 0))
            if started is not None and (now - started).total_seconds() < window_s:
                self._repeats[key] = (started, repeated + 1)
                return
            if len(self._repeats) >= MAX_REPEATED_KINDS:
                self._flush_repeated()
            self._repeats[key] = (now, 0)
        self.log_event(actor, action, obj, outcome, {"repeated": repeated} if repeated else None)

    def _flush_repeated(self) -> None:
        counted = [(key, n) for key, (_, n) in self._repeats.items() if n]
        self._repeats.clear()
        for (actor, action, obj, outcome), repeated in counted:
            self.log_event(actor, action, obj, outcome, {"repeated": repeated})

    def verify_audit(self) -> audit.ChainReport:
        with self.session("verify audit") as session:
            return audit.verify(session, checkpoint=self.checkpoint)


class CallHandle:
    """A call's link to storage: the pipeline's CallRecorder."""

    def __init__(self, storage: Storage, call_id: str) -> None:
        self.storage = storage
        self.call_id = call_id

    def record_turn(self, turn: TurnRecord) -> None:
        self.storage.add_turn(self.call_id, turn)

    def finish(self, status: str) -> None:
        self.storage.end_call(self.call_id, status)
