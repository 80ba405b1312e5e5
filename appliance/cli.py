"""The ``appliance`` command. Errors are caught here, once, and printed with their code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
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

    commands.add_parser("listen", help="a live conversation on the microphone and speaker")
    commands.add_parser(
        "serve", help="the voice service in the foreground (systemd notify, clean SIGTERM)"
    )
    sip = commands.add_parser("sip", help="answer phone calls over SIP (UDP) in the foreground")
    sip.add_argument("--listen", help="HOST:PORT (default: [sip] listen)")
    admin = commands.add_parser("admin", help="the admin web panel: users, serve")
    admin_cmd = admin.add_subparsers(dest="admin_command", required=True)
    create_user = admin_cmd.add_parser("create-user", help="a panel account (first admin too)")
    create_user.add_argument("--username", required=True)
    create_user.add_argument("--role", choices=["admin", "operator", "auditor"], default="admin")
    create_user.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    create_token = admin_cmd.add_parser("create-token", help="a bearer token of the JSON API")
    create_token.add_argument("--name", required=True)
    create_token.add_argument("--role", choices=["admin", "operator", "auditor"], required=True)
    admin_serve = admin_cmd.add_parser("serve", help="the panel over HTTPS in the foreground")
    admin_serve.add_argument("--listen", help="HOST:PORT (default: [admin] listen)")
    doctor = commands.add_parser("doctor", help="self-checks: PASS/FAIL/SKIP each, exit 1 on FAIL")
    doctor.add_argument("--json", action="store_true")

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

    calls = commands.add_parser("calls", help="stored calls")
    calls_cmd = calls.add_subparsers(dest="calls_command", required=True)
    calls_list = calls_cmd.add_parser("list", help="recent calls: metadata only")
    calls_list.add_argument("--json", action="store_true")
    calls_list.add_argument("--limit", type=int, default=50)
    calls_show = calls_cmd.add_parser("show", help="a call's transcript (the read is audited)")
    calls_show.add_argument("call_id")
    calls_show.add_argument("--reason", required=True, help="why you read it (audited)")
    calls_show.add_argument("--json", action="store_true")

    erase = commands.add_parser("erase", help="erase a caller's or a call's data (crypto-shred)")
    target = erase.add_mutually_exclusive_group(required=True)
    target.add_argument("--caller", help="the caller ID (phone number) as the caller gave it")
    target.add_argument("--call", help="a call id")

    hold = commands.add_parser("hold", help="put a call on legal hold, or release it")
    hold.add_argument("--call", required=True)
    hold_how = hold.add_mutually_exclusive_group(required=True)
    hold_how.add_argument("--reason", help="why the call must be kept")
    hold_how.add_argument("--release", action="store_true")

    keys = commands.add_parser("keys", help="the master key")
    keys_cmd = keys.add_subparsers(dest="keys_command", required=True)
    keys_cmd.add_parser("rotate", help="new master key; re-wrap every data key, re-key the file")

    retention = commands.add_parser("retention", help="purge data past its retention period")
    retention_cmd = retention.add_subparsers(dest="retention_command", required=True)
    retention_run = retention_cmd.add_parser("run", help="purge (idempotent, resumable)")
    retention_run.add_argument("--dry-run", action="store_true", help="list what would go")
    retention_run.add_argument("--json", action="store_true")

    audit_cmd = commands.add_parser("audit", help="the tamper-evident audit trail")
    audit_sub = audit_cmd.add_subparsers(dest="audit_command", required=True)
    audit_verify = audit_sub.add_parser("verify", help="walk the hash chain")
    audit_verify.add_argument("--export", type=Path, help="verify a signed export instead")
    audit_export = audit_sub.add_parser("export", help="write a signed (Ed25519) export")
    audit_export.add_argument("--out", type=Path, required=True)

    backup = commands.add_parser("backup", help="an encrypted, verified copy of the database")
    backup.add_argument("--out", type=Path, required=True)
    restore = commands.add_parser("restore", help="check a backup, then put it in place")
    restore.add_argument("file", type=Path)

    tools = commands.add_parser("tools", help="the agent's tools")
    tools_cmd = tools.add_subparsers(dest="tools_command", required=True)
    tools_list = tools_cmd.add_parser("list", help="each tool: scopes, changes data, level")
    tools_list.add_argument("--json", action="store_true")

    voice = commands.add_parser("voice", help="voice biometrics: enrol, forget, status")
    voice_cmd = voice.add_subparsers(dest="voice_command", required=True)
    voice_enrol = voice_cmd.add_parser("enrol", help="enrol a caller's voice from WAV files")
    voice_enrol.add_argument("--caller", required=True, help="the caller ID")
    voice_enrol.add_argument("wavs", type=Path, nargs="+", help="utterances, one per file")
    voice_forget = voice_cmd.add_parser("forget", help="erase a caller's voice template")
    voice_forget.add_argument("--caller", required=True)
    voice_cmd.add_parser("status", help="whether voice biometrics are available and enabled")

    incidents = commands.add_parser("incidents", help="incidents opened by the guards")
    incidents.add_argument("--json", action="store_true")

    redteam = commands.add_parser("redteam", help="run an attack and benign corpus, report rates")
    redteam.add_argument(
        "--corpus", type=Path, help="JSONL: text, label, category (default: built in)"
    )
    redteam.add_argument("--spoken", action="store_true", help="through Piper and Whisper first")
    redteam.add_argument("--phone", action="store_true", help="spoken over 8 kHz G.711 u-law")
    redteam.add_argument("--json", action="store_true", help="print the JSON report")
    redteam.add_argument("--sample", type=int, default=0, help="N attacks and N benign, stratified")
    redteam.add_argument("--out", type=Path, help="folder for report.json and report.md")

    bench = commands.add_parser("bench", help="benchmarks that print side-by-side ratios")
    bench_cmd = bench.add_subparsers(dest="bench_command", required=True)
    latency = bench_cmd.add_parser("latency", help="streaming vs sequential voice-to-voice latency")
    latency.add_argument("--json", action="store_true")
    latency.add_argument("--questions", type=int, default=6, help="how many questions (1-12)")
    storage_bench = bench_cmd.add_parser(
        "storage", help="turn write/read rates with and without encryption"
    )
    storage_bench.add_argument("--json", action="store_true")
    storage_bench.add_argument("--turns", type=int, default=10_000)
    calls_bench = bench_cmd.add_parser(
        "calls", help="N simultaneous SIPp calls: voice-to-voice latency, RTP gaps, CPU, RSS"
    )
    calls_bench.add_argument("--json", action="store_true")
    calls_bench.add_argument("--calls", default="1,2,4,8", help="the Ns, comma separated")
    calls_bench.add_argument(
        "--stt",
        default="",
        help="speech-recognition models to compare, comma separated (default: [stt] model)",
    )
    startup = bench_cmd.add_parser(
        "startup", help="appliance serve: start to READY=1, and SIGTERM to exit"
    )
    startup.add_argument("--json", action="store_true")
    startup.add_argument("--runs", type=int, default=3)
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
        # Every command of the appliance stays on the premises: an in-process egress guard
        # (deploy/egress.py) refuses connections outside loopback and [service] egress_allow.
        from appliance.deploy import egress

        egress.install(egress.allowlist(settings))
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
    if args.command == "sip":
        import dataclasses

        from appliance.deploy.serve import serve

        sip = dataclasses.replace(settings.sip, listen=args.listen or settings.sip.listen)
        service = dataclasses.replace(settings.service, voice="sip")
        return serve(dataclasses.replace(settings, sip=sip, service=service))
    if args.command == "admin":
        return _admin(args, settings)
    if args.command == "doctor":
        from appliance.deploy import doctor

        return doctor.run(settings, as_json=args.json)
    if args.command == "serve":
        from appliance.deploy.serve import serve

        return serve(settings)
    if args.command == "say":
        return _say(args, settings)
    if args.command == "models":
        return _models(args, settings)
    if args.command == "config":
        print(json.dumps(_settings_dict(settings), indent=2, default=str))
        return 0
    if args.command == "bench":
        if args.bench_command == "calls":
            from appliance.bench import run_calls_bench

            counts = [int(n) for n in args.calls.split(",") if n.strip()]
            models = [m.strip() for m in args.stt.split(",") if m.strip()]
            return run_calls_bench(settings, counts=counts, as_json=args.json, stt_models=models)
        if args.bench_command == "startup":
            from appliance.bench import run_startup_bench

            return run_startup_bench(settings, runs=max(1, args.runs), as_json=args.json)
        if args.bench_command == "storage":
            from appliance.bench import run_storage_bench

            return run_storage_bench(settings, turns=args.turns, as_json=args.json)
        from appliance.bench import run_latency_bench

        return run_latency_bench(settings, questions=args.questions, as_json=args.json)
    if args.command == "redteam":
        return _redteam(args, settings)
    if args.command == "tools":
        return _tools(args, settings)
    if args.command == "incidents":
        return _incidents(args, settings)
    if args.command == "voice":
        return _voice(args, settings)
    if args.command in STORAGE_COMMANDS:
        return STORAGE_COMMANDS[args.command](args, settings)
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
        "stored": turn.stored,
        "error": turn.error_code or None,
        "voice_to_voice_ms": _round(turn.voice_to_voice_ms),
        "events": [event_record(e) for e in turn.events],
    }


def event_record(event: TurnEvent) -> dict[str, Any]:
    record: dict[str, Any] = {"type": event.type.value, "t_ms": round(event.t_ms, 1)}
    if event.frame_index is not None:
        record["frame"] = event.frame_index
    record.update({k: v for k, v in event.data.items() if k not in ("text", "reply")})
    return record


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _call(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.audio_io.wav import WavSink, WavSource
    from appliance.service import VoiceService, open_storage, run_call

    source = WavSource(args.wav, frame_ms=settings.audio.frame_ms, realtime=args.realtime)
    if not args.out.parent.is_dir():
        raise AudioError("audio.write", f"folder {args.out.parent} does not exist")
    storage = open_storage(settings)
    service = VoiceService.load(settings)
    sink = WavSink(args.out, settings.audio.output_sample_rate_hz)
    try:
        outcome = asyncio.run(
            run_call(service, storage, source, sink, caller_id=args.caller or None, channel="wav")
        )
    finally:
        storage.close()
    if outcome.refused:
        print(
            f"appliance: call refused ({outcome.refused}); the caller heard the busy reply",
            file=sys.stderr,
        )
        return EXIT_ERROR
    turns = outcome.turns
    if args.json:
        print(
            json.dumps(
                {
                    "call_id": outcome.call_id,
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
    print(f"call {outcome.call_id}: {args.wav} ({source.audio.duration_s:.1f} s) -> {args.out}")
    print(f"models loaded in {service.load_seconds['total']:.2f} s")
    for turn in turns:
        print(f"\nturn {turn.index}")
        print(f"  caller: {turn.transcript}")
        print(f"  agent:  {turn.reply}")
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
    from appliance.service import VoiceService, open_storage, run_call

    source = MicrophoneSource(settings.audio.input_device, settings.audio.frame_ms)
    sink = SpeakerSink(
        settings.audio.output_sample_rate_hz, settings.audio.output_device, settings.audio.frame_ms
    )
    source.check()  # fail early, before the models load, when there is no sound device
    sink.check()
    storage = open_storage(settings)
    service = VoiceService.load(settings)

    def show(event: TurnEvent) -> None:
        if event.type is EventType.TRANSCRIPT:
            print(f"caller: {event.data.get('text', '')}", flush=True)
        elif event.type is EventType.TURN_END and event.data.get("reply"):
            print(f"agent:  {event.data['reply']}", flush=True)

    async def converse() -> None:
        try:
            await run_call(service, storage, source, sink, channel="microphone", on_event=show)
        finally:
            source.close()

    print("listening; press Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a conversation ends
            asyncio.run(converse())
    finally:
        storage.close()
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
            status = check.status.value
            if spec.optional and check.status is FileStatus.MISSING:
                status = "unavailable"  # an optional extra that is not installed
            rows.append(
                {
                    "model": spec.name,
                    "role": spec.role,
                    "path": str(check.path),
                    "size_bytes": check.size_bytes,
                    "status": status,
                }
            )
    failed = [r for r in rows if r["status"] not in (FileStatus.OK.value, "unavailable")]
    if as_json:
        print(json.dumps({"manifest": str(settings.models.manifest_path), "files": rows}, indent=2))
    else:
        print(f"manifest: {settings.models.manifest_path}")
        for r in rows:
            size = f"{r['size_bytes'] / 1e6:9.1f} MB"
            print(f"{r['status']:8} {r['model']:18} {r['role']:10} {size}  {r['path']}")
        print(f"{len(rows) - len(failed)} of {len(rows)} files verified")
    return EXIT_ERROR if failed else 0


# -- storage ------------------------------------------------------------------------------------


def _actor() -> str:
    """Who runs a command, for the audit trail: the operating-system account."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _calls(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    storage = open_storage(settings)
    try:
        if args.calls_command == "list":
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
            else:
                for r in rows:
                    hold = "  [legal hold]" if r["legal_hold"] else ""
                    print(f"{r['id']}  {r['started_at']}  {r['channel']:10} {r['status']}{hold}")
            return 0
        view = storage.read_call(args.call_id, _actor(), args.reason)
    finally:
        storage.close()
    if args.json:
        print(
            json.dumps(
                {
                    "id": view.id,
                    "status": view.status,
                    "legal_hold": view.legal_hold,
                    "turns": [
                        {"index": t.index, "transcript": t.transcript, "reply": t.reply}
                        for t in view.turns
                    ],
                },
                indent=2,
            )
        )
        return 0
    print(f"call {view.id} ({view.channel}, {view.status}, started {view.started_at})")
    for t in view.turns:
        print(f"  {t.index}. caller: {t.transcript if t.transcript is not None else '(purged)'}")
        print(f"     agent:  {t.reply if t.reply is not None else '(purged)'}")
    return 0


