"""Shared fixtures. Tests are marked by tier from their folder: unit, fakes (integration), real."""

from __future__ import annotations

import os
import re
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.config.settings import ModelsSettings, Settings, load_settings
from appliance.core.events import EventType
from appliance.storage.keys import MasterKey, load_or_create
from appliance.storage.repository import Storage
from tests import pg

TURN_ORDER = [
    EventType.SPEECH_START,
    EventType.SPEECH_END,
    EventType.TRANSCRIPT,
    EventType.ROUTE,
    EventType.FIRST_TOKEN,
    EventType.FIRST_SENTENCE,
    EventType.FIRST_AUDIO,
    EventType.TURN_END,
]
"""The events of a complete, uninterrupted turn, in their fixed order."""

GUARDED_TURN_ORDER = [*TURN_ORDER[:3], EventType.GUARD_INPUT, *TURN_ORDER[3:]]
"""The same, with the guardrails on (as the service always runs)."""
FIXED_TURN_ORDER = [*GUARDED_TURN_ORDER[:5], EventType.FIRST_AUDIO, EventType.TURN_END]
"""A guarded turn answered without the model (an approved answer, the honest unknown)."""

TIERS = {"unit": "unit", "integration": "fakes", "real": "real"}
# The models assembled once (Whisper base, the default LLM) are shared by every test's
# APPLIANCE_HOME, and by commands a test runs with another HOME (the PulseAudio tests do).
os.environ.setdefault("APPLIANCE_MODELS__CACHE", str(ModelsSettings().cache_path(Path.home())))
ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in TIERS:
            item.add_marker(getattr(pytest.mark, TIERS[folder]))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private APPLIANCE_HOME for one test."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("APPLIANCE_HOME", str(path))
    return path


@pytest.fixture
def settings(home: Path) -> Settings:
    return load_settings(environ={"APPLIANCE_HOME": str(home)})


BACKENDS = (
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=[pytest.mark.real, pytest.mark.postgresql]),
)


@dataclass
class Backend:
    """Where a test's store lives: an SQLCipher file, or a database of its own on the tests'
    PostgreSQL cluster (made for the test, dropped after)."""

    name: str
    db: Path
    """The SQLite file (on PostgreSQL unused)."""
    cluster: pg.Cluster | None = None
    database: str = ""

    @property
    def url(self) -> str:
        return self.cluster.url(self.database) if self.cluster is not None else ""

    def open(self, master: MasterKey | None, **kwargs: Any) -> Storage:
        if self.cluster is None:
            return Storage.open_sqlite(self.db, master, **kwargs)
        assert master is not None
        return Storage.open_url(self.url, master, **kwargs)

    def opener(self, **kwargs: Any) -> Callable[[MasterKey], Storage]:
        return lambda master: self.open(master, **kwargs)

    def at_rest(self) -> bytes:
        """Everything the store left where it keeps data: the file and its WAL, or the
        server's dump of the database (``pg_dump``) with each bytea value also decoded, so a
        value stored unsealed shows as itself."""
        if self.cluster is None:
            files = sorted(p for p in self.db.parent.iterdir() if p.name.startswith(self.db.name))
            return b"".join(p.read_bytes() for p in files)
        dump = self.cluster.client("pg_dump", "--format=plain", self.database).stdout
        values = re.findall(rb"\\+x((?:[0-9a-f]{2})+)", dump)
        return dump + b"\n".join(bytes.fromhex(v.decode()) for v in values)

    def plain_view(self, store: Storage, folder: Path) -> bytes:
        """What one who holds the database and its key reads: every live page of the SQLite
        file decrypted, or (the server holding no key of ours) ``at_rest``."""
        if self.cluster is None:
            from tests.integration.helpers import plaintext_dump

            return plaintext_dump(store, folder / "plain-export.db")
        return self.at_rest()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``backends`` (or in a module so marked) that uses the ``backend`` fixture
    runs on SQLite and on PostgreSQL, unless it is also marked ``sqlite_only``."""
    marked = metafunc.definition.get_closest_marker("backends") is not None
    only = metafunc.definition.get_closest_marker("sqlite_only") is not None
    if "backend" in metafunc.fixturenames and marked and not only:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.Cluster]:
    """The tests' PostgreSQL cluster, started once."""
    with pg.cluster() as running:
        yield running


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if getattr(request, "param", "sqlite") == "sqlite":
        yield Backend("sqlite", tmp_path / "a.db")
        return
    cluster: pg.Cluster = request.getfixturevalue("postgres")
    database = cluster.create_database()
    yield Backend("postgresql", tmp_path / "a.db", cluster, database)
    cluster.drop_database(database)


@pytest.fixture
def store(backend: Backend, tmp_path: Path) -> Iterator[Storage]:
    """An encrypted store of the test's own (``a.db``, or a database on the tests' PostgreSQL,
    under the key ``k``), closed after."""
    storage = backend.open(load_or_create(tmp_path / "k"))
    yield storage
    storage.close()


def write_pcm16_wav(path: Path, pcm: bytes, rate: int, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return path


@pytest.fixture(scope="session")
def repo_root() -> Iterator[Path]:
    yield ROOT
