"""An in-memory source and sink: exact, inspectable media timelines for tests."""

from __future__ import annotations

from appliance.audio_io.wav import PcmSource
from appliance.core.audio import is_silent


class MemorySource(PcmSource):
    """Caller audio from bytes (16 kHz PCM16 mono), read in lockstep unless ``realtime``."""


class MemorySink:
    """Keeps every output frame, so tests can count frames (barge-in, silence, audio start)."""

    def __init__(self, sample_rate_hz: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.frames: list[bytes] = []
        self.closed = False

    async def write_frame(self, pcm: bytes) -> None:
        self.frames.append(pcm)

    async def close(self) -> None:
        self.closed = True

    @property
    def pcm(self) -> bytes:
        return b"".join(self.frames)

    def voiced_frame_indices(self) -> list[int]:
        return [i for i, frame in enumerate(self.frames) if not is_silent(frame)]
