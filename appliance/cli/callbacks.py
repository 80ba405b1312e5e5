"""Callback requests for staff: ``callbacks list [--json] [--state STATE] | mark-called ID |
close ID``. The list opens the callers' numbers and is audited; every change is audited (action,
request id and pseudonym, never the number)."""

from __future__ import annotations

import argparse

from appliance.cli.common import Commands, Row, actor, command, print_rows
from appliance.config.settings import Settings
from appliance.core.ports import CallbackState


def register(commands: Commands) -> None:
    callbacks = commands.add_parser("callbacks", help="callers waiting to be called back")
    sub = callbacks.add_subparsers(dest="callbacks_command", required=True)
    listing = command(
        sub, "list", list_callbacks, "the callback requests, oldest first", json_option=True
    )
    listing.add_argument("--state", choices=[s.value for s in CallbackState])
    command(sub, "mark-called", mark_called, "a member of staff called the caller back", "id")
    command(sub, "close", close_callback, "close a request (done, or not to be called)", "id")


def list_callbacks(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    state = CallbackState(args.state) if args.state else None
    with open_storage(settings) as storage:
        rows = [
            {
                "id": v.id,
                "number": v.number,
                "state": v.state.value,
                "reason": v.reason,
                "call_id": v.call_id,
                "created_at": v.created_at.isoformat(timespec="seconds"),
                "changed_at": v.changed_at.isoformat(timespec="seconds"),
                "changed_by": v.changed_by,
            }
            for v in storage.callbacks(actor(), state)
        ]

    def line(r: Row) -> str:
        return (
            f"{r['id']:36} {r['state']:11} {r['number'] or '-':16} {r['created_at']:19} "
            f"{r['changed_by']}"
        )

    header = f"{'id':36} {'state':11} {'number':16} {'created (UTC)':19} changed by"
    return print_rows(rows, args.json, header, line)


def mark_called(args: argparse.Namespace, settings: Settings) -> int:
    return _change(args.id, CallbackState.CALLED_BACK, settings)


def close_callback(args: argparse.Namespace, settings: Settings) -> int:
    return _change(args.id, CallbackState.CLOSED, settings)


def _change(request_id: str, state: CallbackState, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        storage.set_callback_state(request_id, state, actor())
    print(f"{request_id}: {state.value}")
    return 0
