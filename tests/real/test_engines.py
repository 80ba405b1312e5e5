"""Each engine with its real model: Piper speaks, Whisper hears, VAD finds the speech."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.config.manifest import model_spec
from appliance.config.settings import Settings
from appliance.core.audio import PIPELINE_SAMPLE_RATE_HZ, frame_bytes
from appliance.engines.stt import WhisperTranscriber
from appliance.service import VoiceService
from tests.real.conftest import silence, speak, wer

SENTENCES = [
    "Please transfer me to the billing department.",
    "I would like to book an appointment for next week.",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.mark.parametrize("sentence", SENTENCES)
def test_piper_speaks_and_whisper_base_hears_it(service: VoiceService, sentence: str) -> None:
    audio = speak(service, sentence)
    assert len(audio) / 2 / PIPELINE_SAMPLE_RATE_HZ > 1.0
    transcript = service.engines.stt.transcribe(audio, PIPELINE_SAMPLE_RATE_HZ)
    assert wer(sentence, transcript.text) <= 0.25, transcript.text
    assert transcript.processing_s > 0


def test_whisper_tiny_english_also_hears_it(service: VoiceService, real_settings: Settings) -> None:
    settings = dataclasses.replace(
        real_settings, stt=dataclasses.replace(real_settings.stt, model="whisper-tiny-en")
    )
    tiny = WhisperTranscriber(model_spec(settings, "stt"), language="en")
    scores = [
        wer(s, tiny.transcribe(speak(service, s), PIPELINE_SAMPLE_RATE_HZ).text) for s in SENTENCES
    ]
    assert sum(scores) / len(scores) <= 0.25, scores


def test_webrtc_vad_finds_the_speech_and_not_the_silence(service: VoiceService) -> None:
    audio = silence(0.5) + speak(service, "Hello, can you hear me?") + silence(0.5)
    size = frame_bytes(PIPELINE_SAMPLE_RATE_HZ, 20)
    flags = [
        service.engines.vad.is_speech(audio[i : i + size], PIPELINE_SAMPLE_RATE_HZ)
        for i in range(0, len(audio) - size + 1, size)
    ]
    assert not any(flags[:20]) and not any(flags[-20:])
    assert sum(flags) > 25


def test_piper_resamples_to_the_asked_rate(service: VoiceService) -> None:
    # Piper's phoneme durations are sampled, so two renderings differ a little in length.
    at_8k = speak(service, "Hello there, this is a test of the telephone rate.", 8_000)
    at_22k = speak(service, "Hello there, this is a test of the telephone rate.", 22_050)
    assert 0.8 < (len(at_8k) / 8_000) / (len(at_22k) / 22_050) < 1.25


def test_the_default_model_answers_a_tool_request_with_valid_json(service: VoiceService) -> None:
    import json

    from appliance.core.ports import ChatMessage
    from appliance.engines.llm import LlamaChat
    from appliance.tools.demo import DemoBank, demo_tools
    from appliance.tools.registry import ToolBox, ToolError

    box = ToolBox(demo_tools(DemoBank()), frozenset({"transfer_to_human", "book_appointment"}))
    llm = service.engines.llm
    assert isinstance(llm, LlamaChat)
    for request in ("Put me through to a person please.", "Book me in at Riverside on 2026-12-02."):
        text = llm.request_json(
            [
                ChatMessage("system", "Pick the tool for the caller's request as JSON."),
                ChatMessage("user", request),
            ],
            box.call_schema(),
        )
        chosen = json.loads(text)
        assert chosen["tool"] in {"transfer_to_human", "book_appointment", "none"}
        if chosen["tool"] != "none":
            # The grammar fixes the shape; values (a 13th month) are still checked by the tool.
            try:
                box.tools[chosen["tool"]].validate(chosen["arguments"])
            except ToolError as exc:
                assert exc.code == "tools.invalid_args"


def test_the_model_generates_replies_in_several_contexts_at_once(real_settings: Settings) -> None:
    """Two replies stepped in turn, a token each, on two contexts of the default model, come
    out as each does alone (greedy decoding): the contexts keep apart."""
    from appliance.core.ports import ChatMessage
    from appliance.engines.llm import LlamaChat

    llm = LlamaChat(model_spec(real_settings, "llm"), temperature=0.0, contexts=2)

    def messages(question: str) -> list[ChatMessage]:
        return [
            ChatMessage("system", "Answer in one short sentence."),
            ChatMessage("user", question),
        ]

    questions = ("What colour is the sky?", "Name a large animal.")
    alone = ["".join(llm.stream_chat(messages(q), 24)) for q in questions]
    streams = [llm.stream_chat(messages(q), 24) for q in questions]
    together = ["", ""]
    live = [0, 1]
    while live:
        for i in list(live):
            piece = next(streams[i], None)
            if piece is None:
                live.remove(i)
            else:
                together[i] += piece
    assert together == alone and all(alone)
