"""Security events to the SIEM: ``siem forward [--once]`` (the appliance-siem unit's command)
and ``siem status``. The forwarder runs on its own (deploy/siem.py): a call never waits on it."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from appliance.cli.common import EXIT_ERROR, Commands, command
from appliance.config.settings import Settings


def register(commands: Commands) -> None:
    siem = commands.add_parser("siem", help="audit events and incidents to the SIEM (syslog TLS)")
    sub = siem.add_subparsers(dest="siem_command", required=True)
    forward = command(
        sub, "forward", forward_events, "send the events to [siem] collector until SIGTERM"
    )
    forward.add_argument(
        "--once", action="store_true", help="send what the store holds now, then exit"
    )
    command(sub, "status", show_status, "what was delivered, what waits in the queue")


def forward_events(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.deploy.siem import Forwarder
    from appliance.service import open_storage

    if not settings.siem.enabled:
        print("[siem] is off (enabled = false): nothing to forward")
        return 0
    with open_storage(settings) as storage:
        forwarder = Forwarder(storage, settings.siem, settings.home)
        if args.once:
            sent = forwarder.drain()
            print(f"delivered {sent} events")
            return 0
        stop = threading.Event()

        def stopping(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stopping)
        forwarder.run(stop)
    return 0


def show_status(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.deploy.siem import DiskQueue

    queue = DiskQueue(settings.home / "siem", settings.siem.queue_max_bytes)
    state = queue.state()
    pending = len(queue.pending(state.delivered))
    print(
        f"delivered up to event {state.delivered}, queued up to {state.queued}, "
        f"{pending} waiting ({queue.size()} of {settings.siem.queue_max_bytes} bytes)"
        + ("; the queue is full" if state.full else "")
    )
    return EXIT_ERROR if state.full else 0
