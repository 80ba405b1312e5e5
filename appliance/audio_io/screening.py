"""What the sound itself says about an utterance, before anything is recognized in it.

Some attacks make speech recognition hear words no person said. An inaudible ("dolphin")
attack amplitude-modulates a command onto an ultrasonic carrier; a microphone's nonlinearity
(its square-law term) demodulates it into the audible band, where Whisper hears the command,
and what is left of the carrier stays above the band any speech uses. Sampled at 48 kHz, before
the appliance resamples to 16 kHz, that residue shows as energy above 19 kHz: ``ultrasonic``.
On a telephone line (8 kHz, nothing above 4 kHz can arrive, so the inaudible attack does not
apply there) a doctored signal shows as hard clipping (``clipping``: a signal driven into the
rails to mask or distort words) and as a pure tone held far longer than any key press
(``tone_burst``; a DTMF key is two tones, and brief).

Pure functions over int16 samples, and ``AudioScreen``, which accumulates one utterance's
findings frame by frame as they arrive.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from appliance.core.ports import AudioSource

ULTRASONIC_FROM_HZ = 19_000.0
SPEECH_BAND_HZ = (100.0, 8_000.0)
ULTRASONIC_SHARE = 0.02
"""Energy above 19 kHz, against the speech band's, from which an utterance is flagged (speech
at 48 kHz: under 0.002; an inaudible attack's residue: well above 0.1)."""
CLIP_LEVEL = 32_000
CLIPPED_SHARE = 0.01
TONE_SHARE = 0.9
"""A frame is a tone when one frequency (within two FFT bins) holds this share of its energy;
a burst is such frames at one frequency, in a row (a held vowel drifts, and has harmonics)."""
TONE_SECONDS = 0.5
TONE_MIN_RMS = 300.0
FRAME_S = 0.02
ULTRASONIC_FRAMES = 3
"""Frame by frame (``AudioScreen``): this many loud frames with the residue flag the utterance."""


class AudioFlag(enum.StrEnum):
    ULTRASONIC = "audio.ultrasonic"
    CLIPPING = "audio.clipping"
    TONE_BURST = "audio.tone_burst"


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def ultrasonic_share(pcm: bytes, rate_hz: int) -> float:
    """Energy above 19 kHz against the energy of the speech band (0 below 40 kHz sampling)."""
    if rate_hz < 2 * ULTRASONIC_FROM_HZ + 2_000:
        return 0.0
    samples = _samples(pcm)
    if samples.size < 256:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size))) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1.0 / rate_hz)
    speech = spectrum[(freqs >= SPEECH_BAND_HZ[0]) & (freqs <= SPEECH_BAND_HZ[1])].sum()
    high = spectrum[freqs >= ULTRASONIC_FROM_HZ].sum()
    return float(high / speech) if speech > 0 else (1.0 if high > 0 else 0.0)


def clipped_share(pcm: bytes) -> float:
    """The share of samples held at the rails (three or more in a row at full scale)."""
    samples = _samples(pcm)
    if samples.size < 3:
        return 0.0
    at_rail = np.abs(samples) >= CLIP_LEVEL
    held = at_rail[:-2] & at_rail[1:-1] & at_rail[2:]
    return float(held.sum() / samples.size)


def tone_seconds(pcm: bytes, rate_hz: int) -> float:
    """The longest run of frames that are one pure tone, in seconds."""
    return _fed(pcm, rate_hz, line=True).tone_longest_s


def _fed(pcm: bytes, rate_hz: int, *, line: bool) -> AudioScreen:
    """An ``AudioScreen`` fed ``pcm`` as 20 ms frames, as a source feeds it."""
    screen_ = AudioScreen(rate_hz, line=line)
    size = int(rate_hz * FRAME_S) * 2
    for start in range(0, len(pcm) - size + 1, size):
        screen_.feed(pcm[start : start + size])
    return screen_


@dataclass(frozen=True)
class Findings:
    ultrasonic_share: float
    clipped_share: float
    tone_s: float

    @property
    def flags(self) -> tuple[AudioFlag, ...]:
        found = []
        if self.ultrasonic_share >= ULTRASONIC_SHARE:
            found.append(AudioFlag.ULTRASONIC)
        if self.clipped_share >= CLIPPED_SHARE:
            found.append(AudioFlag.CLIPPING)
        if self.tone_s >= TONE_SECONDS:
            found.append(AudioFlag.TONE_BURST)
        return tuple(found)


