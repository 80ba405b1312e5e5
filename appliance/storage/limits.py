"""Limits and lockouts that outlive a process (``core.ports.Counters``), keyed by an HMAC."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import delete, func, select

from appliance.storage.base import StoreBase
from appliance.storage.postgresql import serialize
from appliance.storage.schema import LimitEvent, LimitState


class Limits(StoreBase):
    """The store as ``core.ports.Counters``."""

    def _limit_key(self, scope: str, key: str) -> str:
        return self.caller_hash(f"limit\0{scope}\0{key}")

    def window_hit(
        self, scope: str, key: str, at: float, window_s: float, limit: int, record: bool
    ) -> bool:
        hashed = self._limit_key(scope, key)
        with self.session("limit") as session:
            serialize(session, f"limit\0{scope}\0{hashed}")  # the count and its event as one
            since = at - window_s
            session.execute(  # what has aged out of every window of this scope
                delete(LimitEvent).where(LimitEvent.scope == scope, LimitEvent.at <= since)
            )
            count = session.scalar(
                select(func.count()).where(
                    LimitEvent.scope == scope, LimitEvent.key == hashed, LimitEvent.at > since
                )
            )
            allowed = int(count or 0) < limit
            if allowed or record:
                session.add(LimitEvent(scope=scope, key=hashed, at=at))
            return allowed

    def window_count(self, scope: str, key: str, since: float) -> int:
        hashed = self._limit_key(scope, key)
        with self.session("limit count") as session:
            count = session.scalar(
                select(func.count()).where(
                    LimitEvent.scope == scope, LimitEvent.key == hashed, LimitEvent.at > since
                )
            )
            return int(count or 0)

    def state(self, scope: str, key: str) -> str | None:
        with self.session("limit state") as session:
            row = session.get(LimitState, (scope, self._limit_key(scope, key)))
            return None if row is None else row.value

    def set_state(self, scope: str, key: str, value: str | None) -> None:
        self.change_state(scope, key, lambda _: value)

    def change_state(
        self, scope: str, key: str, change: Callable[[str | None], str | None]
    ) -> str | None:
        hashed = self._limit_key(scope, key)
        with self.session("change limit state") as session:  # one write transaction
            serialize(session, f"limit state\0{scope}\0{hashed}")  # a row not there yet too
            row = session.get(LimitState, (scope, hashed), with_for_update=True)
            value = change(None if row is None else row.value)
            if value is None:
                if row is not None:
                    session.delete(row)
            elif row is None:
                session.add(LimitState(scope=scope, key=hashed, value=value))
            else:
                row.value = value
            return value
