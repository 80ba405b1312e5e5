"""Calls: ``call`` (a WAV file as a call), ``listen`` (the microphone), ``say``, and the stored
calls (``calls list`` / ``calls show`` / ``calls export-caller``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import sys
from pathlib import Path

from appliance.cli.common import EXIT_ERROR, Commands, actor, command, turn_record
from appliance.config.settings import Settings
from appliance.core.errors import AudioError, ConfigError
from appliance.core.events import TurnEvent


def register(commands: Commands) -> None:
    call = command(commands, "call", run_call, "run a WAV file as a call, write the reply audio")
    call.add_argument("--wav", type=Path, required=True, help="the caller's audio (any WAV)")
    call.add_argument("--out", type=Path, required=True, help="where to write the reply WAV")
    call.add_argument("--json", action="store_true", help="print one JSON object")
    call.add_argument(
        "--caller",
        default="",
        help="the caller's ID (a phone number, say); stored only as a keyed hash",
    )
    call.add_argument(
        "--realtime",
        action="store_true",
        help="feed the file at speaking pace, as a live caller (timings then include the "
        "endpointing wait); otherwise media time waits for the pipeline",
    )
    command(commands, "listen", listen, "a live conversation on the microphone and speaker")
    say = command(commands, "say", say_text, "speak text with the configured voice into a WAV")
    say.add_argument("text", help="what to say")
    say.add_argument("--out", type=Path, required=True)
    say.add_argument(
        "--pad-s",
        type=float,
        default=0.5,
        help="silence before the speech; twice as much follows it (so a turn can end)",
    )
    calls = commands.add_parser("calls", help="stored calls")
    calls_cmd = calls.add_subparsers(dest="calls_command", required=True)
    calls_list = command(calls_cmd, "list", list_calls, "recent calls: metadata only")
    calls_list.add_argument("--json", action="store_true")
    calls_list.add_argument("--limit", type=int, default=50)
    show = command(calls_cmd, "show", show_call, "a call's transcript (the read is audited)")
    show.add_argument("call_id")
    show.add_argument("--reason", required=True, help="why you read it (audited)")
    show.add_argument("--json", action="store_true")
    export = command(
        calls_cmd,
        "export-caller",
        export_caller,
        "a caller's access export (GDPR Art. 15): their data, decrypted, in one file (audited)",
        "number",
    )
    export.add_argument("--out", type=Path, required=True, help="the JSON file (mode 0600)")


def warn_red_team_gate(settings: Settings) -> None:
    """A foreground command only warns when the red-team gate is not passed (compliance/
    gate.py): it is for trying the appliance out; ``appliance serve`` is the one that refuses."""
    from appliance.compliance.gate import foreground_warning, gate_state

    line = foreground_warning(gate_state(settings, dt.datetime.now(dt.UTC)))
    if line is not None:
        print(line, file=sys.stderr)


def run_call(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.audio_io.wav import WavSink, WavSource
    from appliance.service import VoiceService, audit_knowledge, open_storage, run_call

    warn_red_team_gate(settings)
    source = WavSource(args.wav, frame_ms=settings.audio.frame_ms, realtime=args.realtime)
    if not args.out.parent.is_dir():
        raise AudioError("audio.write", f"folder {args.out.parent} does not exist")
    with open_storage(settings) as storage:
        service = VoiceService.load(settings)
        audit_knowledge(service.knowledge, storage, "system:knowledge")
        sink = WavSink(args.out, settings.audio.output_sample_rate_hz)
        outcome = asyncio.run(
            run_call(service, storage, source, sink, caller_id=args.caller or None, channel="wav")
        )
    if outcome.refused:
        print(
            f"appliance: call refused ({outcome.refused}); the caller heard the busy reply",
            file=sys.stderr,
        )
        return EXIT_ERROR
    turns = outcome.turns
    if args.json:
        document = {
            "call_id": outcome.call_id,
            "input": str(args.wav),
            "output": str(args.out),
            "realtime": args.realtime,
            "models_load_s": service.load_seconds,
            "turns": [turn_record(t) for t in turns],
        }
        print(json.dumps(document, indent=2))
        return 0
    print(f"call {outcome.call_id}: {args.wav} ({source.audio.duration_s:.1f} s) -> {args.out}")
    print(f"models loaded in {service.load_seconds['total']:.2f} s")
    for turn in turns:
        print(f"\nturn {turn.index}")
        print(f"  caller: {turn.transcript}")
        print(f"  agent:  {turn.reply}")
        if turn.route:
            cited = f" ({', '.join(turn.citations)})" if turn.citations else ""
            print(f"  route:  {turn.route}{cited}")
        if turn.error_code:
            print(f"  error:  {turn.error_code}")
        if not turn.stored:
            print("  stored: no (storage degraded)")
        timings = "  ".join(f"{e.type.value}={e.t_ms:.0f}" for e in turn.events)
        print(f"  events (ms since call start): {timings}")
        v2v = turn.voice_to_voice_ms
        if v2v is not None:
            print(f"  voice-to-voice: {v2v:.0f} ms")
    return 0


def say_text(args: argparse.Namespace, settings: Settings) -> int:
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


def listen(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.audio_io.device import MicrophoneSource, SpeakerSink
    from appliance.core.events import EventType
    from appliance.service import VoiceService, audit_knowledge, open_storage, run_call

    source = MicrophoneSource(
        settings.audio.input_device, settings.audio.frame_ms, settings.audio.capture_rate_hz
    )
    sink = SpeakerSink(
        settings.audio.output_sample_rate_hz, settings.audio.output_device, settings.audio.frame_ms
    )
    warn_red_team_gate(settings)
    source.check()  # fail early, before the models load, when there is no sound device
    sink.check()

    def show(event: TurnEvent) -> None:
        if event.type is EventType.TRANSCRIPT:
            print(f"caller: {event.data.get('text', '')}", flush=True)
        elif event.type is EventType.TURN_END and event.data.get("reply"):
            print(f"agent:  {event.data['reply']}", flush=True)

    with open_storage(settings) as storage:
        service = VoiceService.load(settings)
        audit_knowledge(service.knowledge, storage, "system:knowledge")

        async def converse() -> None:
            try:
                await run_call(service, storage, source, sink, channel="microphone", on_event=show)
            finally:
                source.close()

        print("listening; press Ctrl-C to stop", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a conversation ends
            asyncio.run(converse())
    return 0


def list_calls(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        calls = storage.list_calls(limit=args.limit)
    rows = [
        {
            "id": c.id,
            "channel": c.channel,
            "status": c.status,
            "started_at": c.started_at.isoformat(),
            "legal_hold": c.legal_hold,
        }
        for c in calls
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        hold = "  [legal hold]" if r["legal_hold"] else ""
        print(f"{r['id']}  {r['started_at']}  {r['channel']:10} {r['status']}{hold}")
    return 0


def show_call(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        view = storage.read_call(args.call_id, actor(), args.reason)
    if args.json:
        turns = [
            {
                "index": t.index,
                "transcript": t.transcript,
                "reply": t.reply,
                "route": t.route or None,
                "citations": list(t.citations),
            }
            for t in view.turns
        ]
        document = {"id": view.id, "status": view.status, "legal_hold": view.legal_hold}
        print(json.dumps({**document, "turns": turns}, indent=2))
        return 0
    print(f"call {view.id} ({view.channel}, {view.status}, started {view.started_at})")
    for t in view.turns:
        print(f"  {t.index}. caller: {t.transcript if t.transcript is not None else '(purged)'}")
        print(f"     agent:  {t.reply if t.reply is not None else '(purged)'}")
        if t.route:
            cited = f"; cites {', '.join(t.citations)}" if t.citations else ""
            print(f"     route:  {t.route}{cited}")
    return 0


def export_caller(args: argparse.Namespace, settings: Settings) -> int:
    """The file is for the data subject: owner-only (0600) until it is handed over."""
    from appliance.service import open_storage
    from appliance.storage.keys import write_private

    with open_storage(settings) as storage:
        document = storage.caller_access_export(args.number, actor())
    write_private(args.out, json.dumps(document, indent=2, ensure_ascii=False).encode())
    counts = document["counts"]
    if not document["found"]:
        print(f"wrote {args.out}: nothing is held of that caller")
        return 0
    print(
        f"wrote {args.out} (mode 0600): {counts['calls']} call(s), {counts['turns']} turn(s), "
        f"{counts['tool_calls']} tool call(s), {counts['callbacks']} callback request(s), "
        f"directory entry: {'yes' if counts['directory_entry'] else 'no'}"
    )
    return 0
