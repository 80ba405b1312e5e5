"""REGISTER towards a PBX or trunk (RFC 3261 10) with digest authentication (RFC 7616/2617).

The user agent registers its Contact for ``register_expires_s``, answers a 401/407 challenge
once per nonce (MD5, qop=auth when offered), and refreshes at four fifths of the granted
time; failures retry with a doubling delay. The password is read from a file, never from the
configuration text.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from appliance.core.errors import ApplianceError

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]+))')


class RegisterError(ApplianceError):
    def __init__(self, message: str) -> None:
        super().__init__("sip.register", message)


@dataclass(frozen=True)
class Challenge:
    realm: str
    nonce: str
    qop: str
    opaque: str
    algorithm: str


def parse_challenge(header: str) -> Challenge:
    if not header.lower().startswith("digest "):
        raise RegisterError("the registrar asks for a scheme other than Digest")
    fields = {key.lower(): quoted or bare for key, quoted, bare in _PARAM.findall(header[7:])}
    algorithm = fields.get("algorithm", "MD5")
    if algorithm.upper() != "MD5":
        raise RegisterError(f"digest algorithm {algorithm} is not supported")
    qops = [q.strip() for q in fields.get("qop", "").split(",") if q.strip()]
    if qops and "auth" not in qops:
        raise RegisterError("the registrar offers no qop=auth")
    return Challenge(
        fields.get("realm", ""), fields.get("nonce", ""), "auth" if qops else "",
        fields.get("opaque", ""), algorithm,
    )  # fmt: skip


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
