"""The store on a real PostgreSQL server (the tests' own cluster): what only a server has.
Several nodes writing one audit chain and one set of limits at once, a destroyed data key gone
from the server's own files, TLS with a pinned CA, and clear errors for a missing driver, an
unreachable server or a wrong URL. The rest of the store's suite runs here too (``backends``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from appliance.compliance.probes import Live, Outcome, database_cipher
from appliance.config.settings import StorageSettings, load_settings
from appliance.core.errors import ConfigError, StorageError
from appliance.core.ports import TurnRecord
from appliance.storage import postgresql
from appliance.storage.keys import MasterKey, load_or_create
from appliance.storage.repository import Storage
from appliance.storage.schema import DataKey
from tests import pg
from tests.conftest import Backend
from tests.pki import make_ca

pytestmark = [pytest.mark.real, pytest.mark.postgresql]
both = pytest.mark.backends
APPLIANCE = Path(sys.executable).parent / "appliance"
NOW = datetime(2026, 12, 1, 9, 0)


@pytest.fixture
def database(postgres: pg.Cluster) -> Iterator[str]:
    name = postgres.create_database()
    yield postgres.url(name)
    postgres.drop_database(name)


@pytest.fixture
def master(tmp_path: Path) -> MasterKey:
    return load_or_create(tmp_path / "keys" / "master.key")


@pytest.fixture
def nodes(database: str, master: MasterKey) -> Iterator[Callable[[], Storage]]:
    """Open another node's store on the same database (each its own engine and pool)."""
    opened: list[Storage] = []

    def node() -> Storage:
        opened.append(Storage.open_url(database, master))
        return opened[-1]

    yield node
    for storage in opened:
        storage.close()


def in_parallel(work: Callable[[int], None], threads: int) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def run(index: int) -> None:
        start.wait()
        try:
            work(index)
        except BaseException as exc:  # collected, and asserted on
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    return errors


