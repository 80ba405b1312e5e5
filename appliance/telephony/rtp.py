"""RTP (RFC 3550) for one G.711 call: packets, a jitter buffer, RFC 4733 DTMF events, and the
call's media as an audio source and sink for the pipeline.

Receiving: packets are checked (version 2, the negotiated payload types, the first SSRC seen;
anything else is dropped and counted), reordered by sequence number in a small jitter buffer,
and played out every 20 ms on the monotonic clock; a packet that arrives after its slot was
played is dropped as late; a gap plays as silence. Telephone events (RFC 4733) become digits,
each once, in order; a peer that negotiated none is listened to for in-band tones (dtmf.py).
Sending: every frame the pipeline writes becomes one packet, with its own SSRC, sequence and
timestamp. Bridging (a warm transfer put through, ``bridge``): each audio payload one leg
receives is sent on the other in that leg's own stream, re-encoded only when the G.711 laws
differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np

from appliance.core.errors import ApplianceError
from appliance.telephony.dtmf import InbandDetector
from appliance.telephony.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from appliance.telephony.sdp import PCMU
from appliance.telephony.srtp import SrtpContext, SrtpError

log = logging.getLogger(__name__)

RATE_HZ = 8_000
FRAME_MS = 20
SAMPLES = RATE_HZ * FRAME_MS // 1000
PIPELINE_RATE_HZ = 16_000
DTMF_EVENTS = "0123456789*#ABCD"


class RtpError(ApplianceError):
    def __init__(self, message: str) -> None:
        super().__init__("rtp.invalid", message)


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False

    def encode(self) -> bytes:
        first = 0x80
        second = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        header = struct.pack("!BBHII", first, second, self.sequence, self.timestamp, self.ssrc)
        return header + self.payload


def parse_packet(data: bytes) -> RtpPacket:
    """One RTP packet; RtpError when it is not one (never any other exception)."""
    if len(data) < 12:
        raise RtpError("shorter than an RTP header")
    first, second, sequence, timestamp, ssrc = struct.unpack("!BBHII", data[:12])
    if first >> 6 != 2:
        raise RtpError("not RTP version 2")
    offset = 12 + 4 * (first & 0x0F)  # CSRC list
    if first & 0x10:  # header extension
        if len(data) < offset + 4:
            raise RtpError("truncated header extension")
        words = struct.unpack("!H", data[offset + 2 : offset + 4])[0]
        offset += 4 + 4 * words
    end = len(data)
    if first & 0x20:  # padding
        if end <= offset or data[-1] == 0 or data[-1] > end - offset:
            raise RtpError("bad padding")
        end -= data[-1]
    if offset > end:
        raise RtpError("truncated packet")
    marker = bool(second & 0x80)
    return RtpPacket(second & 0x7F, sequence, timestamp, ssrc, data[offset:end], marker)


@dataclass(frozen=True)
class DtmfEvent:
    digit: str
    end: bool
    duration: int


def parse_event(payload: bytes) -> DtmfEvent:
    if len(payload) < 4:
        raise RtpError("short telephone-event payload")
    event, flags, duration = struct.unpack("!BBH", payload[:4])
    if event >= len(DTMF_EVENTS):
        raise RtpError("telephone event out of the DTMF range")
    return DtmfEvent(DTMF_EVENTS[event], bool(flags & 0x80), duration)


def event_payload(digit: str, end: bool, duration: int, volume: int = 10) -> bytes:
    return struct.pack("!BBH", DTMF_EVENTS.index(digit), (0x80 if end else 0) | volume, duration)


def _newer(a: int, b: int) -> bool:
    """Sequence number ``a`` comes after ``b`` (16-bit wrap-around)."""
    return 0 < (a - b) & 0xFFFF < 0x8000


class JitterBuffer:
    """Reorders packets by sequence; gives one payload (or None: a gap) per 20 ms slot."""

    def __init__(self, depth: int = 3, capacity: int = 50) -> None:
        self.depth = depth
        self.capacity = capacity
        self._packets: dict[int, bytes] = {}
        self._next: int | None = None
        self.late = 0
        self.lost = 0

    def push(self, sequence: int, payload: bytes) -> None:
        if self._next is None:
            self._next = sequence
        elif sequence != self._next and not _newer(sequence, self._next):
            self.late += 1  # its slot was already played
            return
        if len(self._packets) >= self.capacity:
            self.late += 1
            return
        self._packets[sequence] = payload

    def pop(self) -> bytes | None:
        """The next slot's payload; None when it is missing or the buffer is still filling."""
        if self._next is None:
            return None
        if len(self._packets) < self.depth and self._next not in self._packets:
            return None
        payload = self._packets.pop(self._next, None)
        if payload is None:
            self.lost += 1
        self._next = (self._next + 1) & 0xFFFF
        return payload


