"""SDP offer/answer (RFC 3264, RFC 4566) for one audio stream: G.711 and RFC 4733 events."""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.core.errors import ApplianceError
from appliance.telephony.srtp import SUITE, SrtpContext, SrtpError, parse_crypto

PCMU, PCMA = 0, 8
CODECS = {PCMU: "PCMU", PCMA: "PCMA"}


class SdpError(ApplianceError):
    def __init__(self, message: str) -> None:
        super().__init__("sdp.invalid", message)


@dataclass(frozen=True)
class Offer:
    address: str
    port: int
    payloads: tuple[int, ...]
    telephone_event: int | None
    direction: str = "sendrecv"
    secure: bool = False
    """RTP/SAVP: the peer wants SRTP."""
    crypto: tuple[str, SrtpContext] | None = None
    """The peer's SDES offer (its tag, and its keys for what it sends)."""


def parse_offer(body: bytes) -> Offer:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SdpError("SDP is not UTF-8") from exc
    address = ""
    secure = False
    media: tuple[int, tuple[int, ...]] | None = None
    event: int | None = None
    direction = "sendrecv"
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("c=") and (media is None or not address):
            parts = line[2:].split()
            if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
                raise SdpError("bad connection line")
            address = parts[2]
        elif line.startswith("m=audio ") and media is None:
            parts = line[2:].split()
            if len(parts) < 4 or not (parts[1].isascii() and parts[1].isdigit()):
                raise SdpError("bad audio media line")
            if not all(p.isascii() and p.isdigit() for p in parts[3:]):
                raise SdpError("bad payload types")
            media = (int(parts[1]), tuple(int(p) for p in parts[3:]))
            secure = parts[2] == "RTP/SAVP"
        elif line.startswith("a=rtpmap:"):
            found = re.match(r"a=rtpmap:(\d+) telephone-event/8000", line, re.I)
            if found:
                event = int(found.group(1))
        elif line[2:] in ("sendrecv", "sendonly", "recvonly", "inactive") and line[:2] == "a=":
            direction = line[2:]
    if media is None or not address:
        raise SdpError("no audio stream with an address")
    port, payloads = media
    if not 0 < port < 65536:
        raise SdpError("bad media port")
    try:
        crypto = parse_crypto(text)
    except (ValueError, SrtpError) as exc:
        raise SdpError("bad crypto attribute") from exc
    return Offer(address, port, payloads, event, direction, secure, crypto)


def choose_codec(offer: Offer, preferred: tuple[int, ...] = (PCMU, PCMA)) -> int | None:
    """The first of the offer's G.711 codecs, in the offer's order (RFC 3264 6.1)."""
    for payload in offer.payloads:
        if payload in preferred:
            return payload
    return None


_ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",  # the peer holds the call: we only listen
    "recvonly": "sendonly",
    "inactive": "inactive",
}


def make_offer(
    codec: int,
    telephone_event: int | None,
    local_address: str,
    local_port: int,
    session_id: int,
    crypto: SrtpContext | None = None,
) -> bytes:
    """Our offer for a call we place (the warm transfer's leg to a person): one G.711 codec,
    RFC 4733 events when given; with ``crypto`` (our keys) an SRTP one (RTP/SAVP, SDES tag 1)."""
    payloads = [str(codec)] + ([str(telephone_event)] if telephone_event is not None else [])
    profile = "RTP/SAVP" if crypto else "RTP/AVP"
    lines = [
        "v=0",
        f"o=appliance {session_id} {session_id} IN IP4 {local_address}",
        "s=Voice Appliance",
        f"c=IN IP4 {local_address}",
        "t=0 0",
        f"m=audio {local_port} {profile} {' '.join(payloads)}",
    ]
    if crypto is not None:
        lines.append(f"a=crypto:1 {SUITE} inline:{crypto.inline}")
    lines.append(f"a=rtpmap:{codec} {CODECS[codec]}/8000")
    if telephone_event is not None:
        lines.append(f"a=rtpmap:{telephone_event} telephone-event/8000")
        lines.append(f"a=fmtp:{telephone_event} 0-15")
    lines += ["a=ptime:20", "a=sendrecv"]
    return ("\r\n".join(lines) + "\r\n").encode()


def answer(
    offer: Offer,
    codec: int,
    local_address: str,
    local_port: int,
    session_id: int,
    version: int = 0,
    crypto: tuple[str, SrtpContext] | None = None,
) -> bytes:
    """Our answer; with ``crypto`` (the offer's tag and our keys) an SRTP one (RTP/SAVP)."""
    payloads = [str(codec)]
    lines = [
        "v=0",
        f"o=appliance {session_id} {session_id + version} IN IP4 {local_address}",
        "s=Voice Appliance",
        f"c=IN IP4 {local_address}",
        "t=0 0",
    ]
    if offer.telephone_event is not None:
        payloads.append(str(offer.telephone_event))
    profile = "RTP/SAVP" if crypto else "RTP/AVP"
    lines.append(f"m=audio {local_port} {profile} {' '.join(payloads)}")
    if crypto is not None:
        lines.append(f"a=crypto:{crypto[0]} {SUITE} inline:{crypto[1].inline}")
    lines.append(f"a=rtpmap:{codec} {CODECS[codec]}/8000")
    if offer.telephone_event is not None:
        lines.append(f"a=rtpmap:{offer.telephone_event} telephone-event/8000")
        lines.append(f"a=fmtp:{offer.telephone_event} 0-15")
    lines += ["a=ptime:20", f"a={_ANSWER_DIRECTION[offer.direction]}"]
    return ("\r\n".join(lines) + "\r\n").encode()
