"""The streaming turn on fake engines: event order, turns, barge-in, speculation, errors."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence

from appliance.audio_io.memory import MemorySink, MemorySource
from appliance.core.audio import AudioChunk
from appliance.core.events import EventType
from appliance.core.ports import ChatMessage, Transcript
from appliance.pipeline.session import CallSession, Engines
from appliance.testing.fakes import (
    EnergyVad,
    FakeTranscriber,
    ScriptedChatModel,
    ToneSynthesizer,
    quiet,
    tone,
)
from tests.conftest import TURN_ORDER as ORDER
from tests.integration.helpers import make_config, run_call

LONG_REPLY = (
    "Thanks for calling, I can help with that. " + "Here is a long answer that goes on. " * 8
)


class SlowChatModel(ScriptedChatModel):
    """Streams like a real model: one word every ``delay_s``."""

    def __init__(self, replies: Sequence[str], delay_s: float = 0.03) -> None:
        super().__init__(replies)
        self.delay_s = delay_s

    def stream_chat(self, messages: Sequence[ChatMessage], max_tokens: int) -> Iterator[str]:
        for piece in super().stream_chat(messages, max_tokens):
            time.sleep(self.delay_s)
            yield piece


def test_one_turn_emits_its_events_in_order() -> None:
    call = run_call(
        quiet(0.3) + tone(1.0) + quiet(1.0),
        replies=["Hello there, we open at nine on Saturday. See you then."],
    )
    assert len(call.turns) == 1
    turn = call.turns[0]
    assert call.types(0) == ORDER
    assert turn.transcript == "What time do you open?"
    assert turn.reply == "Hello there, we open at nine on Saturday. See you then."
    times = [e.t_ms for e in turn.events]
    assert times[-1] >= times[0]
    assert turn.voice_to_voice_ms is not None and turn.voice_to_voice_ms >= 0
    # Sentences were synthesized one by one, the first as soon as it was complete.
    assert call.tts.spoken == ["Hello there, we open at nine on Saturday.", "See you then."]
    # The reply is heard after the caller's speech ended, and only then.
    end = turn.first(EventType.SPEECH_END)
    audio = turn.first(EventType.FIRST_AUDIO)
    assert end is not None and audio is not None
    assert audio.frame_index is not None and end.frame_index is not None
    assert call.sink.voiced_frame_indices()[0] == audio.frame_index >= end.frame_index
    # Every input frame produced one output frame (plus the drain after the input ended).
    assert call.session.frames_written == len(call.sink.frames) >= 115
    assert call.events == turn.events


def test_two_questions_separated_by_silence_are_two_turns_with_history() -> None:
    call = run_call(
        tone(0.8) + quiet(4.0) + tone(0.8) + quiet(4.0),
        texts=["When do you open?", "And on Sunday?"],
        replies=["At nine.", "Closed on Sunday."],
    )
    assert [t.transcript for t in call.turns] == ["When do you open?", "And on Sunday?"]
    assert [t.reply for t in call.turns] == ["At nine.", "Closed on Sunday."]
    assert not any(t.interrupted for t in call.turns)
    for i in range(2):
        assert call.types(i) == ORDER
    second_prompt = call.llm.prompts[-1]  # type: ignore[attr-defined]
    assert [(m.role, m.content) for m in second_prompt] == [
        ("system", "Be brief."),
        ("user", "When do you open?"),
        ("assistant", "At nine."),
        ("user", "And on Sunday?"),
    ]


def test_barge_in_stops_playback_within_one_frame_and_stops_generation() -> None:
    llm = SlowChatModel([LONG_REPLY, "Sure."])
    call = run_call(
        tone(0.8) + quiet(1.0) + tone(1.0) + quiet(2.0),
        texts=["Tell me everything.", "Stop, just the hours."],
        llm=llm,
    )
    first, second = call.turns
    assert first.interrupted and not second.interrupted
    assert call.types(0)[-2:] == [EventType.BARGE_IN, EventType.TURN_END]
    barge = first.first(EventType.BARGE_IN)
    start = second.first(EventType.SPEECH_START)
    assert barge is not None and start is not None and barge.frame_index is not None
    # Barge-in happens at the very frame at which the caller's speech was detected...
    assert barge.frame_index == start.frame_index
    voiced = set(call.sink.voiced_frame_indices())
    # ...the agent was talking up to the frame before it...
    assert barge.frame_index - 1 in voiced
    # ...and not one frame of the old reply is written from that frame on.
    resumed = second.first(EventType.FIRST_AUDIO)
    assert resumed is not None and resumed.frame_index is not None
    assert not voiced & set(range(barge.frame_index, resumed.frame_index))
    # The generation behind it was stopped, not run to its end.
    assert llm.closed_early == 1
    assert len(first.reply) < len(LONG_REPLY.strip())
    assert call.llm.prompts[-1][1].content == "Tell me everything."  # type: ignore[attr-defined]


def test_half_duplex_ignores_speech_while_the_agent_talks() -> None:
    call = run_call(
        tone(0.8) + quiet(1.0) + tone(1.0) + quiet(2.0),
        replies=["This reply is long enough to still be playing when the caller talks."],
        barge_in=False,
    )
    assert len(call.turns) == 1
    assert not call.turns[0].interrupted
    assert call.types(0) == ORDER


class LengthTranscriber:
    """Says how much audio it was given, so stale and whole utterances differ."""

    def transcribe(self, pcm: bytes, sample_rate_hz: int) -> Transcript:
        seconds = len(pcm) / 2 / sample_rate_hz
        return Transcript(f"{seconds:.2f} seconds", seconds, 0.0)


def test_a_pause_that_is_not_the_end_discards_the_speculative_work() -> None:
    # Speech, a 200 ms pause (past the 100 ms speculation point, short of the 300 ms end), speech.
    call = run_call(tone(0.6) + quiet(0.2) + tone(0.6) + quiet(3.0), stt=LengthTranscriber())
    assert len(call.turns) == 1
    turn = call.turns[0]
    # The whole utterance (both parts and the pause, from the start of speech) was transcribed.
    assert float(turn.transcript.split()[0]) >= 1.4
    transcripts = [e for e in turn.events if e.type is EventType.TRANSCRIPT]
    assert [e.data["text"] for e in transcripts] == [turn.transcript]
    assert call.types(0) == ORDER
    assert [p[-1].content for p in call.llm.prompts][-1] == turn.transcript  # type: ignore[attr-defined]


def test_speculative_work_is_used_when_the_pause_was_the_end() -> None:
    stt = FakeTranscriber(["the question"])
    call = run_call(tone(0.8) + quiet(2.0), stt=stt)
    assert stt.calls == 1
    assert call.types(0) == ORDER


def test_a_failing_stage_speaks_the_fallback_and_the_call_goes_on() -> None:
    stt = FakeTranscriber(["first", "second question"], fail_on=1)
    tts = ToneSynthesizer()
    call = run_call(
        tone(0.8) + quiet(4.0) + tone(0.8) + quiet(3.0),
        stt=stt,
        tts=tts,
        replies=["Fine."],
        speculate_after_ms=0,
    )
    first, second = call.turns
    assert call.types(0) == [
        EventType.SPEECH_START,
        EventType.SPEECH_END,
        EventType.ERROR,
        EventType.FIRST_AUDIO,
        EventType.TURN_END,
    ]
    error = first.first(EventType.ERROR)
    assert error is not None and error.data == {"code": "stt.failed", "stage": "stt"}
    assert first.error_code == "stt.failed"
    assert tts.spoken[0] == "Sorry, please say that again."
    assert second.transcript == "second question" and second.reply == "Fine."


def test_empty_transcript_ends_the_turn_without_a_reply() -> None:
    call = run_call(tone(0.8) + quiet(2.0), texts=[""])
    assert call.types(0) == [
        EventType.SPEECH_START,
        EventType.SPEECH_END,
        EventType.TRANSCRIPT,
        EventType.TURN_END,
    ]
    assert call.llm.prompts == []  # type: ignore[attr-defined]


class BlockingTranscriber:
    """Holds its caller until released: a model busy with another call's audio."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def transcribe(self, pcm: bytes, sample_rate_hz: int) -> Transcript:
        self.entered.set()
        assert self.release.wait(30)
        return Transcript("held question", 1.0, 0.0)


