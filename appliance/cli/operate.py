"""Running the appliance: ``serve`` (the systemd unit's command), ``sip``, ``admin`` (the panel
and its accounts) and ``doctor``."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import sys

from appliance.cli.common import Commands, actor, command
from appliance.config.settings import Settings

ROLES = ["admin", "operator", "auditor"]


def register(commands: Commands) -> None:
    command(
        commands,
        "serve",
        serve,
        "the voice service in the foreground (systemd notify, clean SIGTERM)",
    )
    sip = command(commands, "sip", sip_line, "answer phone calls over SIP (UDP) in the foreground")
    sip.add_argument("--listen", help="HOST:PORT (default: [sip] listen)")
    admin = commands.add_parser("admin", help="the admin web panel: users, serve")
    admin_cmd = admin.add_subparsers(dest="admin_command", required=True)
    create_user = command(
        admin_cmd, "create-user", create_admin_user, "a panel account (first admin too)"
    )
    create_user.add_argument("--username", required=True)
    create_user.add_argument("--role", choices=ROLES, default="admin")
    create_user.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    create_token = command(
        admin_cmd, "create-token", create_api_token, "a bearer token of the JSON API"
    )
    create_token.add_argument("--name", required=True)
    create_token.add_argument("--role", choices=ROLES, required=True)
    for name, run, text in (
        ("disable-user", disable_admin_user, "refuse an account's log-ins and end its sessions"),
        ("enable-user", enable_admin_user, "let a disabled account log in again"),
        ("delete-user", delete_admin_user, "delete an account (and its TOTP secret)"),
    ):
        command(admin_cmd, name, run, text).add_argument("--username", required=True)
    command(admin_cmd, "list-users", list_admin_users, "the panel accounts and their state")
    enrolment = command(
        admin_cmd,
        "enrolment-code",
        new_enrolment_code,
        "a new one-time enrolment code (the authenticator is enrolled again)",
    )
    enrolment.add_argument("--username", required=True)
    enrolment.add_argument(
        "--directory",
        action="store_true",
        help="for a directory ([ldap]) user, before or after their first log-in",
    )
    revoke = command(admin_cmd, "revoke-token", revoke_api_token, "revoke the API tokens of a name")
    revoke.add_argument("--name", required=True)
    command(admin_cmd, "list-tokens", list_api_tokens, "the API tokens (names, roles, state)")
    admin_serve = command(admin_cmd, "serve", serve_admin, "the panel over HTTPS in the foreground")
    admin_serve.add_argument("--listen", help="HOST:PORT (default: [admin] listen)")
    doctor = command(
        commands, "doctor", run_doctor, "self-checks: PASS/FAIL/SKIP each, exit 1 on FAIL"
    )
    doctor.add_argument("--json", action="store_true")


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.deploy.serve import serve as serve_voice

    return serve_voice(settings)


def sip_line(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.deploy.serve import serve as serve_voice

    sip = dataclasses.replace(settings.sip, listen=args.listen or settings.sip.listen)
    service = dataclasses.replace(settings.service, voice="sip")
    return serve_voice(dataclasses.replace(settings, sip=sip, service=service), foreground=True)


def run_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.deploy import doctor

    return doctor.run(settings, as_json=args.json)


def serve_admin(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.admin.serve import serve as serve_panel

    listen = args.listen or settings.admin.listen
    admin = dataclasses.replace(settings.admin, listen=listen)
    return serve_panel(dataclasses.replace(settings, admin=admin))


def create_api_token(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        token = storage.create_api_token(args.name, args.role, actor())
    print(token)  # shown once: only its hash is kept
    return 0


def disable_admin_user(args: argparse.Namespace, settings: Settings) -> int:
    return _set_disabled(args, settings, disabled=True)


def enable_admin_user(args: argparse.Namespace, settings: Settings) -> int:
    return _set_disabled(args, settings, disabled=False)


def _set_disabled(args: argparse.Namespace, settings: Settings, *, disabled: bool) -> int:
    from appliance.admin.accounts import username_of
    from appliance.service import open_storage

    username = username_of(args.username)
    with open_storage(settings) as storage:
        found = storage.set_admin_disabled(username, disabled, actor())
    if not found:
        print(f"appliance: error no user {username!r}", file=sys.stderr)
        return 1
    print(f"user {username} {'disabled' if disabled else 'enabled'}")
    return 0


def delete_admin_user(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.admin.accounts import username_of
    from appliance.service import open_storage

    username = username_of(args.username)
    with open_storage(settings) as storage:
        found = storage.delete_admin_user(username, actor())
    if not found:
        print(f"appliance: error no user {username!r}", file=sys.stderr)
        return 1
    print(f"user {username} deleted")
    return 0


def list_admin_users(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        users = storage.admin_users()
    for user in users:
        state = "disabled" if user.disabled else "enabled"
        totp = "totp" if user.totp_secret is not None else "no totp yet"
        print(f"{user.username:24} {user.role:9} {state:9} {totp}")
    return 0


def revoke_api_token(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        revoked = storage.revoke_api_token(args.name, actor())
    if not revoked:
        print(f"appliance: error no live token named {args.name!r}", file=sys.stderr)
        return 1
    print(f"revoked {revoked} token(s) named {args.name}")
    return 0


def list_api_tokens(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        tokens = storage.api_tokens()
    for token in tokens:
        state = "revoked" if token.revoked else "live"
        print(f"{token.name:24} {token.role:9} {state:8} created {token.created_at:%Y-%m-%d}")
    return 0


def create_admin_user(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.admin.accounts import check_password, hash_password, username_of
    from appliance.service import open_storage

    username = username_of(args.username)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password (15 characters or more): ")
    check_password(password, username)
    with open_storage(settings) as storage:
        code = storage.create_admin_user(username, hash_password(password), args.role, actor())
    print(
        f"user {username} ({args.role}) created; its authenticator is enrolled at the first "
        "log-in with this enrolment code (shown once, good once; give it apart from the "
        "password):"
    )
    print(code)
    return 0


def new_enrolment_code(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.admin.accounts import username_of
    from appliance.service import open_storage

    username = username_of(args.username)
    if args.directory:
        from appliance.admin.directory import shadow_name

        if not settings.ldap.enabled:
            print("appliance: error [ldap] url is not set: no directory users", file=sys.stderr)
            return 1
        username = shadow_name(username)
        with open_storage(settings) as storage:
            code: str | None = storage.directory_enrolment_code(username, actor())
    else:
        with open_storage(settings) as storage:
            code = storage.new_enrolment_code(username, actor())
    if code is None:
        print(f"appliance: error no user {username!r}", file=sys.stderr)
        return 1
    print(f"user {username}: authenticator to enrol again at the next log-in, with this code:")
    print(code)
    return 0
