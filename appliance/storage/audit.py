"""The tamper-evident audit trail: append-only events, each holding the hash of the one before.

``hash = SHA-256(prev_hash || "\\n" || canonical JSON of the event's fields)``. Changing,
inserting or deleting an event breaks the chain at that point; ``verify`` names the first broken
link. When retention purges old events, the hash of the last purged one becomes the chain's
anchor. Exports are signed with Ed25519 so a copy handed to an auditor can be checked offline.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.core.errors import IntegrityError
from appliance.storage.schema import AuditEvent, Meta, utc_now

GENESIS = "0" * 64
ANCHOR_KEY = "audit_anchor"
EXPORT_FORMAT = "appliance-audit-export/1"


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
    records, or not at all)."""
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
    return event


def _anchor(session: Session) -> str:
    row = session.get(Meta, ANCHOR_KEY)
    return row.value.split(":", 1)[1] if row is not None else GENESIS


def _first_seq(session: Session) -> int:
    row = session.get(Meta, ANCHOR_KEY)
    return int(row.value.split(":", 1)[0]) + 1 if row is not None else 1


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


def verify(session: Session, batch: int = 5_000) -> ChainReport:
    """Walk the whole chain; report the first event whose link or content does not hold."""
    expected_prev = _anchor(session)
    expected_seq = _first_seq(session)
    count = 0
    last_seq = 0
    while True:
        rows = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.seq > last_seq)
            .order_by(AuditEvent.seq)
            .limit(batch)
        ).all()
        if not rows:
            return ChainReport(True, count, expected_prev)
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


def export(session: Session, key: Ed25519PrivateKey) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization

    report = verify(session)
    events = [event_dict(e) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    document: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "exported_at": utc_now().isoformat(),
        "anchor": _anchor(session),
        "chain_ok": report.ok,
        "head": report.head,
        "events": events,
        "public_key": key.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex(),
    }
    document["signature"] = key.sign(_canonical(document).encode()).hex()
    return document


def verify_export(document: dict[str, Any], public_key_hex: str | None = None) -> None:
    """Raise IntegrityError unless the export's signature and chain both hold."""
    body = {k: v for k, v in document.items() if k != "signature"}
    key_hex = public_key_hex or str(document.get("public_key", ""))
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex)).verify(
            bytes.fromhex(str(document.get("signature", ""))), _canonical(body).encode()
        )
    except (InvalidSignature, ValueError) as exc:
        raise IntegrityError("audit.signature", "the export's signature does not verify") from exc
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
