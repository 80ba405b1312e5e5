"""Egress lockdown inside the process: no library may open a connection off the premises.

A Python audit hook (PEP 578, ``sys.addaudithook``) sees, in every thread, each socket made,
connected or sent on with an address (``connect``, ``sendto``, ``sendmsg``, so also TCP fast
open), each name or address lookup (``getaddrinfo``, ``gethostbyname(_ex)``,
``gethostbyaddr``, ``getnameinfo``) and each C symbol looked up through ``ctypes``. It refuses,
with PermissionError, any destination that is not loopback, a Unix socket, or in the
configured allowlist (the SIP trunks and peers); packet sockets, raw IP sockets and the C
library's own network calls through ``ctypes``; and, in the service, any child process (a
child runs without the hook). A socket's family is read from the socket itself, not from an
attribute a subclass may override; a socket already connected off the premises when the guard
is installed is shut down.

What an audit hook cannot see (native code calling the C library, a child process of the
foreground CLI) is stopped below Python, for the service, by its unit: ``IPAddressDeny=any``
with only loopback and the peers allowed, host names from files only and no reachable resolver
(``systemd/``); ``appliance doctor`` checks both layers. An audit hook cannot be removed, so
the guard lasts for the life of the process.
"""

from __future__ import annotations

import _socket
import ipaddress
import logging
import os
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from appliance.config.settings import Settings

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", ""})
_INTERNET = (socket.AF_INET, socket.AF_INET6)
_LOOKUPS = {  # event -> the position of the host or address in its arguments
    "socket.getaddrinfo": 0,
    "socket.gethostbyname": 0,  # also gethostbyname_ex
    "socket.gethostbyaddr": 0,
    "socket.getnameinfo": 0,
}
_SENDS = ("socket.connect", "socket.sendto", "socket.sendmsg")
_CHILDREN = (
    "subprocess.Popen",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "pty.spawn",
)
# What ctypes.util.find_library runs to find a shared library (sounddevice does, to load
# PortAudio when the microphone opens): tools that read files and open no socket.
_LIBRARY_LOOKUP = frozenset({"ldconfig", "gcc", "cc", "ld", "objdump"})
# The C library's network calls: through ctypes they would bypass every event above.
_NETWORK_SYMBOLS = frozenset(
    {
        "connect",
        "sendto",
        "sendmsg",
        "sendmmsg",
        "getaddrinfo",
        "gethostbyname",
        "gethostbyname2",
        "gethostbyname_r",
        "gethostbyname2_r",
        "gethostbyaddr",
        "gethostbyaddr_r",
        "getnameinfo",
        "res_query",
        "res_search",
        "res_nquery",
        "res_nsearch",
        "res_send",
        "res_nsend",
        "getaddrinfo_a",
        "syscall",  # any system call by number, connect(2) among them
        "dlsym",  # a symbol by name, past this list
        "dlvsym",
    }
)
# ... with the C library's internal aliases (__connect, __sendto, __res_query, ...)
_NETWORK_SYMBOLS = _NETWORK_SYMBOLS | {f"__{name}" for name in _NETWORK_SYMBOLS}
# The C library's ways to start a process: refused where children are (the service).
_PROCESS_SYMBOLS = frozenset(
    {"system", "popen", "fork", "vfork", "clone", "clone3", "posix_spawn", "posix_spawnp",
     "execve", "execv", "execvp", "execvpe", "execl", "execlp", "execle", "fexecve"}
)  # fmt: skip


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
        self.children = True
        """Whether this process may start others (the service may not: ``forbid_children``)."""
        self._local = threading.local()

    def forbid_children(self) -> None:
        """From now on no child process: one would run without this hook."""
        self.children = False

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
        refused = self._refused(event, args)
        if refused is None:
            return
        self.blocked += 1
        if not getattr(self._local, "busy", False):  # the callback may not recurse into us
            self._local.busy = True
            try:
                log.warning("egress blocked: %s to %s", event, refused)
                if self.on_block is not None:
                    self.on_block(f"{event} {refused}")
            finally:
                self._local.busy = False
        raise PermissionError(f"egress to {refused} is not allowed from this appliance")

    def _refused(self, event: str, args: tuple[Any, ...]) -> str | None:
        """What ``event`` would reach that it may not, or None when it stays."""
        if event in _LOOKUPS:
            host = _host_of(args[_LOOKUPS[event]])
            return None if host is None or self.allowed_host(host) else host
        if event in _SENDS:
            sock, address = args[0], args[1]
            if address is None or _family(sock) not in _INTERNET:
                return None  # connected already (checked then), or a Unix socket on the host
            host = _host_of(address)
            return None if host is None or self.allowed_host(host) else host
        if event == "socket.__new__":
            family, kind = args[1], args[2]
            if family == getattr(socket, "AF_PACKET", -1):
                return "a packet socket"
            if family in _INTERNET and kind != -1 and kind & 0xF == socket.SOCK_RAW:
                return "a raw IP socket"
            return None
        if event in ("ctypes.dlsym", "ctypes.dlsym/handle"):
            name = args[1]
            if isinstance(name, bytes):
                name = name.decode("ascii", "replace")
            if name in _NETWORK_SYMBOLS or (name in _PROCESS_SYMBOLS and not self.children):
                return f"the C library's {name}"
            return None
        if event in _CHILDREN and not self.children:
            if _program(event, args) in _LIBRARY_LOOKUP:
                return None  # ctypes.util.find_library (sounddevice loading PortAudio)
            return "a child process"
        return None

    def shut_outside_sockets(self) -> int:
        """Shut down every socket of this process already connected off the premises (made
        before the guard was installed); returns how many."""
        shut = 0
        for entry in _open_descriptors():
            try:
                if not stat.S_ISSOCK(os.fstat(entry).st_mode):
                    continue
                with socket.socket(fileno=os.dup(entry)) as sock:
                    if _family(sock) not in _INTERNET:
                        continue
                    try:
                        peer = sock.getpeername()
                    except OSError:
                        continue  # not connected
                    if self.allowed_host(str(peer[0])):
                        continue
                    sock.shutdown(socket.SHUT_RDWR)  # the original shares this connection
            except OSError:
                continue
            shut += 1
            self.blocked += 1
            log.warning("egress blocked: a socket connected before the guard, to %s", peer[0])
        return shut


