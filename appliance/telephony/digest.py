"""SIP digest authentication (RFC 3261 22, RFC 2617 qop=auth, MD5: what SIP peers speak).

Client side: the user agent answers a registrar's 401/407 challenge (``parse_challenge``,
``authorization``); the password is read from a file, never from the configuration text.

Server side: ``DigestAuthority`` challenges INVITEs from addresses outside ``[sip]
allowed_peers`` and checks the answer against accounts from a file in htdigest format
(``user:realm:HA1``, HA1 = MD5 of ``user:realm:password``; Apache's ``htdigest`` writes it), so
no password is stored. Nonces are an HMAC of their time and the peer's address under a key
that lives only in memory: they are stateless until used, expire after ``lifetime_s`` (an old
nonce with a right answer gets ``stale=true``, RFC 2617 3.2.1) and a nonce count may not repeat
(replay). Digest authenticates the trunk or peer; it never authenticates the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.core.errors import ApplianceError

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]+))')


class DigestError(ApplianceError):
    def __init__(self, message: str, code: str = "sip.register") -> None:
        super().__init__(code, message)


@dataclass(frozen=True)
class Challenge:
    realm: str
    nonce: str
    qop: str
    opaque: str
    algorithm: str


def parse_challenge(header: str) -> Challenge:
    if not header.lower().startswith("digest "):
        raise DigestError("the registrar asks for a scheme other than Digest")
    fields = _fields(header)
    algorithm = fields.get("algorithm", "MD5")
    if algorithm.upper() != "MD5":
        raise DigestError(f"digest algorithm {algorithm} is not supported")
    qops = [q.strip() for q in fields.get("qop", "").split(",") if q.strip()]
    if qops and "auth" not in qops:
        raise DigestError("the registrar offers no qop=auth")
    return Challenge(
        fields.get("realm", ""), fields.get("nonce", ""), "auth" if qops else "",
        fields.get("opaque", ""), algorithm,
    )  # fmt: skip


def _fields(header: str) -> dict[str, str]:
    """The parameters of a ``Digest ...`` header value, names lower-cased."""
    return {key.lower(): quoted or bare for key, quoted, bare in _PARAM.findall(header[7:])}


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def authorization(
    challenge: Challenge, method: str, uri: str, user: str, password: str, nc: int = 1
) -> str:
    """The Authorization header value answering ``challenge``."""
    ha1 = _md5(f"{user}:{challenge.realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    parts = [
        f'username="{user}"', f'realm="{challenge.realm}"', f'nonce="{challenge.nonce}"',
        f'uri="{uri}"', "algorithm=MD5",
    ]  # fmt: skip
    if challenge.qop:
        cnonce = secrets.token_hex(8)
        count = f"{nc:08x}"
        response = _md5(f"{ha1}:{challenge.nonce}:{count}:{cnonce}:auth:{ha2}")
        parts += ["qop=auth", f"nc={count}", f'cnonce="{cnonce}"']
    else:
        response = _md5(f"{ha1}:{challenge.nonce}:{ha2}")
    parts.append(f'response="{response}"')
    if challenge.opaque:
        parts.append(f'opaque="{challenge.opaque}"')
    return "Digest " + ", ".join(parts)


def ha1(user: str, realm: str, password: str) -> str:
    """What an accounts file stores for ``user`` (the htdigest line is ``user:realm:ha1``)."""
    return _md5(f"{user}:{realm}:{password}")


def read_accounts(path: str, realm: str) -> dict[str, str]:
    """User -> HA1 for ``realm`` from an htdigest file readable by its owner only."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DigestError(f"cannot read the SIP accounts file: {exc}", "sip.config") from exc
    if mode & 0o077:
        raise DigestError(
            f"{path} is readable by others: chmod 600 it (it holds password hashes)",
            "sip.config",
        )
    accounts: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.strip().split(":")
        if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{32}", parts[2]):
            raise DigestError(f"{path} line {number}: expected user:realm:md5-hex", "sip.config")
        if parts[1] == realm:
            accounts[parts[0]] = parts[2]
    return accounts


def _names_this_server(digest_uri: str, request_uri: str) -> bool:
    """The digest ``uri`` is the Request-URI, or a SIP URI of the same host and port (some
    peers, SIPp among them, send ``sip:host`` rather than the whole Request-URI)."""

    def host(uri: str) -> str:
        rest = uri.split(":", 1)[1] if uri.lower().startswith(("sip:", "sips:")) else ""
        return rest.rpartition("@")[2].split(";", 1)[0].split("?", 1)[0].lower()

    named = host(digest_uri)
    return digest_uri == request_uri or (bool(named) and named == host(request_uri))


@dataclass(frozen=True)
class Verdict:
    """``user`` when the answer is right; else whether to challenge (again) or refuse."""

    user: str = ""
    challenge: bool = False
    stale: bool = False


class DigestAuthority:
    def __init__(
        self,
        realm: str,
        accounts: dict[str, str],
        lifetime_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.realm = realm
        self.accounts = accounts
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._counts: dict[str, tuple[float, int]] = {}  # used nonce -> (issued, last nc)

    def _mac(self, issued: str, host: str) -> str:
        return hmac.new(self._key, f"{issued}:{host}".encode(), hashlib.sha256).hexdigest()[:32]

    def challenge(self, host: str, stale: bool = False) -> str:
        """A WWW-Authenticate value with a fresh nonce for a peer at ``host``."""
        issued = f"{int(self._clock() * 1000):x}"
        nonce = f"{issued}.{self._mac(issued, host)}"
        value = f'Digest realm="{self.realm}", nonce="{nonce}", qop="auth", algorithm=MD5'
        return value + (", stale=true" if stale else "")

    def verify(self, header: str, method: str, uri: str, host: str) -> Verdict:
        """Check an Authorization header on a request from ``host``."""
        if not header.lower().startswith("digest "):
            return Verdict(challenge=True)  # no credentials yet
        fields = _fields(header)
        issued, _, mac = fields.get("nonce", "").partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(issued, host).encode()):
            return Verdict(challenge=True)  # not our nonce, or issued to another address
        known = self.accounts.get(fields.get("username", ""))
        if (
            known is None
            or fields.get("realm") != self.realm
            or not _names_this_server(fields.get("uri", ""), uri)
            or fields.get("qop") != "auth"
            or fields.get("algorithm", "MD5").upper() != "MD5"
            or not re.fullmatch(r"[0-9a-fA-F]{8}", fields.get("nc", ""))
        ):
            return Verdict()
        nonce, count, cnonce = fields["nonce"], fields["nc"], fields.get("cnonce", "")
        digest_uri = fields["uri"]
        expected = _md5(f"{known}:{nonce}:{count}:{cnonce}:auth:{_md5(f'{method}:{digest_uri}')}")
        if not hmac.compare_digest(fields.get("response", "").lower().encode(), expected.encode()):
            return Verdict()
        now = self._clock()
        if now - int(issued, 16) / 1000 > self.lifetime_s:
            return Verdict(challenge=True, stale=True)
        self._counts = {n: v for n, v in self._counts.items() if now - v[0] <= self.lifetime_s}
        seen = self._counts.get(nonce)
        if seen is not None and int(count, 16) <= seen[1]:
            return Verdict()  # a replayed answer
        self._counts[nonce] = (int(issued, 16) / 1000, int(count, 16))
        return Verdict(user=fields["username"])
