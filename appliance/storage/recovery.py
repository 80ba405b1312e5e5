"""Recovering the master key when its file is lost: a recovery code shown once, kept offline.

The code is an X25519 private key (with a checksum, in groups a person can copy); the
appliance keeps only its public half. The master key is sealed to that public key
(an ephemeral X25519 agreement, HKDF-SHA256, AES-256-GCM), beside the key file and beside
every backup, and sealed again after each rotation, so one code recovers whichever master key
a backup was made under. Recovery on a fresh home: ``appliance keys recover --sealed F`` with
the code on standard input writes the master key; ``appliance restore`` then checks and
puts the backup in place.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.core.errors import KeyringError
from appliance.storage.keys import MasterKey, write_private

MAGIC = b"AVR1"
PUBLIC_FILE = "recovery.pub"
SEALED_FILE = "master.key.sealed"
_INFO = b"appliance master key recovery v1"
_RAW = serialization.Encoding.Raw


def new_code() -> tuple[str, bytes]:
    """A new recovery code (to show once) and its public key (to keep)."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    return _encode(raw), public


def _encode(raw: bytes) -> str:
    text = base64.b32encode(raw + hashlib.sha256(raw).digest()[:3]).decode().rstrip("=")
    return "-".join(text[i : i + 5] for i in range(0, len(text), 5))


def _decode(code: str) -> bytes:
    text = re.sub(r"[\s-]", "", code).upper()
    try:
        data = base64.b32decode(text + "=" * (-len(text) % 8))
    except ValueError as exc:
        raise KeyringError("keys.recovery_code", "the recovery code is not valid") from exc
    raw, check = data[:32], data[32:]
    if len(raw) != 32 or check != hashlib.sha256(raw).digest()[:3]:
        raise KeyringError("keys.recovery_code", "the recovery code is mistyped (checksum)")
    return raw


def _key(shared: bytes, ephemeral: bytes, public: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + public, info=_INFO)
    return hkdf.derive(shared)


def seal(master: MasterKey, public: bytes) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public))
    nonce = os.urandom(12)
    sealed = AESGCM(_key(shared, ephemeral_public, public)).encrypt(nonce, master.secret, MAGIC)
    return MAGIC + ephemeral_public + nonce + sealed


def open_sealed(blob: bytes, code: str) -> bytes:
    """The master key sealed in ``blob``; KeyringError when the code does not open it."""
    private = X25519PrivateKey.from_private_bytes(_decode(code))
    public = private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    if not blob.startswith(MAGIC) or len(blob) < 4 + 32 + 12 + 16:
        raise KeyringError("keys.recovery_file", "not a sealed master key")
    ephemeral, nonce, sealed = blob[4:36], blob[36:48], blob[48:]
    shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral))
    try:
        return AESGCM(_key(shared, ephemeral, public)).decrypt(nonce, sealed, MAGIC)
    except InvalidTag as exc:
        raise KeyringError(
            "keys.recovery_code", "this recovery code does not open that sealed key"
        ) from exc


class Recovery:
    """The recovery files of one appliance: the code's public key, which decides who can open
    every sealed copy of the master key (so it lives with the keys, apart from the data tree
    when installed), and the sealed master key (in the data tree: only the code opens it)."""

    def __init__(self, public_path: Path, sealed_path: Path) -> None:
        self.public_path = public_path
        self.sealed_path = sealed_path

    @property
    def set_up(self) -> bool:
        return self.public_path.is_file()

    def set_up_new(self, master: MasterKey) -> str:
        """Make a recovery code for ``master`` and return it (shown once, never stored)."""
        code, public = new_code()
        write_private(self.public_path, public)
        self.reseal(master)
        return code

    def reseal(self, master: MasterKey) -> bytes | None:
        """Seal the (new) master key to the recovery code; None when none is set up."""
        if not self.set_up:
            return None
        blob = seal(master, self.public_path.read_bytes())
        write_private(self.sealed_path, blob)
        return blob

    @staticmethod
    def write_beside(target: Path, blob: bytes) -> Path:
        """A backup's copy of the sealed key (``<backup>.recovery``)."""
        path = target.with_name(f"{target.name}.recovery")
        write_private(path, blob)
        return path
