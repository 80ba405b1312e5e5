"""WAV files in and out. Any rate and channel count in (PCM 8/16/24/32-bit or float32);
the pipeline gets 16 kHz mono. Bad files get an AudioError that says what is wrong."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from appliance.core.audio import PIPELINE_SAMPLE_RATE_HZ, frame_bytes
from appliance.core.errors import AudioError

_PCM = 1
_FLOAT = 3
_EXTENSIBLE = 0xFFFE


@dataclass(frozen=True, slots=True)
class WavAudio:
    samples: np.ndarray
    """float32 in [-1, 1], shape (frames, channels)."""
    sample_rate_hz: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz


def read_wav(path: Path) -> WavAudio:
    """Parse a RIFF/WAVE file strictly: the format must be known and the data complete."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AudioError("audio.unreadable", f"{path}: {exc.strerror or exc}") from exc
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise AudioError("audio.not_wav", f"{path} is not a WAV file (no RIFF/WAVE header)")
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(raw):
        chunk_id, size = raw[pos : pos + 4], struct.unpack_from("<I", raw, pos + 4)[0]
        body = raw[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise AudioError("audio.truncated", f"{path}: the fmt chunk is cut short")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioError("audio.not_wav", f"{path}: data chunk before fmt chunk")
            if len(body) < size:
                raise AudioError(
                    "audio.truncated",
                    f"{path} is truncated: header promises {size} bytes of audio, "
                    f"file holds {len(body)}",
                )
            return WavAudio(_decode(path, body, *fmt), fmt[2])
        pos += 8 + size + (size & 1)
    if pos < len(raw) or fmt is not None:
        raise AudioError("audio.truncated", f"{path} is truncated: no complete data chunk")
    raise AudioError("audio.not_wav", f"{path}: no fmt or data chunk")


def _decode(path: Path, body: bytes, tag: int, channels: int, rate: int, bits: int) -> np.ndarray:
    if channels < 1 or not 1_000 <= rate <= 384_000:
        raise AudioError("audio.format", f"{path}: {channels} channels at {rate} Hz is not audio")
    width = bits // 8
    usable = len(body) - len(body) % (width * channels) if width else 0
    data = body[:usable]
    if tag == _PCM and bits == 8:
        samples = (np.frombuffer(data, np.uint8).astype(np.float32) - 128) / 128
    elif tag == _PCM and bits == 16:
        samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768
    elif tag == _PCM and bits == 24:
        b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        samples = (np.where(ints >= 1 << 23, ints - (1 << 24), ints) / float(1 << 23)).astype(
            np.float32
        )
    elif tag == _PCM and bits == 32:
        samples = (np.frombuffer(data, "<i4") / float(1 << 31)).astype(np.float32)
    elif tag == _FLOAT and bits == 32:
        samples = np.clip(np.frombuffer(data, "<f4"), -1, 1).astype(np.float32)
    else:
        raise AudioError("audio.format", f"{path}: unsupported WAV encoding {tag}/{bits}-bit")
    return samples.reshape(-1, channels)


def to_pipeline_pcm(audio: WavAudio) -> bytes:
    """Mix down to mono and resample to the pipeline's 16 kHz PCM16."""
    mono = audio.samples.mean(axis=1).astype(np.float32)
    if audio.sample_rate_hz != PIPELINE_SAMPLE_RATE_HZ:
        mono = soxr.resample(mono, audio.sample_rate_hz, PIPELINE_SAMPLE_RATE_HZ)
    pcm: bytes = (np.clip(mono, -1, 1) * 32767).astype("<i2").tobytes()
    return pcm


def write_wav(path: Path, pcm: bytes, sample_rate_hz: int) -> None:
    """Write mono PCM16 atomically (a temp file renamed into place)."""
    tmp = path.with_name(f".{path.name}.partial")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate_hz)
        out.writeframes(pcm)
    os.replace(tmp, path)


class PcmSource:
    """Frames of 16 kHz PCM16, read in lockstep or paced like live speech (``realtime``)."""

    sample_rate_hz = PIPELINE_SAMPLE_RATE_HZ

    def __init__(self, pcm: bytes, *, frame_ms: int = 20, realtime: bool = False) -> None:
        self.frame_ms = frame_ms
        self.realtime = realtime
        size = frame_bytes(self.sample_rate_hz, frame_ms)
        padded = pcm + bytes(-len(pcm) % size)
        self._frames = [padded[i : i + size] for i in range(0, len(padded), size)]
        self._next = 0
        self._started = 0.0

    @property
    def n_frames(self) -> int:
        return len(self._frames)

    async def read_frame(self) -> bytes | None:
        if self._next >= len(self._frames):
            return None
        if self.realtime:
            if self._next == 0:
                self._started = time.monotonic()
            due = self._started + (self._next + 1) * self.frame_ms / 1000
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        frame = self._frames[self._next]
        self._next += 1
        return frame


class WavSource(PcmSource):
    """A WAV file as a caller: any rate and channels in, 16 kHz mono frames out."""

    def __init__(self, path: Path, *, frame_ms: int = 20, realtime: bool = False) -> None:
        self.audio = read_wav(path)
        super().__init__(to_pipeline_pcm(self.audio), frame_ms=frame_ms, realtime=realtime)


class WavSink:
    """Collects the agent's output timeline (one frame per input frame) into a WAV file."""

    def __init__(self, path: Path, sample_rate_hz: int) -> None:
        self.path = path
        self.sample_rate_hz = sample_rate_hz
        self._pcm = bytearray()

    async def write_frame(self, pcm: bytes) -> None:
        self._pcm.extend(pcm)

    async def close(self) -> None:
        try:
            write_wav(self.path, bytes(self._pcm), self.sample_rate_hz)
        except OSError as exc:
            raise AudioError("audio.write", f"cannot write {self.path}: {exc}") from exc


def espeak(text: str, voice: str = "en-gb", words_per_minute: int = 155) -> bytes:
    """``text`` spoken by eSpeak NG (another speaker than the pipeline's voice; ``voice`` may
    carry a variant, "en-gb+whisper"), as 16 kHz PCM16 mono."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "espeak.wav"
        try:
            subprocess.run(
                ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(path), text],
                check=True,
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise AudioError("audio.espeak", f"eSpeak NG could not speak: {exc}") from exc
        return to_pipeline_pcm(read_wav(path))
