"""Audio messages. PCM is signed 16-bit little-endian mono unless a field says otherwise."""

from __future__ import annotations

import array
import math
import sys
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


def level_dbfs(pcm: bytes) -> float:
    """RMS level of PCM16 audio in dB relative to full scale (-120 for silence)."""
    samples = array.array("h", pcm[: len(pcm) - len(pcm) % 2])
    if sys.byteorder == "big":
        samples.byteswap()
    if not samples:
        return -120.0
    mean_square = math.fsum(x * x for x in samples) / len(samples)
    return max(-120.0, 10 * math.log10(mean_square / 32768.0**2)) if mean_square else -120.0
