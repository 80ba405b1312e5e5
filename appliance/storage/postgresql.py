"""The PostgreSQL setup module: the only place with PostgreSQL-specific code.

The server holds only what the store seals before it leaves the node (each call's content
under its own data key, wrapped by the master key the server never sees), so its disk, its
dumps and its replicas hold ciphertext for what callers said. The link is TLS: a server that
is not on this machine gets ``sslmode=verify-full`` unless the URL says otherwise. Several
nodes may share one database; what must not interleave (the audit chain's next link, a
limit's count and its new event) takes a transaction-scoped advisory lock, the way SQLite's
``BEGIN IMMEDIATE`` serializes writers on one box.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session

from appliance.core.errors import StorageError

DRIVER = "postgresql+psycopg"
SCHEMES = ("postgresql", "postgres", DRIVER)
EXTRA = "postgresql"
CONNECT_TIMEOUT_S = 10


def is_local(host: str) -> bool:
    """A Unix socket (a path, or no host) or a loopback address: the link never leaves."""
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def engine_url(url: str) -> URL:
    """The URL psycopg 3 is given: ``postgresql://`` (and ``postgres://``) mean psycopg 3, and
    a server that is not local gets ``sslmode=verify-full`` unless one is given."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StorageError("storage.url", f"[storage] url is not a database URL: {exc}") from exc
    if parsed.drivername not in SCHEMES:
        raise StorageError(
            "storage.url",
            f"[storage] url: {parsed.drivername!r} is not supported; use postgresql://USER@HOST/DB "
            "(psycopg 3), or leave it empty for the encrypted SQLite file",
        )
    parsed = parsed.set(drivername=DRIVER)
    host = parsed.host or str(parsed.query.get("host", ""))
    if "sslmode" not in parsed.query and not is_local(host):
        parsed = parsed.update_query_dict({"sslmode": "verify-full"})
    return parsed


def described(url: URL) -> str:
    """The server and database, never the password."""
    host = url.host or str(url.query.get("host", "")) or "the local socket"
    return f"{host}:{url.port or 5432}/{url.database or ''}"


def postgres_engine(url: str) -> Engine:
    """An engine on the server, checked now: a missing driver or an unreachable server is a
    clear error naming it, not a traceback on the first call."""
    target = engine_url(url)
    if importlib.util.find_spec("psycopg") is None:
        raise StorageError(
            "storage.driver",
            f"a PostgreSQL [storage] url needs the {EXTRA!r} extra (psycopg 3): "
            f"pip install 'voice-appliance[{EXTRA}]', or run scripts/setup",
        )
    engine = create_engine(
        target,
        pool_pre_ping=True,
        pool_size=4,
        max_overflow=4,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "voice-appliance"},
    )
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except DBAPIError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else "no reason"
        raise StorageError(
            "storage.unreachable",
            f"cannot open the PostgreSQL database {described(target)}: {reason}",
        ) from exc
    return engine


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock`` (the same on every node)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def serialize(session: Session, name: str) -> None:
    """Hold ``name`` until this transaction ends, against every node on the database. On
    SQLite a no-op: its writers are already serialized (``BEGIN IMMEDIATE``)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})


def server_facts(engine: Engine) -> dict[str, Any]:
    """The server's version and this connection's TLS (``pg_stat_ssl``)."""
    with engine.connect() as connection:
        version = connection.execute(text("SHOW server_version")).scalar()
        row = connection.execute(
            text("SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        ).first()
    facts: dict[str, Any] = {"server_version": str(version), "ssl": "false"}
    if row is not None:
        facts.update(ssl=str(bool(row[0])).lower(), ssl_version=str(row[1]), ssl_cipher=str(row[2]))
    return facts


def rewrite(engine: Engine, table: str) -> None:
    """``VACUUM FULL`` one table: a new file without its deleted rows, the old one removed
    (outside a transaction, as VACUUM must run). Kept for small tables: it locks the table
    while it copies."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'VACUUM (FULL) "{table}"'))
