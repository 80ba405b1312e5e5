"""Encrypted storage on a real SQLCipher file and on a real PostgreSQL server: secrecy,
integrity, erasure, holds, keys. Each test marked for both runs on both (``backend``)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, select, text, update

from appliance.core.errors import IntegrityError, KeyringError, StorageError
from appliance.core.ports import TurnRecord
from appliance.storage import audit
from appliance.storage.crypto import unwrap_key
from appliance.storage.keys import load_or_create, read_key
from appliance.storage.maintenance import backup, restore, rotate_master_key
from appliance.storage.migrations import LATEST, MIGRATIONS, Migration, applied_versions, migrate
from appliance.storage.repository import Storage
from appliance.storage.schema import (
    AuditEvent,
    Call,
    DataKey,
    SchemaMigration,
    Turn,
    Voiceprint,
)
from appliance.storage.sqlite import integrity_check as sqlite_integrity_engine
from tests.conftest import Backend

CANARY = "CANARY-PELICAN-7731"
pytestmark = pytest.mark.backends
sqlite_only = pytest.mark.sqlite_only


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 9, 0, 0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def paths(backend: Backend, tmp_path: Path) -> tuple[Path, Path]:
    return backend.db, tmp_path / "keys" / "master.key"


@pytest.fixture
def store(backend: Backend, paths: tuple[Path, Path], clock: Clock) -> Iterator[Storage]:
    storage = backend.open(load_or_create(paths[1]), clock=clock)
    yield storage
    storage.close()


def one_call(store: Storage, caller: str, *texts: str) -> str:
    handle = store.start_call(caller, "test")
    for i, said in enumerate(texts, 1):
        handle.record_turn(TurnRecord(i, said, f"reply to {i}", timings_ms={"turn_end": 5.0}))
    handle.finish("ended")
    return handle.call_id


def files_of(db: Path) -> list[Path]:
    return [p for p in db.parent.iterdir() if p.name.startswith(db.name)]


@sqlite_only
def test_a_canary_never_reaches_the_disk_in_plaintext(
    store: Storage, paths: tuple[Path, Path]
) -> None:
    db, _ = paths
    call_id = one_call(store, "+15551230000", f"my secret is {CANARY}", "and again " + CANARY)
    # While the store is open the WAL holds the newest pages: it too is ciphertext.
    assert any(p.name.endswith("-wal") for p in files_of(db))
    for path in files_of(db):
        data = path.read_bytes()
        assert CANARY.encode() not in data, path
        assert b"+15551230000" not in data, path
        assert b"SQLite format 3" not in data[:16], path
    assert (
        store.read_call(call_id, "tester", "check").turns[0].transcript == f"my secret is {CANARY}"
    )


@sqlite_only
def test_sqlite_without_the_key_cannot_open_the_file(
    store: Storage, paths: tuple[Path, Path]
) -> None:
    db, _ = paths
    one_call(store, "+1555", CANARY)
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall()
    shell = subprocess.run(
        ["sqlite3", str(db), "SELECT count(*) FROM turns;"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shell.returncode != 0 and "not a database" in shell.stderr


def test_the_wrong_master_key_does_not_open_it(
    store: Storage, backend: Backend, tmp_path: Path
) -> None:
    one_call(store, "+1555", "hello")
    stranger = load_or_create(tmp_path / "other.key")
    with pytest.raises(StorageError) as caught:
        backend.open(stranger)
    assert caught.value.code == "storage.key"


def test_what_the_store_keeps_at_rest_holds_no_word_or_number_in_the_clear(
    store: Storage, backend: Backend
) -> None:
    """The SQLCipher file and its WAL, or the PostgreSQL server's dump of the database: what
    a caller said and their number are sealed before they reach either."""
    call_id = one_call(store, "+15551230000", f"my secret is {CANARY}")
    store.read_call(call_id, "tester", "check")
    held = backend.at_rest()
    assert len(held) > 1000  # the store's own tables are there
    for secret in (CANARY.encode(), b"15551230000", b"my secret"):
        assert secret not in held


@sqlite_only
def test_the_key_file_is_private(paths: tuple[Path, Path], store: Storage) -> None:
    _, key = paths
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    os.chmod(key, 0o644)
    with pytest.raises(KeyringError) as caught:
        read_key(key)
    assert caught.value.code == "keys.permissions" and str(key) in caught.value.message


def test_callers_are_known_by_a_keyed_hash(store: Storage) -> None:
    first = one_call(store, "+15550001111", "hi")
    second = one_call(store, "+15550001111", "hi again")
    with store.session("t") as session:
        callers = {
            c for c in session.scalars(select(Call.caller_id).where(Call.id.in_([first, second])))
        }
    assert len(callers) == 1
    assert store.caller_hash("+15550001111") != store.caller_hash("+15550001112")
    assert "15550001111" not in store.caller_hash("+15550001111")


def test_flipping_a_byte_of_a_sealed_value_fails_loudly(store: Storage) -> None:
    call_id = one_call(store, "+1555", "a private sentence")
    with store.session("tamper") as session:
        turn = session.scalars(select(Turn).where(Turn.call_id == call_id)).one()
        assert turn.transcript is not None
        damaged = bytearray(turn.transcript)
        damaged[len(damaged) // 2] ^= 0x01
        session.execute(update(Turn).where(Turn.id == turn.id).values(transcript=bytes(damaged)))
    with pytest.raises(IntegrityError) as caught:
        store.read_call(call_id, "tester", "check")
    assert caught.value.code == "storage.integrity"
    assert "turns/transcript" in caught.value.message
    # The failed read is itself in the audit trail.
    with store.session("t") as session:
        last = session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc())).first()
    assert last is not None and (last.action, last.outcome) == ("read", "failed")


def test_a_sealed_value_copied_to_another_row_does_not_open(store: Storage) -> None:
    call_id = one_call(store, "+1555", "first thing", "second thing")
    with store.session("tamper") as session:
        first, second = session.scalars(
            select(Turn).where(Turn.call_id == call_id).order_by(Turn.index)
        )
        session.execute(
            update(Turn).where(Turn.id == second.id).values(transcript=first.transcript)
        )
    with pytest.raises(IntegrityError):
        store.read_call(call_id, "tester", "check")


def test_every_read_is_audited_and_the_chain_verifies(store: Storage) -> None:
    call_id = one_call(store, "+1555", "hello")
    store.read_call(call_id, "operator:ann", "customer complaint 42")
    report = store.verify_audit()
    assert report.ok and report.events == 1
    with store.session("t") as session:
        event = session.scalars(select(AuditEvent)).one()
    assert (event.actor, event.action, event.object, event.outcome) == (
        "operator:ann",
        "read",
        f"call:{call_id}",
        "ok",
    )
    assert "complaint 42" in event.details


@pytest.mark.parametrize("field", ["actor", "action", "object", "outcome", "details"])
def test_changing_one_byte_of_an_audit_event_breaks_the_chain_there(
    store: Storage, field: str
) -> None:
    call_id = one_call(store, "+1555", "hello")
    for _ in range(5):
        store.read_call(call_id, "operator:ann", "check")
    with store.session("tamper") as session:
        value = session.scalar(select(getattr(AuditEvent, field)).where(AuditEvent.seq == 3))
        changed = value[:-1] + chr(ord(value[-1]) ^ 1)
        session.execute(update(AuditEvent).where(AuditEvent.seq == 3).values({field: changed}))
    report = store.verify_audit()
    assert not report.ok and report.broken_seq == 3 and "altered" in report.reason


def test_deleting_an_audit_event_breaks_the_chain(store: Storage) -> None:
    call_id = one_call(store, "+1555", "hello")
    for _ in range(4):
        store.read_call(call_id, "operator:ann", "check")
    with store.session("tamper") as session:
        session.execute(text("DELETE FROM audit_events WHERE seq = 2"))
    report = store.verify_audit()
    assert not report.ok and report.broken_seq == 2 and "missing" in report.reason


def test_a_signed_export_verifies_and_detects_tampering(store: Storage, tmp_path: Path) -> None:
    call_id = one_call(store, "+1555", "hello")
    store.read_call(call_id, "operator:ann", "check")
    key = audit.signing_key(tmp_path / "sign.key")
    assert stat.S_IMODE((tmp_path / "sign.key").stat().st_mode) == 0o600
    with store.session("export") as session:
        document = audit.export(session, key)
    pinned = audit.public_key_hex(key)
    audit.verify_export(document, pinned)
    forged = {**document, "events": [{**document["events"][0], "actor": "someone else"}]}
    with pytest.raises(IntegrityError, match="signature"):
        audit.verify_export(forged, pinned)


def test_an_export_re_signed_with_another_key_fails_against_the_pinned_one(
    store: Storage, tmp_path: Path
) -> None:
    """The outside test forged an export and re-signed it with a key of its own, which the
    export then named: only the appliance's pinned key counts."""
    call_id = one_call(store, "+1555", "hello")
    store.read_call(call_id, "operator:ann", "check")
    store.read_call(call_id, "operator:ann", "the read to hide")
    ours = audit.signing_key(tmp_path / "ours.key")
    with store.session("export") as session:
        document = audit.export(session, ours)
    theirs = audit.signing_key(tmp_path / "theirs.key")
    forged = {k: v for k, v in document.items() if k != "signature"}
    forged["events"] = forged["events"][:-1]  # still a sound chain
    forged["public_key"] = audit.public_key_hex(theirs)
    forged["signature"] = theirs.sign(audit._canonical(forged).encode()).hex()
    audit.verify_export(forged, audit.public_key_hex(theirs))  # it holds under its own key
    with pytest.raises(IntegrityError, match="another signing key"):
        audit.verify_export(forged, audit.public_key_hex(ours))
    forged["public_key"] = audit.public_key_hex(ours)  # naming ours does not help either
    with pytest.raises(IntegrityError, match="signature"):
        audit.verify_export(forged, audit.public_key_hex(ours))


