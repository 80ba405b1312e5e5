"""The pipeline writes every turn through storage; a failing store degrades, never stops, a call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import event

from appliance.audio_io.memory import MemorySink, MemorySource
from appliance.core.errors import StorageError
from appliance.core.events import EventType
from appliance.core.ports import TurnRecord
from appliance.pipeline.session import CallSession, Engines
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage
from appliance.testing.fakes import (
    EnergyVad,
    FakeTranscriber,
    ScriptedChatModel,
    ToneSynthesizer,
    quiet,
    tone,
)
from tests.integration.helpers import make_config


def run(store: Storage, pcm: bytes, texts: list[str], **config: object) -> tuple[str, CallSession]:
    handle = store.start_call("+15557654321", "test")
    session = CallSession(
        Engines(
            EnergyVad(),
            FakeTranscriber(texts),
            ScriptedChatModel(["Sure, done."]),
            ToneSynthesizer(),
        ),
        make_config(**config),
        MemorySource(pcm),
        MemorySink(16_000),
        recorder=handle,
    )
    asyncio.run(asyncio.wait_for(session.run(), timeout=60))
    return handle.call_id, session


@pytest.fixture
def store(tmp_path: Path) -> Storage:
    return Storage.open_sqlite(tmp_path / "a.db", load_or_create(tmp_path / "k"))


def test_every_turn_is_committed_before_it_ends(store: Storage) -> None:
    call_id, session = run(store, tone(0.8) + quiet(4) + tone(0.8) + quiet(3), ["first", "second"])
    assert all(t.stored for t in session.turns)
    for turn in session.turns:
        end = turn.events[-1]
        assert end.type is EventType.TURN_END and end.data["stored"] is True
    view = store.read_call(call_id, "tester", "check")
    assert view.status == "ended"
    assert [(t.transcript, t.reply) for t in view.turns] == [
        ("first", "Sure, done."),
        ("second", "Sure, done."),
    ]
    assert "first_audio" in view.turns[0].timings_ms and view.turns[0].voice_to_voice_ms is not None
    assert view.recordings == 0  # raw audio is not kept unless configured


def test_recordings_are_kept_only_when_configured(store: Storage) -> None:
    call_id, _ = run(store, tone(0.8) + quiet(3), ["hello"], record_audio=True)
    (audio,) = store.read_recording(call_id, "tester")
    assert len(audio) > 16_000  # the utterance: 0.8 s of speech and its pre-roll


def test_a_full_store_degrades_the_call_but_it_goes_on(store: Storage) -> None:
    earlier = store.start_call("+1555", "test")
    earlier.record_turn(TurnRecord(1, "kept", "safe"))
    handle = store.start_call(None, "test")
    store.engine.dispose()
    event.listen(store.engine, "connect", lambda c, r: c.execute("PRAGMA max_page_count = 60"))
    counter = iter(range(2, 10_000))
    for size in (300, 30, 1):  # fill the store to the brim, down to its last small gaps
        with pytest.raises(StorageError, match=r"storage\.full"):
            for index in counter:
                earlier.record_turn(TurnRecord(index, "filler " * size, "filler " * size))
    session = CallSession(
        Engines(
            EnergyVad(),
            FakeTranscriber(["first", "second"]),
            ScriptedChatModel(["Sure, done."]),
            ToneSynthesizer(),
        ),
        make_config(),
        MemorySource(tone(0.8) + quiet(4) + tone(0.8) + quiet(3)),
        MemorySink(16_000),
        recorder=handle,
    )
    asyncio.run(asyncio.wait_for(session.run(), timeout=60))
    assert len(session.turns) == 2  # the caller was answered twice
    for turn in session.turns:
        assert not turn.stored and turn.reply == "Sure, done."
        error = turn.first(EventType.ERROR)
        assert error is not None and error.data["stage"] == "storage"
        assert (
            turn.events[-1].type is EventType.TURN_END and turn.events[-1].data["stored"] is False
        )
        assert error.data["code"] == "storage.full"
    assert store.read_call(earlier.call_id, "tester", "check").turns[0].transcript == "kept"