def screened_flags(pcm: bytes, rate_hz: int, *, line: bool = True) -> tuple[AudioFlag, ...]:
    """The flags a source's ``AudioScreen`` raises over ``pcm`` fed as 20 ms frames (what a
    call's screening would find in this utterance)."""
    return _fed(pcm, rate_hz, line=line).flags


def screen(pcm: bytes, rate_hz: int) -> Findings:
    """An utterance's findings (whole), at the rate it was captured (before any resampling)."""
    return Findings(
        round(ultrasonic_share(pcm, rate_hz), 4),
        round(clipped_share(pcm), 4),
        round(tone_seconds(pcm, rate_hz), 3),
    )


class AudioScreen:
    """One utterance's flags, kept frame by frame as the audio arrives at its capture rate (a
    source feeds it before resampling; ``reset`` once each utterance is answered). ``line``:
    the marks of a doctored line too (clipping, a held tone); a microphone in a room, where a
    kettle whistles and a caller may shout, looks for the ultrasonic residue alone."""

    def __init__(self, rate_hz: int, *, line: bool = True) -> None:
        self.rate_hz = rate_hz
        self.line = line
        self.reset()

    def reset(self) -> None:
        self._ultrasonic_frames = 0
        self._clipped = 0.0
        self._samples = 0
        self._tone_s = 0.0
        self.tone_longest_s = 0.0
        self._last_peak = -10

    def feed(self, pcm: bytes) -> None:
        samples = _samples(pcm)
        if samples.size < 32:
            return
        loud = float(np.sqrt(np.mean(samples**2))) >= TONE_MIN_RMS
        if loud:  # a share of the loud frames: the quiet between turns does not dilute it
            self._samples += samples.size
            self._clipped += clipped_share(pcm) * samples.size
        spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size))) ** 2
        freqs = np.fft.rfftfreq(samples.size, 1.0 / self.rate_hz)
        band = (freqs >= SPEECH_BAND_HZ[0]) & (freqs <= SPEECH_BAND_HZ[1])
        # words in the frame: the speech band itself is loud (ultrasonic energy alone, a key
        # jingle's or a sensor's, is not a command someone demodulated)
        voiced = float(np.sqrt(2 * spectrum[band].sum() / samples.size**2 * 2.67)) >= TONE_MIN_RMS
        if voiced and ultrasonic_share(pcm, self.rate_hz) >= ULTRASONIC_SHARE:
            self._ultrasonic_frames += 1
        peak = int(spectrum.argmax())
        share = spectrum[max(0, peak - 2) : peak + 3].sum() / max(spectrum.sum(), 1e-9)
        seconds = samples.size / self.rate_hz
        if not loud or share < TONE_SHARE:
            self._tone_s = 0.0
        else:  # the same frequency as the frame before: the tone goes on
            self._tone_s = self._tone_s + seconds if abs(peak - self._last_peak) <= 1 else seconds
        self._last_peak = peak
        self.tone_longest_s = max(self.tone_longest_s, self._tone_s)

    @property
    def flags(self) -> tuple[AudioFlag, ...]:
        found = []
        if self._ultrasonic_frames >= ULTRASONIC_FRAMES:
            found.append(AudioFlag.ULTRASONIC)
        if self.line and self._samples and self._clipped / self._samples >= CLIPPED_SHARE:
            found.append(AudioFlag.CLIPPING)
        if self.line and self.tone_longest_s >= TONE_SECONDS - 1e-9:
            found.append(AudioFlag.TONE_BURST)
        return tuple(found)


class ScreenedSource:
    """Any AudioSource with its frames screened as they are read (the telephone line: its
    16 kHz frames carry the 8 kHz line's clipping and tones unchanged)."""

    def __init__(self, source: AudioSource) -> None:
        self.source = source
        self.sample_rate_hz = source.sample_rate_hz
        self.frame_ms = source.frame_ms
        self.realtime = source.realtime
        self._screen = AudioScreen(source.sample_rate_hz)

    async def read_frame(self) -> bytes | None:
        frame = await self.source.read_frame()
        if frame is not None:
            self._screen.feed(frame)
        return frame

    def audio_flags(self) -> tuple[str, ...]:
        return tuple(str(flag) for flag in self._screen.flags)

    def reset_audio_flags(self) -> None:
        self._screen.reset()
