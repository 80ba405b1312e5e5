"""Speech-to-text with faster-whisper (CTranslate2, int8 on CPU)."""

from __future__ import annotations

import threading
import time

import numpy as np

from appliance.core.errors import ModelError, SttError
from appliance.core.models import ModelSpec, require_verified
from appliance.core.ports import Transcript

WHISPER_RATE_HZ = 16_000


class WhisperTranscriber:
    def __init__(
        self,
        spec: ModelSpec,
        *,
        language: str = "en",
        beam_size: int = 1,
        compute_type: str = "int8",
        threads: int = 2,
    ) -> None:
        require_verified(spec)
        from faster_whisper import WhisperModel

        try:
            self._model = WhisperModel(
                str(spec.path), device="cpu", compute_type=compute_type, cpu_threads=threads
            )
        except Exception as exc:
            raise ModelError("model.load", f"cannot load Whisper model {spec.path}: {exc}") from exc
        self._language = language or None
        self._beam_size = beam_size
        self.hint = ""
        """Words to expect (Whisper's initial prompt); set from the knowledge base at load."""
        self._lock = threading.Lock()
        self.spec = spec

    def warm_up(self) -> None:
        """One throwaway pass, so the first caller does not pay for allocations."""
        self.transcribe(bytes(WHISPER_RATE_HZ * 2), WHISPER_RATE_HZ)

    def transcribe(self, pcm: bytes, sample_rate_hz: int) -> Transcript:
        if sample_rate_hz != WHISPER_RATE_HZ:
            raise SttError("stt.rate", f"expected {WHISPER_RATE_HZ} Hz audio, got {sample_rate_hz}")
        audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        started = time.perf_counter()
        try:
            with self._lock:
                segments, info = self._model.transcribe(
                    audio,
                    language=self._language,
                    beam_size=self._beam_size,
                    vad_filter=False,
                    without_timestamps=True,
                    condition_on_previous_text=False,
                    initial_prompt=self.hint or None,
                )
                text = " ".join(segment.text.strip() for segment in segments).strip()
        except Exception as exc:
            raise SttError("stt.failed", f"transcription failed: {type(exc).__name__}") from exc
        return Transcript(
            text=text,
            audio_duration_s=len(audio) / WHISPER_RATE_HZ,
            processing_s=time.perf_counter() - started,
            language=str(getattr(info, "language", "") or ""),
        )
