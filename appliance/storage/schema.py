"""The tables, as SQLAlchemy 2 ORM models. Portable SQL only: SQLite by default, PostgreSQL too.

Columns holding what a caller said, or anything personal, are ``LargeBinary`` sealed values
(see ``crypto.py``); everything else is metadata needed to run, audit and purge the service.
Callers are known by an HMAC of their caller ID, never by the number itself.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utc_now() -> datetime:
    """Naive UTC: every timestamp in the database is UTC, stored without an offset."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    pass


class SchemaMigration(Base):
    __tablename__ = "schema_migrations"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    description: Mapped[str] = mapped_column(String(200))
    applied_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)
    additive: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    """Older code may run on the schema it made (storage.migrations); empty: not known."""


class LimitEvent(Base):
    """One counted event of a rate limit or lockout (a failed log-in, an admitted call). The
    key is an HMAC under the pseudonymization key: no name, number or address is stored."""

    __tablename__ = "limit_events"
    __table_args__ = (
        Index("ix_limit_events_scope_key_at", "scope", "key", "at"),
        Index("ix_limit_events_scope_at", "scope", "at"),  # what ages out, per scope
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)


class LimitState(Base):
    """A small value per limit key (a lockout's count and end), the key hashed as above."""

    __tablename__ = "limit_state"
    scope: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Meta(Base):
    """Small named values: the audit chain's anchor, the pseudonymization key's id."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class DataKey(Base):
    """A 256-bit data key, wrapped (sealed) by the master key named by ``master_key_id``."""

    __tablename__ = "data_keys"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    purpose: Mapped[str] = mapped_column(String(16))  # "call", "voice", "directory", "system"
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)


class Caller(Base):
    __tablename__ = "callers"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    caller_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)


class Voiceprint(Base):
    """A caller's voice template (biometric data), sealed under its own data key: erasing the
    caller destroys the key."""

    __tablename__ = "voiceprints"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    caller_id: Mapped[str] = mapped_column(ForeignKey("callers.id"), unique=True)
    data_key_id: Mapped[str | None] = mapped_column(String(36))
    template: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)


class DirectoryEntry(Base):
    """A caller the organization enrolled. Their number and display name are sealed under the
    entry's own data key (removing or erasing the caller destroys it); ``caller_hash`` is the
    number's pseudonym, for lookup. The sealed number is what the entry is for: a lookup whose
    number differs from it opens nothing."""

    __tablename__ = "directory_entries"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    caller_hash: Mapped[str] = mapped_column(String(64), unique=True)
    data_key_id: Mapped[str | None] = mapped_column(String(36))
    number: Mapped[bytes] = mapped_column(LargeBinary)
    name: Mapped[bytes | None] = mapped_column(LargeBinary)
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)


class CallerCredential(Base):
    """One enrolled factor of a directory entry (a PIN's salted hash, a TOTP secret, the
    contact for one-time codes), sealed under the entry's key and bound to the entry and kind."""

    __tablename__ = "caller_credentials"
    __table_args__ = (UniqueConstraint("entry_id", "kind", name="uq_caller_credentials_kind"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    entry_id: Mapped[str] = mapped_column(ForeignKey("directory_entries.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # a CredentialKind value
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)


class Call(Base):
    __tablename__ = "calls"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    caller_id: Mapped[str | None] = mapped_column(ForeignKey("callers.id"), index=True)
    data_key_id: Mapped[str | None] = mapped_column(ForeignKey("data_keys.id"))
    channel: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(64), default="active")
    """"active", "ended" or "ended:<why>" ("ended:abuse:block_caller" is 24 characters)."""
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    turn_count: Mapped[int] = mapped_column(Integer, default=0)
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    hold_reason: Mapped[str | None] = mapped_column(String(500))
    disclosure_version: Mapped[str | None] = mapped_column(String(64))
    node: Mapped[str | None] = mapped_column(String(64), index=True)
    """The voice node that took the call (``[service] node``): at its restart it closes its
    calls a kill left active (schema 11)."""


class Turn(Base):
    __tablename__ = "turns"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now, index=True)
    transcript: Mapped[bytes | None] = mapped_column(LargeBinary)
    reply: Mapped[bytes | None] = mapped_column(LargeBinary)
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(64))
    guard: Mapped[str | None] = mapped_column(Text)  # JSON verdicts: codes and reasons, no text
    timings: Mapped[str] = mapped_column(Text, default="{}")  # JSON: event type -> t_ms
    voice_to_voice_ms: Mapped[float | None] = mapped_column(Float)
    content_purged_at: Mapped[datetime | None] = mapped_column(DateTime)
    route: Mapped[str | None] = mapped_column(String(16), index=True)
    """How the turn was answered (faq, grounded, unknown, tool, guard, ...)."""
    citations: Mapped[str | None] = mapped_column(Text)
    """JSON list of the knowledge entry and passage ids the reply rested on (ids, no text)."""


