"""The stored data: ``erase``, ``hold``, ``keys rotate|recovery-code|recover``, ``retention
run``, ``audit``, ``backup`` and ``restore`` (``incidents`` has its own area)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.cli.common import EXIT_ERROR, Commands, actor, command
from appliance.config.settings import Settings
from appliance.core.errors import StorageError

if TYPE_CHECKING:
    from appliance.storage.recovery import Recovery


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
    code = command(
        keys_cmd, "recovery-code", recovery_code, "make the master key's recovery code (shown once)"
    )
    code.add_argument("--replace", action="store_true", help="replace the existing code")
    recover = command(
        keys_cmd, "recover", recover_key, "write the master key back from a recovery code (stdin)"
    )
    recover.add_argument(
        "--sealed", type=Path, required=True, help="the sealed key: a backup's .recovery file"
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
    command(audit_sub, "anchor", anchor_audit, "sign the first checkpoint of a chain (an upgrade)")
    audit_export = command(audit_sub, "export", export_audit, "write a signed (Ed25519) export")
    audit_export.add_argument("--out", type=Path, required=True)
    backup = command(commands, "backup", run_backup, "an encrypted, verified copy of the database")
    where = backup.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="the backup file")
    where.add_argument("--dir", type=Path, help="a folder: a file named by the time in it")
    backup.add_argument("--keep", type=int, default=0, help="with --dir: keep the N newest")
    backup.add_argument(
        "--scheduled",
        action="store_true",
        help="as the backup timer runs it: on a PostgreSQL store, whose backups are the "
        "server's own (pg_dump), say so and write nothing, instead of failing",
    )
    restore = command(commands, "restore", run_restore, "check a backup, then put it in place")
    restore.add_argument("file", type=Path)


def erase_data(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        if args.caller:
            report = storage.erase_caller(args.caller, actor())
        else:
            report = storage.erase_call(args.call, actor())
    removed = "; directory entry removed (credentials shredded)" if report.directory_removed else ""
    print(f"erased {report.calls_erased} call(s); kept {report.calls_held} on legal hold{removed}")
    return 0


def legal_hold(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        storage.set_legal_hold(args.call, None if args.release else args.reason, actor())
    print(f"call {args.call}: {'released' if args.release else 'on legal hold'}")
    return 0


def rotate_key(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import storage_opener
    from appliance.storage.keys import default_key_path
    from appliance.storage.maintenance import rotate_master_key

    def progress(done: int, total: int) -> None:
        print(f"\rre-wrapping data keys: {done}/{total}", end="", file=sys.stderr, flush=True)

    key_path = default_key_path(settings.home, settings.storage.master_key_file)
    old, new, count = rotate_master_key(storage_opener(settings), key_path, progress)
    print(file=sys.stderr)
    resealed = recovery_of(settings).reseal(new) is not None
    print(
        f"master key {old.fingerprint} -> {new.fingerprint}: {count} data keys re-wrapped, "
        + ("" if settings.storage.url else "database re-keyed, ")
        + "old key destroyed"
        + ("; sealed again to the recovery code" if resealed else "")
    )
    return 0


def recovery_of(settings: Settings) -> Recovery:
    """The recovery code's public key beside the master key's file when one is configured
    (``/etc/appliance`` installed; the backup unit gets it as a credential), else in
    ``APPLIANCE_HOME/keys``; the sealed master key in ``APPLIANCE_HOME/keys``."""
    from appliance.storage.keys import key_file
    from appliance.storage.recovery import PUBLIC_FILE, SEALED_FILE, Recovery

    configured = settings.storage.master_key_file
    beside = str(Path(configured).with_name(PUBLIC_FILE)) if configured else ""
    public = key_file(settings.home, beside, "appliance-recovery-pub", PUBLIC_FILE)
    return Recovery(public, settings.home / "keys" / SEALED_FILE)


def recovery_code(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    recovery = recovery_of(settings)
    if recovery.set_up and not args.replace:
        print(
            "appliance: error a recovery code exists already; --replace makes a new one "
            "(the old code then opens only the backups made before)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    with open_storage(settings) as storage:
        assert storage.master is not None
        code = recovery.set_up_new(storage.master)
        storage.log_event(actor(), "recovery_code", "master_key", "ok", {"replaced": args.replace})
    print("Recovery code for the master key (shown once; keep it offline, apart from backups):")
    print(code)
    return 0


def recover_key(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.storage.keys import default_key_path, write_key
    from appliance.storage.recovery import open_sealed

    key_path = default_key_path(settings.home, settings.storage.master_key_file)
    if key_path.exists():
        print(
            f"appliance: error {key_path} exists; recovery writes a lost key only", file=sys.stderr
        )
        return EXIT_ERROR
    try:
        blob = args.sealed.read_bytes()
    except OSError as exc:
        print(f"appliance: error cannot read {args.sealed}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    master = write_key(key_path, open_sealed(blob, sys.stdin.readline()))
    print(f"master key {master.fingerprint} written to {key_path}; now `appliance restore`")
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


def anchor_audit(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        anchored = storage.anchor_audit()
        report = storage.verify_audit()
    if anchored is not None:
        print(f"audit chain anchored: signed checkpoint at event {anchored}")
    elif report.ok:
        print("audit chain intact; its checkpoint exists already (or there is nothing to sign)")
    else:
        print(f"audit chain BROKEN at event {report.broken_seq}: {report.reason}")
        return EXIT_ERROR
    return 0


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
    from appliance.storage.maintenance import backup, prune_backups
    from appliance.storage.recovery import Recovery

    if args.scheduled and settings.storage.url:
        print(
            "backup: the store is a PostgreSQL server; back it up with the server's tools "
            "(pg_dump --format=custom, pg_basebackup): nothing written",
            file=sys.stderr,
        )
        return 0
    target = args.out
    if args.dir is not None:
        target = args.dir / f"appliance-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}.db"
    with open_storage(settings) as storage:
        report = backup(storage, target, actor())
        assert storage.master is not None
        blob = recovery_of(settings).reseal(storage.master)
    print(f"wrote {report.path} ({report.size_bytes} bytes, {report.turns} turns), encrypted")
    if blob is not None:
        print(f"wrote {Recovery.write_beside(target, blob)}: its key, sealed to the recovery code")
    if args.dir is not None and args.keep > 0:
        for old in prune_backups(args.dir, args.keep):
            print(f"removed {old}")
    return 0


def run_restore(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import audit_checkpoint, database_path
    from appliance.storage.keys import default_key_path, read_key
    from appliance.storage.maintenance import SERVER_RESTORE, restore

    if settings.storage.url:
        raise StorageError("storage.restore", SERVER_RESTORE)
    master = read_key(default_key_path(settings.home, settings.storage.master_key_file))
    checkpoint = audit_checkpoint(settings)
    turns = restore(args.file, database_path(settings), master, actor(), checkpoint)
    print(f"restored {args.file}: verified, {turns} turns")
    return 0
