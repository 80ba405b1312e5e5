"""systemd's notify protocol (sd_notify(3)), in the standard library: READY, WATCHDOG, STOPPING.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op, so the same process runs in a
terminal, a container or a unit.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send one state line (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=...``)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog timeout systemd set for this process (``WatchdogSec=``), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
