"""``appliance bench latency``: the streaming pipeline against a plain sequential one.

Both run in one process, on the same loaded models and the same recorded questions, fed at
speaking pace (realtime), with the same endpointing. The sequential baseline waits for the
endpoint, then transcribes all, generates all and synthesizes all before the first sample plays.
Voice-to-voice is measured from the last voiced input frame to the first reply audio frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.audio_io.memory import MemorySink
from appliance.audio_io.wav import PcmSource, read_wav, to_pipeline_pcm, write_wav
from appliance.bench import summary
from appliance.config.settings import Settings
from appliance.core.audio import PIPELINE_SAMPLE_RATE_HZ
from appliance.core.errors import ApplianceError
from appliance.core.events import EventType, TurnEvent
from appliance.engines.llm import LlamaChat
from appliance.pipeline.endpointing import Decision, Endpointer
from appliance.redteam.runner import reply
from appliance.service import VoiceService

QUESTIONS = (
    "What time do you open on Saturday?",
    "Can you tell me where my nearest branch is?",
    "I would like to book an appointment for next week.",
    "How do I reset my password?",
    "Do you take credit cards over the phone?",
    "Hello, can you hear me?",
    "What is your phone number for support?",
    "Is there parking near your office?",
    "How long does delivery take?",
    "Can I speak to a person please?",
    "What are your opening hours on Sunday?",
    "Thank you, that is all for today.",
)
LEAD_S = 0.5
TRAIL_S = 1.2


def recorded_questions(service: VoiceService, count: int, folder: Path) -> list[bytes]:
    """Speak the questions with the TTS voice once, save them as WAV, read them back."""
    pcms = []
    for i, text in enumerate(QUESTIONS[:count]):
        path = folder / f"question-{i + 1:02d}.wav"
        if not path.exists():
            speech = b"".join(c.pcm for c in service.engines.tts.synthesize(text, 22_050))
            padding_lead = bytes(int(LEAD_S * 22_050) * 2)
            padding_trail = bytes(int(TRAIL_S * 22_050) * 2)
            write_wav(path, padding_lead + speech + padding_trail, 22_050)
        pcms.append(to_pipeline_pcm(read_wav(path)))
    return pcms


async def streaming_turn(service: VoiceService, pcm: bytes) -> dict[str, Any]:
    """One question through the streaming pipeline; stops once the reply is heard."""
    source = PcmSource(pcm, frame_ms=service.settings.audio.frame_ms, realtime=True)
    sink = MemorySink(service.config.output_sample_rate_hz)
    heard = asyncio.Event()

    def on_event(event: TurnEvent) -> None:
        if event.type is EventType.FIRST_AUDIO:
            heard.set()

    session = service.session(source, sink, on_event=on_event)
    run = asyncio.create_task(session.run())
    waiter = asyncio.create_task(heard.wait())
    await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if not run.done():  # the rest of the reply plays out in real time: not needed here
        run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    turn = next(t for t in session.turns if t.first(EventType.FIRST_AUDIO) is not None)
    transcript = turn.first(EventType.TRANSCRIPT)
    guard = turn.first(EventType.GUARD_INPUT)
    routed = turn.first(EventType.ROUTE)
    return {
        "route": str(routed.data.get("route", "")) if routed else "",
        "v2v_ms": turn.voice_to_voice_ms or 0.0,
        "guard_ms": float(guard.data.get("guard_ms", 0)) if guard else 0.0,
        "stt_s": float(transcript.data.get("stt_s", 0)) if transcript else 0.0,
        "audio_s": float(transcript.data.get("audio_s", 0)) if transcript else 0.0,
    }


async def sequential_turn(service: VoiceService, pcm: bytes) -> dict[str, float]:
    """Endpoint (no speculation), then STT, then the whole reply, then the whole speech."""
    frame_ms = service.settings.audio.frame_ms
    no_speculation = dataclasses.replace(service.config.endpointing, speculate_after_ms=0)
    endpointer = Endpointer(no_speculation, frame_ms)
    source = PcmSource(pcm, frame_ms=frame_ms, realtime=True)
    engines = service.engines
    last_voiced = 0.0
    utterance = b""
    while (frame := await source.read_frame()) is not None:
        voiced = engines.vad.is_speech(frame, PIPELINE_SAMPLE_RATE_HZ)
        decision = endpointer.process(frame, voiced)
        if endpointer.in_speech and voiced:
            last_voiced = time.monotonic()
        if decision is Decision.SPEECH_END:
            utterance = endpointer.utterance
            break
    if not utterance:
        endpointer.flush()
        utterance = endpointer.utterance

    # The same reply path (guards, routes, knowledge, model) as the streaming pipeline:
    # only the schedule differs (all of each stage before the next).
    transcript = await asyncio.to_thread(engines.stt.transcribe, utterance, PIPELINE_SAMPLE_RATE_HZ)
    out, _ = await reply(service, transcript.text)
    rate = service.config.output_sample_rate_hz
    await asyncio.to_thread(
        lambda: b"".join(c.pcm for c in engines.tts.synthesize(out.state.reply, rate))
    )
    return {"v2v_ms": (time.monotonic() - last_voiced) * 1000.0}


def _tts_rtf(service: VoiceService) -> float:
    text = "Thank you for calling. Your appointment is confirmed for Tuesday at ten."
    rate = service.config.output_sample_rate_hz
    started = time.perf_counter()
    pcm = b"".join(c.pcm for c in service.engines.tts.synthesize(text, rate))
    return (time.perf_counter() - started) / (len(pcm) / 2 / rate)


def _llm_stats(service: VoiceService) -> dict[str, float]:
    llm = service.engines.llm
    if not isinstance(llm, LlamaChat):
        return {}
    from appliance.core.ports import ChatMessage

    prompt = [
        ChatMessage("system", service.config.system_prompt),
        ChatMessage("user", "Please describe your services in a few sentences."),
    ]
    for _ in llm.stream_chat(prompt, 64):
        pass
    stats = llm.last_stats
    decode_s = max(1e-9, stats["elapsed_s"] - stats["ttft_s"])
    return {
        "tokens_per_s": round(max(0.0, stats["tokens"] - 1) / decode_s, 1),
        "ttft_ms": round(stats["ttft_s"] * 1000, 1),
    }


def _round(service: VoiceService, pcms: list[bytes], ready_s: float) -> dict[str, Any]:
    async def run_all() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        streaming, sequential = [], []
        for pcm in pcms:  # interleaved, so drift in machine load hits both alike
            streaming.append(await streaming_turn(service, pcm))
            sequential.append(await sequential_turn(service, pcm))
        return streaming, sequential

    streaming, sequential = asyncio.run(run_all())
    s = summary([r["v2v_ms"] for r in streaming])
    q = summary([r["v2v_ms"] for r in sequential])
    stt_rtf = sum(r["stt_s"] for r in streaming) / max(1e-9, sum(r["audio_s"] for r in streaming))
    routes = sorted({str(r["route"]) for r in streaming})
    return {
        "streaming": s,
        "sequential": q,
        "ratio_median": round(q["median_ms"] / max(1e-9, s["median_ms"]), 2),
        "ratio_p95": round(q["p95_ms"] / max(1e-9, s["p95_ms"]), 2),
        "by_route": {
            route: summary([r["v2v_ms"] for r in streaming if r["route"] == route])
            for route in routes
        },
        "stt_rtf": round(stt_rtf, 3),
        "guard_input_ms_median": round(statistics.median(r["guard_ms"] for r in streaming), 3),
        "llm": _llm_stats(service),
        "tts_rtf": round(_tts_rtf(service), 3),
        "models_ready_s": round(ready_s, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pss_mib": _pss_mib(),
    }


def _measure(settings: Settings, model: str, questions: int) -> dict[str, Any]:
    started = time.perf_counter()
    llm = dataclasses.replace(settings.llm, model=model)
    service = VoiceService.load(dataclasses.replace(settings, llm=llm))
    ready_s = time.perf_counter() - started
    folder = settings.home / "bench" / "questions"
    folder.mkdir(parents=True, exist_ok=True)
    return _round(service, recorded_questions(service, questions, folder), ready_s)


def _measure_apart(model: str, questions: int, config: Path | None) -> dict[str, Any]:
    """One model's round in a child process of its own (the same command, the same
    environment and configuration), so that its memory figures are its own."""
    command = [sys.executable, "-m", "appliance"]
    command += ["--config", str(config)] if config is not None else []
    command += ["bench", "latency", "--json", "--questions", str(questions), "--llm", model]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ApplianceError("bench.round", f"the round for {model} failed: {tail[0]}")
    measured: dict[str, Any] = json.loads(done.stdout)["rounds"][model]
    return measured


def _pss_mib() -> float:
    """The process's proportional set size now: each llama.cpp context maps the same weights
    file, which RSS counts once per mapping and PSS (like the kernel's memory accounting)
    once in all."""
    import psutil

    pss: int = psutil.Process().memory_full_info().pss
    return round(pss / 2**20, 1)


def run_latency_bench(
    settings: Settings,
    *,
    questions: int,
    as_json: bool,
    llm_models: Sequence[str] = (),
    config: Path | None = None,
) -> int:
    """One round per language model (default: the configured one), each on the same recorded
    questions. With several models each round runs in its own process (this command again,
    with one model), so each peak RSS is that model's alone."""
    questions = max(1, min(questions, len(QUESTIONS)))
    models = list(llm_models) or [settings.llm.model]
    rounds: dict[str, Any] = {}
    for model in models:
        if len(models) == 1:
            rounds[model] = _measure(settings, model, questions)
        else:
            rounds[model] = _measure_apart(model, questions, config)
    report: dict[str, Any] = {
        "questions": questions,
        "models": {"stt": settings.stt.model, "llm": list(rounds), "tts": settings.tts.model},
        "endpointing": {
            "silence_timeout_ms": settings.endpointing.silence_timeout_ms,
            "speculate_after_ms": settings.endpointing.speculate_after_ms,
        },
        "rounds": rounds,
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"voice-to-voice latency over {questions} recorded questions (realtime, same models)")
    for model, r in rounds.items():
        print(f"\n[{model}]")
        print(f"  {'':22}{'median':>10}{'p95':>10}")
        rows = [("streaming", r["streaming"]), ("sequential", r["sequential"])]
        rows += [(f"  route {route}", v) for route, v in r["by_route"].items()]
        for name, v in rows:
            print(f"  {name:22}{v['median_ms']:>8.0f}ms{v['p95_ms']:>8.0f}ms  (n={v['n']})")
        print(
            f"  ratio (sequential / streaming): median {r['ratio_median']}x, p95 {r['ratio_p95']}x"
        )
        llm = r["llm"]
        print(f"  STT real-time factor {r['stt_rtf']}; TTS real-time factor {r['tts_rtf']}")
        print(f"  input guard: {r['guard_input_ms_median']} ms median per turn")
        if llm:
            print(f"  LLM {llm['tokens_per_s']} tokens/s, time to first token {llm['ttft_ms']} ms")
        print(
            f"  models ready in {r['models_ready_s']} s; peak RSS {r['peak_rss_mib']} MiB "
            f"(PSS now {r['pss_mib']} MiB)"
        )
    return 0