def cli(home: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``appliance ARGS`` with its home and the store on ``url``."""
    return subprocess.run(
        [str(APPLIANCE), *args],
        env={**os.environ, "APPLIANCE_HOME": str(home), "APPLIANCE_STORAGE__URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_two_nodes_appending_at_once_keep_one_verifiable_chain(
    nodes: Callable[[], Storage],
) -> None:
    """Without the chain's lock, two nodes read the same last link and write the same next
    sequence number: one append fails (a duplicate key) or the chain forks."""
    first, second = nodes(), nodes()
    stores = [first, second]

    def append(index: int) -> None:
        store = stores[index % 2]
        for n in range(25):
            store.log_event(f"node:{index % 2}", "probe", f"thread:{index}:{n}", "ok")

    assert in_parallel(append, 8) == []
    report = first.verify_audit()
    assert report.ok and report.events == 200
    assert second.verify_audit().ok


def test_a_limit_counted_on_two_nodes_at_once_lets_through_exactly_its_number(
    nodes: Callable[[], Storage],
) -> None:
    first, second = nodes(), nodes()
    allowed: list[bool] = []

    def hit(index: int) -> None:
        store = (first, second)[index % 2]
        for _ in range(5):
            allowed.append(store.window_hit("caller", "+15550123", 1000.0, 3600.0, 7, False))

    assert in_parallel(hit, 6) == []
    assert allowed.count(True) == 7 and len(allowed) == 30


def test_a_new_caller_calling_two_nodes_at_once_is_one_caller(
    nodes: Callable[[], Storage],
) -> None:
    """Both nodes found no caller row and both inserted one: a unique violation ended a call
    (and the first start of two nodes made two pseudonymization keys the same way)."""
    stores = [nodes(), nodes()]
    started: list[str] = []

    def call(index: int) -> None:
        started.append(stores[index % 2].start_call("+15550777", "test").call_id)

    assert in_parallel(call, 6) == []
    with stores[0].session("look") as session:
        from appliance.storage.schema import Call, Caller, Meta

        assert len(session.scalars(select(Caller)).all()) == 1
        assert len(session.scalars(select(Call.caller_id).distinct()).all()) == 1
        assert session.get(Meta, "pseudonym_key_id") is not None
    assert len(started) == 6


def test_a_caller_locked_out_on_one_node_is_locked_out_on_the_other(
    nodes: Callable[[], Storage],
) -> None:
    from appliance.config.settings import LimitsSettings, ToolsSettings
    from appliance.identity.abuse import AbuseMonitor
    from appliance.identity.factors import FactorError, hash_secret
    from appliance.tools.agent import CallerFactors

    first, second = nodes(), nodes()
    pin = hash_secret("4321")
    here = CallerFactors.from_settings(ToolsSettings(max_factor_attempts=3), counters=first)
    for _ in range(3):
        with pytest.raises(FactorError):
            here.pin.verify("+15550123", "0000", pin)
    there = CallerFactors.from_settings(ToolsSettings(max_factor_attempts=3), counters=second)
    with pytest.raises(FactorError, match="too many failed attempts"):
        there.pin.verify("+15550123", "4321", pin)  # the right PIN, on the other node
    AbuseMonitor(LimitsSettings(), clock=lambda: 1000.0, counters=first).block("+15550999")
    other = AbuseMonitor(LimitsSettings(), clock=lambda: 1000.0, counters=second)
    assert other.admit("+15550999", "10.0.0.9").reason == "limit.blocked"


def test_an_erased_callers_data_key_is_gone_from_the_servers_own_files(
    postgres: pg.Cluster, nodes: Callable[[], Storage]
) -> None:
    """A deleted row stays in PostgreSQL's heap file until a vacuum: the wrapped key would
    be there for whoever holds the disk and the master key. After an erasure the data-key
    table is rewritten, so its bytes are in no file of the cluster's table."""
    store = nodes()
    handle = store.start_call("+15550000001", "test")
    handle.record_turn(TurnRecord(1, "erase me", "ok"))
    handle.finish("ended")
    with store.session("look") as session:
        wrapped = session.scalars(select(DataKey.wrapped).where(DataKey.purpose == "call")).one()

    def table_file() -> bytes:
        with store.engine.connect() as connection:
            connection.execute(text("CHECKPOINT"))
            relative = connection.execute(text("SELECT pg_relation_filepath('data_keys')")).scalar()
        return (postgres.root / "data" / str(relative)).read_bytes()

    assert wrapped in table_file()  # what the check below would miss if it read nothing
    store.erase_caller("+15550000001", "admin:bob")
    assert wrapped not in table_file()
    assert store.verify_audit().ok


def test_the_wrong_master_key_is_refused_before_anything_is_sealed(
    database: str, master: MasterKey, tmp_path: Path
) -> None:
    store = Storage.open_url(database, master)
    store.start_call("+1555", "test").finish("ended")
    store.close()
    stranger = load_or_create(tmp_path / "stranger.key")
    with pytest.raises(StorageError) as caught:
        Storage.open_url(database, stranger)
    assert caught.value.code == "storage.key" and stranger.fingerprint in caught.value.message


def test_the_link_is_tls_with_the_pinned_ca_and_another_ca_is_refused(
    tmp_path: Path, master: MasterKey
) -> None:
    ca = make_ca("test postgres CA")
    cert, key = ca.issue(tmp_path, "postgres", ip="127.0.0.1")
    with pg.cluster(tls=(cert, key)) as server:
        pinned = ca.pem(tmp_path / "ca.pem")
        url = server.url("postgres", sslmode="verify-full", sslrootcert=str(pinned))
        with Storage.open_url(url, master) as store:
            facts = postgresql.server_facts(store.engine)
            assert facts["ssl"] == "true" and facts["ssl_version"] in ("TLSv1.2", "TLSv1.3")
            finding = database_cipher(Live(load_settings(environ={}), store, NOW))
            assert finding.outcome is Outcome.PASS and "TLS" in finding.evidence
        other = make_ca("someone else's CA").pem(tmp_path / "other.pem")
        wrong = server.url("postgres", sslmode="verify-full", sslrootcert=str(other))
        with pytest.raises(StorageError) as caught:
            Storage.open_url(wrong, master)
        assert caught.value.code == "storage.unreachable"
        assert "certificate verify failed" in caught.value.message
        assert pg.PASSWORD not in caught.value.message
        plain = server.url("postgres", sslmode="disable")
        with Storage.open_url(plain, master) as store:  # the probe must see a plain link
            finding = database_cipher(Live(load_settings(environ={}), store, NOW))
            assert finding.outcome is Outcome.FAIL and "OFF" in finding.evidence


def test_an_unreachable_server_is_a_clear_error_from_the_cli(tmp_path: Path) -> None:
    closed = pg.free_port()  # nothing listens there
    url = f"postgresql://appliance:{pg.PASSWORD}@127.0.0.1:{closed}/appliance"
    run = cli(tmp_path, url, "calls", "list")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "storage.unreachable" in run.stderr and f"127.0.0.1:{closed}/appliance" in run.stderr
    assert pg.PASSWORD not in run.stderr


def test_the_cli_lists_calls_from_a_server(database: str, tmp_path: Path) -> None:
    store = Storage.open_url(database, load_or_create(tmp_path / "keys" / "master.key"))
    call_id = store.start_call("+1555", "test").call_id
    store.close()
    run = cli(tmp_path, database, "calls", "list")
    assert run.returncode == 0, run.stderr
    assert call_id in run.stdout


def test_without_the_driver_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = postgresql.importlib.util.find_spec
    monkeypatch.setattr(
        postgresql.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "psycopg" else real(name, *a),
    )
    with pytest.raises(StorageError) as caught:
        postgresql.postgres_engine("postgresql://u@127.0.0.1/db")
    assert caught.value.code == "storage.driver" and "voice-appliance[postgresql]" in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("url", "sslmode"),
    [
        ("postgresql://u@10.0.0.5/db", "verify-full"),
        ("postgres://u@10.0.0.5:6432/db?sslmode=require", "require"),
        ("postgresql://u@127.0.0.1/db", None),
        ("postgresql:///db?host=/run/postgresql", None),
        ("postgresql://u@db.example.org/db?hostaddr=10.0.0.5", "verify-full"),
        ("postgresql://u@localhost/db?hostaddr=10.0.0.5", "verify-full"),  # hostaddr decides
        ("postgresql:///db?host=/run/postgresql&hostaddr=10.0.0.5", "verify-full"),
    ],
)
def test_a_server_on_another_machine_gets_verify_full_unless_told(
    url: str, sslmode: str | None
) -> None:
    target = postgresql.engine_url(url)
    assert target.drivername == "postgresql+psycopg"
    assert target.query.get("sslmode") == sslmode


