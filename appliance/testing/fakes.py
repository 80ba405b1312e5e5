"""Fake engines: an energy VAD, a scripted transcriber, a scripted chat model, a tone voice."""

from __future__ import annotations

import hashlib
import math
import re
import struct
import threading
from collections.abc import Iterator, Sequence

from appliance.core.audio import AudioChunk
from appliance.core.events import Route
from appliance.core.ports import ChatMessage, KnowledgeAnswer, KnowledgePassage, Transcript


def tone(duration_s: float, sample_rate_hz: int = 16_000, freq_hz: float = 220.0) -> bytes:
    """A sine tone as PCM16 mono: stands in for speech in fake-engine tests."""
    n = int(duration_s * sample_rate_hz)
    return struct.pack(
        f"<{n}h",
        *(int(8000 * math.sin(2 * math.pi * freq_hz * i / sample_rate_hz)) for i in range(n)),
    )


def quiet(duration_s: float, sample_rate_hz: int = 16_000) -> bytes:
    return bytes(int(duration_s * sample_rate_hz) * 2)


class EnergyVad:
    """Speech is any frame whose mean absolute amplitude passes a threshold."""

    def __init__(self, threshold: int = 500) -> None:
        self.threshold = threshold

    def is_speech(self, frame: bytes, sample_rate_hz: int) -> bool:
        samples = struct.unpack(f"<{len(frame) // 2}h", frame)
        return bool(sum(abs(s) for s in samples) / max(1, len(samples)) > self.threshold)


class FakeTranscriber:
    """Returns the scripted texts in order (then the last one again); counts its calls."""

    def __init__(self, texts: Sequence[str], fail_on: int | None = None) -> None:
        self._texts = list(texts)
        self.calls = 0
        self._fail_on = fail_on
        self._lock = threading.Lock()

    def transcribe(self, pcm: bytes, sample_rate_hz: int) -> Transcript:
        from appliance.core.errors import SttError

        with self._lock:
            self.calls += 1
            index = self.calls
        if self._fail_on == index:
            raise SttError("stt.failed", "scripted failure")
        text = self._texts[min(index, len(self._texts)) - 1] if self._texts else ""
        return Transcript(text, len(pcm) / 2 / sample_rate_hz, 0.0, "en")


class ScriptedChatModel:
    """Streams scripted replies word by word; records the messages it was given."""

    def __init__(self, replies: Sequence[str]) -> None:
        self._replies = list(replies)
        self.prompts: list[list[ChatMessage]] = []
        self.closed_early = 0

    def stream_chat(self, messages: Sequence[ChatMessage], max_tokens: int) -> Iterator[str]:
        self.prompts.append(list(messages))
        reply = self._replies[min(len(self.prompts), len(self._replies)) - 1]
        words = reply.split(" ")
        sent = 0
        try:
            for i, word in enumerate(words[:max_tokens]):
                sent += 1
                yield word if i == 0 else " " + word
        finally:
            if sent < min(len(words), max_tokens):
                self.closed_early += 1


class ToneSynthesizer:
    """Speaks any text as a tone of 60 ms per character (so length follows the text)."""

    def __init__(self, ms_per_char: float = 60.0) -> None:
        self.ms_per_char = ms_per_char
        self.spoken: list[str] = []

    def synthesize(self, text: str, sample_rate_hz: int, pace: float = 1.0) -> Iterator[AudioChunk]:
        self.spoken.append(text)
        seconds = len(text) * self.ms_per_char * pace / 1000
        yield AudioChunk(tone(seconds, sample_rate_hz, 440.0), sample_rate_hz)


class FakeKnowledge:
    """A knowledge base of fixed answers: a question holding one of ``approved``'s keys gets
    that approved answer (FAQ); any other question gets ``passages`` for the model (GROUNDED),
    or the honest unknown when there are none."""

    def __init__(
        self, passages: Sequence[str] = (), approved: dict[str, str] | None = None
    ) -> None:
        self.passages = tuple(passages)
        self.approved = dict(approved or {})
        self.questions: list[str] = []

    def answer(self, question: str, context: str = "") -> KnowledgeAnswer:
        self.questions.append(question)
        for key, text in self.approved.items():
            if key.lower() in question.lower():
                return KnowledgeAnswer(
                    Route.FAQ, approved=text, passages=(KnowledgePassage(key, text),)
                )
        if not self.passages:
            return KnowledgeAnswer(Route.UNKNOWN)
        found = tuple(KnowledgePassage(f"doc#{n}", p) for n, p in enumerate(self.passages, 1))
        return KnowledgeAnswer(Route.GROUNDED, passages=found)


class WordEmbedder:
    """A bag-of-words embedding (hashed words, unit length): retrieval's plumbing without a
    model. Texts sharing words are similar; paraphrases are not (the real model's job)."""

    def __init__(self, dimensions: int = 256) -> None:
        self.dimensions = dimensions
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        vectors = []
        for text in texts:
            vector = [0.0] * self.dimensions
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                slot = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big")
                vector[slot % self.dimensions] += 1.0
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            vectors.append([v / norm for v in vector])
        return vectors
