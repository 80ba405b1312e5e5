"""The stored data: ``erase``, ``hold``, ``keys rotate``, ``retention run``, ``audit``,
``backup``, ``restore`` and ``incidents``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from appliance.cli.common import EXIT_ERROR, Commands, actor, command
from appliance.config.settings import Settings


def register(commands: Commands) -> None:
    erase = command(
        commands, "erase", erase_data, "erase a caller's or a call's data (crypto-shred)"
    )
    target = erase.add_mutually_exclusive_group(required=True)
    target.add_argument("--caller", help="the caller ID (phone number) as the caller gave it")
    target.add_argument("--call", help="a call id")
    hold = command(commands, "hold", legal_hold, "put a call on legal hold, or release it")
    hold.add_argument("--call", required=True)
    hold_how = hold.add_mutually_exclusive_group(required=True)
    hold_how.add_argument("--reason", help="why the call must be kept")
    hold_how.add_argument("--release", action="store_true")
    keys = commands.add_parser("keys", help="the master key")
    keys_cmd = keys.add_subparsers(dest="keys_command", required=True)
    command(
        keys_cmd, "rotate", rotate_key, "new master key; re-wrap every data key, re-key the file"
    )
    retention = commands.add_parser("retention", help="purge data past its retention period")
    retention_cmd = retention.add_subparsers(dest="retention_command", required=True)
    retention_run = command(retention_cmd, "run", run_retention, "purge (idempotent, resumable)")
    retention_run.add_argument("--dry-run", action="store_true", help="list what would go")
    retention_run.add_argument("--json", action="store_true")
    audit_cmd = commands.add_parser("audit", help="the tamper-evident audit trail")
    audit_sub = audit_cmd.add_subparsers(dest="audit_command", required=True)
    audit_verify = command(audit_sub, "verify", verify_audit, "walk the hash chain")
    audit_verify.add_argument("--export", type=Path, help="verify a signed export instead")
    audit_verify.add_argument(
        "--key",
        help="the public key (hex) the export must be signed with (default: this appliance's, "
        "as `audit key` prints it); the key an export names is never trusted",
    )
    command(audit_sub, "key", show_audit_key, "print the audit signing public key, to pin")
    audit_export = command(audit_sub, "export", export_audit, "write a signed (Ed25519) export")
    audit_export.add_argument("--out", type=Path, required=True)
    backup = command(commands, "backup", run_backup, "an encrypted, verified copy of the database")
    backup.add_argument("--out", type=Path, required=True)
    restore = command(commands, "restore", run_restore, "check a backup, then put it in place")
    restore.add_argument("file", type=Path)
    incidents = command(commands, "incidents", list_incidents, "incidents opened by the guards")
    incidents.add_argument("--json", action="store_true")


def erase_data(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        if args.caller:
            report = storage.erase_caller(args.caller, actor())
        else:
            report = storage.erase_call(args.call, actor())
    print(f"erased {report.calls_erased} call(s); kept {report.calls_held} on legal hold")
    return 0


def legal_hold(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        storage.set_legal_hold(args.call, None if args.release else args.reason, actor())
    print(f"call {args.call}: {'released' if args.release else 'on legal hold'}")
    return 0


def rotate_key(args: argparse.Namespace, settings: Settings) -> int:
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


def run_retention(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.retention.job import run_retention as purge
    from appliance.retention.policy import RetentionPolicy
    from appliance.service import open_storage

    def progress(data_class: object, done: int, total: int) -> None:
        width = 30
        filled = width * done // max(1, total)
        bar = "#" * filled + "." * (width - filled)
        print(f"\r{data_class!s:14} [{bar}] {done}/{total}", end="", file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr)

    with open_storage(settings) as storage:
        report = purge(
            storage,
            RetentionPolicy.from_settings(settings.retention),
            dry_run=args.dry_run,
            batch_size=settings.retention.batch_size,
            progress=None if args.json else progress,
        )
    if args.json:
        document = {
            "dry_run": report.dry_run,
            "now": report.now.isoformat(),
            "purged": report.purged,
            "due_calls": report.due_calls,
        }
        print(json.dumps(document, indent=2))
        return 0
    verb = "would purge" if report.dry_run else "purged"
    for name, count in report.purged.items():
        print(f"{verb} {count:6d} {name}")
    for call_id in report.due_calls:
        print(f"  call {call_id}")
    return 0


def verify_audit(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import audit_signing_key_path, open_storage
    from appliance.storage import audit

    if args.export:
        document = json.loads(args.export.read_text(encoding="utf-8"))
        pinned = args.key or audit.public_key_hex(
            audit.signing_key(audit_signing_key_path(settings))
        )
        audit.verify_export(document, pinned)
        events = len(document["events"])
        print(
            f"export {args.export}: signature (key {pinned[:16]}...) and chain verified "
            f"({events} events)"
        )
        return 0
    with open_storage(settings) as storage:
        report = storage.verify_audit()
    if report.ok:
        print(f"audit chain intact: {report.events} events, head {report.head[:16]}")
        return 0
    print(f"audit chain BROKEN at event {report.broken_seq}: {report.reason}")
    return EXIT_ERROR


def show_audit_key(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import audit_signing_key_path
    from appliance.storage import audit

    print(audit.public_key_hex(audit.signing_key(audit_signing_key_path(settings))))
    return 0


def export_audit(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import audit_signing_key_path, open_storage
    from appliance.storage import audit

    with open_storage(settings) as storage:
        key = audit.signing_key(audit_signing_key_path(settings))
        with storage.session("export audit") as session:
            document = audit.export(session, key, storage.checkpoint)
            details = {"events": len(document["events"])}
            storage.audit_in(session, actor(), "export", "audit_trail", "ok", details)
    args.out.write_text(json.dumps(document, indent=1), encoding="utf-8")
    print(
        f"wrote {args.out}: {len(document['events'])} events, "
        f"signed by {document['public_key'][:16]}..."
    )
    return 0


def run_backup(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage
    from appliance.storage.maintenance import backup

    with open_storage(settings) as storage:
        report = backup(storage, args.out, actor())
    print(f"wrote {report.path} ({report.size_bytes} bytes, {report.turns} turns), encrypted")
    return 0


def run_restore(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import audit_checkpoint, database_path
    from appliance.storage.keys import default_key_path, read_key
    from appliance.storage.maintenance import restore

    master = read_key(default_key_path(settings.home, settings.storage.master_key_file))
    checkpoint = audit_checkpoint(settings)
    turns = restore(args.file, database_path(settings), master, actor(), checkpoint)
    print(f"restored {args.file}: verified, {turns} turns")
    return 0


def list_incidents(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        rows = storage.list_incidents()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        call = r["call_id"] or "-"
        print(f"{r['opened_at']}  {r['severity']:6} {r['kind']:12} call {call}  {r['summary']}")
    if not rows:
        print("no incidents")
    return 0