def test_a_url_that_is_not_postgresql_or_names_a_host_without_its_address_is_refused() -> None:
    with pytest.raises(ConfigError, match="PostgreSQL URL"):
        StorageSettings(url="sqlite:///x.db")
    with pytest.raises(ConfigError, match="hostaddr"):
        StorageSettings(url="postgresql://u@db.example.org/db")
    with pytest.raises(ConfigError, match="percent-encode"):  # the host would be misread
        StorageSettings(url="postgresql://appliance:pa@ss@10.0.0.5/voice")
    with pytest.raises(ConfigError, match="port"):
        StorageSettings(url="postgresql://u@10.0.0.5:fifty/db")
    with pytest.raises(StorageError, match="not a database URL"):
        postgresql.engine_url("postgresql://u@10.0.0.5:fifty/db")
    named = StorageSettings(url="postgresql://u@db.example.org/db?hostaddr=10.0.0.5")
    assert named.server_address == "10.0.0.5"
    assert StorageSettings(url="postgresql://u@127.0.0.1/db").server_address == ""
    from appliance.deploy import egress

    settings = load_settings(environ={"APPLIANCE_STORAGE__URL": named.url})
    assert "10.0.0.5" in egress.allowlist(settings)


def test_a_backup_or_restore_on_a_server_names_the_servers_own_tools(
    database: str, master: MasterKey, tmp_path: Path
) -> None:
    from appliance.storage.maintenance import backup

    with Storage.open_url(database, master) as store, pytest.raises(StorageError) as caught:
        backup(store, tmp_path / "b.db", "admin")
    assert caught.value.code == "storage.backup" and "pg_dump" in caught.value.message
    run = cli(tmp_path, database, "restore", str(tmp_path / "b.db"))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "storage.restore" in run.stderr and "pg_restore" in run.stderr
    # The daily timer's run says so and succeeds, rather than failing every day.
    timer = cli(tmp_path, database, "backup", "--scheduled", "--dir", str(tmp_path / "backups"))
    assert timer.returncode == 0 and "pg_dump" in timer.stderr, timer.stderr
    assert not (tmp_path / "backups").exists()


def test_doctor_reads_the_servers_schema_and_link(
    database: str, master: MasterKey, tmp_path: Path
) -> None:
    from appliance.deploy import doctor

    Storage.open_url(database, master).close()  # migrated, as the first start does
    environ = {"APPLIANCE_HOME": str(tmp_path), "APPLIANCE_STORAGE__URL": database}
    check = doctor.database(load_settings(environ=environ))
    assert check.status == "WARN", check  # on this machine, without TLS
    assert "PostgreSQL" in check.detail and "schema" in check.detail
    assert pg.PASSWORD not in check.detail