def _erase(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    storage = open_storage(settings)
    try:
        if args.caller:
            report = storage.erase_caller(args.caller, _actor())
        else:
            report = storage.erase_call(args.call, _actor())
    finally:
        storage.close()
    print(f"erased {report.calls_erased} call(s); kept {report.calls_held} on legal hold")
    return 0


def _hold(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    storage = open_storage(settings)
    try:
        storage.set_legal_hold(args.call, None if args.release else args.reason, _actor())
    finally:
        storage.close()
    print(f"call {args.call}: {'released' if args.release else 'on legal hold'}")
    return 0


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import database_path
    from appliance.storage.keys import default_key_path
    from appliance.storage.maintenance import rotate_master_key

    def progress(done: int, total: int) -> None:
        print(f"\rre-wrapping data keys: {done}/{total}", end="", file=sys.stderr, flush=True)

    key_path = default_key_path(settings.home, settings.storage.master_key_file)
    old, new, count = rotate_master_key(database_path(settings), key_path, progress)
    print(file=sys.stderr)
    print(
        f"master key {old.fingerprint} -> {new.fingerprint}: {count} data keys re-wrapped, "
        "database re-keyed, old key destroyed"
    )
    return 0


def _retention(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.retention.job import run_retention
    from appliance.retention.policy import RetentionPolicy
    from appliance.service import open_storage

    def progress(data_class: object, done: int, total: int) -> None:
        width = 30
        filled = width * done // max(1, total)
        bar = "#" * filled + "." * (width - filled)
        print(f"\r{data_class!s:14} [{bar}] {done}/{total}", end="", file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr)

    storage = open_storage(settings)
    try:
        report = run_retention(
            storage,
            RetentionPolicy.from_settings(settings.retention),
            dry_run=args.dry_run,
            batch_size=settings.retention.batch_size,
            progress=None if args.json else progress,
        )
    finally:
        storage.close()
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": report.dry_run,
                    "now": report.now.isoformat(),
                    "purged": report.purged,
                    "due_calls": report.due_calls,
                },
                indent=2,
            )
        )
        return 0
    verb = "would purge" if report.dry_run else "purged"
    for name, count in report.purged.items():
        print(f"{verb} {count:6d} {name}")
    for call_id in report.due_calls:
        print(f"  call {call_id}")
    return 0


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage
    from appliance.storage import audit

    if args.audit_command == "verify" and args.export:
        document = json.loads(args.export.read_text(encoding="utf-8"))
        audit.verify_export(document)
        print(
            f"export {args.export}: signature and chain verified ({len(document['events'])} events)"
        )
        return 0
    storage = open_storage(settings)
    try:
        if args.audit_command == "verify":
            report = storage.verify_audit()
            if report.ok:
                print(f"audit chain intact: {report.events} events, head {report.head[:16]}")
                return 0
            print(f"audit chain BROKEN at event {report.broken_seq}: {report.reason}")
            return EXIT_ERROR
        key = audit.signing_key(settings.home / "keys" / "audit-signing.key")
        with storage.session("export audit") as session:
            document = audit.export(session, key)
            storage.audit_in(
                session,
                _actor(),
                "export",
                "audit_trail",
                "ok",
                {"events": len(document["events"])},
            )
    finally:
        storage.close()
    args.out.write_text(json.dumps(document, indent=1), encoding="utf-8")
    print(
        f"wrote {args.out}: {len(document['events'])} events, "
        f"signed by {document['public_key'][:16]}..."
    )
    return 0


