"""Speech synthesis with Piper (ONNX Runtime, CPU), one chunk per sentence."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from appliance.core.audio import AudioChunk
from appliance.core.errors import ModelError, TtsError
from appliance.core.models import ModelSpec, require_verified


class PiperSynthesizer:
    def __init__(self, spec: ModelSpec, *, length_scale: float = 1.0, threads: int = 1) -> None:
        require_verified(spec)
        import onnxruntime
        from piper import PiperVoice, SynthesisConfig
        from piper.config import PiperConfig

        onnxruntime.disable_telemetry_events()  # nothing leaves the premises

        config_path = Path(f"{spec.path}.json")
        try:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                str(spec.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
            self._voice = PiperVoice(session=session, config=config)
        except Exception as exc:
            raise ModelError("model.load", f"cannot load Piper voice {spec.path}: {exc}") from exc
        self._config = SynthesisConfig(length_scale=length_scale)
        self.native_rate_hz = int(config.sample_rate)
        self._lock = threading.Lock()
        self.spec = spec

    def warm_up(self) -> None:
        for _ in self.synthesize("Hello.", self.native_rate_hz):
            pass

    def synthesize(self, text: str, sample_rate_hz: int, pace: float = 1.0) -> Iterator[AudioChunk]:
        import soxr
        from piper import SynthesisConfig

        if not text.strip():
            return
        config = self._config
        if pace != 1.0:
            config = SynthesisConfig(length_scale=(config.length_scale or 1.0) * pace)
        try:
            with self._lock:
                chunks = list(self._voice.synthesize(text, syn_config=config))
        except Exception as exc:
            raise TtsError("tts.failed", f"synthesis failed: {type(exc).__name__}") from exc
        for chunk in chunks:
            audio = chunk.audio_int16_array
            if sample_rate_hz != self.native_rate_hz:
                audio = soxr.resample(audio, self.native_rate_hz, sample_rate_hz)
            pcm = np.asarray(audio, dtype=np.int16).tobytes()
            yield AudioChunk(pcm=pcm, sample_rate_hz=sample_rate_hz)
