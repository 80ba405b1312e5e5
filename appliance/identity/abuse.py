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
from appliance.core.ports import Counters
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
    def __init__(
        self,
        limits: LimitsSettings,
        clock: Clock = time.monotonic,
        counters: Counters | None = None,
    ) -> None:
        """With ``counters`` (the store, and a wall clock), the windows and blocks outlive the
        process; the one-incident-an-hour memory of floods stays in it (after a restart a
        flood may open one incident more)."""
        self.limits = limits
        self.clock = clock
        self.counters = counters
        self.calls = ConcurrencyLimit(limits.max_concurrent_calls)

        def window(limit: int, seconds: float, scope: str) -> SlidingWindow:
            return SlidingWindow(limit, seconds, clock=clock, counters=counters, scope=scope)

        self._per_caller = window(limits.calls_per_caller_per_hour, 3600, "calls_per_caller")
        self._per_address = window(limits.calls_per_address_per_minute, 60, "calls_per_address")
        self._probes = window(limits.probes_per_caller_per_day, 86_400, "probes_per_caller")
        self._blocked: dict[str, float] = {}
        self._flooding: dict[str, float] = {}

    def admit(self, caller: str | None, address: str | None = None) -> Admission:
        """Check a new call; when allowed, it holds a concurrency slot until ``release``."""
        now = self.clock()
        if caller and self._blocked_until(caller) > now:
            return Admission(False, "limit.blocked")
        if caller and not self._per_caller.allow(caller):
            return self._flood(caller, "limit.caller", now)
        if address and not self._per_address.allow(address):
            return self._flood(f"address:{address}", "limit.address", now)
        if not self.calls.try_acquire():
            return Admission(False, "limit.concurrent")
        return Admission(True)

    def _flood(self, key: str, reason: str, now: float) -> Admission:
        last = self._flooding.get(key)
        first = last is None or last < now - 3600  # one incident an hour per flooder (a
        # monotonic clock may read under an hour on a machine that started less than one ago)
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
        return Action(self.limits.probe_action)

    def probe_action(self) -> Action:
        """What a probe past a limit does (``[limits] probe_action``)."""
        return Action(self.limits.probe_action)

    def block(self, caller: str) -> None:
        """Refuse ``caller``'s calls for ``[limits] block_minutes``."""
        until = self.clock() + 60 * self.limits.block_minutes
        if self.counters is not None:
            self.counters.set_state("blocked_caller", caller, repr(until))
        else:
            self._blocked[caller] = until

    def _blocked_until(self, caller: str) -> float:
        if self.counters is None:
            return self._blocked.get(caller, 0.0)
        value = self.counters.state("blocked_caller", caller)
        return float(value) if value else 0.0


class CallAnomalies:
    """Anomalies within one call: a volume spike (an utterance far louder than the caller's
    median so far: shouting, or audio blasted into the line) and topic drift (a run of
    off-topic turns). Each is reported once per call; the caller of this class decides the
    action from ``[limits] anomaly_action``."""

    def __init__(self, limits: LimitsSettings) -> None:
        self.limits = limits
        self._levels: list[float] = []
        self._off_topic = 0
        self.reported: set[str] = set()

    def utterance(self, level_dbfs: float) -> str:
        """Returns "volume_spike" the first time an utterance is a spike, else ""."""
        baseline = sorted(self._levels)[len(self._levels) // 2] if len(self._levels) >= 2 else None
        self._levels = [*self._levels[-19:], level_dbfs]
        if baseline is not None and level_dbfs - baseline >= self.limits.volume_spike_db:
            return self._report("volume_spike")
        return ""

    def turn(self, on_topic: bool) -> str:
        """Returns "topic_drift" the first time enough off-topic turns come in a row."""
        self._off_topic = 0 if on_topic else self._off_topic + 1
        if self._off_topic >= self.limits.topic_drift_turns:
            return self._report("topic_drift")
        return ""

    def _report(self, kind: str) -> str:
        if kind in self.reported:
            return ""
        self.reported.add(kind)
        return kind

    def action(self) -> Action:
        return Action(self.limits.anomaly_action)
