"""Microphone and speaker through sounddevice (PortAudio). Both are realtime ends.

Without a sound card (or without PortAudio) they raise AudioError("audio.no_device") at open,
with the reason, instead of failing later inside a callback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from typing import Any

import numpy as np

from appliance.audio_io.screening import AudioScreen
from appliance.core.audio import PIPELINE_SAMPLE_RATE_HZ, frame_bytes
from appliance.core.errors import AudioError


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # PortAudio's shared library is missing
        raise AudioError("audio.no_device", f"no audio system: {exc}") from exc
    return sounddevice


def _device(name: str) -> str | int | None:
    if not name:
        return None
    return int(name) if name.isdigit() else name


def _check_device(sd: Any, device: str | int | None, kind: str, rate_hz: int | None = None) -> None:
    try:
        check = sd.check_input_settings if kind == "input" else sd.check_output_settings
        check(device=device, samplerate=rate_hz)
    except Exception as exc:
        raise AudioError(
            "audio.no_device", f"no usable {kind} device ({device or 'default'}): {exc}"
        ) from exc


class MicrophoneSource:
    """The default (or named) microphone, delivered at 16 kHz mono, one frame per
    ``frame_ms``. Captured at ``capture_rate_hz``: at 48 kHz its sound is screened before it is
    resampled (audio_io/screening.py: the residue of an ultrasonic carrier shows only there)."""

    sample_rate_hz = PIPELINE_SAMPLE_RATE_HZ
    realtime = True

    def __init__(
        self, device: str = "", frame_ms: int = 20, capture_rate_hz: int = PIPELINE_SAMPLE_RATE_HZ
    ) -> None:
        self.frame_ms = frame_ms
        self.capture_rate_hz = capture_rate_hz
        self._device = _device(device)
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=500)
        self._stream: Any = None
        self._closed = False
        self._screen = AudioScreen(capture_rate_hz, line=False)  # the residue alone
        self._screen_lock = threading.Lock()
        self._resampled = bytearray()
        self._resampler: Any = None

    def audio_flags(self) -> tuple[str, ...]:
        with self._screen_lock:
            return tuple(str(flag) for flag in self._screen.flags)

    def reset_audio_flags(self) -> None:
        with self._screen_lock:
            self._screen.reset()

    def _frames(self, block: bytes) -> list[bytes]:
        """A captured block, screened, as whole 16 kHz frames (the rest waits for the next)."""
        with self._screen_lock:
            self._screen.feed(block)
        if self.capture_rate_hz == PIPELINE_SAMPLE_RATE_HZ:
            return [block]
        if self._resampler is None:
            import soxr

            self._resampler = soxr.ResampleStream(
                self.capture_rate_hz, PIPELINE_SAMPLE_RATE_HZ, 1, dtype="int16"
            )
        samples = np.frombuffer(block, dtype="<i2")
        self._resampled += self._resampler.resample_chunk(samples).astype("<i2").tobytes()
        size = frame_bytes(PIPELINE_SAMPLE_RATE_HZ, self.frame_ms)
        frames = []
        while len(self._resampled) >= size:
            frames.append(bytes(self._resampled[:size]))
            del self._resampled[:size]
        return frames

    def check(self) -> None:
        """Raise AudioError now if there is no usable microphone at the capture rate (no event
        loop needed)."""
        _check_device(_sounddevice(), self._device, "input", self.capture_rate_hz)

    def open(self) -> None:
        sd = _sounddevice()
        _check_device(sd, self._device, "input", self.capture_rate_hz)
        loop = asyncio.get_running_loop()

        def callback(data: Any, frames: int, when: Any, status: Any) -> None:
            for frame in self._frames(bytes(data)):
                if not self._queue.full() and not self._closed:
                    with contextlib.suppress(RuntimeError):  # the loop closed under us
                        loop.call_soon_threadsafe(self._queue.put_nowait, frame)

        try:
            self._stream = sd.RawInputStream(
                samplerate=self.capture_rate_hz,
                channels=1,
                dtype="int16",
                blocksize=frame_bytes(self.capture_rate_hz, self.frame_ms) // 2,
                device=self._device,
                callback=callback,
            )
            self._stream.start()
        except Exception as exc:
            raise AudioError("audio.no_device", f"cannot open the microphone: {exc}") from exc

    async def read_frame(self) -> bytes | None:
        if self._stream is None:
            self.open()
        if self._closed:
            return None
        return await self._queue.get()

    def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


class SpeakerSink:
    """The default (or named) speaker; frames are queued and played by PortAudio's thread."""

    def __init__(self, sample_rate_hz: int, device: str = "", frame_ms: int = 20) -> None:
        self.sample_rate_hz = sample_rate_hz
        self._device = _device(device)
        self._frame = frame_bytes(sample_rate_hz, frame_ms)
        self._frames: collections.deque[bytes] = collections.deque(maxlen=250)
        self._lock = threading.Lock()
        self._stream: Any = None

    def check(self) -> None:
        """Raise AudioError now if there is no usable speaker."""
        _check_device(_sounddevice(), self._device, "output")

    def open(self) -> None:
        sd = _sounddevice()
        _check_device(sd, self._device, "output")

        def callback(out: Any, frames: int, when: Any, status: Any) -> None:
            with self._lock:
                frame = self._frames.popleft() if self._frames else bytes(len(out))
            out[:] = frame.ljust(len(out), b"\0")[: len(out)]

        try:
            self._stream = sd.RawOutputStream(
                samplerate=self.sample_rate_hz,
                channels=1,
                dtype="int16",
                blocksize=self._frame // 2,
                device=self._device,
                callback=callback,
            )
            self._stream.start()
        except Exception as exc:
            raise AudioError("audio.no_device", f"cannot open the speaker: {exc}") from exc

    async def write_frame(self, pcm: bytes) -> None:
        if self._stream is None:
            self.open()
        with self._lock:
            self._frames.append(pcm)

    async def close(self) -> None:
        if self._stream is not None:
            for _ in range(len(self._frames) + 25):  # let what is queued play out, then stop
                if not self._frames:
                    break
                await asyncio.sleep(self._frame / 2 / self.sample_rate_hz)
            self._stream.stop()
            self._stream.close()
            self._stream = None
