"""The storage facade: one class, ``Storage``, made of one module per concern (``base``: the
engine, sealing and the audit trail; ``calls``, ``voiceprints``, ``directory`` (the enrolled
callers), ``callbacks`` (callers' callback requests), ``accounts``, ``incidents``, ``erasure``,
``access`` (a caller's access export), ``rotation``, ``limits``); ``reports`` holds
the panel's read-only queries.

Every write is one transaction that commits before the method returns, so a turn that was
acknowledged is durable. Every read of content, export, erasure and key change leaves an
audit event in the same transaction as the change it records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.storage import postgresql, sqlite
from appliance.storage.access import SubjectAccess
from appliance.storage.accounts import Accounts
from appliance.storage.base import storage_errors
from appliance.storage.calls import CallHandle, Calls, CallView, TurnView
from appliance.storage.directory import DirectoryView
from appliance.storage.erasure import Erasure, ErasureReport
from appliance.storage.incidents import Incidents
from appliance.storage.keys import MasterKey
from appliance.storage.limits import Limits
from appliance.storage.rotation import Rotation

__all__ = [
    "CallHandle",
    "CallView",
    "DirectoryView",
    "ErasureReport",
    "Storage",
    "TurnView",
    "storage_errors",
]


class Storage(Calls, Accounts, Incidents, Erasure, SubjectAccess, Rotation, Limits):
    """One database and the master key that opens it."""

    @classmethod
    def open_sqlite(cls, path: Path, master: MasterKey | None, **kwargs: Any) -> Storage:
        """SQLCipher under the master key's database key; ``master=None`` is plain SQLite and
        plain values (for the benchmark's baseline only)."""
        engine = sqlite.sqlite_engine(path, master.database_key if master else None)
        reopen = lambda m: sqlite.sqlite_engine(path, m.database_key)  # noqa: E731
        return cls(engine, master, reopen=reopen, path=path, **kwargs)

    @classmethod
    def open_url(cls, url: str, master: MasterKey, **kwargs: Any) -> Storage:
        """A PostgreSQL server (``storage.postgresql``): values sealed before they leave, so
        the server holds ciphertext; the disk's encryption is the server's."""
        return cls(postgresql.postgres_engine(url), master, **kwargs)
