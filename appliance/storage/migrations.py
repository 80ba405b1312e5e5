"""Versioned schema migrations, applied on start, each in one transaction with its record.

A migration checks what it adds (SQLAlchemy's inspector), so a database created at the newest
schema by migration 1 passes later ones as no-ops, and a half-applied one cannot exist: the
change and its ``schema_migrations`` row commit together (sqlite-utils does the same).

Each migration says whether it is *additive*: the appliance of the version before it still keeps
every promise on the migrated schema (it only adds what the older code may ignore: no content
the older code would not seal, erase or age out, no rule it would not enforce, no column it
would have to fill). The row records it. An appliance opens a database at a newer schema only
when every newer migration is recorded additive: so nodes upgrade one at a time while the
others serve, and the way back from an additive upgrade is to start the older appliance again.
A database with a newer migration that is not additive, or whose row predates the record (from
before migration 12), is refused (``storage.schema_newer``); the way back from it is the
backup taken before the upgrade.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import (
    Boolean,
    Connection,
    DateTime,
    Engine,
    Index,
    String,
    Table,
    inspect,
    select,
    text,
)

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
    additive: bool = False
    """The appliance before it still keeps every promise on the migrated schema (above)."""


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


def _additive_record(connection: Connection) -> None:
    """schema_migrations.additive: whether older code may run on the schema each migration
    made (above); the rows before this one get what this code knows of them."""
    columns = {c["name"] for c in inspect(connection).get_columns("schema_migrations")}
    if "additive" not in columns:
        ddl = Boolean().compile(dialect=connection.dialect)
        connection.execute(text(f"ALTER TABLE schema_migrations ADD COLUMN additive {ddl}"))
    record = cast(Table, SchemaMigration.__table__)
    for migration in MIGRATIONS:
        connection.execute(
            record.update()
            .where(record.c.version == migration.version)
            .values(additive=migration.additive)
        )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "calls, turns, keys, consents, recordings, tools, incidents, users, audit", _initial
    ),
    # Sealed content older code would not erase, or rules it would not enforce: not additive.
    Migration(2, "voiceprints (sealed voice templates)", _voiceprints),
    Migration(3, "api_tokens (hashed bearer tokens of the admin API)", _api_tokens),
    Migration(4, "turns.route and turns.citations (how a turn was answered)", _turn_routes, True),
    Migration(
        5, "limit_events and limit_state (limits and lockouts that outlive a process)", _limits
    ),
    Migration(
        6, "directory_entries and caller_credentials (the caller directory, sealed)", _directory
    ),
    Migration(7, "callback_requests (callers' consented callback requests, sealed)", _callbacks),
    Migration(
        8, "calls.status holds 64 characters (end reasons are longer than 16)", _call_status, True
    ),
    Migration(9, "erasure_requests (erasures, with their completion)", _erasure_requests),
    Migration(10, "incidents.state with who and when acknowledged and resolved", _incident_states),
    # Older code leaves a call's node empty: its calls are then closed by no node's restart.
    Migration(11, "calls.node (the voice node that took the call)", _call_nodes),
    Migration(12, "schema_migrations.additive (older code may run on it)", _additive_record, True),
)
LATEST = MIGRATIONS[-1].version
ADDITIVE_RECORDED = 12
"""The migration that added ``schema_migrations.additive``."""


def applied_versions(engine: Engine) -> set[int]:
    with engine.connect() as connection:
        if not inspect(connection).has_table(SchemaMigration.__tablename__):
            return set()
        return set(connection.scalars(select(SchemaMigration.version)))


def newer_migrations(engine: Engine, latest: int = LATEST) -> list[tuple[int, str, bool]]:
    """The migrations applied to the database that this code does not know (version,
    description, recorded additive), oldest first."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(SchemaMigration.__tablename__):
            return []
        columns = {c["name"] for c in inspect(connection).get_columns("schema_migrations")}
        additive = "additive" if "additive" in columns else "NULL"
        rows = connection.execute(
            text(
                f"SELECT version, description, {additive} FROM schema_migrations "
                "WHERE version > :latest ORDER BY version"
            ),
            {"latest": latest},
        )
        return [(int(v), str(d), bool(a)) for v, d, a in rows]


def migrate(engine: Engine, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply every missing migration in order; return the versions applied now. A database
    at a newer schema opens only when each newer migration is recorded additive."""
    latest = migrations[-1].version
    breaking = [(v, d) for v, d, additive in newer_migrations(engine, latest) if not additive]
    if breaking:
        version, description = breaking[0]
        raise StorageError(
            "storage.schema_newer",
            f"the database is at a schema newer than this appliance ({latest}): migration "
            f"{version} ({description}) is not one older code may run on; upgrade this "
            "appliance, or restore the backup taken before that upgrade",
        )
    done = applied_versions(engine)
    applied = []
    for migration in migrations:
        if migration.version in done:
            continue
        record = cast(Table, SchemaMigration.__table__)
        with engine.begin() as connection:
            migration_lock(connection)
            record.create(connection, checkfirst=True)
            if migration.version in set(connection.scalars(select(SchemaMigration.version))):
                continue  # another node or unit applied it while this one waited
            migration.apply(connection)
            values = {"version": migration.version, "description": migration.description}
            if migration.version >= ADDITIVE_RECORDED:  # the column exists from then on
                values["additive"] = migration.additive
            connection.execute(record.insert().values(**values))
        applied.append(migration.version)
    return applied
