from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import numpy as np
import pytest

from appliance.audio_io.wav import WavSink, WavSource, read_wav
from appliance.core.errors import AudioError
from tests.conftest import write_pcm16_wav


def sine(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.repeat(mono[:, None], channels, axis=1)


def riff(fmt_tag: int, channels: int, rate: int, bits: int, data: bytes) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def frames_of(source: WavSource) -> list[bytes]:
    async def collect() -> list[bytes]:
        out = []
        while (frame := await source.read_frame()) is not None:
            out.append(frame)
        return out

    return asyncio.run(collect())


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (22050, 1), (44100, 2), (48000, 6)])
def test_any_rate_and_channel_count_becomes_16k_mono_frames(
    tmp_path: Path, rate: int, channels: int
) -> None:
    pcm = (sine(rate, 1.0, channels) * 32767).astype("<i2").tobytes()
    path = write_pcm16_wav(tmp_path / "in.wav", pcm, rate, channels)
    source = WavSource(path)
    frames = frames_of(source)
    assert len(frames) == 50  # 1 s in 20 ms frames
    assert all(len(f) == 640 for f in frames)
    samples = np.frombuffer(b"".join(frames), "<i2")
    assert 0.3 < np.abs(samples).max() / 32767 < 0.6  # the tone survives the mix-down


@pytest.mark.parametrize(
    ("tag", "bits", "encode"),
    [
        (1, 8, lambda x: ((x * 127) + 128).astype(np.uint8).tobytes()),
        (1, 24, lambda x: b"".join(int(v * 8388607).to_bytes(3, "little", signed=True) for v in x)),
        (1, 32, lambda x: (x * 2147483647).astype("<i4").tobytes()),
        (3, 32, lambda x: x.astype("<f4").tobytes()),
    ],
)
def test_other_sample_formats_are_read(tmp_path: Path, tag: int, bits: int, encode: object) -> None:
    x = sine(16000, 0.1)[:, 0]
    path = tmp_path / "in.wav"
    path.write_bytes(riff(tag, 1, 16000, bits, encode(x)))  # type: ignore[operator]
    audio = read_wav(path)
    assert audio.sample_rate_hz == 16000
    assert np.allclose(audio.samples[:, 0], x, atol=0.02)  # 8-bit: 1/128 steps


def test_a_text_file_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("hello, this is not a recording")
    with pytest.raises(AudioError) as caught:
        WavSource(path)
    assert caught.value.code == "audio.not_wav"
    assert str(path) in str(caught.value)


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    pcm = (sine(16000, 1.0) * 32767).astype("<i2").tobytes()
    whole = write_pcm16_wav(tmp_path / "whole.wav", pcm, 16000).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(AudioError, match=r"audio\.truncated"):
        WavSource(cut)
    header_only = tmp_path / "header.wav"
    header_only.write_bytes(whole[:30])
    with pytest.raises(AudioError, match=r"audio\.truncated"):
        WavSource(header_only)


def test_a_missing_file_and_an_unknown_encoding_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"audio\.unreadable"):
        WavSource(tmp_path / "absent.wav")
    path = tmp_path / "adpcm.wav"
    path.write_bytes(riff(2, 1, 8000, 4, b"\0" * 100))
    with pytest.raises(AudioError, match=r"audio\.format"):
        WavSource(path)


def test_the_sink_writes_what_it_was_given(tmp_path: Path) -> None:
    sink = WavSink(tmp_path / "out.wav", 22050)
    frame = (sine(22050, 0.02)[:, 0] * 32767).astype("<i2").tobytes()

    async def play() -> None:
        for _ in range(10):
            await sink.write_frame(frame)
        await sink.close()

    asyncio.run(play())
    audio = read_wav(tmp_path / "out.wav")
    assert audio.sample_rate_hz == 22050
    assert len(audio.samples) == 10 * len(frame) // 2
    assert not list(tmp_path.glob(".*partial"))
