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
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.audio_io.memory import MemorySink
from appliance.audio_io.wav import PcmSource, read_wav, to_pipeline_pcm, write_wav
from appliance.config.settings import Settings
from appliance.core.audio import PIPELINE_SAMPLE_RATE_HZ
from appliance.core.errors import ApplianceError
from appliance.core.events import EventType, TurnEvent
from appliance.engines.llm import LlamaChat
from appliance.pipeline.dialogue import Dialogue
from appliance.pipeline.endpointing import Decision, Endpointer
from appliance.service import VoiceService, load_synthesizer

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


async def streaming_turn(service: VoiceService, pcm: bytes) -> dict[str, float]:
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
    return {
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

    def compute() -> None:
        transcript = engines.stt.transcribe(utterance, PIPELINE_SAMPLE_RATE_HZ)
        # The same guardrails and prompt as the streaming pipeline: only the schedule differs.
        guard = service.new_guard()
        decision = guard.screen_input(transcript.text)
        dialogue = Dialogue(guard.system_prompt, service.config.history_turns)
        prompt = dialogue.messages_for(decision.llm_text or transcript.text)
        reply = "".join(engines.llm.stream_chat(prompt, service.config.max_reply_tokens))
        b"".join(c.pcm for c in engines.tts.synthesize(reply, service.config.output_sample_rate_hz))

    await asyncio.to_thread(compute)
    return {"v2v_ms": (time.monotonic() - last_voiced) * 1000.0}


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95_index = min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))
    return {
        "median_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(ordered[p95_index], 1),
        "n": len(ordered),
    }


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


