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

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session

from appliance.core.errors import StorageError

DRIVER = "postgresql+psycopg"
SCHEMES = ("postgresql", "postgres", DRIVER)
EXTRA = "postgresql"
CONNECT_TIMEOUT_S = 10
IDLE_IN_TRANSACTION_MS = 60_000
REWRITE_LOCK_TIMEOUT = "5s"


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
        parsed.port  # noqa: B018  (a port that is not a number fails here, not in the driver)
    except (ArgumentError, ValueError) as exc:
        raise StorageError(
            "storage.url", f"[storage] url is not a database URL ({type(exc).__name__})"
        ) from exc
    if parsed.drivername not in SCHEMES:
        raise StorageError(
            "storage.url",
            f"[storage] url: {parsed.drivername!r} is not supported; use postgresql://USER@HOST/DB "
            "(psycopg 3), or leave it empty for the encrypted SQLite file",
        )
    parsed = parsed.set(drivername=DRIVER)
    if "sslmode" not in parsed.query and not is_local(connects_to(parsed)):
        parsed = parsed.update_query_dict({"sslmode": "verify-full"})
    return parsed


def connects_to(url: URL) -> str:
    """Where libpq connects: ``hostaddr`` when given (the name then only checks the
    certificate), else the host (a name, an address or a socket folder)."""
    return str(url.query.get("hostaddr", "")) or url.host or str(url.query.get("host", ""))


def sslmode(url: URL) -> str:
    """The link's TLS mode as libpq will use it (its default is ``prefer``)."""
    return str(url.query.get("sslmode", "prefer"))


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
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "voice-appliance",
            # A node that dies holding a lock (power, network) must not stall the others for
            # hours: the server drops a transaction idle for a minute, and the link notices a
            # dead peer in about a minute too.
            "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}",
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": 60_000,
        },
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


def rewrite(engine: Engine, table: str) -> bool:
    """``VACUUM FULL`` one table: a new file without its deleted rows, the old one removed
    (outside a transaction, as VACUUM must run). Kept for small tables: it locks the table
    while it copies, so it waits at most ``REWRITE_LOCK_TIMEOUT`` for other nodes' calls
    and gives up then (False: the next erasure or retention run rewrites it)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"SET lock_timeout = '{REWRITE_LOCK_TIMEOUT}'"))
        try:
            connection.execute(text(f'VACUUM (FULL) "{table}"'))
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", "") != "55P03":  # lock_not_available
                raise
            return False
    return True


def migration_lock(connection: Connection) -> None:
    """Hold the schema's lock for this migration's transaction: nodes and units starting at
    once on an empty database apply each migration once (the others wait, then find it)."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key("schema migrations")}
        )


class Hold:
    """A session lock on ``name``, held on a connection of its own until ``close`` (which
    lets go at once, not when the server notices the connection gone) or until the process
    dies (the server lets go then)."""

    def __init__(self, connection: Connection, name: str) -> None:
        self.connection, self.key = connection, lock_key(name)

    def take(self) -> bool:
        held = self.connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
        ).scalar()
        self.connection.commit()
        return bool(held)

    def close(self) -> None:
        try:
            self.connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            self.connection.commit()
        finally:
            self.connection.close()


def others_connected(engine: Engine) -> int:
    """Other sessions holding an advisory lock: a node serving (its name is held for as long
    as it runs) or a unit in the middle of a write."""
    with engine.connect() as connection:
        count = connection.execute(
            text(
                "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND pid <> pg_backend_pid() AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).scalar()
    return int(count or 0)
