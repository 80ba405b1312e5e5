"""Shared fixtures. Tests are marked by tier from their folder: unit, fakes (integration), real."""

from __future__ import annotations

import os
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config.settings import ModelsSettings, Settings, load_settings
from appliance.core.events import EventType
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage

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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Storage]:
    """An encrypted store of the test's own (``a.db`` under the key ``k``), closed after."""
    storage = Storage.open_sqlite(tmp_path / "a.db", load_or_create(tmp_path / "k"))
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
