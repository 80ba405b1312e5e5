"""Inside network and mount namespaces of its own (``unshare -n -m``, made by
test_egress_netns.py): `appliance serve` takes a real SIPp call while every packet of the
namespace is captured and every name lookup lands on this script's DNS listener.

The namespace has a veth pair with a default route through one end to a gateway that is not
there (whatever is sent off the box goes out there and is captured), the appliance's address
10.99.0.2, the caller's 10.99.0.7 (the one configured peer) and the DNS listener's
10.99.0.53, which a bind-mounted /etc/resolv.conf names. A control lookup from a child
process shows that the capture and the listener see what they should, before the appliance
starts. Written to ``--out`` as JSON: the control's result, every captured packet that is
not between the appliance and its peer, every name looked up, and how the call went.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from appliance.testing.media import CallerMedia

APPLIANCE_ADDRESS = "10.99.0.2"
PEER = "10.99.0.7"
RESOLVER = "10.99.0.53"
INTERFACE = "egress0"
FAR_END = "egress1"
GATEWAY = "10.99.0.1"
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
CALL = frozenset({APPLIANCE_ADDRESS, PEER})


def namespace() -> None:
    """The veth pair, the addresses and the default route; the gateway's link address is
    fixed (no ARP wait: a packet goes out at once); IPv6 off on the pair (the kernel's own
    router solicitations are not the appliance's)."""
    run = ["ip", "link", "add", INTERFACE, "type", "veth", "peer", "name", FAR_END]
    subprocess.run(run, check=True, capture_output=True, text=True)
    for end in (INTERFACE, FAR_END):
        Path(f"/proc/sys/net/ipv6/conf/{end}/disable_ipv6").write_text("1")
    for command in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "addr", "add", f"{APPLIANCE_ADDRESS}/24", "dev", INTERFACE],
        ["ip", "addr", "add", f"{PEER}/24", "dev", INTERFACE],
        ["ip", "addr", "add", f"{RESOLVER}/24", "dev", INTERFACE],
        ["ip", "link", "set", INTERFACE, "up"],
        ["ip", "link", "set", FAR_END, "up"],
        ["ip", "neigh", "add", GATEWAY, "lladdr", "02:00:00:00:00:01", "dev", INTERFACE,
         "nud", "permanent"],
        ["ip", "route", "add", "default", "via", GATEWAY, "dev", INTERFACE],
    ):  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, text=True)


def own_resolv_conf(work: Path) -> None:
    conf = work / "resolv.conf"
    conf.write_text(f"nameserver {RESOLVER}\noptions timeout:1 attempts:1\n")
    subprocess.run(["mount", "--bind", str(conf), "/etc/resolv.conf"], check=True)


class Capture:
    """Every IP packet sent in the namespace, on every interface (a packet socket)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.sock.settimeout(0.2)
        self.packets: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, (interface, proto, kind, *_) = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if kind == PACKET_OUTGOING:
                self.packets.append(describe(data, interface, proto))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def describe(data: bytes, interface: str, proto: int) -> dict[str, Any]:
    packet: dict[str, Any] = {"interface": interface, "ethertype": proto, "bytes": len(data)}
    if proto == 0x0800 and len(data) >= 20:
        header = (data[0] & 0x0F) * 4
        packet["src"] = str(ipaddress.IPv4Address(data[12:16]))
        packet["dst"] = str(ipaddress.IPv4Address(data[16:20]))
        packet["protocol"] = data[9]
        if data[9] in (socket.IPPROTO_TCP, socket.IPPROTO_UDP) and len(data) >= header + 4:
            packet["dport"] = struct.unpack("!H", data[header + 2 : header + 4])[0]
    elif proto == 0x86DD and len(data) >= 40:
        packet["src"] = str(ipaddress.IPv6Address(data[8:24]))
        packet["dst"] = str(ipaddress.IPv6Address(data[24:40]))
        packet["protocol"] = data[6]
    return packet


def outside(packet: dict[str, Any]) -> bool:
    """An IP packet that is not the call's: between the appliance and its configured peer is
    the only kind allowed (the kernel's ARP is no one's data)."""
    return "src" in packet and {packet["src"], packet["dst"]} != CALL


class DnsListener:
    """Answers every query REFUSED and keeps the name asked for."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((RESOLVER, 53))
        self.sock.settimeout(0.2)
        self.names: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                query, sender = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.names.append(qname(query))
            if len(query) >= 12:
                flags = struct.pack("!H", 0x8000 | (query[2] & 0x79) << 8 | 5)  # REFUSED
                self.sock.sendto(query[:2] + flags + query[4:], sender)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def qname(query: bytes) -> str:
    labels, at = [], 12
    while at < len(query) and query[at]:
        length = query[at]
        labels.append(query[at + 1 : at + 1 + length].decode("ascii", "replace"))
        at += 1 + length
    return ".".join(labels)


