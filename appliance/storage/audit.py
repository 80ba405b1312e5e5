"""The tamper-evident audit trail: append-only events, each holding the hash of the one before.

``hash = SHA-256(prev_hash || "\\n" || canonical JSON of the event's fields)``. Changing,
inserting or deleting an event breaks the chain at that point; ``verify`` names the first broken
link. When retention purges old events, the hash of the last purged one becomes the chain's
anchor.

Deleting events from the end leaves a shorter chain that still links, so the head is anchored
outside the table too: after each commit that appended events, a ``Checkpoint`` (the last
event's number and hash, signed with the audit key) is written beside the keys, apart from the
database, only ever forward; ``verify`` fails when the chain no longer reaches it or holds a
different event there. Exports are signed with the same Ed25519 key, and verified only against
the appliance's own public key (``appliance audit key`` prints it for the auditor), never
against a key the export carries.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.core.errors import IntegrityError
from appliance.storage import postgresql
from appliance.storage.keys import own_like_folder, write_private
from appliance.storage.schema import AuditEvent, Meta, utc_now

GENESIS = "0" * 64
ANCHOR_KEY = "audit_anchor"
EXPORT_FORMAT = "appliance-audit-export/1"
CHECKPOINT_FORMAT = "appliance-audit-checkpoint/1"
HEAD_KEY = "audit_head"
"""Where a session keeps the last event it appended (its number and hash) until it commits."""


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(
    prev_hash: str,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    obj: str,
    outcome: str,
    details: str,
) -> str:
    payload = _canonical([seq, at.isoformat(), actor, action, obj, outcome, details])
    return hashlib.sha256(f"{prev_hash}\n{payload}".encode()).hexdigest()


def append(
    session: Session,
    actor: str,
    action: str,
    obj: str,
    outcome: str,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEvent:
    """Add the next link in the caller's transaction (so the event commits with the change it
    records, or not at all). One writer at a time on every node: the next link is read and
    written under the chain's lock."""
    postgresql.serialize(session, "audit chain")
    last = session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).first()
    prev = last.hash if last is not None else _anchor(session)
    seq = (last.seq + 1) if last is not None else _first_seq(session)
    when = at or utc_now()
    body = _canonical(details or {})
    event = AuditEvent(
        seq=seq,
        at=when,
        actor=actor,
        action=action,
        object=obj,
        outcome=outcome,
        details=body,
        prev_hash=prev,
        hash=event_hash(prev, seq, when, actor, action, obj, outcome, body),
    )
    session.add(event)
    session.flush()
    session.info[HEAD_KEY] = (seq, event.hash)
    return event


def _anchor(session: Session) -> str:
    row = session.get(Meta, ANCHOR_KEY)
    return row.value.split(":", 1)[1] if row is not None else GENESIS


def _first_seq(session: Session) -> int:
    row = session.get(Meta, ANCHOR_KEY)
    return int(row.value.split(":", 1)[0]) + 1 if row is not None else 1


def chain_start(session: Session) -> int:
    """The seq of the chain's first event still held (past what retention purged)."""
    return _first_seq(session)


def set_anchor(session: Session, last_purged: AuditEvent) -> None:
    """After purging events up to ``last_purged``: the chain now starts from its hash."""
    value = f"{last_purged.seq}:{last_purged.hash}"
    row = session.get(Meta, ANCHOR_KEY)
    if row is None:
        session.add(Meta(key=ANCHOR_KEY, value=value))
    else:
        row.value = value


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    head: str
    broken_seq: int | None = None
    reason: str = ""


def verify(
    session: Session, batch: int = 5_000, checkpoint: Checkpoint | None = None
) -> ChainReport:
    """Walk the whole chain; report the first event whose link or content does not hold, or,
    with ``checkpoint``, a chain that no longer reaches the signed head."""
    expected_prev = _anchor(session)
    expected_seq = _first_seq(session)
    count = 0
    last_seq = 0
    passed: dict[int, str] = {expected_seq - 1: expected_prev}  # the anchor, then the head
    mark = checkpoint.read() if checkpoint is not None else None
    while True:
        rows = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.seq > last_seq)
            .order_by(AuditEvent.seq)
            .limit(batch)
        ).all()
        if not rows:
            ended = ChainReport(True, count, expected_prev)
            if checkpoint is not None and mark is None and count:
                reason = (
                    "no signed checkpoint of the chain's head (removed?); after an upgrade, "
                    "`appliance audit anchor` makes the first"
                )
                return ChainReport(False, count, expected_prev, expected_seq - 1, reason)
            return ended if mark is None else _against(ended, expected_seq - 1, passed, mark)
        for event in rows:
            if event.seq != expected_seq:
                return ChainReport(
                    False,
                    count,
                    expected_prev,
                    expected_seq,
                    f"event {expected_seq} is missing (next is {event.seq})",
                )
            if event.prev_hash != expected_prev:
                return ChainReport(
                    False,
                    count,
                    expected_prev,
                    event.seq,
                    "its link to the previous event does not match",
                )
            actual = event_hash(
                event.prev_hash,
                event.seq,
                event.at,
                event.actor,
                event.action,
                event.object,
                event.outcome,
                event.details,
            )
            if actual != event.hash:
                return ChainReport(
                    False,
                    count,
                    expected_prev,
                    event.seq,
                    "its content does not match its hash (altered)",
                )
            expected_prev = event.hash
            expected_seq += 1
            count += 1
            last_seq = event.seq
            if mark is not None and event.seq == mark[0]:
                passed[event.seq] = event.hash


