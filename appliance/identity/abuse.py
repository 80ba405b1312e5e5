"""Admission and abuse handling: who may start a call, and what repeated probing costs.

Pure logic on a clock; the service turns its decisions into refusals, hang-ups, audit events
and incidents. Memory is bounded (sliding windows keep at most a set number of keys).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.config.settings import LimitsSettings
from appliance.identity.limits import ConcurrencyLimit, SlidingWindow

Clock = Callable[[], float]


class Action(enum.StrEnum):
    NONE = "none"
    WARN = "warn"
    END_CALL = "end_call"
    BLOCK_CALLER = "block_caller"


@dataclass(frozen=True)
class Admission:
    allowed: bool
    reason: str = ""
    incident: str = ""
    """Non-empty when this refusal should open an incident (the first of a flood)."""


class AbuseMonitor:
    def __init__(self, limits: LimitsSettings, clock: Clock = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.calls = ConcurrencyLimit(limits.max_concurrent_calls)
        self._per_caller = SlidingWindow(limits.calls_per_caller_per_hour, 3600, clock=clock)
        self._per_address = SlidingWindow(limits.calls_per_address_per_minute, 60, clock=clock)
        self._probes = SlidingWindow(limits.probes_per_caller_per_day, 86_400, clock=clock)
        self._blocked: dict[str, float] = {}
        self._flooding: dict[str, float] = {}

    def admit(self, caller: str | None, address: str | None = None) -> Admission:
        """Check a new call; when allowed, it holds a concurrency slot until ``release``."""
        now = self.clock()
        if caller and self._blocked.get(caller, 0.0) > now:
            return Admission(False, "limit.blocked")
        if caller and not self._per_caller.allow(caller):
            return self._flood(caller, "limit.caller", now)
        if address and not self._per_address.allow(address):
            return self._flood(f"address:{address}", "limit.address", now)
        if not self.calls.try_acquire():
            return Admission(False, "limit.concurrent")
        return Admission(True)

    def _flood(self, key: str, reason: str, now: float) -> Admission:
        first = self._flooding.get(key, 0.0) < now - 3600  # one incident an hour per flooder
        if first:
            self._flooding[key] = now
        return Admission(False, reason, incident="flood" if first else "")

    def release(self) -> None:
        self.calls.release()

    def probe(self, caller: str | None, probes_in_call: int) -> Action:
        """A guard blocked a turn: what happens now (a warning, a hang-up, a block)?"""
        over_call = probes_in_call >= self.limits.probes_per_call
        over_day = bool(caller) and not self._probes.allow(caller or "")
        if not (over_call or over_day):
            return Action.NONE
        action = Action(self.limits.probe_action)
        if action is Action.BLOCK_CALLER and caller:
            self._blocked[caller] = self.clock() + 60 * self.limits.block_minutes
        return action
