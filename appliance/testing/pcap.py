"""Write RTP streams as pcap files (what SIPp's play_pcap_audio replays), and read them back.

SIPp replays each UDP payload at its capture time, to the media address the far end answered
with. The streams here are ours: one SSRC, consecutive sequence numbers and timestamps, G.711
audio in 20 ms packets and RFC 4733 telephone events (the pcaps shipped with SIPp have an odd
SSRC and sequence order).
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.telephony.g711 import alaw_encode, ulaw_encode
from appliance.telephony.rtp import SAMPLES, RtpPacket, event_payload
from appliance.telephony.sdp import PCMU

EVENT_PT = 101


@dataclass
class Stream:
    codec: int = PCMU
    ssrc: int = 0
    sequence: int = 0
    timestamp: int = 0
    t: float = 0.0

    def __post_init__(self) -> None:
        self.ssrc = self.ssrc or secrets.randbits(32)
        self.sequence = self.sequence or secrets.randbelow(30000)
        self.timestamp = self.timestamp or secrets.randbits(31)
        self.packets: list[tuple[float, bytes]] = []

    def audio(self, pcm8k: bytes) -> None:
        samples = np.frombuffer(pcm8k, dtype="<i2")
        samples = np.pad(samples, (0, -len(samples) % SAMPLES))
        for start in range(0, len(samples), SAMPLES):
            chunk = samples[start : start + SAMPLES]
            codes = ulaw_encode(chunk) if self.codec == PCMU else alaw_encode(chunk)
            self._add(
                RtpPacket(self.codec, self.sequence, self.timestamp, self.ssrc, codes.tobytes())
            )
            self.timestamp = (self.timestamp + SAMPLES) & 0xFFFFFFFF

    def silence(self, seconds: float) -> None:
        self.audio(bytes(int(seconds * 8000) * 2))

    def digit(self, digit: str, ms: int = 100) -> None:
        """One key press: an event packet every 20 ms (one timestamp: the press's start), the
        end packet sent three times (RFC 4733 2.5.1.4)."""
        start, steps = self.timestamp, ms // 20
        for i in range(1, steps + 1):
            end = i == steps
            payload = event_payload(digit, end, i * SAMPLES)
            for copy in range(3 if end else 1):
                packet = RtpPacket(EVENT_PT, self.sequence, start, self.ssrc, payload, i == 1)
                self._add(packet, advance=copy == 0)
        self.timestamp = (start + steps * SAMPLES) & 0xFFFFFFFF

    def _add(self, packet: RtpPacket, advance: bool = True) -> None:
        self.packets.append((self.t, packet.encode()))
        self.sequence = (self.sequence + 1) & 0xFFFF
        if advance:
            self.t += 0.02


def write_pcap(path: Path, packets: list[tuple[float, bytes]], src_port: int = 6000) -> None:
    """Ethernet + IPv4 + UDP around each payload (127.0.0.1 -> 127.0.0.1; SIPp rewrites it)."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for t, payload in packets:
        udp = struct.pack("!HHHH", src_port, 6000, 8 + len(payload), 0) + payload
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
            bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]),
        ) + udp  # fmt: skip
        frame = b"\0" * 12 + b"\x08\x00" + ip
        seconds = int(t)
        out += struct.pack("<IIII", seconds, int((t - seconds) * 1e6), len(frame), len(frame))
        out += frame
    path.write_bytes(bytes(out))
