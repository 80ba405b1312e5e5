"""Master key rotation: every data key re-wrapped, the database re-keyed."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from appliance.core.errors import KeyringError
from appliance.storage import postgresql, sqlite
from appliance.storage.base import SYSTEM_ACTOR, StoreBase
from appliance.storage.crypto import unwrap_key, wrap_key
from appliance.storage.keys import MasterKey
from appliance.storage.schema import DataKey


class Rotation(StoreBase):
    """Rotating the master key."""

    def rotate_master_key(
        self, new: MasterKey, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Re-wrap every data key under ``new`` (content is not re-encrypted) and re-key the
        database file; returns how many data keys were re-wrapped. Resumable: keys already
        under ``new`` are skipped."""
        old = self.master
        if old is None:
            raise KeyringError("keys.unencrypted", "this storage is not encrypted")
        if self.engine.dialect.name == "postgresql" and postgresql.others_connected(self.engine):
            # A node still running under the old key would go on wrapping new calls' keys
            # with it, and those calls would open under no key once the old one is destroyed.
            raise KeyringError(
                "keys.nodes_running",
                "other nodes or units are using this database: stop every one of them, rotate, "
                "then give each the new key file before starting it again",
            )
        with self.session("count keys") as session:
            total = session.scalar(select(func.count()).select_from(DataKey)) or 0
            ids = list(session.scalars(select(DataKey.id).order_by(DataKey.id)))
        done = 0
        while ids:  # again for keys another node added meanwhile, until none is left
            for start in range(0, len(ids), 500):
                with self.session("re-wrap keys") as session:
                    for row in session.scalars(
                        select(DataKey).where(DataKey.id.in_(ids[start : start + 500]))
                    ):
                        if row.master_key_id == new.fingerprint:
                            continue
                        secret = unwrap_key(old.secret, row.wrapped, row.id)
                        row.wrapped = wrap_key(new.secret, secret, row.id)
                        row.master_key_id = new.fingerprint
                    done = min(total, done + len(ids[start : start + 500]))
                if progress is not None:
                    progress(done, total)
            with self.session("keys left") as session:
                left = select(DataKey.id).where(DataKey.master_key_id != new.fingerprint)
                ids = list(session.scalars(left.order_by(DataKey.id)))
            total += len(ids)
        with self.session("audit rotation") as session:
            self.audit_in(
                session,
                SYSTEM_ACTOR,
                "rotate_master_key",
                f"key:{new.fingerprint}",
                "ok",
                {"previous": old.fingerprint, "data_keys": total},
            )
        if self.engine.dialect.name == "sqlite" and self._reopen is not None:
            sqlite.rekey(self.engine, new.database_key)
            self.engine = self._reopen(new)
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.master = new
        return int(total)
