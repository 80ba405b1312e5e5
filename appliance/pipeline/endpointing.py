"""Endpointing: a pure state machine over (frame, is_speech) pairs; no I/O, no clock.

Speech starts when ``start_ratio`` of the frames in the last ``start_window_ms`` are voiced;
the utterance then includes ``preroll_ms`` of audio before that point, so first syllables are
kept. It ends after ``silence_timeout_ms`` of unvoiced frames (or at ``max_utterance_s``).
After a shorter pause of ``speculate_after_ms`` the machine says SPECULATE once, so the caller
can start transcribing (and generating) ahead of the endpoint; RESUMED says that pause was not
the end and the speculative work is stale.
"""

from __future__ import annotations

import enum
from collections import deque

from appliance.config.settings import EndpointingSettings


class Decision(enum.Enum):
    NONE = "none"
    SPEECH_START = "speech_start"
    SPECULATE = "speculate"
    RESUMED = "resumed"
    SPEECH_END = "speech_end"


class Endpointer:
    """Feed every frame to :meth:`process`; read :attr:`utterance` after SPEECH_END."""

    def __init__(self, settings: EndpointingSettings, frame_ms: int = 20) -> None:
        def frames(ms: float) -> int:
            return max(1, round(ms / frame_ms))

        self._window = frames(settings.start_window_ms)
        self._needed = max(1, round(self._window * settings.start_ratio))
        self._preroll = frames(settings.preroll_ms) if settings.preroll_ms else 0
        self._recent: deque[tuple[bytes, bool]] = deque(maxlen=max(self._window, self._preroll))
        self._end_after = frames(settings.silence_timeout_ms)
        self._speculate_after = (
            frames(settings.speculate_after_ms) if settings.speculate_after_ms else 0
        )
        self._max_frames = frames(settings.max_utterance_s * 1000)
        self.in_speech = False
        self._frames: list[bytes] = []
        self._silent_run = 0
        self._last_voiced_index = 0
        self._speculated = False
        self.utterance = b""
        """The audio of the last finished utterance: pre-roll and speech, to its last voiced
        frame (the same audio a speculation at the pause transcribed)."""

    def process(self, frame: bytes, is_speech: bool) -> Decision:
        if not self.in_speech:
            self._recent.append((frame, is_speech))
            window = list(self._recent)[-self._window :]
            if sum(voiced for _, voiced in window) < self._needed:
                return Decision.NONE
            # The start window itself always belongs to the utterance, pre-roll or not.
            kept = list(self._recent)[-max(self._preroll, self._window) :]
            self._frames = [f for f, _ in kept]
            self._recent.clear()
            self.in_speech = True
            self._silent_run = 0
            self._speculated = False
            self._last_voiced_index = len(self._frames)
            return Decision.SPEECH_START

        self._frames.append(frame)
        if is_speech:
            self._last_voiced_index = len(self._frames)
            resumed = self._speculated
            self._silent_run = 0
            self._speculated = False
            if len(self._frames) >= self._max_frames:
                return self._finish()
            return Decision.RESUMED if resumed else Decision.NONE
        self._silent_run += 1
        if self._silent_run >= self._end_after or len(self._frames) >= self._max_frames:
            return self._finish()
        if self._speculate_after and self._silent_run == self._speculate_after:
            self._speculated = True
            return Decision.SPECULATE
        return Decision.NONE

    def flush(self) -> Decision:
        """End of stream: finish an utterance in progress."""
        return self._finish() if self.in_speech else Decision.NONE

    def pending_audio(self) -> bytes:
        """The utterance so far, up to its last voiced frame (what a speculation transcribes)."""
        return b"".join(self._frames[: self._last_voiced_index])

    def _finish(self) -> Decision:
        self.utterance = self.pending_audio()
        self._frames = []
        self.in_speech = False
        self._silent_run = 0
        self._speculated = False
        return Decision.SPEECH_END
