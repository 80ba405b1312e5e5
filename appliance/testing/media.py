"""The caller's end of the RTP, as a phone has it, for SIPp calls in tests and benchmarks.

``Stream`` is what the caller says: one SSRC, consecutive sequence numbers and timestamps,
G.711 audio in 20 ms packets and RFC 4733 telephone events.

SIPp does the signalling; this does the media. One UDP socket is both the port the caller's
SDP names and the port the caller's audio comes from (symmetric RTP: the appliance takes
media only from the address and port the SDP names). It records what the appliance sends
and, once the appliance's first packet arrives (the call was answered), plays the caller's
stream after ``after_s`` at its own pace, back to where the appliance's packets came from.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

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


class CallerMedia:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.packets: list[bytes] = []
        """What the appliance sent, in arrival order."""
        self.arrivals: list[float] = []
        """When each arrived (time.monotonic)."""
        self.sent = 0
        self._far: tuple[str, int] | None = None
        self._answered = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self, stream: Sequence[tuple[float, bytes]] = (), after_s: float = 0.0) -> None:
        """Receive from now on; with ``stream`` ((time, RTP packet) pairs), play it once the
        call is answered."""
        self._threads = [threading.Thread(target=self._receive, daemon=True)]
        if stream:
            self._threads.append(
                threading.Thread(target=self._play, args=(list(stream), after_s), daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.sock.close()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, far = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.packets.append(data)
            self.arrivals.append(time.monotonic())
            if self._far is None:
                self._far = (str(far[0]), int(far[1]))
                self._answered.set()

    def _play(self, stream: list[tuple[float, bytes]], after_s: float) -> None:
        while not self._answered.wait(0.2):
            if self._stop.is_set():
                return
        start = time.monotonic() + after_s
        for at, packet in stream:
            delay = start + at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            assert self._far is not None
            try:
                self.sock.sendto(packet, self._far)
            except OSError:
                return
            self.sent += 1