class Recording(Base):
    __tablename__ = "recordings"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id"), index=True)
    turn_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now, index=True)
    sample_rate_hz: Mapped[int] = mapped_column(Integer)
    audio: Mapped[bytes] = mapped_column(LargeBinary)


class Consent(Base):
    __tablename__ = "consents"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id"), index=True)
    decision: Mapped[str] = mapped_column(String(16))  # "granted", "refused", "not_required"
    disclosure_version: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(16))  # "spoken", "dtmf", "configuration"
    decided_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)


class ToolCall(Base):
    __tablename__ = "tool_calls"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id"), index=True)
    tool: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[bytes | None] = mapped_column(LargeBinary)
    outcome: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now, index=True)


class CallbackRequest(Base):
    """A caller's consented request to be called back (no one could take a transfer). The
    number is sealed under the request's own data key (erasing the caller destroys it) and
    kept as its pseudonym (``caller_hash``); the state is a ``CallbackState`` value, with who
    changed it last and when."""

    __tablename__ = "callback_requests"
    __table_args__ = (Index("ix_callback_requests_state_created", "state", "created_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    call_id: Mapped[str | None] = mapped_column(String(36), index=True)
    """The call it came from (no foreign key: a request outlives its call's purge)."""
    caller_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    data_key_id: Mapped[str | None] = mapped_column(String(36))
    number: Mapped[bytes | None] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)
    changed_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)
    changed_by: Mapped[str] = mapped_column(String(128), default="system")


class Incident(Base):
    """Something for a person to follow up (the distress path, a flood, probing). ``state`` is
    an ``IncidentState`` value; who acknowledged and resolved it, and when, are kept here and
    in the audit trail."""

    __tablename__ = "incidents"
    __table_args__ = (Index("ix_incidents_state_opened", "state", "opened_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    call_id: Mapped[str | None] = mapped_column(String(36), index=True)
    caller_id: Mapped[str | None] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(String(500))  # codes and counts, never what was said
    opened_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now, index=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)
    """Unused since schema 10 (never written before it): ``resolved_at`` took its place, and
    migration 10 copied any value into it."""
    state: Mapped[str] = mapped_column(String(16), default="open", server_default="open")
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(128))
    resolution: Mapped[str | None] = mapped_column(String(64))
    """The resolver's note code (``false_alarm``, ``called_back``...): a code, never a text."""


class AdminUser(Base):
    __tablename__ = "admin_users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    totp_secret: Mapped[bytes | None] = mapped_column(LargeBinary)  # sealed, system key
    role: Mapped[str] = mapped_column(String(16))  # "admin", "operator", "auditor"
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiToken(Base):
    """A bearer token of the admin API, scoped to one role; only its SHA-256 is kept."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class AuditEvent(Base):
    """One link of the hash chain: ``hash`` covers this event's fields and ``prev_hash``."""

    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    object: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(32))
    details: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class RetentionRun(Base):
    __tablename__ = "retention_runs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="running")
    purged: Mapped[str] = mapped_column(Text, default="{}")  # JSON: data class -> count


class ErasureRequest(Base):
    """A request to erase a caller or a call (GDPR Art. 17), kept with its completion: a
    request that met a legal hold stays open until an erasure of the same subject completes.
    The subject is a keyed hash prefix or a call id, never a number."""

    __tablename__ = "erasure_requests"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    subject: Mapped[str] = mapped_column(String(64), index=True)
    requested_at: Mapped[datetime] = mapped_column(DateTime, default=utc_now)
    requested_by: Mapped[str] = mapped_column(String(128))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    calls_held: Mapped[int] = mapped_column(Integer, default=0)


Index("ix_turns_call_index", Turn.call_id, Turn.index, unique=True)