@pytest.fixture
def anchored(
    backend: Backend, paths: tuple[Path, Path], clock: Clock, tmp_path: Path
) -> Iterator[Storage]:
    checkpoint = audit.Checkpoint(
        tmp_path / "keys" / "audit-checkpoint.json", audit.signing_key(tmp_path / "sign.key")
    )
    storage = backend.open(load_or_create(paths[1]), clock=clock, checkpoint=checkpoint)
    yield storage
    storage.close()


@pytest.mark.parametrize("deleted", [3, "all"])
def test_deleting_the_last_audit_events_fails_against_the_signed_checkpoint(
    anchored: Storage, deleted: int | str
) -> None:
    """The outside test deleted the last 3 events, or all of them, and verify said intact:
    the chain that is left still links, so only the checkpoint shows the cut."""
    call_id = one_call(anchored, "+1555", "hello")
    for _ in range(6):
        anchored.read_call(call_id, "operator:ann", "check")
    assert anchored.verify_audit().ok
    assert anchored.checkpoint is not None and anchored.checkpoint.read() is not None
    keep = 3 if deleted == 3 else 0
    with anchored.session("tamper") as session:
        session.execute(text(f"DELETE FROM audit_events WHERE seq > {keep}"))
    report = anchored.verify_audit()
    assert not report.ok and report.broken_seq == keep + 1
    assert "signed checkpoint records event 6" in report.reason
    without = Storage(anchored.engine, anchored.master)  # the same rows, no checkpoint
    assert without.verify_audit().ok  # what the outside test saw


