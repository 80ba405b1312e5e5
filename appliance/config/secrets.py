"""Secrets kept in files beside the configuration (never in it): read at use, owner-only."""

from __future__ import annotations

import os
import stat

from appliance.core.errors import ConfigError


def read_owner_only(path: str, key: str) -> str:
    """The text of an owner-only file, read now (a rotation needs no restart); a file that group
    or others can read, or a link, is refused as ``config.unsafe_file`` naming ``key``."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(
            "config.unreadable", f"{key}: cannot read {path} ({exc.strerror})"
        ) from None
    with os.fdopen(descriptor, encoding="utf-8") as file:
        mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
        if mode & 0o077:
            raise ConfigError(
                "config.unsafe_file",
                f"{key}: {path} has mode {mode:04o}, group or others can read it (chmod 600 it)",
            )
        return file.read().strip()
