"""Microphone and speaker ends without a sound card: a clear error, before any model loads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.audio_io.device import MicrophoneSource, SpeakerSink
from appliance.core.errors import AudioError
from tests.real.conftest import run_cli


def _has_devices() -> bool:
    try:
        import sounddevice

        return bool(sounddevice.query_devices())
    except Exception:
        return False


pytestmark = pytest.mark.skipif(_has_devices(), reason="this machine has sound devices")


def test_no_microphone_is_a_clear_error() -> None:
    async def open_it() -> None:
        MicrophoneSource().open()

    with pytest.raises(AudioError) as caught:
        asyncio.run(open_it())
    assert caught.value.code == "audio.no_device"
    assert "input device" in caught.value.message


def test_no_speaker_is_a_clear_error() -> None:
    with pytest.raises(AudioError, match=r"audio\.no_device"):
        asyncio.run(SpeakerSink(22_050).write_frame(bytes(882)))


def test_listen_says_why_and_exits(tmp_path: Path) -> None:
    result = run_cli("listen", home=tmp_path)
    assert result.returncode == 1
    assert "audio.no_device" in result.stderr and "Traceback" not in result.stderr
