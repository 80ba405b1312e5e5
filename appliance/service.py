"""Composition root: builds engines and pipelines from settings. The only place that wires the
rooms together (the CLI and the benchmarks go through it)."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config.manifest import model_spec
from appliance.config.settings import Settings
from appliance.core.ports import AudioSink, AudioSource, CallRecorder, TurnGuard
from appliance.engines.llm import LlamaChat
from appliance.engines.stt import WhisperTranscriber
from appliance.engines.tts import PiperSynthesizer
from appliance.engines.vad import WebRtcVad
from appliance.guard.call import CallGuard
from appliance.pipeline.run import CallSession, Engines, EventHandler, PipelineConfig
from appliance.storage.keys import default_key_path, load_or_create, read_key
from appliance.storage.repository import Storage

# No library may reach a model hub or send telemetry: everything is local (set before the
# model libraries are imported).
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
}


def set_offline_environment() -> None:
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def database_path(settings: Settings) -> Path:
    return settings.home / "appliance.db"


def open_storage(settings: Settings, *, create_key: bool = True) -> Storage:
    """The encrypted store under the master key (created, mode 0600, on first start)."""
    key_path = default_key_path(settings.home, settings.storage.master_key_file)
    master = load_or_create(key_path) if create_key else read_key(key_path)
    if settings.storage.url:
        return Storage.open_url(settings.storage.url, master)
    return Storage.open_sqlite(database_path(settings), master)


def pipeline_config(settings: Settings) -> PipelineConfig:
    return PipelineConfig(
        endpointing=settings.endpointing,
        system_prompt=settings.llm.system_prompt,
        max_reply_tokens=settings.llm.max_reply_tokens,
        history_turns=settings.llm.history_turns,
        output_sample_rate_hz=settings.audio.output_sample_rate_hz,
        fallback_reply=settings.llm.fallback_reply,
        record_audio=settings.retention.record_audio,
    )


@dataclass
class VoiceService:
    """The loaded models of this process and the pipeline settings; makes call sessions."""

    settings: Settings
    engines: Engines
    config: PipelineConfig
    load_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, settings: Settings) -> VoiceService:
        """Verify and load every model once (each refused with its path if altered)."""
        set_offline_environment()
        timings: dict[str, float] = {}
        started = time.perf_counter()

        def timed(name: str, since: float) -> float:
            now = time.perf_counter()
            timings[name] = round(now - since, 3)
            return now

        mark = started
        vad = WebRtcVad(settings.endpointing.vad_aggressiveness)
        stt = WhisperTranscriber(
            model_spec(settings, "stt"),
            language=settings.stt.language,
            beam_size=settings.stt.beam_size,
            compute_type=settings.stt.compute_type,
            threads=settings.stt.threads,
        )
        stt.warm_up()
        mark = timed("stt", mark)
        llm = LlamaChat(
            model_spec(settings, "llm"),
            context_tokens=settings.llm.context_tokens,
            temperature=settings.llm.temperature,
            repeat_penalty=settings.llm.repeat_penalty,
            threads=settings.llm.threads,
            seed=settings.llm.seed,
        )
        # Warm the prompt cache with the guarded system prompt's shape (the canary differs
        # per call, so only the text before it is shared).
        llm.warm_up(CallGuard(settings.policy, settings.llm.system_prompt).system_prompt)
        mark = timed("llm", mark)
        tts = PiperSynthesizer(
            model_spec(settings, "tts"),
            length_scale=settings.tts.length_scale,
            threads=settings.tts.threads,
        )
        tts.warm_up()
        timed("tts", mark)
        timings["total"] = round(time.perf_counter() - started, 3)
        return cls(settings, Engines(vad, stt, llm, tts), pipeline_config(settings), timings)

    def session(
        self,
        source: AudioSource,
        sink: AudioSink,
        on_event: EventHandler | None = None,
        recorder: CallRecorder | None = None,
        guard: TurnGuard | None = None,
        **overrides: Any,
    ) -> CallSession:
        """A new call on the shared engines, with its own guardrails (always on: a new
        CallGuard unless one is given); ``overrides`` change PipelineConfig fields."""
        config = dataclasses.replace(self.config, **overrides) if overrides else self.config
        return CallSession(
            self.engines,
            config,
            source,
            sink,
            on_event,
            recorder=recorder,
            guard=guard or self.new_guard(),
        )

    def new_guard(self) -> CallGuard:
        return CallGuard(self.settings.policy, self.settings.llm.system_prompt)
