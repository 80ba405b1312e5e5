"""SRTP (RFC 3711) with the AES_CM_128_HMAC_SHA1_80 suite, keyed by SDES (RFC 4568).

One ``SrtpContext`` per direction: session keys derived from the master key and salt with the
AES-CM PRF (RFC 3711 4.3), payloads encrypted with AES in counter mode (4.1.1), packets
authenticated with HMAC-SHA1 truncated to 80 bits over the header, payload and roll-over
counter (4.2). Incoming packets are checked before anything is decrypted, with a replay window
(3.3.2). The RTP header stays in the clear, as the RFC says.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
import struct
from dataclasses import dataclass, field
from hashlib import sha1

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from appliance.core.errors import ApplianceError

SUITE = "AES_CM_128_HMAC_SHA1_80"
TAG_BYTES = 10
REPLAY_WINDOW = 64


class SrtpError(ApplianceError):
    def __init__(self, message: str) -> None:
        super().__init__("srtp.invalid", message)


def _aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def derive(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """The AES-CM key derivation function (RFC 3711 4.3.1, key_derivation_rate 0)."""
    x = bytes(7) + bytes([label]) + bytes(6)  # label << 48, index DIV kdr = 0
    iv = bytes(a ^ b for a, b in zip(master_salt + bytes(2), x + bytes(2), strict=True))
    return _aes_ctr(master_key, iv, bytes(length))


@dataclass
class SrtpContext:
    master_key: bytes
    master_salt: bytes
    roc: int = 0
    _highest: int | None = None
    _seen: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if len(self.master_key) != 16 or len(self.master_salt) != 14:
            raise SrtpError("AES_CM_128 needs a 16-byte key and a 14-byte salt")
        self.cipher_key = derive(self.master_key, self.master_salt, 0x00, 16)
        self.auth_key = derive(self.master_key, self.master_salt, 0x01, 20)
        self.salt = derive(self.master_key, self.master_salt, 0x02, 14)

    @classmethod
    def new(cls) -> SrtpContext:
        return cls(os.urandom(16), os.urandom(14))

    @property
    def inline(self) -> str:
        """The SDES key parameter (base64 of key || salt)."""
        return base64.b64encode(self.master_key + self.master_salt).decode()

    def _iv(self, ssrc: int, index: int) -> bytes:
        block = bytes(4) + struct.pack("!I", ssrc) + struct.pack("!Q", index << 16)
        return bytes(a ^ b for a, b in zip(self.salt + bytes(2), block, strict=True))

    def _tag(self, authenticated: bytes, roc: int) -> bytes:
        mac = hmac.new(self.auth_key, authenticated + struct.pack("!I", roc), sha1)
        return mac.digest()[:TAG_BYTES]

    def protect(self, packet: bytes) -> bytes:
        """An RTP packet (12-byte header, no CSRC or extension) into SRTP."""
        sequence = struct.unpack("!H", packet[2:4])[0]
        ssrc = struct.unpack("!I", packet[8:12])[0]
        if self._highest is not None and self._highest - sequence > 0x8000:
            self.roc += 1  # the sequence number wrapped
        self._highest = sequence
        index = (self.roc << 16) | sequence
        body = _aes_ctr(self.cipher_key, self._iv(ssrc, index), packet[12:])
        protected = packet[:12] + body
        return protected + self._tag(protected, self.roc)

    def unprotect(self, data: bytes) -> bytes:
        """SRTP back into RTP; SrtpError when it is forged, altered or replayed."""
        if len(data) < 12 + TAG_BYTES:
            raise SrtpError("shorter than an SRTP packet")
        protected, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
        sequence = struct.unpack("!H", protected[2:4])[0]
        ssrc = struct.unpack("!I", protected[8:12])[0]
        roc = self.roc
        if self._highest is not None:  # estimate the index (RFC 3711 3.3.1)
            if self._highest - sequence > 0x8000:
                roc += 1
            elif sequence - self._highest > 0x8000 and roc > 0:
                roc -= 1
        if not hmac.compare_digest(self._tag(protected, roc), tag):
            raise SrtpError("authentication failed")
        index = (roc << 16) | sequence
        if index in self._seen:
            raise SrtpError("replayed packet")
        highest = (self.roc << 16) | (self._highest or 0)
        if self._highest is not None and index + REPLAY_WINDOW < highest:
            raise SrtpError("too old for the replay window")
        self._seen.add(index)
        self._seen = {i for i in self._seen if i + REPLAY_WINDOW >= max(index, highest)}
        if self._highest is None or index > highest:
            self.roc, self._highest = roc, sequence
        return protected[:12] + _aes_ctr(self.cipher_key, self._iv(ssrc, index), protected[12:])


_CRYPTO = re.compile(
    r"^a=crypto:(\d{1,9}) (\S+) inline:([A-Za-z0-9+/=]{40})(?:\|\S+)*(?:\s.*)?$", re.M
)


def parse_crypto(sdp_text: str) -> tuple[str, SrtpContext] | None:
    """The first AES_CM_128_HMAC_SHA1_80 offer of an SDP (its tag and the peer's keys)."""
    for match in _CRYPTO.finditer(sdp_text.replace("\r\n", "\n")):
        if match.group(2) == SUITE:
            raw = base64.b64decode(match.group(3))
            if len(raw) == 30:
                return match.group(1), SrtpContext(raw[:16], raw[16:])
    return None
