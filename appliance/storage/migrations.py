"""Versioned schema migrations, applied on start, each in one transaction with its record.

A migration checks what it adds (SQLAlchemy's inspector), so a database created at the newest
schema by migration 1 passes later ones as no-ops, and a half-applied one cannot exist: the
change and its ``schema_migrations`` row commit together (sqlite-utils does the same).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Connection, DateTime, Engine, Index, String, Table, inspect, select, text

from appliance.core.errors import StorageError
from appliance.storage.postgresql import migration_lock
from appliance.storage.schema import (
    ApiToken,
    Base,
    Call,
    CallbackRequest,
    CallerCredential,
    DirectoryEntry,
    ErasureRequest,
    Incident,
    LimitEvent,
    LimitState,
    SchemaMigration,
    Turn,
    Voiceprint,
)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _initial(connection: Connection) -> None:
    Base.metadata.create_all(connection)


def _voiceprints(connection: Connection) -> None:
    cast(Table, Voiceprint.__table__).create(connection, checkfirst=True)


def _api_tokens(connection: Connection) -> None:
    cast(Table, ApiToken.__table__).create(connection, checkfirst=True)


def _turn_routes(connection: Connection) -> None:
    """turns.route and turns.citations: how each turn was answered and what it cited."""
    columns = {c["name"] for c in inspect(connection).get_columns("turns")}
    if "route" not in columns:
        connection.execute(text("ALTER TABLE turns ADD COLUMN route VARCHAR(16)"))
    if "citations" not in columns:
        connection.execute(text("ALTER TABLE turns ADD COLUMN citations TEXT"))
    indexes = {i["name"] for i in inspect(connection).get_indexes("turns")}
    if "ix_turns_route" not in indexes:
        Index("ix_turns_route", cast(Table, Turn.__table__).c.route).create(connection)


def _limits(connection: Connection) -> None:
    for table in (LimitEvent.__table__, LimitState.__table__):
        cast(Table, table).create(connection, checkfirst=True)


def _directory(connection: Connection) -> None:
    for table in (DirectoryEntry.__table__, CallerCredential.__table__):
        cast(Table, table).create(connection, checkfirst=True)


def _callbacks(connection: Connection) -> None:
    cast(Table, CallbackRequest.__table__).create(connection, checkfirst=True)


def _call_status(connection: Connection) -> None:
    """calls.status widened from 16 to 64 characters ("ended:abuse:block_caller" is 24). SQLite
    keeps any length in a VARCHAR column, so only other servers need the change."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("ALTER TABLE calls ALTER COLUMN status TYPE VARCHAR(64)"))


def _erasure_requests(connection: Connection) -> None:
    cast(Table, ErasureRequest.__table__).create(connection, checkfirst=True)


INCIDENT_COLUMNS = (
    ("acknowledged_at", DateTime()),
    ("acknowledged_by", String(128)),
    ("resolved_at", DateTime()),
    ("resolved_by", String(128)),
    ("resolution", String(64)),
)


def _incident_states(connection: Connection) -> None:
    """incidents.state (open, acknowledged, resolved) with who and when. Only adds what is
    missing, so it applies on a database that
    migration 1 made at the newest schema. Each type is compiled for the connection's dialect
    (SQLite DATETIME, PostgreSQL TIMESTAMP WITHOUT TIME ZONE). An incident closed before
    (``closed_at``, never written by the appliance) becomes resolved at that time."""
    columns = {c["name"] for c in inspect(connection).get_columns("incidents")}
    if "state" not in columns:
        # NOT NULL needs a default on both dialects: every existing incident is open.
        connection.execute(
            text("ALTER TABLE incidents ADD COLUMN state VARCHAR(16) NOT NULL DEFAULT 'open'")
        )
    for name, kind in INCIDENT_COLUMNS:
        if name not in columns:
            ddl = kind.compile(dialect=connection.dialect)
            connection.execute(text(f"ALTER TABLE incidents ADD COLUMN {name} {ddl}"))
    connection.execute(
        text(
            "UPDATE incidents SET state = 'resolved', resolved_at = closed_at, "
            "resolved_by = 'unknown (before schema 10)' "
            "WHERE closed_at IS NOT NULL AND resolved_at IS NULL"
        )
    )
    indexes = {i["name"] for i in inspect(connection).get_indexes("incidents")}
    if "ix_incidents_state_opened" not in indexes:
        table = cast(Table, Incident.__table__)
        (index,) = [i for i in table.indexes if i.name == "ix_incidents_state_opened"]
        index.create(connection)


def _call_nodes(connection: Connection) -> None:
    """calls.node: which voice node took the call, so a node restarted after a kill closes
    the calls it left active (only adds what is missing)."""
    columns = {c["name"] for c in inspect(connection).get_columns("calls")}
    if "node" not in columns:
        connection.execute(text("ALTER TABLE calls ADD COLUMN node VARCHAR(64)"))
    indexes = {i["name"] for i in inspect(connection).get_indexes("calls")}
    if "ix_calls_node" not in indexes:
        Index("ix_calls_node", cast(Table, Call.__table__).c.node).create(connection)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "calls, turns, keys, consents, recordings, tools, incidents, users, audit", _initial
    ),
    Migration(2, "voiceprints (sealed voice templates)", _voiceprints),
    Migration(3, "api_tokens (hashed bearer tokens of the admin API)", _api_tokens),
    Migration(4, "turns.route and turns.citations (how a turn was answered)", _turn_routes),
    Migration(
        5, "limit_events and limit_state (limits and lockouts that outlive a process)", _limits
    ),
    Migration(
        6, "directory_entries and caller_credentials (the caller directory, sealed)", _directory
    ),
    Migration(7, "callback_requests (callers' consented callback requests, sealed)", _callbacks),
    Migration(8, "calls.status holds 64 characters (end reasons are longer than 16)", _call_status),
    Migration(9, "erasure_requests (erasures, with their completion)", _erasure_requests),
    Migration(10, "incidents.state with who and when acknowledged and resolved", _incident_states),
    Migration(11, "calls.node (the voice node that took the call)", _call_nodes),
)
LATEST = MIGRATIONS[-1].version


def applied_versions(engine: Engine) -> set[int]:
    with engine.connect() as connection:
        if not inspect(connection).has_table(SchemaMigration.__tablename__):
            return set()
        return set(connection.scalars(select(SchemaMigration.version)))


def migrate(engine: Engine) -> list[int]:
    """Apply every missing migration in order; return the versions applied now."""
    done = applied_versions(engine)
    if done and max(done) > LATEST:
        raise StorageError(
            "storage.schema_newer",
            f"the database is at schema {max(done)}, newer than this appliance ({LATEST})",
        )
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        record = cast(Table, SchemaMigration.__table__)
        with engine.begin() as connection:
            migration_lock(connection)
            record.create(connection, checkfirst=True)
            if migration.version in set(connection.scalars(select(SchemaMigration.version))):
                continue  # another node or unit applied it while this one waited
            migration.apply(connection)
            connection.execute(
                record.insert().values(version=migration.version, description=migration.description)
            )
        applied.append(migration.version)
    return applied
