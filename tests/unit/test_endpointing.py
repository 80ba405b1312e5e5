from __future__ import annotations

import dataclasses

from appliance.config.settings import EndpointingSettings
from appliance.pipeline.endpointing import Decision, Endpointer

CONFIG = EndpointingSettings(  # in 20 ms frames:
    start_window_ms=100,  # 5 frames
    start_ratio=0.6,  # 3 voiced of the last 5
    preroll_ms=200,  # 10 frames
    silence_timeout_ms=200,  # 10 frames
    speculate_after_ms=100,  # 5 frames
    max_utterance_s=2.0,  # 100 frames
)


def run(
    pattern: str, config: EndpointingSettings = CONFIG
) -> tuple[Endpointer, list[tuple[int, Decision]]]:
    """Feed '#' (voiced) and '.' (unvoiced) frames; each frame's bytes are its index."""
    endpointer = Endpointer(config, frame_ms=20)
    decisions = []
    for i, mark in enumerate(pattern):
        decision = endpointer.process(i.to_bytes(2, "little"), mark == "#")
        if decision is not Decision.NONE:
            decisions.append((i, decision))
    return endpointer, decisions


def frame_ids(audio: bytes) -> list[int]:
    return [int.from_bytes(audio[i : i + 2], "little") for i in range(0, len(audio), 2)]


def test_silence_never_starts_speech() -> None:
    _, decisions = run("." * 200)
    assert decisions == []


def test_isolated_clicks_do_not_start_speech() -> None:
    _, decisions = run("..#....#....#...." * 5)
    assert decisions == []


def test_speech_starts_when_the_window_is_mostly_voiced() -> None:
    _, decisions = run("....###")
    assert decisions == [(6, Decision.SPEECH_START)]


def test_utterance_keeps_the_preroll_and_ends_after_the_silence_timeout() -> None:
    pattern = "." * 20 + "#" * 30 + "." * 10
    endpointer, decisions = run(pattern)
    assert decisions == [
        (22, Decision.SPEECH_START),
        (54, Decision.SPECULATE),
        (59, Decision.SPEECH_END),
    ]
    ids = frame_ids(endpointer.utterance)
    # Pre-roll: 10 frames before the start decision, so the first syllables (frame 20) are kept.
    assert ids[0] == 13
    assert 20 in ids
    # The utterance ends at its last voiced frame (49), exactly what a speculation transcribed.
    assert ids[-1] == 49


def test_a_pause_shorter_than_the_timeout_resumes_the_same_utterance() -> None:
    pattern = "#" * 10 + "." * 6 + "#" * 10 + "." * 10
    endpointer, decisions = run(pattern)
    kinds = [d for _, d in decisions]
    assert kinds == [
        Decision.SPEECH_START,
        Decision.SPECULATE,
        Decision.RESUMED,
        Decision.SPECULATE,
        Decision.SPEECH_END,
    ]
    assert frame_ids(endpointer.utterance)[-1] == 25


def test_pending_audio_is_the_final_utterance_when_no_speech_follows() -> None:
    endpointer = Endpointer(CONFIG, frame_ms=20)
    speculated = b""
    for i, mark in enumerate("#" * 10 + "." * 10):
        if endpointer.process(i.to_bytes(2, "little"), mark == "#") is Decision.SPECULATE:
            speculated = endpointer.pending_audio()
    assert speculated == endpointer.utterance


def test_speculation_can_be_switched_off() -> None:
    config = dataclasses.replace(CONFIG, speculate_after_ms=0)
    _, decisions = run("#" * 10 + "." * 10, config)
    assert [d for _, d in decisions] == [Decision.SPEECH_START, Decision.SPEECH_END]


def test_endless_speech_is_cut_at_the_maximum_length() -> None:
    _, decisions = run("#" * 250)
    ends = [i for i, d in decisions if d is Decision.SPEECH_END]
    assert len(ends) == 2
    assert ends[1] - ends[0] > 90


def test_flush_finishes_speech_at_end_of_stream() -> None:
    endpointer, _ = run("#" * 10)
    assert endpointer.in_speech
    assert endpointer.flush() is Decision.SPEECH_END
    assert frame_ids(endpointer.utterance)[-1] == 9
    assert endpointer.flush() is Decision.NONE


def test_two_utterances_separated_by_silence() -> None:
    pattern = "." * 5 + "#" * 20 + "." * 30 + "#" * 20 + "." * 15
    _, decisions = run(pattern)
    kinds = [d for _, d in decisions if d in (Decision.SPEECH_START, Decision.SPEECH_END)]
    assert kinds == [Decision.SPEECH_START, Decision.SPEECH_END] * 2
