"""Run a call on fake engines in lockstep and return what happened."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.audio_io.memory import MemorySink, MemorySource
from appliance.config.settings import EndpointingSettings
from appliance.core.events import EventType, TurnEvent
from appliance.core.ports import ChatModel, Transcriber
from appliance.pipeline.session import CallSession, Engines, PipelineConfig, TurnResult
from appliance.testing.fakes import EnergyVad, FakeTranscriber, ScriptedChatModel, ToneSynthesizer

RATE_OUT = 16_000
ENDPOINTING = EndpointingSettings(
    start_window_ms=100,
    start_ratio=0.6,
    preroll_ms=200,
    silence_timeout_ms=300,
    speculate_after_ms=100,
)


@dataclass
class Call:
    turns: list[TurnResult]
    sink: MemorySink
    events: list[TurnEvent]
    stt: Transcriber
    llm: ChatModel
    tts: ToneSynthesizer
    session: CallSession

    def types(self, turn: int) -> list[EventType]:
        return [e.type for e in self.turns[turn].events]


def make_config(**changes: object) -> PipelineConfig:
    base = PipelineConfig(
        endpointing=ENDPOINTING,
        system_prompt="Be brief.",
        output_sample_rate_hz=RATE_OUT,
        fallback_reply="Sorry, please say that again.",
    )
    endpointing = {k: changes.pop(k) for k in ("speculate_after_ms", "barge_in") if k in changes}
    if endpointing:
        base = dataclasses.replace(
            base,
            endpointing=dataclasses.replace(ENDPOINTING, **endpointing),  # type: ignore[arg-type]
        )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def run_call(
    pcm: bytes,
    texts: Sequence[str] = ("What time do you open?",),
    replies: Sequence[str] = ("We open at nine.",),
    *,
    stt: Transcriber | None = None,
    llm: ChatModel | None = None,
    tts: ToneSynthesizer | None = None,
    **config: object,
) -> Call:
    stt = stt or FakeTranscriber(texts)
    llm = llm or ScriptedChatModel(replies)
    tts = tts or ToneSynthesizer()
    events: list[TurnEvent] = []
    sink = MemorySink(RATE_OUT)
    session = CallSession(
        Engines(EnergyVad(), stt, llm, tts),
        make_config(**config),
        MemorySource(pcm),
        sink,
        on_event=events.append,
    )
    turns = asyncio.run(asyncio.wait_for(session.run(), timeout=60))
    return Call(turns, sink, events, stt, llm, tts, session)
