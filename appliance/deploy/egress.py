"""Egress lockdown inside the process: no library may open a connection off the premises.

A Python audit hook (PEP 578, ``sys.addaudithook``) sees every ``socket.connect``,
``socket.sendto`` and ``socket.getaddrinfo`` of every thread and refuses, with PermissionError,
any destination that is not loopback, a Unix socket, or in the configured allowlist (the SIP
trunks and peers). The host firewall (``IPAddressDeny=`` in the units) does the same one level
down; this layer holds even when the host's is open. An audit hook cannot be removed, so the
guard lasts for the life of the process.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from appliance.config.settings import Settings

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", ""})


class EgressGuard:
    def __init__(
        self,
        allow: Iterable[str] = (),
        on_block: Callable[[str], None] | None = None,
    ) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(a, strict=False) for a in allow
        )
        self.on_block = on_block
        self.blocked = 0
        self._local = threading.local()

    def allowed_host(self, host: str) -> bool:
        host = host.strip("[]").split("%", 1)[0]
        if host.lower() in _LOCAL_NAMES:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # a name to resolve: the lookup itself would leave the premises
        if address.is_loopback or address.is_unspecified:
            return True
        return any(address in network for network in self.networks)

    def check(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.getaddrinfo":
            host = args[0]
        elif event in ("socket.connect", "socket.sendto"):
            sock, address = args[0], args[1]
            if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
                return  # Unix sockets (journald, PulseAudio) stay on the host
            host = address[0] if isinstance(address, tuple) else address
        else:
            return
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if host is None or self.allowed_host(str(host)):
            return
        self.blocked += 1
        if not getattr(self._local, "busy", False):  # the callback may not recurse into us
            self._local.busy = True
            try:
                log.warning("egress blocked: %s to %s", event, host)
                if self.on_block is not None:
                    self.on_block(f"{event} {host}")
            finally:
                self._local.busy = False
        raise PermissionError(f"egress to {host} is not allowed from this appliance")


def allowlist(settings: Settings) -> tuple[str, ...]:
    """Where this appliance may connect outside loopback: ``[service] egress_allow``, the SIP
    peers of ``[sip] allowed_peers`` (answers and media go back to them) and the registrar."""
    registrar = settings.sip.registrar.rpartition(":")[0].strip("[]")
    peers = (*settings.service.egress_allow, *settings.sip.allowed_peers)
    return tuple(dict.fromkeys((*peers, registrar) if registrar else peers))


_installed: EgressGuard | None = None


def install(
    allow: Iterable[str] = (), on_block: Callable[[str], None] | None = None
) -> EgressGuard:
    """Install the guard once per process (later calls return it; the allowlist stays)."""
    global _installed
    if _installed is None:
        guard = EgressGuard(allow, on_block)

        def hook(event: str, args: tuple[Any, ...]) -> None:
            if event.startswith("socket."):
                guard.check(event, args)

        sys.addaudithook(hook)
        _installed = guard
    return _installed


def installed() -> EgressGuard | None:
    return _installed
