"""G.711 (ITU-T G.711) u-law and A-law in numpy: ``audioop`` is gone from Python 3.13."""

from __future__ import annotations

import numpy as np

_BIAS = 0x84
_CLIP = 32635


def ulaw_encode(pcm: np.ndarray) -> np.ndarray:
    """int16 samples -> u-law bytes (uint8)."""
    x = np.clip(pcm.astype(np.int32), -_CLIP, _CLIP)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.abs(x) + _BIAS
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    codes: np.ndarray = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)
    return codes


def ulaw_decode(codes: np.ndarray) -> np.ndarray:
    """u-law bytes -> int16 samples."""
    u = ~codes.astype(np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def alaw_encode(pcm: np.ndarray) -> np.ndarray:
    x = pcm.astype(np.int32) >> 3
    sign = np.where(x >= 0, 0x80, 0)
    magnitude = np.minimum(np.where(x < 0, -x - 1, x), 0xFFF)
    exponent = np.where(
        magnitude < 32, 0, np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 4
    )
    mantissa = np.where(exponent == 0, magnitude >> 1, magnitude >> exponent) & 0x0F
    codes: np.ndarray = ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8)
    return codes


def alaw_decode(codes: np.ndarray) -> np.ndarray:
    a = codes.astype(np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1)
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)