def _program(event: str, args: tuple[Any, ...]) -> str:
    """The name of the program a child-process event would run ("" when it cannot tell)."""
    if event == "subprocess.Popen":  # (executable, args, cwd, env)
        executable, argv = args[0], args[1]
        if executable is None and isinstance(argv, list | tuple) and argv:
            executable = argv[0]
        elif executable is None:
            executable = argv
    elif event in ("os.exec", "os.posix_spawn", "os.spawn") and args:
        executable = args[0] if event != "os.spawn" else args[1] if len(args) > 1 else ""
    else:
        return ""
    if isinstance(executable, bytes):
        executable = executable.decode("utf-8", "replace")
    return os.path.basename(str(executable)) if isinstance(executable, str | os.PathLike) else ""


def _family(sock: object) -> int | None:
    """The socket's real address family (a subclass may override ``.family``)."""
    if isinstance(sock, _socket.socket):
        family: int = _socket.socket.family.__get__(sock)
        return family
    return None


def _host_of(value: object) -> str | None:
    """The host of a lookup or an address argument (a string, bytes, or a tuple's first)."""
    if isinstance(value, tuple):
        value = value[0] if value else None
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def _open_descriptors() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return []


def allowlist(settings: Settings) -> tuple[str, ...]:
    """Where this appliance may connect outside loopback: ``[service] egress_allow``, the SIP
    peers of ``[sip] allowed_peers`` (answers and media go back to them), the registrar, the
    SMTP relay of one-time codes (``[notify] relay``), the services of HTTP tools (the
    addresses of ``[tools] allowed_hosts``), the directory of panel log-ins (``[ldap] url``)
    when it is on, the SIEM's collector (``[siem] collector``), the language model and the speech
    recognizer on the GPU hosts (``[llm] remote_url``, ``[stt] remote_address``) and the
    PostgreSQL server (``[storage] url``) when it is on another machine."""
    registrar = settings.sip.registrar.rpartition(":")[0].strip("[]")
    relay = settings.notify.relay.strip("[]")
    directory = settings.ldap.address[0] if settings.ldap.enabled else ""
    peers = (*settings.service.egress_allow, *settings.sip.allowed_peers)
    services = tuple(host.ip for host in settings.tools.allowed_hosts)
    siem = settings.siem.host if settings.siem.enabled else ""
    remote_llm, remote_stt = settings.llm.remote_host, settings.stt.remote_host
    database = settings.storage.server_address
    named = tuple(
        address
        for address in (
            registrar,
            relay,
            directory,
            *services,
            siem,
            remote_llm,
            remote_stt,
            database,
        )
        if address
    )
    return tuple(dict.fromkeys((*peers, *named)))


