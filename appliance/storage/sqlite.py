"""The SQLite setup module: the only place with SQLite- or SQLCipher-specific SQL.

The file is encrypted as a whole by SQLCipher 4 (AES-256 pages with an HMAC each) under a raw
256-bit key, so the database, its WAL and its indexes are all ciphertext. Durability: WAL with
synchronous=FULL, so a commit that returned survives a crash or power loss. Deleted content is
overwritten (secure_delete), and a checkpoint can truncate the WAL after an erasure.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import QueuePool

from appliance.core.errors import StorageError

BUSY_TIMEOUT_MS = 10_000


def _pragmas(connection: Any) -> None:
    for pragma in (
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = FULL",
        "PRAGMA secure_delete = ON",
        "PRAGMA foreign_keys = ON",
        f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
    ):
        connection.execute(pragma).fetchall()


def connect_raw(path: Path, key: bytes | None) -> Any:
    """One DB-API connection: SQLCipher with ``key``, or plain SQLite when key is None."""
    if key is None:
        connection = sqlite3.connect(str(path), check_same_thread=False)
    else:
        import sqlcipher3

        connection = sqlcipher3.connect(str(path), check_same_thread=False)
        connection.execute("PRAGMA cipher_log_level = NONE").fetchall()
        connection.execute(f"PRAGMA key = \"x'{key.hex()}'\"").fetchall()
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
        _pragmas(connection)
    except Exception as exc:
        connection.close()
        raise StorageError(
            "storage.key",
            f"cannot open database {path}: wrong key or not an appliance database ({exc})",
        ) from exc
    return connection


def sqlite_engine(path: Path, key: bytes | None) -> Engine:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    connect_raw(path, key).close()  # fail here, with a clear error, not inside the pool
    if key is None:
        module: Any = sqlite3
    else:
        import sqlcipher3.dbapi2

        module = sqlcipher3.dbapi2
    engine = create_engine(
        "sqlite://",
        module=module,  # so SQLAlchemy wraps this driver's exceptions in its own
        creator=lambda: connect_raw(path, key),
        poolclass=QueuePool,
        pool_size=4,
        max_overflow=4,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: a transaction that reads, then writes,
        # would otherwise fail with SQLITE_BUSY when another writer committed in between
        # (WAL cannot upgrade a stale read snapshot). busy_timeout makes the others wait.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _pragma(engine: Engine, sql: str) -> list[Any]:
    """Run a PRAGMA on a pooled connection outside any transaction (SQLite refuses a
    checkpoint or a re-key inside one)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            cursor.execute(sql)
            return list(cursor.fetchall())
        finally:
            cursor.close()
    except Exception as exc:  # the driver's own errors: a damaged file, a wrong key
        if isinstance(exc, StorageError):
            raise
        raise StorageError("storage.failed", f"{sql.split('=')[0].strip()}: {exc}") from exc
    finally:
        raw.close()


CIPHER_PRAGMAS = (
    "cipher_version",
    "cipher_provider",
    "cipher_provider_version",
    "cipher_hmac_algorithm",
    "cipher_page_size",
)


def cipher_facts(engine: Engine, path: Path) -> dict[str, str]:
    """SQLCipher's settings as the open database reports them, and the file's first bytes
    as anyone without the key reads them (plain SQLite starts "SQLite format 3")."""
    facts: dict[str, str] = {}
    for name in CIPHER_PRAGMAS:
        rows = _pragma(engine, f"PRAGMA {name}")
        facts[name] = str(rows[0][0]) if rows and rows[0] else ""
    with path.open("rb") as file:
        facts["file_header"] = file.read(16).decode("latin-1")
    return facts


def checkpoint(engine: Engine) -> None:
    """Move the WAL into the file and truncate it (after an erasure: nothing left behind)."""
    _pragma(engine, "PRAGMA wal_checkpoint(TRUNCATE)")


def integrity_check(engine: Engine) -> list[str]:
    """``['ok']`` when the file is sound (and, under SQLCipher, every page's HMAC holds)."""
    return [str(row[0]) for row in _pragma(engine, "PRAGMA integrity_check")]


def rekey(engine: Engine, new_key: bytes) -> None:
    """Re-encrypt every page under ``new_key`` (the old key then opens nothing)."""
    engine.dispose()
    _pragma(engine, f"PRAGMA rekey = \"x'{new_key.hex()}'\"")
    engine.dispose()


def backup_to(engine: Engine, target: Path, key: bytes | None) -> None:
    """An online, consistent copy, encrypted like the source (SQLite backup API)."""
    destination = connect_raw(target, key)
    try:
        raw = engine.raw_connection()
        try:
            raw.driver_connection.backup(destination)  # type: ignore[union-attr]
        finally:
            raw.close()
        destination.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        destination.execute("PRAGMA journal_mode = DELETE").fetchall()
    finally:
        destination.close()