def test_doctor_warns_a_node_older_than_its_database(
    database: str, master: MasterKey, tmp_path: Path
) -> None:
    """A node rolled back (or not yet upgraded) on a schema a later release made additively
    runs, and doctor says it is behind."""
    from appliance.deploy import doctor
    from appliance.storage.migrations import LATEST
    from appliance.storage.schema import SchemaMigration

    with Storage.open_url(database, master) as store, store.session("later") as session:
        session.add(SchemaMigration(version=LATEST + 1, description="later", additive=True))
    environ = {"APPLIANCE_HOME": str(tmp_path), "APPLIANCE_STORAGE__URL": database}
    check = doctor.database(load_settings(environ=environ))
    assert check.status == "WARN", check
    assert f"schema {LATEST + 1}: newer than this appliance ({LATEST})" in check.detail


def test_nodes_starting_at_once_on_an_empty_database_apply_each_migration_once(
    database: str, master: MasterKey
) -> None:
    """Without the schema's lock, two first starts both create the tables (duplicate type or
    relation) or both record a migration (duplicate key)."""
    opened: list[Storage] = []

    def start(index: int) -> None:
        opened.append(Storage.open_url(database, master))

    try:
        assert in_parallel(start, 4) == []
    finally:
        for storage in opened:
            storage.close()
    from appliance.storage.migrations import MIGRATIONS, applied_versions

    with Storage.open_url(database, master) as store:
        assert applied_versions(store.engine) == {m.version for m in MIGRATIONS}


def test_config_show_never_prints_the_databases_password(tmp_path: Path) -> None:
    url = f"postgresql://appliance:{pg.PASSWORD}@127.0.0.1:5432/appliance"
    run = cli(tmp_path, url, "config", "show")
    assert run.returncode == 0, run.stderr
    assert pg.PASSWORD not in run.stdout
    assert "postgresql://appliance:***@127.0.0.1:5432/appliance" in run.stdout


def test_two_nodes_purging_at_once_purge_each_row_once_and_keep_the_chain(
    nodes: Callable[[], Storage],
) -> None:
    """Each node's retention timer may fire at once: without taking turns, both choose the
    same batch and the second delete fails (or two anchors are written)."""
    from appliance.config.settings import RetentionSettings
    from appliance.retention.job import run_retention
    from appliance.retention.policy import RetentionPolicy

    first, second = nodes(), nodes()
    for n in range(30):
        handle = first.start_call(f"+1555{n:04d}", "test")
        handle.record_turn(TurnRecord(1, "old words", "ok"))
        handle.finish("ended")
    policy = RetentionPolicy.from_settings(RetentionSettings(calls_days=1, transcripts_days=1))
    later = datetime.now() + timedelta(days=400)  # every call and event is past its period
    first.clock = second.clock = lambda: later
    reports: list[object] = []

    def purge(index: int) -> None:
        reports.append(run_retention((first, second)[index % 2], policy, batch_size=4))

    assert in_parallel(purge, 4) == []
    with first.session("look") as session:
        from appliance.storage.schema import Call

        assert session.scalars(select(Call)).first() is None
    assert first.verify_audit().ok and len(reports) == 4


@both
def test_a_second_process_cannot_serve_under_the_same_node_name(
    backend: Backend, tmp_path: Path
) -> None:
    """It would close the first one's live calls as interrupted at its start."""
    master = load_or_create(tmp_path / "k")
    first = backend.open(master, node="node-a")
    second = backend.open(master, node="node-a")
    other = backend.open(master, node="node-b")
    try:
        first.claim_node()
        with pytest.raises(StorageError) as caught:
            second.claim_node()
        assert caught.value.code == "storage.node_taken"
        other.claim_node()  # another name is free
        first.close()  # the name is free again once its process lets go
        second.claim_node()
    finally:
        for storage in (first, second, other):
            storage.close()


def test_the_master_key_is_not_rotated_while_another_node_serves(
    nodes: Callable[[], Storage], tmp_path: Path
) -> None:
    """That node would go on wrapping new calls' keys under the old key, which the rotation
    then destroys: those calls would open under no key."""
    from appliance.core.errors import KeyringError

    serving, rotating = nodes(), nodes()
    serving.node = "node-a"
    serving.claim_node()
    rotating.start_call("+1555", "test").finish("ended")
    new = load_or_create(tmp_path / "new.key")
    with pytest.raises(KeyringError) as caught:
        rotating.rotate_master_key(new)
    assert caught.value.code == "keys.nodes_running"
    serving.close()
    assert rotating.rotate_master_key(new) == 2  # the call's key and the pseudonym key