_installed: EgressGuard | None = None


def install(
    allow: Iterable[str] = (), on_block: Callable[[str], None] | None = None
) -> EgressGuard:
    """Install the guard once per process (later calls return it; the allowlist stays)."""
    global _installed
    if _installed is None:
        guard = EgressGuard(allow, on_block)
        guard.shut_outside_sockets()

        def hook(event: str, args: tuple[Any, ...]) -> None:
            if event.startswith(("socket.", "ctypes.dlsym", "subprocess.", "os.", "pty.")):
                guard.check(event, args)

        sys.addaudithook(hook)
        _guard_fork_exec(guard)
        _installed = guard
    return _installed


def _guard_fork_exec(guard: EgressGuard) -> None:
    """multiprocessing's "spawn" starts its child through ``_posixsubprocess.fork_exec``,
    which raises no audit event: put the check in front of it."""
    try:
        import _posixsubprocess
    except ImportError:  # not POSIX
        return
    fork_exec = _posixsubprocess.fork_exec

    def checked(*args: Any, **kwargs: Any) -> Any:
        guard.check("os.posix_spawn", args)
        return fork_exec(*args, **kwargs)

    _posixsubprocess.fork_exec = checked


def installed() -> EgressGuard | None:
    return _installed


# Below Python: what ``appliance doctor`` checks (the units set it up for the service).
PROBE_ADDRESS = ("192.0.2.1", 9)  # TEST-NET-1 (RFC 5737): never a real peer
_PROBE = f"""
import socket
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"", {PROBE_ADDRESS!r})
    print("sent")
except PermissionError:
    print("refused")
except OSError as exc:
    print("error", exc.errno)
"""
_NETWORK_SOURCES = ("dns", "resolve", "mdns", "mdns4", "mdns6", "mdns_minimal", "mdns4_minimal",
                    "nis", "nisplus", "wins", "ldap", "sss", "hesiod")  # fmt: skip


def host_refuses_outside() -> bool:
    """Whether the host itself refuses a packet off the premises from a child process of this
    one (no audit hook there): a cgroup filter (``IPAddressDeny=``), a firewall's drop or a
    ``prohibit`` route all answer EPERM or EACCES."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() == "refused"


def name_sources(nsswitch: Path = Path("/etc/nsswitch.conf")) -> tuple[str, ...]:
    """The sources the C library asks for host names (the ``hosts:`` line)."""
    try:
        lines = nsswitch.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ("dns",)  # no nsswitch.conf: the C library falls back to files then DNS
    for line in lines:
        key, _, rest = line.partition("#")[0].partition(":")
        if key.strip() == "hosts":
            return tuple(word for word in rest.split() if not word.startswith("["))
    return ("dns",)


def lookups_leave(sources: Iterable[str]) -> tuple[str, ...]:
    """The sources of ``sources`` that would ask something off the box."""
    return tuple(source for source in sources if source in _NETWORK_SOURCES)