def test_a_call_waiting_for_a_model_never_blocks_another_calls_audio() -> None:
    blocking = BlockingTranscriber()
    engines_a = Engines(EnergyVad(), blocking, ScriptedChatModel(["Yes."]), ToneSynthesizer())
    engines_b = Engines(
        EnergyVad(), FakeTranscriber(["x"]), ScriptedChatModel(["y"]), ToneSynthesizer()
    )
    config = make_config()
    sink_a, sink_b = MemorySink(16_000), MemorySink(16_000)
    call_a = CallSession(engines_a, config, MemorySource(tone(0.8) + quiet(1.0)), sink_a)
    # B is live (realtime): half a second of a caller who says nothing yet.
    call_b = CallSession(engines_b, config, MemorySource(quiet(0.5), realtime=True), sink_b)

    async def both() -> None:
        task_a = asyncio.create_task(call_a.run())
        while not blocking.entered.is_set():
            await asyncio.sleep(0.01)
        await asyncio.wait_for(call_b.run(), timeout=10)
        # B's whole half second of media flowed while A's turn was stuck in the model.
        assert len(sink_b.frames) == 25 and sink_b.closed
        assert not task_a.done()
        blocking.release.set()
        await asyncio.wait_for(task_a, timeout=10)

    asyncio.run(both())
    assert call_a.turns[0].reply == "Yes."


class BrokenSynthesizer(ToneSynthesizer):
    """A voice with a bug: fails with an exception that is not an ApplianceError."""

    def synthesize(self, text: str, sample_rate_hz: int, pace: float = 1.0) -> Iterator[AudioChunk]:
        if text != "Sorry, please say that again.":
            raise KeyError("a bug")
        yield from super().synthesize(text, sample_rate_hz, pace)


def test_an_unexpected_bug_in_a_stage_is_caught_at_the_turn_boundary() -> None:
    call = run_call(tone(0.8) + quiet(2.0), tts=BrokenSynthesizer(), replies=["We open at nine."])
    turn = call.turns[0]
    assert turn.error_code == "pipeline.internal"
    assert EventType.ERROR in call.types(0) and call.types(0)[-1] is EventType.TURN_END
    assert call.tts.spoken == ["Sorry, please say that again."]
