"""WebRTC voice activity detection (``webrtcvad``): 10/20/30 ms frames at 8/16/32/48 kHz."""

from __future__ import annotations

import webrtcvad

from appliance.core.errors import VadError


class WebRtcVad:
    """Stateless per frame and cheap (microseconds), so one instance may serve every call."""

    def __init__(self, aggressiveness: int = 2) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: bytes, sample_rate_hz: int) -> bool:
        try:
            return bool(self._vad.is_speech(frame, sample_rate_hz))
        except Exception as exc:  # webrtcvad raises a bare Error for bad frame sizes
            raise VadError(
                "vad.frame", f"bad VAD frame: {len(frame)} bytes at {sample_rate_hz} Hz"
            ) from exc