class RtpMedia(asyncio.DatagramProtocol):
    """The media of one call: an AudioSource (16 kHz frames for the pipeline, realtime) and an
    AudioSink (8 kHz frames from the pipeline, sent as G.711)."""

    sample_rate_hz = PIPELINE_RATE_HZ
    frame_ms = FRAME_MS
    realtime = True

    def __init__(
        self,
        codec: int,
        event_payload_type: int | None,
        remote: tuple[str, int],
        media_timeout_s: float,
        on_digit: Callable[[str], None] | None = None,
        *,
        latch: bool = False,
    ) -> None:
        self.codec = codec
        self.event_type = event_payload_type
        self.remote = remote
        """Where the caller's media comes from and ours goes: the SDP's address and port (a
        re-INVITE may change it), or with ``latch`` the first valid packet's source."""
        self.latch = latch
        self.media_timeout_s = media_timeout_s
        self.on_digit = on_digit
        self.transport: asyncio.DatagramTransport | None = None
        self.local_port = 0
        self.srtp_in: SrtpContext | None = None
        """The peer's keys (SDES): what arrives is checked and decrypted with them."""
        self.srtp_out: SrtpContext | None = None
        """Our keys, sent in the SDP answer: what we send is encrypted with them."""
        self.buffer = JitterBuffer()
        self.digits: list[str] = []
        self.dropped = 0
        self.ended = asyncio.Event()
        self.end_reason = ""
        self._ssrc_in: int | None = None
        self._last_event_ts: int | None = None
        self._ssrc_out = secrets.randbits(32)
        self._seq_out = secrets.randbits(16)
        self._ts_out = secrets.randbits(32)
        self._last_packet = time.monotonic()
        self._clock_start = 0.0
        self._frames_read = 0
        self._carry = 0  # the last sample of the previous frame (for interpolation)
        self._inband = InbandDetector()
        self.on_hold = False
        """The caller put the call on hold (re-INVITE, sendonly/inactive): no media timeout."""
        self.relay: Callable[[bytes, int], None] | None = None
        """While set (a bridged warm transfer), each audio payload that arrives goes to it
        (the payload and its codec) instead of the jitter buffer."""

    # -- network ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.local_port = int(self.transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        source = (addr[0], addr[1])
        latching = self.latch and self._ssrc_in is None
        if source != self.remote and not latching:
            self.dropped += 1  # not the caller's address and port: a stranger's packets
            return
        if self.srtp_in is not None:
            try:
                data = self.srtp_in.unprotect(data)
            except SrtpError:
                self.dropped += 1  # forged, altered, replayed or not SRTP at all
                return
        try:
            packet = parse_packet(data)
        except RtpError:
            self.dropped += 1
            return
        if self._ssrc_in is None:
            self._ssrc_in = packet.ssrc
            self.remote = source  # with latching, behind NAT: the caller's real address
        if packet.ssrc != self._ssrc_in:
            self.dropped += 1  # another stream (or a spoofed one) on our port
            return
        self._last_packet = time.monotonic()
        if packet.payload_type == self.event_type:
            self._event(packet)
        elif packet.payload_type == self.codec:
            if self.relay is not None:
                self.relay(packet.payload, self.codec)
            else:
                self.buffer.push(packet.sequence, packet.payload)
        else:
            self.dropped += 1

    def _event(self, packet: RtpPacket) -> None:
        try:
            event = parse_event(packet.payload)
        except RtpError:
            self.dropped += 1
            return
        if packet.timestamp == self._last_event_ts:
            return  # the same key press, repeated (RFC 4733 2.5.1)
        self._last_event_ts = packet.timestamp
        self._digit(event.digit)

    def _digit(self, digit: str) -> None:
        self.digits.append(digit)
        if self.on_digit is not None:
            self.on_digit(digit)

    def silent_s(self) -> float:
        """Seconds since the last valid packet arrived (a bridged call checks its timeout)."""
        return 0.0 if self.on_hold else time.monotonic() - self._last_packet

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    def close(self) -> None:
        self.end(self.end_reason or "closed")
        if self.transport is not None:
            self.transport.close()

    # -- AudioSource -----------------------------------------------------------------------

    async def read_frame(self) -> bytes | None:
        if self._frames_read == 0:
            self._clock_start = time.monotonic()
        due = self._clock_start + (self._frames_read + 1) * FRAME_MS / 1000
        delay = due - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended.wait(), delay)
        if self.ended.is_set():
            return None
        if self.on_hold:
            self._last_packet = time.monotonic()
        elif time.monotonic() - self._last_packet > self.media_timeout_s:
            self.end("media_timeout")
            return None
        self._frames_read += 1
        payload = self.buffer.pop()
        samples = self.decode(payload) if payload else np.zeros(SAMPLES, dtype=np.int16)
        if self.event_type is None and payload:  # no RFC 4733 events: listen for the tones
            key = self._inband.feed(samples)
            if key:
                self._digit(key)
        return self._upsample(samples)

    def _upsample(self, samples: np.ndarray) -> bytes:
        """8 to 16 kHz, 160 samples in, 320 out, continuous across frames: each new sample is
        preceded by the midpoint from the one before (the telephone band ends at 4 kHz)."""
        x = samples.astype(np.int32)
        previous = np.concatenate(([self._carry], x[:-1]))
        self._carry = int(x[-1])
        wide = np.empty(2 * len(x), dtype=np.int32)
        wide[0::2] = (previous + x) // 2
        wide[1::2] = x
        return bytes(wide.astype("<i2").tobytes())

    def decode(self, payload: bytes) -> np.ndarray:
        codes = np.frombuffer(payload, dtype=np.uint8)
        return ulaw_decode(codes) if self.codec == PCMU else alaw_decode(codes)

    # -- sending (8 kHz) ---------------------------------------------------------------------

    async def play(self, pcm: bytes) -> None:
        """Send 8 kHz PCM16 paced at one packet per 20 ms (a prompt outside the pipeline)."""
        frame = SAMPLES * 2
        started = time.monotonic()
        for index, start in enumerate(range(0, len(pcm), frame)):
            if self.ended.is_set():
                return
            self.send_pcm(pcm[start : start + frame])
            await asyncio.sleep(
                max(0.0, started + (index + 1) * FRAME_MS / 1000 - time.monotonic())
            )

    def send_pcm(self, pcm: bytes) -> None:
        """Send 8 kHz PCM16 as packets of 20 ms."""
        if self.transport is None or self.ended.is_set():
            return
        samples = np.frombuffer(pcm, dtype="<i2")
        for start in range(0, len(samples), SAMPLES):
            chunk = samples[start : start + SAMPLES]
            chunk = np.pad(chunk, (0, SAMPLES - len(chunk)))
            codes = ulaw_encode(chunk) if self.codec == PCMU else alaw_encode(chunk)
            self._send_codes(codes.tobytes())

    def send_payload(self, payload: bytes, codec: int) -> None:
        """Send one G.711 payload another leg received (a bridged call), in our own stream
        (SSRC, sequence, timestamp); re-encoded when that leg's codec is not ours."""
        if self.transport is None or self.ended.is_set() or not payload:
            return
        if codec != self.codec:
            codes = np.frombuffer(payload, dtype=np.uint8)
            samples = ulaw_decode(codes) if codec == PCMU else alaw_decode(codes)
            encode = ulaw_encode if self.codec == PCMU else alaw_encode
            payload = encode(samples).tobytes()
        self._send_codes(payload)

    def _send_codes(self, codes: bytes) -> None:
        assert self.transport is not None
        packet = RtpPacket(self.codec, self._seq_out, self._ts_out, self._ssrc_out, codes)
        data = packet.encode()
        if self.srtp_out is not None:
            data = self.srtp_out.protect(data)
        self.transport.sendto(data, self.remote)
        self._seq_out = (self._seq_out + 1) & 0xFFFF
        self._ts_out = (self._ts_out + len(codes)) & 0xFFFFFFFF  # one sample a byte (G.711)


