"""A session token from the organization's own app: a possession factor for a caller who is
already signed in to the app and calls from it (the organization's SIP gateway puts the token
in a header of the INVITE, ``[app_token] header``).

The token is a JWT (RFC 7519) signed by the app's server. It counts only when all of these
hold, checked by PyJWT and then here:

- the signature verifies under the configured public key, with the one algorithm that key
  has (EdDSA for Ed25519, ES256 for P-256, RS256 for RSA): the token's own ``alg`` header
  cannot choose another (no ``none``, no HMAC keyed with the public key);
- ``iss`` and ``aud`` are the configured ones; ``exp``, ``iat``, ``sub`` and ``jti`` are
  present; it has not expired, was not issued in the future (``leeway_s`` either way), and
  lives at most ``max_lifetime_s``;
- ``sub`` is the number the call comes from (the token is the app user's, not a pass for
  anyone's line);
- ``jti`` was never seen before: each token is good for one call. With the store as
  ``counters`` the used ids outlive a restart and are shared by every process on it.

Nothing of the token (neither it nor its claims) is logged or stored; a refusal is reported
by its code alone.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from appliance.config.settings import AppTokenSettings
from appliance.core.errors import ConfigError
from appliance.core.ports import Counters
from appliance.identity.factors import FactorError

_USED = "app_token_jti"
"""The counters' scope of used token ids (kept as keyed hashes by the store)."""


class AppTokens:
    def __init__(
        self,
        settings: AppTokenSettings,
        counters: Counters | None = None,
    ) -> None:
        self.settings = settings
        self.counters = counters
        self._key, self._algorithm = _load_key(Path(settings.public_key_file))
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def verify(self, token: str, caller: str) -> None:
        """Accept ``token`` for a call from ``caller`` once, or raise FactorError naming why
        (identity.token_invalid, _expired, _claims, _lifetime, _caller or _reused)."""
        claims = self._decode(token)
        issued, expires = claims["iat"], claims["exp"]
        if not isinstance(issued, int | float) or not isinstance(expires, int | float):
            raise FactorError("identity.token_claims", "iat and exp must be numbers")
        if expires - issued > self.settings.max_lifetime_s:
            raise FactorError("identity.token_lifetime", "the token lives too long")
        if _digits(str(claims["sub"])) != _digits(caller) or not _digits(caller):
            raise FactorError("identity.token_caller", "the token is not for this caller")
        self._use(str(claims["jti"]))

    def _decode(self, token: str) -> dict[str, object]:
        settings = self.settings
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_s,
                options={"require": ["exp", "iat", "sub", "jti", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise FactorError("identity.token_expired", "the token has expired") from exc
        except (jwt.MissingRequiredClaimError, jwt.InvalidAudienceError) as exc:
            raise FactorError("identity.token_claims", type(exc).__name__) from exc
        except jwt.InvalidIssuerError as exc:
            raise FactorError("identity.token_claims", "InvalidIssuerError") from exc
        except jwt.ImmatureSignatureError as exc:
            raise FactorError("identity.token_claims", "issued in the future") from exc
        except jwt.InvalidTokenError as exc:
            raise FactorError("identity.token_invalid", type(exc).__name__) from exc
        return claims

    def _use(self, jti: str) -> None:
        """Mark ``jti`` used, in one step: of two calls with the same token one wins."""
        key = hashlib.sha256(jti.encode()).hexdigest()
        if self.counters is None:
            with self._lock:
                fresh = key not in self._seen
                self._seen.add(key)
        else:
            seen: list[str | None] = []

            def mark(old: str | None) -> str:
                seen.append(old)
                return "used"

            self.counters.change_state(_USED, key, mark)
            fresh = seen[-1] is None
        if not fresh:
            raise FactorError("identity.token_reused", "the token was used before")


PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _load_key(path: Path) -> tuple[PublicKey, str]:
    """The key and the one algorithm it verifies (ConfigError naming the key otherwise)."""
    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(
            "config.unreadable", f"app_token.public_key_file: cannot read {path} ({exc.strerror})"
        ) from exc
    except ValueError as exc:
        raise ConfigError(
            "config.invalid", f"app_token.public_key_file: {path} is not a PEM public key"
        ) from exc
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key, "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key, "RS256"
    raise ConfigError(
        "config.invalid",
        f"app_token.public_key_file: {path} must be an Ed25519, P-256 or RSA (2048 bits or more) "
        "public key",
    )


def _digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())
