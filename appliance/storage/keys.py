"""The master key: a 32-byte secret in a file of mode 0600 (or a systemd credential).

Everything at rest hangs off it: the SQLCipher database key, the wrapping of each call's data
key, and the pseudonymization (HMAC) key are derived from it or wrapped by it. Its fingerprint
(not the key) names it in the database, so a rotation can tell old wrappings from new.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from appliance.core.errors import KeyringError
from appliance.storage.crypto import KEY_BYTES, derive, new_key

CREDENTIAL_NAME = "appliance-master-key"
AUDIT_CREDENTIAL_NAME = "appliance-audit-key"


@dataclass(frozen=True)
class MasterKey:
    secret: bytes
    path: Path

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(b"appliance master key id\0" + self.secret).hexdigest()[:16]

    @property
    def database_key(self) -> bytes:
        return derive(self.secret, "appliance/sqlcipher/v1")

    def __repr__(self) -> str:  # never print the secret
        return f"MasterKey({self.fingerprint}, {self.path})"


def default_key_path(home: Path, configured: str = "") -> Path:
    """The master key: the systemd credential when the unit hands one over (the service, which
    cannot read ``/etc/appliance``), else the configured file (``/etc/appliance/master.key``
    when installed: root's commands), else ``APPLIANCE_HOME/keys/master.key`` (a checkout)."""
    return key_file(home, configured, CREDENTIAL_NAME, "master.key")


def audit_key_path(home: Path, configured: str) -> Path:
    """The Ed25519 key that signs audit and compliance exports (``[storage] audit_key_file``,
    or the service's credential, or one under ``home``)."""
    return key_file(home, configured, AUDIT_CREDENTIAL_NAME, "audit-signing.key")


def key_file(home: Path, configured: str, credential: str, name: str) -> Path:
    """A key's file, by the same rule as the master key's (credential, configured, home)."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / credential).is_file():
        return Path(credentials) / credential
    if configured:
        return Path(configured)
    return home / "keys" / name


def _check_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyringError(
            "keys.permissions",
            f"key file {path} is readable by others (mode {mode:o}); chmod 600 it",
        )


def read_key(path: Path) -> MasterKey:
    try:
        _check_mode(path)
        secret = path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyringError("keys.missing", f"master key file {path} does not exist") from exc
    except PermissionError as exc:
        raise KeyringError("keys.unreadable", f"master key file {path}: permission denied") from exc
    if len(secret) != KEY_BYTES:
        raise KeyringError("keys.malformed", f"master key file {path} must hold {KEY_BYTES} bytes")
    return MasterKey(secret, path)


def write_key(path: Path, secret: bytes) -> MasterKey:
    """Write a key file atomically with mode 0600 in a folder of mode 0700."""
    write_private(path, secret)
    return MasterKey(secret, path)


def write_private(path: Path, data: bytes) -> None:
    """Write a file atomically, mode 0600, in a folder of mode 0700, owned like its folder:
    root's commands on an installed appliance must not leave files the service (its own user)
    cannot read. SQLite does the same for its journal files."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
        own_like_folder(fd, path.parent)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def own_like_folder(fd: int, folder: Path) -> None:
    """Give an open file its folder's owner when root runs this (else nothing changes)."""
    if os.geteuid() == 0:
        owner = folder.stat()
        if (owner.st_uid, owner.st_gid) != (0, 0):
            os.fchown(fd, owner.st_uid, owner.st_gid)


def load_or_create(path: Path) -> MasterKey:
    """The master key at ``path``, created on first start."""
    if path.exists():
        return read_key(path)
    return write_key(path, new_key())


def retire(path: Path) -> None:
    """Overwrite and delete an old key file (best effort on journaling file systems)."""
    if path.exists():
        size = path.stat().st_size
        with path.open("r+b") as handle:
            handle.write(os.urandom(size))
            handle.flush()
            os.fsync(handle.fileno())
        path.unlink()
