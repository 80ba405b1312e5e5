"""Audio messages. PCM is signed 16-bit little-endian mono unless a field says otherwise."""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_WIDTH_BYTES = 2
PIPELINE_SAMPLE_RATE_HZ = 16_000
"""The rate at which sources deliver caller audio to the pipeline (what VAD and STT take)."""


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A piece of mono PCM16 audio at ``sample_rate_hz``."""

    pcm: bytes
    sample_rate_hz: int

    @property
    def n_samples(self) -> int:
        return len(self.pcm) // SAMPLE_WIDTH_BYTES

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate_hz


def frame_bytes(sample_rate_hz: int, frame_ms: int) -> int:
    """Bytes in one mono PCM16 frame of ``frame_ms`` milliseconds."""
    return sample_rate_hz * frame_ms // 1000 * SAMPLE_WIDTH_BYTES


def is_silent(pcm: bytes) -> bool:
    """True when every sample is zero (what a sink receives while the agent is quiet)."""
    return not any(pcm)