def _against(
    report: ChainReport, last: int, passed: dict[int, str], mark: tuple[int, str]
) -> ChainReport:
    """The walked chain (ending at event ``last``) against the signed checkpoint ``mark``."""
    seq, head = mark
    if seq > last:
        reason = (
            f"the chain ends at event {last} but the signed checkpoint records event {seq}: "
            "events were deleted from its end"
        )
        return ChainReport(False, report.events, report.head, last + 1, reason)
    if seq in passed and passed[seq] != head:
        reason = f"event {seq} is not the one the signed checkpoint records"
        return ChainReport(False, report.events, report.head, seq, reason)
    return report  # the checkpoint lies on the chain, or before what retention purged


class Checkpoint:
    """The chain's head (number and hash of the last event), signed with the audit key and
    kept in a file apart from the database. It only moves forward (several processes append:
    a lock file orders them); a restore of a backup moves it back, on purpose, with ``reset``."""

    def __init__(self, path: Path, key: Ed25519PrivateKey) -> None:
        self.path = path
        self.key = key

    def advance(self, seq: int, head: str) -> None:
        with self._locked():
            current = self.read()
            if current is None or seq > current[0]:
                self._write(seq, head)

    def anchor(self, report: ChainReport, last_seq: int) -> bool:
        """The first checkpoint of a chain that has none yet (an upgrade), from a verified
        walk; False when one exists already (it is never replaced this way)."""
        with self._locked():
            if self.read() is not None or not report.ok:
                return False
            self._write(last_seq, report.head)
            return True

    def reset(self, seq: int, head: str) -> None:
        with self._locked():
            self._write(seq, head)

    def read(self) -> tuple[int, str] | None:
        """The signed head, or None before the first event; IntegrityError when the file was
        altered or signed by another key."""
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise IntegrityError("audit.checkpoint", f"{self.path} is unreadable") from exc
        body = {k: v for k, v in document.items() if k != "signature"}
        try:
            self.key.public_key().verify(
                bytes.fromhex(str(document.get("signature", ""))), _canonical(body).encode()
            )
        except (InvalidSignature, ValueError) as exc:
            raise IntegrityError(
                "audit.checkpoint", f"the signature of {self.path} does not verify"
            ) from exc
        return int(body["seq"]), str(body["head"])

    def _write(self, seq: int, head: str) -> None:
        body: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "seq": seq,
            "head": head,
            "at": utc_now().isoformat(),
        }
        body["signature"] = self.key.sign(_canonical(body).encode()).hex()
        write_private(self.path, json.dumps(body).encode())

    def _locked(self) -> _FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return _FileLock(self.path.with_name(f"{self.path.name}.lock"))


class _FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        own_like_folder(self.fd, self.path.parent)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def event_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": event.at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "object": event.object,
        "outcome": event.outcome,
        "details": event.details,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def signing_key(path: Path) -> Ed25519PrivateKey:
    """The export signing key (created 0600 on first use)."""
    if path.exists():
        return Ed25519PrivateKey.from_private_bytes(path.read_bytes())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    return key


def export(
    session: Session, key: Ed25519PrivateKey, checkpoint: Checkpoint | None = None
) -> dict[str, Any]:
    report = verify(session, checkpoint=checkpoint)
    events = [event_dict(e) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    document: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "exported_at": utc_now().isoformat(),
        "anchor": _anchor(session),
        "chain_ok": report.ok,
        "head": report.head,
        "events": events,
    }
    return sign(document, key)


def sign(document: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``document`` with the signing key's public half and an Ed25519 signature over the
    canonical JSON of the rest (the audit export's key signs every export)."""
    signed = {**document, "public_key": public_key_hex(key)}
    signed["signature"] = key.sign(_canonical(signed).encode()).hex()
    return signed


def check_signature(document: dict[str, Any], public_key_hex: str, what: str) -> None:
    """Raise IntegrityError unless ``document`` was signed by ``public_key_hex`` (the
    appliance's pinned key, never the one the document names)."""
    body = {k: v for k, v in document.items() if k != "signature"}
    key_hex = public_key_hex.strip().lower()
    if str(document.get("public_key", "")).lower() != key_hex:
        raise IntegrityError(
            "audit.signature", f"the {what} names another signing key than the pinned one"
        )
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex)).verify(
            bytes.fromhex(str(document.get("signature", ""))), _canonical(body).encode()
        )
    except (InvalidSignature, ValueError) as exc:
        raise IntegrityError("audit.signature", f"the {what}'s signature does not verify") from exc


def public_key_hex(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def verify_export(document: dict[str, Any], public_key_hex: str) -> None:
    """Raise IntegrityError unless the export was signed by ``public_key_hex`` (the
    appliance's pinned key, never the one the export names) and its chain holds."""
    check_signature(document, public_key_hex, "export")
    prev = str(document["anchor"])
    for event in document["events"]:
        at = datetime.fromisoformat(event["at"])
        expected = event_hash(
            prev,
            event["seq"],
            at,
            event["actor"],
            event["action"],
            event["object"],
            event["outcome"],
            event["details"],
        )
        if event["prev_hash"] != prev or event["hash"] != expected:
            raise IntegrityError("audit.chain", f"exported event {event['seq']} is broken")
        prev = event["hash"]
