"""Authentication factors with attempt limits, constant-time checks and single-use codes."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.core.errors import ApplianceError
from appliance.core.ports import Counters

Clock = Callable[[], float]


MAX_LOCKOUT_S = 3600.0
"""The longest a key stays locked at once: the caller ID a lockout is keyed on is the sender's
to write, so a stranger must not be able to lock a customer out for days."""
FORGIVE_AFTER_S = 86_400.0
"""A lockout this long over starts the backoff over."""


class FactorError(ApplianceError):
    """A factor was refused: wrong, reused, expired, or the caller is locked out."""


@dataclass
class _Failures:
    count: int = 0
    lockouts: int = 0
    locked_until: float = 0.0


@dataclass
class AttemptLimiter:
    """After ``max_failures`` wrong answers a key is locked, for ``base_lockout_s`` doubled at
    each further lockout (exponential backoff). A success clears the count, not the history.
    With ``counters`` (the store, and a wall clock) the counts outlive the process."""

    max_failures: int = 3
    base_lockout_s: float = 30.0
    clock: Clock = time.monotonic
    counters: Counters | None = None
    _state: dict[str, _Failures] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, key: str) -> None:
        state = self._get(key)
        now = self.clock()
        if state is not None and state.locked_until > now:
            raise FactorError(
                "identity.locked",
                f"too many failed attempts; retry in {state.locked_until - now:.0f} s",
            )

    def locked(self, key: str) -> bool:
        state = self._get(key)
        return state is not None and state.locked_until > self.clock()

    def failed(self, key: str) -> None:
        now = self.clock()

        def count(state: _Failures | None) -> _Failures:
            state = state or _Failures()
            if state.lockouts and now - state.locked_until > FORGIVE_AFTER_S:
                state.lockouts = 0  # a quiet day: the backoff starts over
            state.count += 1
            if state.count >= self.max_failures:
                lockout = min(self.base_lockout_s * (2**state.lockouts), MAX_LOCKOUT_S)
                state.locked_until = now + lockout
                state.lockouts += 1
                state.count = 0
            return state

        self._change(key, count)

    def succeeded(self, key: str) -> None:
        def clear(state: _Failures | None) -> _Failures | None:
            if state is not None:
                state.count = 0
            return state

        self._change(key, clear)

    def _get(self, key: str) -> _Failures | None:
        if self.counters is None:
            return self._state.get(key)
        value = self.counters.state("factor_attempts", key)
        return _Failures(**json.loads(value)) if value else None

    def _change(self, key: str, change: Callable[[_Failures | None], _Failures | None]) -> None:
        """Read, change, write: in one transaction of the store (parallel calls for the same
        key lose no failure), or under this process's lock."""
        if self.counters is None:
            with self._lock:
                changed = change(self._state.get(key))
                if changed is not None:
                    self._state[key] = changed
            return

        def in_store(value: str | None) -> str | None:
            changed = change(_Failures(**json.loads(value)) if value else None)
            return None if changed is None else json.dumps(dataclasses.asdict(changed))

        self.counters.change_state("factor_attempts", key, in_store)


def hash_secret(secret: str, salt: bytes | None = None) -> tuple[bytes, bytes]:
    """scrypt (RFC 7914) of a PIN or knowledge answer; returns (salt, hash)."""
    salt = salt or os.urandom(16)
    return salt, hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


class SecretFactor:
    """A PIN or a knowledge answer, checked against its salted hash in constant time."""

    def __init__(self, kind: str, limiter: AttemptLimiter) -> None:
        self.kind = kind
        self.limiter = limiter

    def locked(self, caller: str) -> bool:
        return self.limiter.locked(f"{self.kind}:{caller}")

    def verify(self, caller: str, answer: str, stored: tuple[bytes, bytes] | None) -> None:
        key = f"{self.kind}:{caller}"
        self.limiter.check(key)
        salt, expected = stored if stored else (b"\0" * 16, b"\0" * 32)
        _, actual = hash_secret(_normalize(answer), salt)
        # Compare even when nothing is enrolled, so timing does not tell which callers exist.
        if stored is None or not hmac.compare_digest(actual, expected):
            self.limiter.failed(key)
            raise FactorError("identity.wrong", f"the {self.kind} does not match")
        self.limiter.succeeded(key)


def _normalize(answer: str) -> str:
    return "".join(answer.lower().split())


