"""Rate limits and quotas that refuse at once: no queue grows without bound."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from appliance.core.ports import Counters

Clock = Callable[[], float]


@dataclass
class SlidingWindow:
    """At most ``limit`` events per ``window_s`` per key. Memory stays bounded: at most
    ``max_keys`` keys are tracked (the least recently seen go first) and each holds at most
    ``limit`` timestamps."""

    limit: int
    window_s: float
    max_keys: int = 10_000
    clock: Clock = time.monotonic
    counters: Counters | None = None
    """Where the events are kept instead of this process's memory (the store: they survive a
    restart and are shared by the processes on it); the clock is then wall-clock time."""
    scope: str = ""
    _events: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def allow(self, key: str) -> bool:
        """Count an event for ``key`` if the window has room; False (not counted) if not."""
        return self._update(key, record=False)

    def full(self, key: str) -> bool:
        """Whether ``key`` has used its window (nothing is counted)."""
        if self.counters is not None:
            since = self.clock() - self.window_s
            return self.counters.window_count(self.scope, key, since) >= self.limit
        with self._lock:
            events = self._events.get(key)
            now = self.clock()
            return events is not None and sum(t > now - self.window_s for t in events) >= self.limit

    def record(self, key: str) -> None:
        """Count an event for ``key`` even when the window is full (the oldest drops out)."""
        self._update(key, record=True)

    def _update(self, key: str, *, record: bool) -> bool:
        now = self.clock()
        if self.counters is not None:
            return self.counters.window_hit(self.scope, key, now, self.window_s, self.limit, record)
        with self._lock:
            events = self._events.pop(key, None) or deque(maxlen=self.limit)
            while events and events[0] <= now - self.window_s:
                events.popleft()
            allowed = len(events) < self.limit
            if allowed or record:
                events.append(now)
            self._events[key] = events
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
            return allowed

    def tracked_keys(self) -> int:
        return len(self._events)


class ConcurrencyLimit:
    """At most ``limit`` at once; the next one is refused, never queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return self._active

    def try_acquire(self) -> bool:
        with self._lock:
            if self._active >= self.limit:
                return False
            self._active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._active = max(0, self._active - 1)

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """``with limit.slot() as granted:`` — granted is False when the limit is reached."""
        granted = self.try_acquire()
        try:
            yield granted
        finally:
            if granted:
                self.release()
