"""In-band DTMF detection (ITU-T Q.24 tones): the fallback for a peer that sends key presses
as audio instead of RFC 4733 events.

Each 20 ms frame (160 samples at 8 kHz) is measured at the eight DTMF frequencies (the DFT
bins a Goertzel filter computes). A frame holds a key when one row and one column tone stand
well above the others and carry most of the frame's energy, with no more than 8 dB between
them (twist); a key counts once it lasts two frames, and again only after a frame without it.
"""

from __future__ import annotations

import functools
import math

import numpy as np

RATE_HZ = 8_000
ROWS = (697.0, 770.0, 852.0, 941.0)
COLUMNS = (1209.0, 1336.0, 1477.0, 1633.0)
KEYS = ("123A", "456B", "789C", "*0#D")
MIN_POWER = 1e5  # per-sample power of a tone (about -40 dBm0)
MIN_SHARE = 0.6  # of the frame's energy in the two tones
MAX_TWIST_DB = 8.0
MIN_CONTRAST = 6.0  # the strongest tone of a group against the second


@functools.lru_cache(maxsize=8)
def _basis(frequencies: tuple[float, ...], length: int) -> np.ndarray:
    basis: np.ndarray = np.exp(-2j * np.pi * np.outer(frequencies, np.arange(length)) / RATE_HZ)
    return basis


def _powers(samples: np.ndarray, frequencies: tuple[float, ...]) -> list[float]:
    """Power of each frequency in ``samples`` (normalized per sample): the DFT bin that the
    Goertzel filter computes, for all frequencies in one product (no per-sample loop on the
    event loop)."""
    spectrum = _basis(frequencies, len(samples)) @ samples
    return [float(p) for p in np.abs(spectrum) ** 2 / len(samples)]


class InbandDetector:
    def __init__(self) -> None:
        self._candidate = ""
        self._frames = 0
        self._reported = False

    def key_in(self, samples: np.ndarray) -> str:
        """The key the frame holds, or ""."""
        x = samples.astype(np.float64)
        energy = float(np.dot(x, x)) / max(1, len(x))
        if energy <= 0:
            return ""
        rows = _powers(x, ROWS)
        columns = _powers(x, COLUMNS)
        row, column = int(np.argmax(rows)), int(np.argmax(columns))
        r, c = rows[row], columns[column]
        if min(r, c) < MIN_POWER or (r + c) < MIN_SHARE * energy * len(x) / 2:
            return ""
        if abs(10 * math.log10(r / c)) > MAX_TWIST_DB:
            return ""
        second_row = sorted(rows)[-2]
        second_column = sorted(columns)[-2]
        if r < MIN_CONTRAST * second_row or c < MIN_CONTRAST * second_column:
            return ""
        return KEYS[row][column]

    def feed(self, samples: np.ndarray) -> str:
        """A key, once, when it has lasted two frames; else ""."""
        key = self.key_in(samples)
        if key != self._candidate:
            self._candidate, self._frames, self._reported = key, 1 if key else 0, False
            return ""
        if not key:
            return ""
        self._frames += 1
        if self._frames >= 2 and not self._reported:
            self._reported = True
            return key
        return ""