def totp(secret: bytes, counter: int, digits: int = 6) -> str:
    """RFC 6238 / RFC 4226: HMAC-SHA1 of the time step, dynamically truncated."""
    mac = hmac.new(secret, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def totp_secret_from_base32(text: str) -> bytes:
    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


@dataclass
class TotpFactor:
    """TOTP with a tolerance of ``window`` steps each way; a code is good once (RFC 6238 5.2)."""

    limiter: AttemptLimiter
    step_s: int = 30
    window: int = 1
    clock: Clock = time.time
    _used: dict[str, int] = field(default_factory=dict)

    def locked(self, caller: str) -> bool:
        return self.limiter.locked(f"totp:{caller}")

    def verify(self, caller: str, code: str, secret: bytes | None) -> None:
        key = f"totp:{caller}"
        self.limiter.check(key)
        now_step = int(self.clock() // self.step_s)
        digits = "".join(ch for ch in code if ch.isdigit())
        matched = None
        for counter in range(now_step - self.window, now_step + self.window + 1):
            candidate = totp(secret or b"\0" * 20, counter)
            if hmac.compare_digest(candidate, digits.zfill(6)[-6:]) and secret is not None:
                matched = counter
        if matched is None:
            self.limiter.failed(key)
            raise FactorError("identity.wrong", "the authenticator code does not match")
        if not claim_step(self.limiter.counters, self._used, caller, matched):
            self.limiter.failed(key)
            raise FactorError("identity.reused", "that authenticator code was already used")
        self.limiter.succeeded(key)


def claim_step(counters: Counters | None, memory: dict[str, int], who: str, step: int) -> bool:
    """Claim TOTP time step ``step`` for ``who``: True when it is later than the last one
    used, then recorded, in one transaction of the store when there is one (a code stays used
    across a restart, and two sessions racing with one code cannot both win), else in
    ``memory`` under a lock."""
    if counters is None:
        with _STEPS_LOCK:
            if memory.get(who, -1) >= step:
                return False
            memory[who] = step
            return True
    won = False

    def later(value: str | None) -> str:
        nonlocal won
        won = int(value or -1) < step
        return str(step) if won else str(value)

    counters.change_state("totp_step", who, later)
    return won


_STEPS_LOCK = threading.Lock()


def _any_contact(contact: str) -> bool:
    return True


@dataclass
class OneTimeCodes:
    """Codes sent out of band (an e-mail, a text message) through a pluggable notifier:
    ``send(contact, code)``. A code is good once and for ``ttl_s``; a wrong one counts toward
    the factor's lockout (``oob:`` keys of the limiter), and a lockout voids the pending code."""

    send: Callable[[str, str], None]
    limiter: AttemptLimiter
    ttl_s: float = 300.0
    clock: Clock = time.monotonic
    reaches: Callable[[str], bool] = _any_contact
    """Whether the notifier delivers to a contact (an e-mail address for SMTP)."""
    _pending: dict[str, tuple[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def locked(self, caller: str) -> bool:
        return self.limiter.locked(f"oob:{caller}")

    def issue(self, caller: str, contact: str) -> None:
        """A new code for ``caller`` (replacing any still pending), sent to ``contact``.
        Refused while the factor is locked (a guesser gets no fresh codes, the caller's inbox
        no flood); when the notifier fails, its error is raised and nothing stays pending."""
        self.limiter.check(f"oob:{caller}")
        code = f"{secrets.randbelow(10**6):06d}"
        pending = (code, self.clock() + self.ttl_s)
        with self._lock:
            self._pending[caller] = pending
        try:
            self.send(contact, code)
        except BaseException:
            with self._lock:
                if self._pending.get(caller) is pending:
                    del self._pending[caller]
            raise

    def verify(self, caller: str, code: str) -> None:
        key = f"oob:{caller}"
        self.limiter.check(key)
        digits = "".join(ch for ch in code if ch in "0123456789")
        with self._lock:  # compared and taken at once: two answers cannot both use one code
            expected, expires = self._pending.get(caller, ("", 0.0))
            good = bool(expected) and self.clock() <= expires
            good = hmac.compare_digest(expected or "-", digits) and good
            if good:
                del self._pending[caller]  # single use
        if not good:
            self.limiter.failed(key)
            if self.limiter.locked(key):
                with self._lock:
                    self._pending.pop(caller, None)
            raise FactorError("identity.wrong", "the one-time code does not match or expired")
        self.limiter.succeeded(key)
