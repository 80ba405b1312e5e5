"""The store's plumbing, shared by every concern: the engine and its transactions (each
committing before a method returns), sealing under per-purpose data keys, the
pseudonymization key, and the audit trail's writing and checking."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, Self

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from appliance.core.errors import KeyringError, StorageError
from appliance.storage import audit, postgresql, sqlite
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
from appliance.storage.schema import AuditEvent, Caller, DataKey, Meta, new_id, utc_now

log = logging.getLogger(__name__)
PSEUDONYM_KEY = "pseudonym_key_id"
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


class Closable(Protocol):
    def close(self) -> None: ...


class StoreBase:
    """One database and the master key that opens it: what every concern of the store uses."""

    def __init__(
        self,
        engine: Engine,
        master: MasterKey | None,
        *,
        reopen: Callable[[MasterKey], Engine] | None = None,
        clock: Callable[[], datetime] = utc_now,
        checkpoint: audit.Checkpoint | None = None,
        path: Path | None = None,
        node: str | None = None,
    ) -> None:
        self.engine = engine
        self.path = path
        """The SQLite file (None for another database server)."""
        self.node = node
        """The voice node this store writes for (``[service] node``): calls it starts carry
        it, and ``close_interrupted`` closes only its own."""
        self._node_claim: Closable | None = None
        """What holds the node's name while this store is open (``claim_node``)."""
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
        try:
            with storage_errors("migrate"):
                migrate(engine)
            if master is not None and engine.dialect.name != "sqlite":
                self._check_master_key(master)
        except StorageError:
            engine.dispose()  # a store that does not open holds no connection
            raise

    def _check_master_key(self, master: MasterKey) -> None:
        """On a server the database opens with any key (SQLCipher is SQLite's): refuse a master
        key that wraps none of its data keys, before a call is sealed under it. A rotation cut
        short leaves keys under both, and the old one still opens."""
        with self.session("check master key") as session:
            under = set(session.scalars(select(DataKey.master_key_id).distinct()))
        if under and master.fingerprint not in under:
            raise StorageError(
                "storage.key",
                f"the master key {master.fingerprint} opens none of this database's data keys "
                f"(they are under {', '.join(sorted(under))}): wrong key file",
            )

    def close(self) -> None:
        with self._repeats_lock, contextlib.suppress(StorageError):
            self._flush_repeated()
        if self._node_claim is not None:  # the node's name is free again
            with contextlib.suppress(Exception):
                self._node_claim.close()
            self._node_claim = None
        self.engine.dispose()

    def __enter__(self) -> Self:
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

    def ping(self) -> None:
        """One round trip to the database (a node's health): ``StorageError`` when it fails."""
        with storage_errors("ping"), self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

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
            postgresql.serialize(session, PSEUDONYM_KEY)  # nodes starting at once make one
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

    def _system_key(self, session: Session, name: str) -> bytes | None:
        """A data key for system secrets (created on first use, wrapped by the master key)."""
        postgresql.serialize(session, name)
        meta = session.get(Meta, name)
        if meta is None:
            key_id, key = self._new_data_key(session, "system")
            session.add(Meta(key=name, value=key_id))
            session.flush()
            return key
        return self._data_key(session, meta.value)

    def _caller_in(self, session: Session, hashed: str) -> Caller:
        postgresql.serialize(session, f"caller\0{hashed}")  # one row, whichever node is first
        caller = session.scalars(select(Caller).where(Caller.caller_hash == hashed)).first()
        if caller is None:
            caller = Caller(caller_hash=hashed)
            session.add(caller)
            session.flush()
        return caller

    def after_erasure(self) -> None:
        """Leave no copy of a destroyed data key behind: SQLite's WAL truncated (its deleted
        pages are already overwritten), or the server's data-key table rewritten, since a
        deleted row stays in PostgreSQL's files until a vacuum."""
        with storage_errors("after erasure"):
            if self.engine.dialect.name == "sqlite":
                sqlite.checkpoint(self.engine)
            elif self.engine.dialect.name == "postgresql" and not postgresql.rewrite(
                self.engine, DataKey.__tablename__
            ):
                log.warning("the data-key table was busy: it is rewritten at the next erasure")

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
                self._flush_repeated()  # writes this kind's count too
                repeated = 0
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

    def anchor_audit(self) -> int | None:
        """Write the first checkpoint of a chain that has none (after an upgrade) from a
        verified walk; the event it anchors, or None (one exists, the chain is broken or
        empty, or this store keeps no checkpoint)."""
        if self.checkpoint is None or self.checkpoint.read() is not None:
            return None
        with self.session("anchor audit") as session:
            report = audit.verify(session)
            last = session.scalar(select(func.max(AuditEvent.seq)))
        if last is None or not self.checkpoint.anchor(report, int(last)):
            return None
        return int(last)