def control(capture: Capture, dns: DnsListener) -> dict[str, Any]:
    """A child process looks a name up: the listener must hear it and the capture see it."""
    subprocess.run(
        [sys.executable, "-I", "-c", "import socket\ntry:\n socket.getaddrinfo("
         "'egress-control.example', 80)\nexcept OSError:\n pass"],
        timeout=30, check=False,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while "egress-control.example" not in dns.names and time.monotonic() < deadline:
        time.sleep(0.1)
    seen = {
        "heard": "egress-control.example" in dns.names,
        "captured": any(p.get("dst") == RESOLVER for p in capture.packets),
    }
    dns.names.clear()
    capture.packets.clear()
    return seen


def call(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    stream = [(at, bytes.fromhex(packet)) for at, packet in json.loads(args.stream.read_text())]
    env = {
        **os.environ,
        "HOME": str(work / "user"),  # where a library would queue telemetry
        "XDG_CACHE_HOME": str(work / "user/.cache"),
        "APPLIANCE_HOME": str(args.home),
        "APPLIANCE_SERVICE__VOICE": "sip",
        "APPLIANCE_SERVICE__REDTEAM_GATE": "warn",  # no red-team report in the test's home
        "APPLIANCE_SIP__LISTEN": f"{APPLIANCE_ADDRESS}:5060",
        "APPLIANCE_SIP__ALLOWED_PEERS": f"{PEER}/32",
    }
    (work / "user/.cache/appliance").mkdir(parents=True)
    (work / "user/.cache/appliance/models").symlink_to(args.models)  # the shared model cache
    started = time.monotonic()
    serve = subprocess.Popen(
        [args.appliance, "serve"], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert serve.stdout is not None and serve.stderr is not None
    listening = serve.stdout.readline()
    result: dict[str, Any] = {"listening": listening.strip()}
    if "listening" in listening:
        media = CallerMedia(PEER)
        scenario = work / "uac_call.xml"
        text = args.scenario.read_text()
        for key, value in {"@CODEC@": "0", "@CAPTURE_PORT@": str(media.port),
                           "@WAIT_MS@": "3000", "@TALK_MS@": "15000"}.items():  # fmt: skip
            text = text.replace(key, value)
        scenario.write_text(text)
        media.start(stream, after_s=3.0)
        sipp = subprocess.run(
            ["sipp", f"{APPLIANCE_ADDRESS}:5060", "-sf", str(scenario), "-m", "1", "-i", PEER,
             "-p", "5070", "-mp", "6000", "-timeout", "120s", "-nostdin", "-t", "u1"],
            capture_output=True, text=True, timeout=180, cwd=work,
        )  # fmt: skip
        media.stop()
        result |= {"sipp": sipp.returncode, "heard_packets": len(media.packets)}
        # ONNX Runtime's telemetry looked its collector up within about 25 s of a model load.
        time.sleep(max(0.0, started + args.linger_s - time.monotonic()))
    serve.terminate()
    try:
        _, errors = serve.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        serve.kill()
        _, errors = serve.communicate()
    result |= {"serve": serve.returncode, "serve_errors": errors[-3000:]}
    result["user_files"] = sorted(
        str(path.relative_to(work / "user")) for path in (work / "user").rglob("*")
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--stream", type=Path, required=True)
    parser.add_argument("--scenario", type=Path, required=True)
    parser.add_argument("--appliance", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--linger-s", type=float, default=40.0)
    args = parser.parse_args()
    work = args.out.parent
    namespace()
    own_resolv_conf(work)
    capture, dns = Capture(), DnsListener()
    report: dict[str, Any] = {"control": control(capture, dns)}
    try:
        report |= call(args, work)
    finally:
        capture.stop()
        dns.stop()
    report["outside"] = [p for p in capture.packets if outside(p)]
    report["names"] = dns.names
    report["call_packets"] = len(capture.packets) - len(report["outside"])
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
