"""AES-256-GCM sealing and key wrapping (envelope encryption), and key derivation.

A sealed value is ``version (1) | nonce (12) | ciphertext | tag (16)``. Its associated data
binds it to its table, column and row, so a value copied to another row or column does not
open. A wrapped data key is the data key sealed under the master key with associated data
naming the key's id.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.core.errors import IntegrityError, KeyringError

VERSION = b"\x01"
KEY_BYTES = 32
NONCE_BYTES = 12


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def derive(master: bytes, purpose: str) -> bytes:
    """A 256-bit subkey of the master key for one purpose (HKDF-SHA256, RFC 5869)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose.encode()
    ).derive(master)


def associated_data(table: str, column: str, row: str) -> bytes:
    return f"{table}/{column}/{row}".encode()


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Decrypt and authenticate; any changed byte raises IntegrityError."""
    if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[:1] != VERSION:
        raise IntegrityError("storage.integrity", f"sealed value {aad.decode()} is malformed")
    try:
        return AESGCM(key).decrypt(sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :], aad)
    except InvalidTag as exc:
        raise IntegrityError(
            "storage.integrity",
            f"sealed value {aad.decode()} failed its integrity check (altered, or wrong key)",
        ) from exc


def wrap_key(master: bytes, data_key: bytes, key_id: str) -> bytes:
    return seal(master, data_key, f"data_key/{key_id}".encode())


def unwrap_key(master: bytes, wrapped: bytes, key_id: str) -> bytes:
    try:
        return open_sealed(master, wrapped, f"data_key/{key_id}".encode())
    except IntegrityError as exc:
        raise KeyringError(
            "keys.unwrap", f"data key {key_id} does not open with this master key"
        ) from exc
