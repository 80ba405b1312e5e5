"""Directory log-ins to the panel: the organization's LDAP directory (OpenLDAP, Active
Directory) says who a user is and which role their group gives them; TOTP is still the
panel's own (each directory user has a local record, ``ldap:<name>``, holding no password).

Search-bind (RFC 4513 5.1.3, 6.3): the service account binds and searches for the one entry
the filter names, then a second connection binds as that entry with the password typed. Every
connection is TLS (LDAPS, or StartTLS before any bind, RFC 4513 3) with the certificate
verified against ``[ldap] ca_file`` and the url's address, TLS 1.2 at least.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.config.secrets import read_owner_only
from appliance.config.settings import LdapMembership, LdapSettings
from appliance.core.errors import ApplianceError, ConfigError

with warnings.catch_warnings():
    # ldap3 2.9.1 imports names that pyasn1 0.6 deprecates (tagMap, typeMap): a warning at
    # import time about ldap3's own code, not about anything the appliance does.
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3
    from ldap3.core.exceptions import LDAPException
    from ldap3.utils.conv import escape_filter_chars

log = logging.getLogger(__name__)

SHADOW_PREFIX = "ldap:"
"""A directory user's local record is ``ldap:<name>``: no local account name holds a colon
(accounts.username_of), so the two never meet."""


def shadow_name(username: str) -> str:
    return SHADOW_PREFIX + username


def is_shadow(username: str) -> bool:
    return username.startswith(SHADOW_PREFIX)


class DirectoryError(ApplianceError):
    """The directory cannot be used now: unreachable, its TLS refused, or the service
    account refused."""


class LoginSource(enum.StrEnum):
    """Who vouched for the password of a log-in (recorded with it in the audit trail)."""

    LOCAL = "local"
    DIRECTORY = "directory"


class Outcome(enum.Enum):
    OK = "ok"
    REFUSED = "refused"
    """No such user, more than one entry, or a wrong password."""
    NO_ROLE = "no_role"
    """The password is right, but the user's groups map to no role, or to several."""
    UNAVAILABLE = "unavailable"
    """The directory could not answer: only local accounts log in."""


@dataclass(frozen=True)
class DirectoryLogin:
    outcome: Outcome
    role: str = ""
    """With OK: the one role the user's group maps to (admin, operator, auditor)."""


Connect = Callable[[str, str], Any]
"""(DN, password) -> an ldap3 Connection over TLS, not yet bound."""


