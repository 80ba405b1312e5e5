"""The factors of the organization's own callers: the caller directory (a port, the store
behind it) as the tool agent's credentials, and what enrolment makes of a PIN or an
authenticator.

The directory fails closed: a caller it does not know, a locked entry, or an entry that does not
open (altered, moved onto another number) has no credential, so every factor fails for them.
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import urllib.parse
from dataclasses import dataclass

from appliance.core.errors import ApplianceError, DirectoryError
from appliance.core.ports import CallerDirectory, CredentialKind, EntryState
from appliance.identity.factors import hash_secret

log = logging.getLogger(__name__)

PIN_DIGITS = (4, 12)
"""A PIN's length, fewest and most digits."""
TOTP_SECRET_BYTES = 20
"""RFC 4226 4 R6 recommends a 160-bit shared secret (the length of an HMAC-SHA1 key)."""
TOTP_STEP_S = 30
TOTP_DIGITS = 6


@dataclass(frozen=True)
class DirectoryCredentials:
    """The tool agent's ``Credentials`` over the caller directory: a PIN's salted hash and
    an authenticator secret of an enrolled, unlocked caller, else None."""

    directory: CallerDirectory

    def pin(self, caller: str) -> tuple[bytes, bytes] | None:
        record = self._credential(caller, CredentialKind.PIN)
        if record is None or len(record) != 48:
            return None
        return record[:16], record[16:]

    def totp_secret(self, caller: str) -> bytes | None:
        return self._credential(caller, CredentialKind.TOTP)

    def contact(self, caller: str) -> str | None:
        """Where one-time codes for ``caller`` go, or None."""
        value = self._credential(caller, CredentialKind.CONTACT)
        return value.decode() if value else None

    def usable(self, caller: str) -> bool:
        """Enrolled and not locked (an entry that does not open is not usable)."""
        if not caller:
            return False
        try:
            return self.directory.entry_state(caller) is EntryState.ACTIVE
        except ApplianceError as exc:
            log.warning("caller directory refused a lookup: %s", exc.code)
            return False

    def _credential(self, caller: str, kind: CredentialKind) -> bytes | None:
        if not caller:
            return None
        try:
            return self.directory.credential(caller, kind)
        except ApplianceError as exc:  # fail closed; the store audited an entry that is altered
            log.warning("caller directory refused a %s lookup: %s", kind.value, exc.code)
            return None


class NoDirectory:
    """A directory with nobody in it, for a call without storage (the red team's text runs):
    every factor fails, as for a caller nobody enrolled."""

    def entry_state(self, caller: str) -> EntryState:
        return EntryState.ABSENT

    def credential(self, caller: str, kind: CredentialKind) -> bytes | None:
        return None


def pin_record(pin: str) -> bytes:
    """A new PIN as the directory keeps it: scrypt salt then hash (``hash_secret``, as the PIN
    factor checks it). Refused with ``directory.bad_pin`` unless 4 to 12 digits, and with
    ``directory.weak_pin`` for one digit repeated or a straight run (NIST SP 800-63B 5.1.1.2:
    refuse values that are commonly used)."""
    digits = pin.strip()
    low, high = PIN_DIGITS
    if not (digits.isascii() and digits.isdigit() and low <= len(digits) <= high):
        raise DirectoryError("directory.bad_pin", f"a PIN is {low} to {high} digits, nothing else")
    steps = {(int(b) - int(a)) % 10 for a, b in itertools.pairwise(digits)}
    if len(steps) == 1 and steps <= {0, 1, 9}:
        raise DirectoryError("directory.weak_pin", "that PIN is too easy to guess")
    salt, digest = hash_secret(digits)  # digits are what SecretFactor's normalizing leaves
    return salt + digest


def new_totp_secret() -> bytes:
    return os.urandom(TOTP_SECRET_BYTES)


def provisioning_uri(secret: bytes, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads (Google Authenticator's Key URI
    Format): the secret in base32, SHA-1, six digits, 30-second steps, as TotpFactor checks."""
    label = urllib.parse.quote(f"{issuer}:{account}", safe="")
    query = urllib.parse.urlencode(
        {
            "secret": base64.b32encode(secret).decode().rstrip("="),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": TOTP_DIGITS,
            "period": TOTP_STEP_S,
        },
        quote_via=urllib.parse.quote,
    )
    return f"otpauth://totp/{label}?{query}"
