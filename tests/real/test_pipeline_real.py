"""Whole calls through the real models: turns, barge-in, and the reply's audio."""

from __future__ import annotations

import asyncio
import difflib
import re

import numpy as np
import soxr

from appliance.audio_io.memory import MemorySink, MemorySource
from appliance.core.events import EventType
from appliance.pipeline.session import TurnResult
from appliance.service import VoiceService
from tests.conftest import FIXED_TURN_ORDER
from tests.conftest import GUARDED_TURN_ORDER as ORDER
from tests.real.conftest import silence, speak, wer

Q1 = "What time do you open on Saturday?"  # an approved answer: no model
# The model, from a partial FAQ match well inside the band (a document's answer would be
# quoted, without the model; a score near `related` could fall to the honest unknown).
Q2 = "Is there a play area for the kids at Riverside?"


def call(
    service: VoiceService, pcm: bytes, **overrides: object
) -> tuple[list[TurnResult], MemorySink]:
    sink = MemorySink(service.config.output_sample_rate_hz)
    session = service.session(MemorySource(pcm), sink, **overrides)
    return asyncio.run(asyncio.wait_for(session.run(), timeout=240)), sink


def test_a_wav_with_two_questions_yields_two_turns(service: VoiceService) -> None:
    pcm = silence(0.5) + speak(service, Q1) + silence(20) + speak(service, Q2) + silence(1.5)
    turns, sink = call(service, pcm, max_reply_tokens=40)
    assert len(turns) == 2
    for turn, question, order in zip(turns, (Q1, Q2), (FIXED_TURN_ORDER, ORDER), strict=True):
        # GUARD_OUTPUT appears when layer 3 stopped a sentence of the (stochastic) model.
        assert [e.type for e in turn.events if e.type is not EventType.GUARD_OUTPUT] == order
        assert wer(question, turn.transcript) <= 0.25, turn.transcript
        assert turn.reply.strip()
        assert turn.voice_to_voice_ms is not None
    peak = np.abs(np.frombuffer(sink.pcm, dtype="<i2")).max()
    assert peak > 3000  # the reply is audible speech, not a whisper of noise
    # What the agent said is what a listener hears: transcribe the first reply's audio back.
    start, end = turns[0].first(EventType.FIRST_AUDIO), turns[0].first(EventType.TURN_END)
    assert start is not None and end is not None
    assert start.frame_index is not None and end.frame_index is not None
    heard = np.frombuffer(b"".join(sink.frames[start.frame_index : end.frame_index + 1]), "<i2")
    at_16k = soxr.resample(heard, service.config.output_sample_rate_hz, 16_000)
    back = service.engines.stt.transcribe(at_16k.astype("<i2").tobytes(), 16_000)

    # Letters and digits only: "12:30pm" is heard back as "12.30 p.m.".
    def squash(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())

    similarity = difflib.SequenceMatcher(None, squash(turns[0].reply), squash(back.text)).ratio()
    assert similarity >= 0.7, (turns[0].reply, back.text)


def test_barge_in_stops_the_real_reply_within_one_frame(service: VoiceService) -> None:
    """The caller asks, the agent answers, the caller talks over it: playback stops at once."""
    pcm = silence(0.5) + speak(service, Q1) + silence(1.5) + speak(service, Q2) + silence(1.5)
    turns, sink = call(service, pcm, max_reply_tokens=60)
    first, second = turns
    assert first.interrupted, [e.type for e in first.events]
    barge = first.first(EventType.BARGE_IN)
    start = second.first(EventType.SPEECH_START)
    resumed = second.first(EventType.FIRST_AUDIO)
    assert barge is not None and start is not None and resumed is not None
    assert barge.frame_index is not None and resumed.frame_index is not None
    assert barge.frame_index == start.frame_index
    voiced = set(sink.voiced_frame_indices())
    assert barge.frame_index - 1 in voiced  # the agent was speaking...
    # ...and from the frame the caller's speech was detected, not one more frame of it.
    assert not voiced & set(range(barge.frame_index, resumed.frame_index))
    assert wer(Q2, second.transcript) <= 0.25


def test_speech_is_transcribed_from_its_first_syllable(service: VoiceService) -> None:
    """Pre-roll: audio before the VAD's decision is part of the utterance."""
    sentence = "Balance inquiry for my savings account please."
    turns, _ = call(
        service, silence(0.4) + speak(service, sentence) + silence(1.5), max_reply_tokens=8
    )
    assert turns[0].transcript.lower().startswith("balance"), turns[0].transcript
    assert len(turns[0].transcript) > 10