class Directory:
    """Search-bind log-ins against ``[ldap]``; ``connect`` is the TLS connection maker (tests
    hand ldap3's in-memory MOCK_SYNC strategy instead)."""

    def __init__(self, options: LdapSettings, connect: Connect | None = None) -> None:
        self.options = options
        self._connect: Connect = connect or self._tls_connection

    def authenticate(self, username: str, password: str) -> DirectoryLogin:
        """The outcome of a log-in as ``username`` with ``password``; the directory being
        away is an outcome (logged once here, with the url and why), never an exception."""
        if not password:  # an empty password is an unauthenticated bind (RFC 4513 5.1.2)
            return DirectoryLogin(Outcome.REFUSED)
        try:
            return self._authenticate(username, password)
        except (LDAPException, OSError, ssl.SSLError, ConfigError, DirectoryError) as exc:
            reason = exc.message if isinstance(exc, ApplianceError) else _why(exc)
            log.warning(
                "directory %s unreachable (%s): directory log-ins refused, local accounts only",
                self.options.url,
                reason,
            )
            return DirectoryLogin(Outcome.UNAVAILABLE)

    def _authenticate(self, username: str, password: str) -> DirectoryLogin:
        options = self.options
        secret = read_owner_only(options.bind_password_file, "ldap.bind_password_file")
        service = self._connect(options.bind_dn, secret)
        try:
            if not service.bind():
                raise DirectoryError(
                    "directory.service_refused", "the service account's bind was refused"
                )
            # RFC 4515 3: the typed name is a value, never filter syntax.
            query = options.user_filter.replace("{username}", escape_filter_chars(username))
            wanted = ["memberOf"] if options.membership is LdapMembership.MEMBER_OF else []
            service.search(
                options.user_base,
                query,
                search_scope=ldap3.SUBTREE,
                attributes=wanted,
                size_limit=2,
            )
            entries = [e for e in service.response or [] if e.get("type") == "searchResEntry"]
            if len(entries) != 1:
                log.info("directory log-in refused for %s: %d entries", username, len(entries))
                return DirectoryLogin(Outcome.REFUSED)
            entry = entries[0]
            if not self._password_ok(str(entry["dn"]), password):
                return DirectoryLogin(Outcome.REFUSED)
            roles = self._roles(service, entry)
        finally:
            service.unbind()
        if len(roles) != 1:
            log.warning(
                "directory user %s is in %s of the mapped groups: no role, log-in refused",
                username,
                "none" if not roles else "several",
            )
            return DirectoryLogin(Outcome.NO_ROLE)
        return DirectoryLogin(Outcome.OK, roles[0])

    def _password_ok(self, dn: str, password: str) -> bool:
        user = self._connect(dn, password)
        try:
            return bool(user.bind())
        finally:
            user.unbind()

    def _roles(self, service: Any, entry: dict[str, Any]) -> list[str]:
        """The roles whose group holds the user: with ``group``, the directory matches the
        user's DN in each group's member attribute (distinguishedNameMatch); with
        ``member_of``, the user's memberOf values are compared to each group's DN."""
        options = self.options
        if options.membership is LdapMembership.MEMBER_OF:
            values = entry.get("attributes", {}).get("memberOf") or []
            groups = {_dn_key(str(value)) for value in values}
            return [role for role, dn in options.role_groups.items() if _dn_key(dn) in groups]
        member = escape_filter_chars(str(entry["dn"]))
        found = []
        for role, group in options.role_groups.items():
            service.search(
                group,
                f"({options.member_attribute}={member})",
                search_scope=ldap3.BASE,
                attributes=[],
            )
            if any(e.get("type") == "searchResEntry" for e in service.response or []):
                found.append(role)
        return found

    def _tls_connection(self, dn: str, password: str) -> Any:
        options = self.options
        host, port, ldaps = options.address
        tls = _VerifiedTls(_tls_context(options.ca_file), host)
        server = ldap3.Server(
            host,
            port=port,
            use_ssl=ldaps,
            tls=tls,
            connect_timeout=options.timeout_s,
            get_info=ldap3.NONE,
        )
        connection = ldap3.Connection(
            server,
            user=dn,
            password=password,
            receive_timeout=options.timeout_s,
            read_only=True,
            auto_referrals=False,  # a referral would be a connection to a name not allowed
        )
        try:
            connection.open()
            if options.start_tls and not connection.start_tls():
                raise DirectoryError("directory.start_tls", "the directory refused StartTLS")
        except BaseException:
            # The socket closed without a word more: after a failed handshake an unbind
            # would fail too, and hide why.
            with contextlib.suppress(LDAPException, OSError):
                connection.strategy.close()
            if connection.socket is not None:  # ldap3 leaves a socket that failed to connect
                connection.socket.close()
            raise
        return connection


def _why(exc: BaseException) -> str:
    """What went wrong, in a line (socket and TLS errors name no user)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


def _dn_key(dn: str) -> str:
    """A DN compared as directories compare the usual ones: case and spaces after commas
    and around '=' do not count (RFC 4514 forms of one name)."""
    parts = [part.strip() for part in dn.strip().split(",")]
    return ",".join("=".join(p.strip() for p in part.split("=", 1)) for part in parts).casefold()


def _tls_context(ca_file: str) -> ssl.SSLContext:
    """Certificate and the url's address verified (the defaults of
    ``create_default_context``), TLS 1.2 at least; ``ca_file``'s CAs only when one is
    given."""
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("config.unreadable", f"ldap.ca_file: cannot load {ca_file}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _VerifiedTls(ldap3.Tls):  # type: ignore[misc]  # ldap3 has no type hints
    """ldap3's Tls with the standard library's verification: ldap3 2.9.1 switches the
    context's host name check off and uses the deprecated ``ssl.match_hostname``; here the
    context checks the certificate against the address itself (IP SANs, RFC 6125)."""

    def __init__(self, context: ssl.SSLContext, host: str) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._context = context
        self._host = host

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self._context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=self._host,
        )
