"""Operations on the whole store: master key rotation, encrypted backup, verified restore."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from appliance.core.errors import StorageError
from appliance.storage import audit, sqlite
from appliance.storage.crypto import new_key
from appliance.storage.keys import MasterKey, read_key, retire, write_key
from appliance.storage.repository import Storage, storage_errors
from appliance.storage.schema import Turn

Progress = Callable[[int, int], None]
SERVER_BACKUP = (
    "the store is on a PostgreSQL server: back it up with the server's own tools (pg_dump "
    "--format=custom, or pg_basebackup); what callers said stays sealed in the dump, and the "
    "master key is kept apart (appliance keys recovery-code)"
)
SERVER_RESTORE = (
    "the store is on a PostgreSQL server: restore it with the server's own tools (pg_restore "
    "of a pg_dump), then start the appliance with the master key that sealed it"
)


def _pending(key_path: Path) -> Path:
    return key_path.with_name(f"{key_path.name}.next")


def rotate_master_key(
    open_with: Callable[[MasterKey], Storage], key_path: Path, progress: Progress | None = None
) -> tuple[MasterKey, MasterKey, int]:
    """Replace the master key: every data key re-wrapped (content untouched), an SQLite
    file re-keyed, the old key file overwritten and removed. ``open_with`` opens the store
    under a key. Resumable: the next key is written first (``<key>.next``), so a rotation cut
    short finishes on the next run."""
    pending = _pending(key_path)
    if not key_path.exists() and pending.exists():  # cut short after the old key was retired
        os.replace(pending, key_path)
        current = read_key(key_path)
        return current, current, 0
    old = read_key(key_path)
    new = read_key(pending) if pending.exists() else write_key(pending, new_key())
    try:
        storage = open_with(old)
    except StorageError:
        storage = open_with(new)  # re-keyed (SQLite) or re-wrapped (a server) already
        storage.master = old
    try:
        count = storage.rotate_master_key(new, progress)
    finally:
        storage.close()
    retire(key_path)
    os.replace(pending, key_path)
    return old, MasterKey(new.secret, key_path), count


@dataclass(frozen=True)
class BackupReport:
    path: Path
    size_bytes: int
    turns: int


def backup(storage: Storage, target: Path, actor: str) -> BackupReport:
    """A consistent online copy, encrypted under the same database key (useless without the
    master key), verified by opening it before it is reported."""
    if storage.engine.dialect.name != "sqlite":
        raise StorageError("storage.backup", SERVER_BACKUP)
    if storage.master is None:
        raise StorageError("storage.backup", "backup covers the encrypted store only")
    if target.exists():
        raise StorageError("storage.backup", f"{target} exists; choose a new file")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    sqlite.backup_to(storage.engine, partial, storage.master.database_key)
    os.chmod(partial, 0o600)
    copy = Storage.open_sqlite(partial, storage.master)
    try:
        with storage_errors("check backup"):
            sound = sqlite.integrity_check(copy.engine) == ["ok"]
        if not sound:
            raise StorageError("storage.backup", "the backup failed its integrity check")
        with copy.session("count backup") as session:
            turns = int(session.scalar(select(func.count()).select_from(Turn)) or 0)
    finally:
        copy.close()
    os.replace(partial, target)
    storage.log_event(actor, "backup", f"file:{target.name}", "ok", {"turns": turns})
    return BackupReport(target, target.stat().st_size, turns)


def prune_backups(folder: Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest backups that ``backup --dir`` made in ``folder``
    (with their sealed keys); returns what went."""
    made = sorted(folder.glob("appliance-*.db"))
    gone = made[: max(0, len(made) - keep)]
    for path in gone:
        path.unlink()
        with contextlib.suppress(FileNotFoundError):
            path.with_name(f"{path.name}.recovery").unlink()
    return gone


def restore(
    source: Path,
    db_path: Path,
    master: MasterKey,
    actor: str,
    checkpoint: audit.Checkpoint | None = None,
) -> int:
    """Check a backup (opens with the key, integrity, audit chain) and only then put it in
    place of the database; returns its number of turns. The service must be stopped. The
    audit checkpoint moves back to the backup's head, on purpose and audited: the restore
    event records the head it replaced."""
    staged = db_path.with_name(f".{db_path.name}.restoring")
    shutil.copyfile(source, staged)
    try:
        candidate = Storage.open_sqlite(staged, master)
        try:
            with storage_errors(f"check {source}"):
                sound = sqlite.integrity_check(candidate.engine) == ["ok"]
            if not sound:
                raise StorageError("storage.restore", f"{source} failed its integrity check")
            chain = candidate.verify_audit()
            if not chain.ok:
                raise StorageError(
                    "storage.restore",
                    f"{source}: audit chain broken at event {chain.broken_seq}",
                )
            with candidate.session("count restore") as session:
                turns = int(session.scalar(select(func.count()).select_from(Turn)) or 0)
        finally:
            candidate.close()
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{db_path}{suffix}").unlink()
        os.replace(staged, db_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    restored = Storage.open_sqlite(db_path, master)
    try:
        replaced = checkpoint.read() if checkpoint is not None else None
        with restored.session("audit restore") as session:
            details: dict[str, object] = {"turns": turns}
            if replaced is not None:
                details["replaced_head"] = replaced[0]
            event = restored.audit_in(
                session, actor, "restore", f"file:{source.name}", "ok", details
            )
        if checkpoint is not None:
            checkpoint.reset(event.seq, event.hash)
    finally:
        restored.close()
    return turns
