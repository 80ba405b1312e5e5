"""Panel accounts: passwords (NIST SP 800-63B: 15 characters or more, no composition rules,
not a common password), argon2id hashes, mandatory TOTP, and login attempt limits that give
unknown users and wrong passwords the same answer in the same time."""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from appliance.core.errors import ApplianceError
from appliance.core.ports import Counters
from appliance.identity.limits import SlidingWindow

ROLES = ("admin", "operator", "auditor")
MIN_PASSWORD = 15
# The most common passwords long enough to pass the length rule (from public breach corpora);
# a deployment can extend the list in its own build.
COMMON = frozenset(
    {
        "passwordpassword", "123456789012345", "1234567890123456", "qwertyuiopasdfgh",
        "qwertyuiopasdfghjkl", "iloveyouiloveyou", "passwordpassword1", "000000000000000",
        "111111111111111", "abcdefghijklmno", "abc123abc123abc", "letmeinletmein1",
        "welcomewelcome1", "adminadminadmin", "administrator1", "administrator123",
        "changemechangeme", "correcthorsebatterystaple", "qwerty123456789",
        "1q2w3e4r5t6y7u8i", "zaq12wsxcde34rfv", "trustno1trustno1", "football12345678",
        "baseballbaseball", "monkeymonkeymonkey", "dragondragondragon", "sunshinesunshine",
    }
)  # fmt: skip
_HASHER = PasswordHasher()  # argon2id, the library's current defaults (RFC 9106)
_DUMMY = _HASHER.hash("a password no account has, for the unknown-user path")


class AccountError(ApplianceError):
    pass


_USERNAME = re.compile(r"[a-z][a-z0-9._-]{2,63}")


def username_of(text: str) -> str:
    """The account name as stored and looked up: NFKC, lower case, 3-64 of a-z, 0-9, '.',
    '_' and '-', starting with a letter ("Root" and "root" are one account; no markup)."""
    name = unicodedata.normalize("NFKC", text).strip().casefold()
    if not _USERNAME.fullmatch(name):
        raise AccountError(
            "account.invalid_username",
            "a username is 3 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter",
        )
    return name


def check_password(password: str, username: str = "") -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError("account.weak", f"a password needs {MIN_PASSWORD} characters or more")
    if password.lower() in COMMON or (username and username.lower() in password.lower()):
        raise AccountError("account.weak", "that password is too common or holds the username")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Constant work whether or not the account exists (the dummy hash is checked instead)."""
    try:
        return _HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


class LoginLimiter:
    """Failed logins per account and per address within ``window_s``: past either limit every
    attempt is refused with the same answer, right or wrong, until old failures age out."""

    def __init__(
        self,
        per_account: int,
        per_address: int,
        window_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        counters: Counters | None = None,
    ) -> None:
        self.accounts = SlidingWindow(
            per_account, window_s, clock=clock, counters=counters, scope="login_failures_account"
        )
        self.addresses = SlidingWindow(
            per_address, window_s, clock=clock, counters=counters, scope="login_failures_address"
        )

    def blocked(self, username: str, address: str) -> bool:
        return self.accounts.full(username.lower()) or self.addresses.full(address)

    def failed(self, username: str, address: str) -> None:
        self.accounts.record(username.lower())
        self.addresses.record(address)