class RtpSink:
    """The AudioSink face of RtpMedia (the pipeline closes its sink; the call owns the media)."""

    def __init__(self, media: RtpMedia) -> None:
        self.media = media
        self.sample_rate_hz = RATE_HZ
        self.muted = False
        """While set, the pipeline's frames are not sent: the line itself holds the caller's
        audio (a warm transfer's hold, then the bridge to the person)."""

    async def write_frame(self, pcm: bytes) -> None:
        if not self.muted:
            self.media.send_pcm(pcm)

    async def close(self) -> None:
        return None


async def bridge(a: RtpMedia, b: RtpMedia) -> RtpMedia:
    """Join two calls' media (a warm transfer put through): each audio payload that arrives on
    one leg is sent on the other at once (re-encoded when their G.711 laws differ), until one
    leg ends (its BYE, or no media for its ``media_timeout_s``). Returns the leg that ended."""
    a.relay, b.relay = b.send_payload, a.send_payload
    try:
        while not (a.ended.is_set() or b.ended.is_set()):
            for media in (a, b):
                if media.silent_s() > media.media_timeout_s:
                    media.end("media_timeout")
            await asyncio.sleep(FRAME_MS / 1000)
    finally:
        a.relay = b.relay = None
    return a if a.ended.is_set() else b


def hold_tone(seconds: float = 0.4, frequency_hz: float = 425.0) -> bytes:
    """A soft 425 Hz beep (the comfort tone of ITU-T E.180's tables), -20 dBFS, 8 kHz PCM16,
    faded in and out so it does not click."""
    t = np.arange(int(RATE_HZ * seconds)) / RATE_HZ
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.02)
    wave = 0.1 * 32767 * fade * np.sin(2 * np.pi * frequency_hz * t)
    return bytes(wave.astype("<i2").tobytes())