def test_a_checkpoint_that_was_altered_or_replaced_fails(anchored: Storage) -> None:
    call_id = one_call(anchored, "+1555", "hello")
    anchored.read_call(call_id, "operator:ann", "check")
    assert anchored.checkpoint is not None
    path = anchored.checkpoint.path
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "seq": 0}))  # rolled back to hide a cut
    with pytest.raises(IntegrityError, match="does not verify"):
        anchored.verify_audit()


def test_the_checkpoint_only_moves_forward_and_retention_keeps_it_valid(
    anchored: Storage,
) -> None:
    call_id = one_call(anchored, "+1555", "hello")
    for _ in range(4):
        anchored.read_call(call_id, "operator:ann", "check")
    assert anchored.checkpoint is not None
    head = anchored.checkpoint.read()
    anchored.checkpoint.advance(2, "0" * 64)  # a slower process's older head
    assert anchored.checkpoint.read() == head
    with anchored.session("purge") as session:  # as retention does: anchor, then delete all
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        audit.set_anchor(session, events[-1])
        for event in events:
            session.delete(event)
    assert anchored.verify_audit().ok
    anchored.read_call(call_id, "operator:ann", "after the purge")
    assert anchored.verify_audit().ok and anchored.checkpoint.read() != head


def test_erasing_a_caller_crypto_shreds_and_leaves_others(
    store: Storage, backend: Backend, paths: tuple[Path, Path]
) -> None:
    db, _ = paths
    victim = one_call(store, "+15550000001", f"{CANARY} one")
    victim2 = one_call(store, "+15550000001", f"{CANARY} two")
    other = one_call(store, "+15550000002", "someone else's words")
    with store.session("capture") as session:
        sealed = [t.transcript for t in session.scalars(select(Turn).where(Turn.call_id == victim))]
        key_id = session.get(Call, victim).data_key_id  # type: ignore[union-attr]
        wrapped = session.get(DataKey, key_id).wrapped  # type: ignore[union-attr]
    report = store.erase_caller("+15550000001", "admin:bob")
    assert (report.calls_erased, report.calls_held, report.caller_erased) == (2, 0, True)
    # The WAL was checkpointed and truncated: no old page lingers beside the file.
    wal = Path(f"{db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    for call_id in (victim, victim2):
        with pytest.raises(StorageError, match="does not exist"):
            store.read_call(call_id, "admin:bob", "check")
    assert (
        store.read_call(other, "admin:bob", "check").turns[0].transcript == "someone else's words"
    )
    with store.session("look") as session:
        assert session.get(DataKey, key_id) is None
        remaining = [(k.id, k.wrapped) for k in session.scalars(select(DataKey))]
        erase = session.scalars(select(AuditEvent).where(AuditEvent.action == "erase")).one()
    # The sealed values, even if a copy survived somewhere, open under no key that is left.
    assert store.master is not None
    for key_id_left, wrapped_left in remaining:
        data_key = unwrap_key(store.master.secret, wrapped_left, key_id_left)
        for value in sealed:
            with pytest.raises(IntegrityError):
                from appliance.storage.crypto import associated_data, open_sealed

                open_sealed(data_key, value or b"", associated_data("turns", "transcript", "x"))
    # Nothing of it in the decrypted database either: a plaintext export of every live page,
    # or the server's dump of the database.
    dump = backend.plain_view(store, db.parent)
    assert wrapped not in dump and all(v not in dump for v in sealed if v)
    assert b"someone else" not in dump  # sealed, not plaintext, inside the database too
    assert erase.actor == "admin:bob" and erase.outcome == "ok"
    assert "15550000001" not in erase.object
    assert store.verify_audit().ok


def test_legal_hold_survives_erasure_until_released(store: Storage) -> None:
    held = one_call(store, "+15550000003", "keep me")
    free = one_call(store, "+15550000003", "let me go")
    with pytest.raises(StorageError, match="reason"):
        store.set_legal_hold(held, " ", "admin:bob")
    store.set_legal_hold(held, "litigation 2026-17", "admin:bob")
    report = store.erase_caller("+15550000003", "admin:bob")
    assert (report.calls_erased, report.calls_held, report.caller_erased) == (1, 1, False)
    view = store.read_call(held, "admin:bob", "check")
    assert view.legal_hold and view.hold_reason == "litigation 2026-17"
    with pytest.raises(StorageError):
        store.read_call(free, "admin:bob", "check")
    store.set_legal_hold(held, None, "admin:bob")
    assert store.erase_call(held, "admin:bob").calls_erased == 1


def test_key_rotation_rewraps_everything_and_the_old_key_opens_nothing(
    store: Storage, backend: Backend, paths: tuple[Path, Path]
) -> None:
    _, key_path = paths
    calls = [one_call(store, f"+1555000{i}", f"turn of call {i}") for i in range(5)]
    old_master = store.master
    assert old_master is not None
    store.close()
    seen: list[tuple[int, int]] = []
    old, new, count = rotate_master_key(
        backend.opener(), key_path, progress=lambda d, t: seen.append((d, t))
    )
    assert count == 6 and seen[-1] == (6, 6)  # 5 calls and the pseudonymization key
    assert old.fingerprint == old_master.fingerprint != new.fingerprint
    assert read_key(key_path).secret == new.secret
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    rotated = backend.open(new)
    try:
        for i, call_id in enumerate(calls):
            assert (
                rotated.read_call(call_id, "admin", "check").turns[0].transcript
                == f"turn of call {i}"
            )
        with rotated.session("keys") as session:
            keys = list(session.scalars(select(DataKey)))
        assert {k.master_key_id for k in keys} == {new.fingerprint}
        for k in keys:
            with pytest.raises(KeyringError):
                unwrap_key(old.secret, k.wrapped, k.id)
        assert rotated.verify_audit().ok
    finally:
        rotated.close()
    with pytest.raises(StorageError, match=r"storage\.key"):
        backend.open(old)


def test_a_rotation_cut_short_finishes_on_the_next_run(
    store: Storage, backend: Backend, paths: tuple[Path, Path]
) -> None:
    _, key_path = paths
    call_id = one_call(store, "+1555", "survives")
    store.close()
    pending = key_path.with_name(f"{key_path.name}.next")
    from appliance.storage.keys import write_key

    new = write_key(pending, os.urandom(32))  # as if a rotation stopped after writing it
    _, current, _ = rotate_master_key(backend.opener(), key_path)
    assert current.secret == new.secret and not pending.exists()
    reopened = backend.open(current)
    try:
        assert reopened.read_call(call_id, "admin", "check").turns[0].transcript == "survives"
    finally:
        reopened.close()


@sqlite_only
def test_backup_is_encrypted_verified_and_restores(
    store: Storage, paths: tuple[Path, Path], tmp_path: Path
) -> None:
    db, key_path = paths
    call_id = one_call(store, "+1555", CANARY)
    target = tmp_path / "backups" / "nightly.db"
    report = backup(store, target, "admin")
    assert report.turns == 1 and target.exists()
    assert CANARY.encode() not in target.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(StorageError, match="exists"):
        backup(store, target, "admin")
    one_call(store, "+1555", "after the backup")
    store.close()
    master = read_key(key_path)
    assert restore(target, db, master, "admin") == 1
    restored = Storage.open_sqlite(db, master)
    try:
        assert restored.read_call(call_id, "admin", "check").turns[0].transcript == CANARY
        assert len(restored.list_calls()) == 1
        assert restored.verify_audit().ok
    finally:
        restored.close()


@sqlite_only
def test_a_damaged_backup_is_refused_and_the_database_untouched(
    store: Storage, paths: tuple[Path, Path], tmp_path: Path
) -> None:
    db, key_path = paths
    call_id = one_call(store, "+1555", "precious")
    target = tmp_path / "b.db"
    backup(store, target, "admin")
    store.close()
    data = bytearray(target.read_bytes())
    data[len(data) - 100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(StorageError):
        restore(target, db, read_key(key_path), "admin")
    intact = Storage.open_sqlite(db, read_key(key_path))
    try:
        assert intact.read_call(call_id, "admin", "check").turns[0].transcript == "precious"
    finally:
        intact.close()


def test_migrations_are_recorded_and_applied_once(
    store: Storage, backend: Backend, paths: tuple[Path, Path]
) -> None:
    _, key_path = paths
    assert applied_versions(store.engine) == {m.version for m in MIGRATIONS}
    store.close()
    again = backend.open(read_key(key_path))
    try:
        assert applied_versions(again.engine) == {m.version for m in MIGRATIONS}
        with again.session("future") as session:
            session.add(SchemaMigration(version=LATEST + 1, description="from the future"))
    finally:
        again.close()
    with pytest.raises(StorageError, match="newer"):
        backend.open(read_key(key_path))


def test_each_migration_records_whether_older_code_may_run_on_it(store: Storage) -> None:
    with store.session("schema") as session:
        recorded = {row.version: row.additive for row in session.scalars(select(SchemaMigration))}
    assert recorded == {m.version: m.additive for m in MIGRATIONS}


def test_migration_12_records_what_was_applied_before_it(backend: Backend, tmp_path: Path) -> None:
    """A database of release 11 (no column, no row 12) upgraded: the rows before 12 get what
    this code knows of them."""
    key = load_or_create(tmp_path / "k")
    old = backend.open(key)
    handle = old.start_call("+15550100", "test")
    handle.record_turn(TurnRecord(1, "kept across the upgrade", "noted"))
    handle.finish("ended")
    with old.session("back to 11") as session:
        session.execute(text("DELETE FROM schema_migrations WHERE version = 12"))
        session.execute(text("ALTER TABLE schema_migrations DROP COLUMN additive"))
    old.close()
    store = backend.open(key)
    try:
        with store.session("schema") as session:
            rows = {r.version: r.additive for r in session.scalars(select(SchemaMigration))}
        assert rows == {m.version: m.additive for m in MIGRATIONS}
        turns = store.read_call(handle.call_id, "admin:test", "check").turns
        assert turns[0].transcript == "kept across the upgrade"
    finally:
        store.close()


@sqlite_only
def test_doctor_warns_a_node_older_than_its_sqlite_database(tmp_path: Path) -> None:
    """The release before started again on a schema a later one made additively (the way
    back) runs, and doctor says it is behind."""
    from appliance.config.settings import load_settings
    from appliance.deploy import doctor
    from appliance.service import open_storage

    settings = load_settings(environ={"APPLIANCE_HOME": str(tmp_path / "home")})
    with open_storage(settings) as store:
        assert doctor.database(settings).status == "PASS"
        with store.session("later") as session:
            session.add(SchemaMigration(version=LATEST + 1, description="later", additive=True))
    check = doctor.database(settings)
    assert check.status == "WARN", check
    assert f"schema {LATEST + 1}: newer than this appliance ({LATEST})" in check.detail


def later_release(additive: bool) -> tuple[Migration, ...]:
    """This appliance's migrations and one of a later release: a column added to calls."""

    def add_column(connection: Connection) -> None:
        connection.execute(text("ALTER TABLE calls ADD COLUMN later_release VARCHAR(16)"))

    later = Migration(LATEST + 1, "calls.later_release (a later release's)", add_column, additive)
    return (*MIGRATIONS, later)


def test_a_node_upgraded_while_another_serves_and_the_way_back(
    backend: Backend, tmp_path: Path
) -> None:
    """Nodes upgrade one at a time: a node of this release keeps serving its call while another
    applies a later release's additive migration, and this release starts again on that
    schema (the way back from the upgrade: start the older appliance again)."""
    key = load_or_create(tmp_path / "k")
    serving = backend.open(key)
    handle = serving.start_call("+15550100", "test")
    handle.record_turn(TurnRecord(1, "before the other node upgraded", "ok"))
    upgrading = backend.open(key)
    try:
        assert migrate(upgrading.engine, later_release(additive=True)) == [LATEST + 1]
        assert migrate(upgrading.engine, later_release(additive=True)) == []  # once
    finally:
        upgrading.close()
    handle.record_turn(TurnRecord(2, "after it upgraded", "ok"))
    handle.finish("ended")
    serving.close()
    back = backend.open(key)  # this release again, on the later schema
    try:
        turns = back.read_call(handle.call_id, "admin:test", "check").turns
        assert [t.transcript for t in turns] == [
            "before the other node upgraded",
            "after it upgraded",
        ]
        back.start_call("+15550101", "test").finish("ended")
        assert max(applied_versions(back.engine)) == LATEST + 1
        assert back.verify_audit().ok
    finally:
        back.close()


def test_a_later_migration_older_code_cannot_run_on_is_refused_by_name(
    backend: Backend, tmp_path: Path
) -> None:
    key = load_or_create(tmp_path / "k")
    upgrading = backend.open(key)
    try:
        migrate(upgrading.engine, later_release(additive=False))
    finally:
        upgrading.close()
    with pytest.raises(StorageError) as refused:
        backend.open(key)
    assert refused.value.code == "storage.schema_newer"
    assert f"migration {LATEST + 1} (calls.later_release" in refused.value.message


@sqlite_only
def test_a_full_disk_is_a_clear_error_and_loses_nothing(paths: tuple[Path, Path]) -> None:
    """SQLite's own limit makes the database 'full' exactly as a full disk would."""
    db, key_path = paths
    store = Storage.open_sqlite(db, load_or_create(key_path))
    from sqlalchemy import event

    try:
        handle = store.start_call("+1555", "test")
        handle.record_turn(TurnRecord(1, "committed before the disk filled", "ok"))
        store.engine.dispose()
        event.listen(store.engine, "connect", lambda c, r: c.execute("PRAGMA max_page_count = 60"))
        with pytest.raises(StorageError) as caught:
            for i in range(2, 400):
                handle.record_turn(TurnRecord(i, "x" * 2000, "y" * 2000))
        assert caught.value.code == "storage.full"
        assert "disk is full" in caught.value.message
    finally:
        store.close()
    reopened = Storage.open_sqlite(db, read_key(key_path))
    try:
        turns = reopened.read_call(handle.call_id, "admin", "check").turns
        assert turns[0].transcript == "committed before the disk filled"
        assert [t.index for t in turns] == list(range(1, len(turns) + 1))
    finally:
        reopened.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(said=st.text(max_size=300), reply=st.text(max_size=300))
def test_any_text_round_trips_through_storage(store: Storage, said: str, reply: str) -> None:
    handle = store.start_call(None, "test")
    handle.record_turn(TurnRecord(1, said, reply))
    (turn,) = store.read_call(handle.call_id, "tester", "property").turns
    assert (turn.transcript, turn.reply) == (said, reply)


@sqlite_only
def test_a_real_full_disk_on_a_small_tmpfs(tmp_path: Path) -> None:
    """The file system itself runs out of space (as root: a 1 MiB tmpfs)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        key = load_or_create(tmp_path / "master.key")
        store = Storage.open_sqlite(mount / "a.db", key)
        handle = store.start_call("+1555", "test")
        handle.record_turn(TurnRecord(1, "committed before the disk filled", "ok"))
        with pytest.raises(StorageError) as caught:
            for i in range(2, 10_000):
                handle.record_turn(TurnRecord(i, os.urandom(600).hex(), "y"))
        assert caught.value.code == "storage.full"
        store.close()
        reopened = Storage.open_sqlite(mount / "a.db", key)
        try:
            with reopened.session("check") as session:
                first = session.scalars(select(Turn).where(Turn.index == 1)).one()
            assert first.call_id == handle.call_id
            assert sqlite_integrity_engine(reopened.engine) == ["ok"]
        finally:
            reopened.close()
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_voice_template_is_sealed_audited_and_shredded_with_its_caller(
    store: Storage, backend: Backend
) -> None:
    template = b'{"v": 1, "centroid": [0.6, 0.8], "n": 3, "canary": "' + CANARY.encode() + b'"}'
    store.save_voiceprint("+15550000003", template, "enrolment")
    store.save_voiceprint("+15550000003", template, "enrolment")  # re-enrolment replaces it
    assert store.voiceprint("+15550000003") == template
    assert store.voiceprint("+15550000004") is None
    with store.session("look") as session:
        row = session.scalars(select(Voiceprint)).one()
        assert CANARY.encode() not in row.template  # sealed, even inside the encrypted file
        key_id = row.data_key_id
        enrolments = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "voice_enrol")
        ).all()
    assert len(enrolments) == 2
    store.erase_caller("+15550000003", "admin:bob")
    assert store.voiceprint("+15550000003") is None
    with store.session("look") as session:
        assert session.scalars(select(Voiceprint)).first() is None
        assert session.get(DataKey, key_id) is None  # crypto-shredded
    assert CANARY.encode() not in backend.at_rest()


def test_every_end_status_a_call_can_have_fits_its_column() -> None:
    """A server that enforces VARCHAR lengths (PostgreSQL) must take every status the code
    writes; SQLite would take any, so the lengths are checked here."""
    from appliance.identity.abuse import Action
    from appliance.storage.schema import Call

    reasons = ["transferred", "max_call_length", "shutdown", "no_consent", "media_timeout"]
    reasons += ["interrupted"]
    reasons += [f"abuse:{action}" for action in Action]
    width = Call.__table__.c.status.type.length  # type: ignore[attr-defined]
    assert max(len(f"ended:{reason}") for reason in reasons) <= width


def test_a_node_restarted_after_a_kill_closes_its_own_active_calls_and_no_others(
    backend: Backend, paths: tuple[Path, Path], clock: Clock
) -> None:
    master = load_or_create(paths[1])
    node_a = backend.open(master, clock=clock, node="node-a")
    node_b = backend.open(master, clock=clock, node="node-b")
    cut = node_a.start_call("+1555", "sip")
    cut.record_turn(TurnRecord(1, "acknowledged before the kill", "ok"))
    turn_at = clock.now
    ended = one_call(node_a, "+1556", "a call that ended")
    live = node_b.start_call("+1557", "sip").call_id  # the other node is still in it
    node_a.close()  # killed: the cut call was never given its end
    clock.advance(minutes=7)
    restarted = backend.open(master, clock=clock, node="node-a")
    try:
        assert restarted.close_interrupted() == 1
        view = restarted.read_call(cut.call_id, "admin", "check")
        assert view.status == "ended:interrupted" and view.ended_at == turn_at
        assert view.turns[0].transcript == "acknowledged before the kill"
        assert restarted.read_call(ended, "admin", "check").status == "ended"
        assert restarted.read_call(live, "admin", "check").status == "active"
        assert restarted.close_interrupted() == 0  # once
        with restarted.session("look") as session:
            event = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "calls_interrupted")
            ).one()
        assert (event.object, json.loads(event.details)) == ("node:node-a", {"calls": 1})
        assert restarted.verify_audit().ok
    finally:
        restarted.close()
        node_b.close()
