"""The caller directory: ``callers add | list | show | remove | set-pin | enrol-totp |
set-contact | lock | unlock``. Every change and every read is audited by the store.

A PIN is never an argument (the process list and the shell's history would keep it): it is read
with getpass at a terminal, else from standard input. A TOTP secret is shown once, as its
provisioning URI and a QR code, when it is made.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from typing import TYPE_CHECKING, Any

from appliance.cli.common import Commands, Row, actor, command, print_rows
from appliance.config.settings import Settings
from appliance.core.errors import DirectoryError
from appliance.core.ports import CredentialKind

if TYPE_CHECKING:
    from appliance.storage.directory import DirectoryView

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"\+?[0-9][0-9 \-.()]{2,20}")
DEFAULT_ISSUER = "Voice Appliance"


def register(commands: Commands) -> None:
    callers = commands.add_parser("callers", help="the caller directory: enrol, reset, lock")
    sub = callers.add_subparsers(dest="callers_command", required=True)
    add = command(sub, "add", add_caller, "enrol a caller by number (factors come next)")
    add.add_argument("number", help="the caller ID, E.164 (+15550100)")
    add.add_argument("--name", default="", help="a display name for staff")
    command(sub, "list", list_callers, "every enrolled caller and their factors", json_option=True)
    command(sub, "show", show_caller, "a caller's factors, lock, dates", "number", json_option=True)
    command(sub, "remove", remove_caller, "remove a caller (their key is shredded)", "number")
    command(sub, "set-pin", set_pin, "set or reset the PIN (read from standard input)", "number")
    totp = command(
        sub, "enrol-totp", enrol_totp, "make an authenticator secret, show it once", "number"
    )
    totp.add_argument("--replace", action="store_true", help="replace an enrolled secret")
    totp.add_argument("--issuer", default=DEFAULT_ISSUER, help="the name the app shows")
    totp.add_argument("--no-qr", action="store_true", help="print the URI only")
    contact = command(sub, "set-contact", set_contact, "where one-time codes go", "number")
    contact.add_argument("contact", help="an e-mail address or a phone number")
    command(sub, "lock", lock_caller, "lock a caller: every factor fails, voice too", "number")
    command(sub, "unlock", unlock_caller, "unlock a caller", "number")


def add_caller(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        storage.add_caller(args.number, args.name.strip(), actor())
    print("enrolled; next: callers set-pin, enrol-totp or set-contact")
    return 0


def list_callers(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        rows = [_row(view) for view in storage.directory(actor())]

    def line(r: Row) -> str:
        return f"{r['number']:16} {r['state']:7} {','.join(r['factors']) or '-':24} {r['name']}"

    return print_rows(rows, args.json, f"{'number':16} {'state':7} {'factors':24} name", line)


def show_caller(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        row = _row(storage.directory_entry(args.number, actor()))
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    for key, value in row.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:10} {shown or '-'}")
    return 0


def remove_caller(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        storage.remove_caller(args.number, actor())
    print("removed; the entry's key is destroyed")
    return 0


def set_pin(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.identity.directory import pin_record
    from appliance.service import open_storage

    record = pin_record(_read_pin())  # refused before the store is opened
    with open_storage(settings) as storage:
        replaced = storage.set_credential(args.number, CredentialKind.PIN, record, actor())
    print("PIN reset" if replaced else "PIN set")
    return 0


def enrol_totp(args: argparse.Namespace, settings: Settings) -> int:
    import segno  # before the secret is stored: one that cannot be shown is never kept

    from appliance.identity.directory import new_totp_secret, provisioning_uri
    from appliance.service import open_storage
    from appliance.storage.directory import normalize_number

    secret = new_totp_secret()
    with open_storage(settings) as storage:
        storage.set_credential(
            args.number, CredentialKind.TOTP, secret, actor(), replace=args.replace
        )
    uri = provisioning_uri(secret, normalize_number(args.number) or args.number, args.issuer)
    print("Scan this once with the caller's authenticator app (it is not shown again):")
    if not args.no_qr:
        segno.make(uri, error="m").terminal(out=sys.stdout, compact=True)
    print(uri)
    return 0


def set_contact(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    contact = args.contact.strip()
    if not (_EMAIL.fullmatch(contact) or _PHONE.fullmatch(contact)):
        raise DirectoryError("directory.bad_contact", "a contact is an e-mail address or a number")
    with open_storage(settings) as storage:
        storage.set_credential(args.number, CredentialKind.CONTACT, contact.encode(), actor())
    print("contact set")
    return 0


def lock_caller(args: argparse.Namespace, settings: Settings) -> int:
    return _lock(args, settings, locked=True)


def unlock_caller(args: argparse.Namespace, settings: Settings) -> int:
    return _lock(args, settings, locked=False)


def _lock(args: argparse.Namespace, settings: Settings, *, locked: bool) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        changed = storage.set_locked(args.number, locked, actor())
    state = "locked" if locked else "unlocked"
    print(state if changed else f"already {state}")
    return 0


def _read_pin() -> str:
    """At a terminal, asked twice without echo; else the first line of standard input."""
    if sys.stdin.isatty():
        first = getpass.getpass("New PIN: ")
        if getpass.getpass("Again: ") != first:
            raise DirectoryError("directory.pin_mismatch", "the two PINs differ")
        return first
    return sys.stdin.readline().strip()


def _row(view: DirectoryView) -> dict[str, Any]:
    return {
        "number": view.number,
        "name": view.name,
        "state": view.state.value,
        "factors": list(view.factors),
        "created_at": view.created_at.isoformat(timespec="seconds"),
        "updated_at": view.updated_at.isoformat(timespec="seconds"),
    }