def _backup(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage
    from appliance.storage.maintenance import backup

    storage = open_storage(settings)
    try:
        report = backup(storage, args.out, _actor())
    finally:
        storage.close()
    print(f"wrote {report.path} ({report.size_bytes} bytes, {report.turns} turns), encrypted")
    return 0


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import database_path
    from appliance.storage.keys import default_key_path, read_key
    from appliance.storage.maintenance import restore

    master = read_key(default_key_path(settings.home, settings.storage.master_key_file))
    turns = restore(args.file, database_path(settings), master, _actor())
    print(f"restored {args.file}: verified, {turns} turns")
    return 0


STORAGE_COMMANDS = {
    "calls": _calls,
    "erase": _erase,
    "hold": _hold,
    "keys": _keys,
    "retention": _retention,
    "audit": _audit,
    "backup": _backup,
    "restore": _restore,
}


# -- red team -----------------------------------------------------------------------------------


def _redteam(args: argparse.Namespace, settings: Settings) -> int:
    import time as _time

    from appliance.redteam import corpus, runner
    from appliance.service import VoiceService

    path = args.corpus or corpus.DEFAULT_CORPUS
    items = corpus.load(path)
    if args.sample:
        items = runner.sample(items, args.sample)
    service = VoiceService.load(settings)

    def progress(done: int, total: int) -> None:
        if not args.json:
            print(f"\rred team: {done}/{total}", end="", file=sys.stderr, flush=True)

    outcomes = runner.run(service, items, spoken=args.spoken, phone=args.phone, progress=progress)
    result = runner.report(outcomes, spoken=args.spoken, phone=args.phone, corpus=str(path))
    out = args.out or settings.home / "redteam" / _time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    summary = runner.markdown(result)
    (out / "report.md").write_text(summary, encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(file=sys.stderr)
        print(summary)
        print(f"report: {out / 'report.json'} and {out / 'report.md'}")
    return 0


# -- tools and incidents ------------------------------------------------------------------------


def _tools(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.tools.demo import DemoBank, demo_tools
    from appliance.tools.registry import ToolBox

    box = ToolBox(demo_tools(DemoBank()), frozenset(settings.tools.enabled))
    rows = [tool.describe(tool.name in box.enabled) for tool in box.tools.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'tool':20} {'enabled':8} {'level':6} {'changes':8} scopes")
    for r in rows:
        print(
            f"{r['name']:20} {'yes' if r['enabled'] else 'no':8} {r['assurance_level']:<6} "
            f"{'yes' if r['changes_data'] else 'no':8} {', '.join(r['scopes'])}"
        )
    return 0


def _admin(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses
    import getpass

    if args.admin_command == "serve":
        from appliance.admin.serve import serve

        listen = args.listen or settings.admin.listen
        return serve(
            dataclasses.replace(settings, admin=dataclasses.replace(settings.admin, listen=listen))
        )
    from appliance.admin.accounts import check_password, hash_password
    from appliance.service import open_storage

    if args.admin_command == "create-token":
        storage = open_storage(settings)
        try:
            token = storage.create_api_token(args.name, args.role, _actor())
        finally:
            storage.close()
        print(token)  # shown once: only its hash is kept
        return 0

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password (15 characters or more): ")
    check_password(password, args.username)
    storage = open_storage(settings)
    try:
        storage.create_admin_user(args.username, hash_password(password), args.role, _actor())
    finally:
        storage.close()
    print(f"user {args.username} ({args.role}) created; TOTP is enrolled at the first log-in")
    return 0


def _voice(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.engines.voiceprint import voiceprint_available
    from appliance.service import open_storage

    available = voiceprint_available()
    if args.voice_command == "status":
        state = "enabled" if settings.voiceprint.enabled else "disabled in [voiceprint]"
        print(f"voice biometrics: {'available' if available else 'unavailable'}; {state}")
        return 0 if available else EXIT_ERROR
    storage = open_storage(settings)
    try:
        if args.voice_command == "forget":
            storage.forget_voiceprint(args.caller, _actor())
            print("voice template erased")
            return 0
        from appliance.audio_io.wav import read_wav, to_pipeline_pcm
        from appliance.config.manifest import model_spec
        from appliance.core.audio import PIPELINE_SAMPLE_RATE_HZ
        from appliance.engines.voiceprint import ResemblyzerEmbedder
        from appliance.identity.voice import enrol

        embedder = ResemblyzerEmbedder(model_spec(settings, "voiceprint"))
        embeddings = [
            embedder.embed(to_pipeline_pcm(read_wav(path)), PIPELINE_SAMPLE_RATE_HZ)
            for path in args.wavs
        ]
        template = enrol(embeddings, settings.voiceprint.min_enrolment_utterances)
        storage.save_voiceprint(args.caller, template.to_bytes(), _actor())
    finally:
        storage.close()
    print(f"enrolled from {len(args.wavs)} utterances (template sealed in the database)")
    return 0


def _incidents(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    storage = open_storage(settings)
    try:
        rows = storage.list_incidents()
    finally:
        storage.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        call = r["call_id"] or "-"
        print(f"{r['opened_at']}  {r['severity']:6} {r['kind']:12} call {call}  {r['summary']}")
    if not rows:
        print("no incidents")
    return 0
