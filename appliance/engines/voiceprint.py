"""Speaker embeddings with Resemblyzer (a GE2E encoder on PyTorch, CPU): an optional extra.

Without the extra (``scripts/setup`` installs it unless ``APPLIANCE_VOICEPRINT=0``),
``voiceprint_available`` says so and the voice factor is reported unavailable: never faked.
The encoder's weights ship inside the ``resemblyzer`` wheel and are pinned in the model manifest
like every other model.
"""

from __future__ import annotations

import importlib.util
import threading
import warnings

import numpy as np

from appliance.core.errors import ModelError
from appliance.core.models import ModelSpec, require_verified

ENCODER_RATE_HZ = 16_000


def voiceprint_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("resemblyzer", "torch"))


class ResemblyzerEmbedder:
    """256-dimensional, L2-normalized embeddings of one utterance each."""

    def __init__(self, spec: ModelSpec) -> None:
        if not voiceprint_available():
            raise ModelError(
                "model.unavailable",
                "voice biometrics need the optional voiceprint extra (see scripts/setup)",
            )
        require_verified(spec)
        with warnings.catch_warnings():  # resemblyzer imports a deprecated scipy namespace
            warnings.simplefilter("ignore", DeprecationWarning)
            from resemblyzer import VoiceEncoder

        # Imported by name: mypy need not analyse PyTorch to check this room.
        importlib.import_module("torch").set_num_threads(1)
        try:
            self._encoder = VoiceEncoder("cpu", verbose=False, weights_fpath=spec.path)
        except Exception as exc:
            raise ModelError("model.load", f"cannot load voice encoder {spec.path}: {exc}") from exc
        self._lock = threading.Lock()
        self.spec = spec

    def embed(self, pcm: bytes, sample_rate_hz: int) -> tuple[float, ...]:
        import soxr
        from resemblyzer import preprocess_wav

        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        if sample_rate_hz != ENCODER_RATE_HZ:
            audio = soxr.resample(audio, sample_rate_hz, ENCODER_RATE_HZ)
        wav = preprocess_wav(audio, source_sr=ENCODER_RATE_HZ)  # level and trim long silences
        if len(wav) < ENCODER_RATE_HZ // 2:
            raise ModelError("voice.too_short", "need at least half a second of speech")
        with self._lock:
            embedding = self._encoder.embed_utterance(wav)
        return tuple(float(x) for x in embedding)