def run_latency_bench(settings: Settings, *, questions: int, as_json: bool) -> int:
    questions = max(1, min(questions, len(QUESTIONS)))
    started = time.perf_counter()
    service = VoiceService.load(settings)
    ready_s = time.perf_counter() - started
    folder = settings.home / "bench" / "questions"
    folder.mkdir(parents=True, exist_ok=True)
    pcms = recorded_questions(service, questions, folder)

    async def run_all() -> tuple[list[dict[str, float]], list[dict[str, float]]]:
        streaming, sequential = [], []
        for pcm in pcms:  # interleaved, so drift in machine load hits both alike
            streaming.append(await streaming_turn(service, pcm))
            sequential.append(await sequential_turn(service, pcm))
        return streaming, sequential

    streaming, sequential = asyncio.run(run_all())
    s = _summary([r["v2v_ms"] for r in streaming])
    q = _summary([r["v2v_ms"] for r in sequential])
    stt_rtf = sum(r["stt_s"] for r in streaming) / max(1e-9, sum(r["audio_s"] for r in streaming))
    report: dict[str, Any] = {
        "questions": questions,
        "models": {
            "stt": settings.stt.model,
            "llm": settings.llm.model,
            "tts": settings.tts.model,
        },
        "endpointing": {
            "silence_timeout_ms": settings.endpointing.silence_timeout_ms,
            "speculate_after_ms": settings.endpointing.speculate_after_ms,
        },
        "streaming": s,
        "sequential": q,
        "ratio_median": round(q["median_ms"] / max(1e-9, s["median_ms"]), 2),
        "ratio_p95": round(q["p95_ms"] / max(1e-9, s["p95_ms"]), 2),
        "stt_rtf": round(stt_rtf, 3),
        "guard_input_ms_median": round(statistics.median(r["guard_ms"] for r in streaming), 3),
        "llm": _llm_stats(service),
        "tts_rtf": round(_tts_rtf(service), 3),
        "models_ready_s": round(ready_s, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"voice-to-voice latency over {questions} recorded questions (realtime, same models)")
    print(f"  {'':12}{'median':>10}{'p95':>10}")
    for name in ("streaming", "sequential"):
        r = report[name]
        print(f"  {name:12}{r['median_ms']:>8.0f}ms{r['p95_ms']:>8.0f}ms")
    print(
        f"  ratio (sequential / streaming): median {report['ratio_median']}x, "
        f"p95 {report['ratio_p95']}x"
    )
    llm = report["llm"]
    print(f"STT real-time factor {report['stt_rtf']}; TTS real-time factor {report['tts_rtf']}")
    print(
        f"input guard (normalize, injection rules, redaction): "
        f"{report['guard_input_ms_median']} ms median per turn"
    )
    if llm:
        print(f"LLM {llm['tokens_per_s']} tokens/s, time to first token {llm['ttft_ms']} ms")
    print(f"models ready in {report['models_ready_s']} s; peak RSS {report['peak_rss_mib']} MiB")
    return 0


def run_storage_bench(settings: Settings, *, turns: int, as_json: bool) -> int:
    """Write then read ``turns`` turns in the encrypted store and in a plain one, side by side.

    Each turn is its own committed transaction, as in service (a turn is acknowledged only
    once durable). Rounds alternate between the two stores so machine noise hits both.
    """
    from appliance.core.ports import TurnRecord
    from appliance.storage.crypto import new_key
    from appliance.storage.keys import MasterKey
    from appliance.storage.repository import Storage

    turns = max(100, turns)
    per_call = 50
    text = "I would like to check the balance of my savings account please. " * 2
    reply = "Sure. Your balance is available after a quick identity check. " * 2
    with tempfile.TemporaryDirectory(dir=settings.home if settings.home.exists() else None) as tmp:
        folder = Path(tmp)
        stores = {
            "encrypted": Storage.open_sqlite(folder / "enc.db", MasterKey(new_key(), folder / "k")),
            "plain": Storage.open_sqlite(folder / "plain.db", None),
        }
        elapsed = {name: {"write": 0.0, "read": 0.0} for name in stores}
        calls: dict[str, list[str]] = {name: [] for name in stores}
        rounds = 4
        for _ in range(rounds):
            for name, store in stores.items():
                started = time.perf_counter()
                for _ in range(turns // rounds // per_call):
                    handle = store.start_call("+15550100", "bench")
                    for i in range(per_call):
                        handle.record_turn(TurnRecord(i + 1, text, reply, timings_ms={"a": 1.0}))
                    calls[name].append(handle.call_id)
                elapsed[name]["write"] += time.perf_counter() - started
        for name, store in stores.items():
            started = time.perf_counter()
            read = sum(len(store.read_call(c, "bench", "benchmark").turns) for c in calls[name])
            elapsed[name]["read"] += time.perf_counter() - started
            assert read == len(calls[name]) * per_call
        written = len(calls["plain"]) * per_call
        for store in stores.values():
            store.close()
    rates = {
        name: {
            "write_turns_per_s": round(written / times["write"], 1),
            "read_turns_per_s": round(written / times["read"], 1),
        }
        for name, times in elapsed.items()
    }
    report: dict[str, Any] = {
        "turns": written,
        **rates,
        "write_ratio": round(
            rates["encrypted"]["write_turns_per_s"] / rates["plain"]["write_turns_per_s"], 3
        ),
        "read_ratio": round(
            rates["encrypted"]["read_turns_per_s"] / rates["plain"]["read_turns_per_s"], 3
        ),
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"storage: {written} turns, one committed transaction each (synchronous=FULL)")
    print(f"  {'':10}{'write turns/s':>15}{'read turns/s':>15}")
    for name in ("encrypted", "plain"):
        r = rates[name]
        print(f"  {name:10}{r['write_turns_per_s']:>15.0f}{r['read_turns_per_s']:>15.0f}")
    print(
        f"  encrypted / plain: write {report['write_ratio']}, read {report['read_ratio']} "
        f"(encryption costs {100 * (1 - report['write_ratio']):.0f}% of write throughput, "
        f"{100 * (1 - report['read_ratio']):.0f}% of read)"
    )
    return 0


def run_startup_bench(settings: Settings, *, runs: int, as_json: bool) -> int:
    """Start ``appliance serve`` as systemd would (notify socket, voice idle) ``runs`` times:
    process start to READY=1, and SIGTERM to exit."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    ready, stop = [], []
    for _ in range(runs):
        with (
            tempfile.TemporaryDirectory() as folder,
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener,
        ):
            path = f"{folder}/notify.sock"
            listener.bind(path)
            listener.settimeout(0.5)
            env = {
                **os.environ,
                "NOTIFY_SOCKET": path,
                "APPLIANCE_HOME": str(settings.home),
                "APPLIANCE_SERVICE__VOICE": "none",
            }
            if settings.source != "defaults":
                env["APPLIANCE_CONFIG"] = settings.source
            started = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-m", "appliance", "serve"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                while not _ready(listener):
                    if process.poll() is not None:
                        reason = (process.stderr.read() if process.stderr else b"").decode()
                        raise ApplianceError("bench.startup", f"serve did not start: {reason}")
                ready.append(time.perf_counter() - started)
                stopping = time.perf_counter()
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=120)
                stop.append(time.perf_counter() - stopping)
            finally:
                if process.poll() is None:
                    process.kill()
    up = _summary([1000 * t for t in ready])
    down = _summary([1000 * t for t in stop])
    if as_json:
        print(json.dumps({"runs": runs, "start_to_ready": up, "sigterm_to_exit": down}, indent=2))
    else:
        print(f"start to READY=1: median {up['median_ms']:.0f} ms, p95 {up['p95_ms']:.0f} ms")
        print(f"SIGTERM to exit:  median {down['median_ms']:.0f} ms, p95 {down['p95_ms']:.0f} ms")
    return 0


def _ready(listener: Any) -> bool:
    try:
        return b"READY=1" in listener.recv(4096)
    except TimeoutError:
        return False


TARGET_CALLS, TARGET_P95_MS = 4, 3000.0
"""The line's target on 2 cores: 4 simultaneous calls, p95 voice-to-voice <= 3 s, no RTP gaps."""


def run_calls_bench(
    settings: Settings, *, counts: list[int], as_json: bool, stt_models: Sequence[str] = ()
) -> int:
    """N simultaneous SIPp calls (N in ``counts``) against ``appliance sip`` on 127.0.0.1: the
    voice-to-voice latency of each call's turn (median, p95), gaps in the reply's RTP stream
    as the caller received it, and the line's CPU time and peak RSS. With several
    ``stt_models`` the rounds run once per speech-recognition model, side by side."""
    import os
    import shutil
    import socket
    import subprocess
    import sys

    import psutil

    from appliance.telephony.sdp import PCMU
    from appliance.testing.pcap import Stream, write_pcap

    if shutil.which("sipp") is None:
        raise ApplianceError("bench.sipp", "sipp is not installed (Debian: sip-tester)")
    scenario_text = (Path(__file__).parent / "testing" / "sipp" / "uac_call.xml").read_text()

    def free_port() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        tts = load_synthesizer(settings)  # the caller's voice; the line loads the rest
        question = b"".join(
            c.pcm for c in tts.synthesize("What time do you open on Saturday?", 8000)
        )
        stream = Stream(codec=PCMU)
        stream.silence(0.5)
        stream.audio(question)
        stream.silence(12.0)
        write_pcap(work / "caller.pcap", stream.packets)
        for model in stt_models or (settings.stt.model,):
            port = free_port()
            env = {
                **os.environ,
                "APPLIANCE_HOME": str(settings.home),
                "APPLIANCE_STT__MODEL": model,
                "APPLIANCE_SIP__DISCLOSURE": "Automated assistant.",
                "APPLIANCE_SIP__MAX_DIALOGS": str(max(counts) * 2),
                "APPLIANCE_SIP__INVITES_PER_ADDRESS_PER_10S": str(max(counts) * 4),
                "APPLIANCE_LIMITS__MAX_CONCURRENT_CALLS": str(max(counts)),
            }
            if settings.source != "defaults":
                env["APPLIANCE_CONFIG"] = settings.source
            line = subprocess.Popen(
                [sys.executable, "-m", "appliance", "sip", "--listen", f"127.0.0.1:{port}"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            try:
                assert line.stdout is not None
                if "listening" not in line.stdout.readline():
                    raise ApplianceError("bench.sip", f"appliance sip did not start ({model})")
                process = psutil.Process(line.pid)
                for count in counts:
                    result = _calls_round(count, port, work, scenario_text, process, free_port)
                    _wait_until_idle(settings)  # the line finishes turns after the callers' BYEs
                    latencies = _latest_latencies(settings, count)
                    result["voice_to_voice"] = _summary(latencies) if latencies else {}
                    results.append({"stt_model": model, **result})
            finally:
                line.terminate()
                line.wait(timeout=60)
    targets = [
        {
            "stt_model": r["stt_model"],
            "calls": TARGET_CALLS,
            "p95_ms_at_most": TARGET_P95_MS,
            "met": r["failed"] == 0
            and r["rtp_gaps"] == 0
            and 0 < r["voice_to_voice"].get("p95_ms", 0) <= TARGET_P95_MS,
        }
        for r in results
        if r["calls"] == TARGET_CALLS
    ]
    if as_json:
        print(json.dumps({"rounds": results, "targets": targets}, indent=2))
    else:
        for r in results:
            v = r["voice_to_voice"]
            print(
                f"{r['stt_model']}, {r['calls']} calls: voice-to-voice median "
                f"{v.get('median_ms', 0):.0f} ms, p95 {v.get('p95_ms', 0):.0f} ms; reply RTP gaps "
                f"{r['rtp_gaps']}; CPU {r['cpu_s']:.1f} s; RSS {r['rss_mib']:.0f} MiB; "
                f"failed {r['failed']}"
            )
        for t in targets:
            verdict = "met" if t["met"] else "missed"
            print(
                f"target ({t['calls']} calls, p95 <= {t['p95_ms_at_most']:.0f} ms, no RTP gaps) "
                f"with {t['stt_model']}: {verdict}"
            )
    return 0


def _latest_latencies(settings: Settings, count: int) -> list[float]:
    """Voice-to-voice of the turns of the ``count`` newest calls (one round's)."""
    from appliance.service import open_storage

    storage = open_storage(settings)
    try:
        latencies: list[float] = []
        for call in storage.list_calls(limit=count):
            view = storage.read_call(call.id, "bench", "latency benchmark")
            latencies += [t.voice_to_voice_ms for t in view.turns if t.voice_to_voice_ms]
        return latencies
    finally:
        storage.close()


def _wait_until_idle(settings: Settings, timeout_s: float = 120.0) -> None:
    """Until no stored call is active: a round starts only once the last one has ended."""
    from appliance.service import open_storage

    storage = open_storage(settings)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(c.status != "active" for c in storage.list_calls(limit=50)):
                return
            time.sleep(0.5)
    finally:
        storage.close()


def _calls_round(
    count: int, port: int, work: Path, scenario: str, process: Any, free_port: Any
) -> dict[str, Any]:
    import socket
    import subprocess
    import threading

    cpu_before = sum(process.cpu_times()[:2])
    gaps = [0] * count
    captures, threads, runs = [], [], []
    stop = threading.Event()

    def capture(index: int, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        last = None
        while not stop.is_set():
            try:
                sock.recv(4096)
            except TimeoutError:
                continue
            now = time.monotonic()
            if last is not None and now - last > 0.1:  # 5 packets missing in a row
                gaps[index] += 1
            last = now

    peak = 0.0
    for index in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        captures.append(sock)
        text = (
            scenario.replace("@CODEC@", "0")
            .replace("@CAPTURE_PORT@", str(sock.getsockname()[1]))
            .replace("@PCAP@", str(work / "caller.pcap"))
            .replace("@WAIT_MS@", "2500")
            .replace("@TALK_MS@", "14000")
        )
        xml = work / f"call{index}.xml"
        xml.write_text(text)
        threads.append(threading.Thread(target=capture, args=(index, sock), daemon=True))
        threads[-1].start()
        command = ["sipp", f"127.0.0.1:{port}", "-sf", str(xml), "-m", "1", "-i", "127.0.0.1"]
        command += ["-p", str(free_port()), "-mp", str(free_port()), "-timeout", "90s"]
        command += ["-trace_err", "-error_file", str(work / f"call{index}.errors")]
        runs.append(
            subprocess.Popen(
                [*command, "-nostdin"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=work,
            )
        )
    while any(r.poll() is None for r in runs):
        peak = max(peak, process.memory_info().rss / 2**20)
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    for sock in captures:
        sock.close()
    failures = []
    for index, run in enumerate(runs):
        errors = work / f"call{index}.errors"
        if run.returncode != 0 and errors.exists():  # SIPp's own account of what went wrong
            failures.append(errors.read_text(errors="replace").strip().splitlines()[-1][:300])
    return {
        "calls": count,
        "failed": sum(r.returncode != 0 for r in runs),
        "failures": failures,
        "rtp_gaps": sum(gaps),
        "cpu_s": round(sum(process.cpu_times()[:2]) - cpu_before, 1),
        "rss_mib": round(peak, 1),
    }
