"""The ``appliance`` command. Errors are caught here, once, and printed with their code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.config.settings import Settings, load_settings
from appliance.core.errors import ApplianceError, AudioError, ConfigError
from appliance.core.events import TurnEvent
from appliance.pipeline.run import TurnResult

EXIT_ERROR = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance", description="Voice Appliance: an on-premises voice agent."
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    parser.add_argument("--config", type=Path, help="configuration file (TOML)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    call = commands.add_parser("call", help="run a WAV file as a call, write the reply audio")
    call.add_argument("--wav", type=Path, required=True, help="the caller's audio (any WAV)")
    call.add_argument("--out", type=Path, required=True, help="where to write the reply WAV")
    call.add_argument("--json", action="store_true", help="print one JSON object")
    call.add_argument(
        "--realtime",
        action="store_true",
        help="feed the file at speaking pace, as a live caller (timings then include the "
        "endpointing wait); otherwise media time waits for the pipeline",
    )

    commands.add_parser("listen", help="a live conversation on the microphone and speaker")

    say = commands.add_parser("say", help="speak text with the configured voice into a WAV")
    say.add_argument("text", help="what to say")
    say.add_argument("--out", type=Path, required=True)
    say.add_argument(
        "--pad-s",
        type=float,
        default=0.5,
        help="silence before the speech; twice as much follows it (so a turn can end)",
    )

    models = commands.add_parser("models", help="model files and their SHA-256 pins")
    models_cmd = models.add_subparsers(dest="models_command", required=True)
    verify = models_cmd.add_parser("verify", help="check every model against the manifest")
    verify.add_argument("--json", action="store_true")
    models_cmd.add_parser("install", help="assemble models built from parts (Whisper base)")

    config = commands.add_parser("config", help="the effective configuration")
    config_cmd = config.add_subparsers(dest="config_command", required=True)
    config_cmd.add_parser("show", help="print the validated settings as JSON")

    bench = commands.add_parser("bench", help="benchmarks that print side-by-side ratios")
    bench_cmd = bench.add_subparsers(dest="bench_command", required=True)
    latency = bench_cmd.add_parser("latency", help="streaming vs sequential voice-to-voice latency")
    latency.add_argument("--json", action="store_true")
    latency.add_argument("--questions", type=int, default=6, help="how many questions (1-12)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = load_settings(args.config)
        return int(_dispatch(args, settings))
    except ConfigError as exc:
        print(f"appliance: configuration error {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApplianceError as exc:
        print(f"appliance: error {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "call":
        return _call(args, settings)
    if args.command == "listen":
        return _listen(settings)
    if args.command == "say":
        return _say(args, settings)
    if args.command == "models":
        return _models(args, settings)
    if args.command == "config":
        print(json.dumps(_settings_dict(settings), indent=2, default=str))
        return 0
    if args.command == "bench":
        from appliance.bench import run_latency_bench

        return run_latency_bench(settings, questions=args.questions, as_json=args.json)
    raise AssertionError(args.command)


def _settings_dict(settings: Settings) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(settings)


# -- call ---------------------------------------------------------------------------------------


def turn_record(turn: TurnResult) -> dict[str, Any]:
    return {
        "index": turn.index,
        "transcript": turn.transcript,
        "reply": turn.reply,
        "interrupted": turn.interrupted,
        "error": turn.error_code or None,
        "voice_to_voice_ms": _round(turn.voice_to_voice_ms),
        "events": [event_record(e) for e in turn.events],
    }


def event_record(event: TurnEvent) -> dict[str, Any]:
    record: dict[str, Any] = {"type": event.type.value, "t_ms": round(event.t_ms, 1)}
    if event.frame_index is not None:
        record["frame"] = event.frame_index
    record.update({k: v for k, v in event.data.items() if k != "text"})
    return record


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _call(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.audio_io.wav import WavSink, WavSource
    from appliance.service import VoiceService

    source = WavSource(args.wav, frame_ms=settings.audio.frame_ms, realtime=args.realtime)
    if not args.out.parent.is_dir():
        raise AudioError("audio.write", f"folder {args.out.parent} does not exist")
    service = VoiceService.load(settings)
    sink = WavSink(args.out, settings.audio.output_sample_rate_hz)
    session = service.session(source, sink)
    turns = asyncio.run(session.run())
    if args.json:
        print(
            json.dumps(
                {
                    "input": str(args.wav),
                    "output": str(args.out),
                    "realtime": args.realtime,
                    "models_load_s": service.load_seconds,
                    "turns": [turn_record(t) for t in turns],
                },
                indent=2,
            )
        )
        return 0
    print(f"call: {args.wav} ({source.audio.duration_s:.1f} s) -> {args.out}")
    print(f"models loaded in {service.load_seconds['total']:.2f} s")
    for turn in turns:
        print(f"\nturn {turn.index}")
        print(f"  caller: {turn.transcript}")
        print(f"  agent:  {turn.reply}")
        if turn.error_code:
            print(f"  error:  {turn.error_code}")
        timings = "  ".join(f"{e.type.value}={e.t_ms:.0f}" for e in turn.events)
        print(f"  events (ms since call start): {timings}")
        v2v = turn.voice_to_voice_ms
        if v2v is not None:
            print(f"  voice-to-voice: {v2v:.0f} ms")
    return 0


# -- say ----------------------------------------------------------------------------------------


def _say(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.audio_io.wav import write_wav
    from appliance.config.manifest import model_spec
    from appliance.engines.tts import PiperSynthesizer

    if not args.text.strip():
        raise ConfigError("say.empty", "nothing to say")
    tts = PiperSynthesizer(model_spec(settings, "tts"), length_scale=settings.tts.length_scale)
    rate = tts.native_rate_hz
    speech = b"".join(chunk.pcm for chunk in tts.synthesize(args.text, rate))
    pad = bytes(int(max(0.0, args.pad_s) * rate) * 2)
    write_wav(args.out, pad + speech + pad + pad, rate)
    print(f"wrote {args.out} ({len(speech) / 2 / rate:.1f} s of speech at {rate} Hz)")
    return 0


# -- listen -------------------------------------------------------------------------------------


def _listen(settings: Settings) -> int:
    from appliance.audio_io.device import MicrophoneSource, SpeakerSink
    from appliance.core.events import EventType
    from appliance.service import VoiceService

    source = MicrophoneSource(settings.audio.input_device, settings.audio.frame_ms)
    sink = SpeakerSink(
        settings.audio.output_sample_rate_hz, settings.audio.output_device, settings.audio.frame_ms
    )
    source.check()  # fail early, before the models load, when there is no sound device
    sink.check()
    service = VoiceService.load(settings)

    def show(event: TurnEvent) -> None:
        if event.type is EventType.TRANSCRIPT:
            print(f"caller: {event.data.get('text', '')}", flush=True)
        elif event.type is EventType.TURN_END:
            turn = session.turns[-1] if session.turns else None
            if turn is not None and turn.reply:
                print(f"agent:  {turn.reply}", flush=True)

    session = service.session(source, sink, on_event=show)

    async def converse() -> None:
        try:
            await session.run()
        finally:
            source.close()

    print("listening; press Ctrl-C to stop", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a conversation ends
        asyncio.run(converse())
    return 0


# -- models -------------------------------------------------------------------------------------


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.config.manifest import assemble_models

    if args.models_command == "install":
        built = assemble_models(settings)
        for path in built:
            print(f"assembled {path}")
        if not built:
            print("nothing to assemble: every assembled model is in place and verified")
        return _models_verify(settings, as_json=False)
    return _models_verify(settings, as_json=args.json)


def _models_verify(settings: Settings, *, as_json: bool) -> int:
    from appliance.config.manifest import all_specs
    from appliance.core.models import FileStatus, check_model

    rows: list[dict[str, Any]] = []
    for spec in all_specs(settings):
        for check in check_model(spec):
            rows.append(
                {
                    "model": spec.name,
                    "role": spec.role,
                    "path": str(check.path),
                    "size_bytes": check.size_bytes,
                    "status": check.status.value,
                }
            )
    failed = [r for r in rows if r["status"] != FileStatus.OK.value]
    if as_json:
        print(json.dumps({"manifest": str(settings.models.manifest_path), "files": rows}, indent=2))
    else:
        print(f"manifest: {settings.models.manifest_path}")
        for r in rows:
            size = f"{r['size_bytes'] / 1e6:9.1f} MB"
            print(f"{r['status']:8} {r['model']:18} {r['role']:4} {size}  {r['path']}")
        print(f"{len(rows) - len(failed)} of {len(rows)} files verified")
    return EXIT_ERROR if failed else 0
