"""A directory in memory for the panel's directory log-ins (admin/directory.py): ldap3's own
MOCK_SYNC strategy, which binds against ``userPassword`` and evaluates search filters the way
ldap3 parses them. It records every filter it is sent, and can be made unreachable."""

from __future__ import annotations

import warnings
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # see admin/directory.py
    import ldap3
    from ldap3.core.exceptions import LDAPSocketOpenError

BASE = "dc=appliance,dc=test"
PEOPLE = f"ou=people,{BASE}"
GROUPS = f"ou=groups,{BASE}"
SERVICE_DN = f"cn=panel,{BASE}"
SERVICE_PASSWORD = "the service account's password"


class FakeDirectory:
    """``connect`` is a ``Directory`` connection maker (DN, password -> connection)."""

    def __init__(self) -> None:
        self.server = ldap3.Server("fake-directory")
        self.filters: list[str] = []
        """Every search filter sent, in order."""
        self.away = False
        """True: every connection fails as a refused TCP connection does."""
        self._loader = ldap3.Connection(self.server, client_strategy=ldap3.MOCK_SYNC)
        self.add(
            SERVICE_DN,
            {
                "objectClass": "person",
                "cn": "panel",
                "sn": "panel",
                "userPassword": SERVICE_PASSWORD,
            },
        )

    def add(self, dn: str, attributes: dict[str, Any]) -> None:
        self._loader.strategy.add_entry(dn, attributes)

    def user(self, uid: str, password: str, member_of: tuple[str, ...] = ()) -> str:
        dn = f"uid={uid},{PEOPLE}"
        attributes: dict[str, Any] = {
            "objectClass": ["inetOrgPerson"],
            "uid": uid,
            "cn": uid,
            "sn": uid,
            "userPassword": password,
        }
        if member_of:
            attributes["memberOf"] = list(member_of)
        self.add(dn, attributes)
        return dn

    def group(self, cn: str, *members: str) -> str:
        dn = f"cn={cn},{GROUPS}"
        self.add(dn, {"objectClass": ["groupOfNames"], "cn": cn, "member": list(members)})
        return dn

    def set_members(self, group_dn: str, *members: str) -> None:
        self.server.dit[group_dn]["member"] = [m.encode() for m in members]

    def connect(self, dn: str, password: str) -> Any:
        if self.away:
            raise LDAPSocketOpenError(
                "socket connection error while opening: [Errno 111] Connection refused"
            )
        connection = ldap3.Connection(
            self.server, user=dn, password=password, client_strategy=ldap3.MOCK_SYNC
        )
        return _Recorded(connection, self.filters)


class _Recorded:
    """A connection that notes the filters of its searches."""

    def __init__(self, connection: Any, filters: list[str]) -> None:
        self._connection = connection
        self._filters = filters

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def search(self, base: str, query: str, **options: Any) -> Any:
        self._filters.append(query)
        return self._connection.search(base, query, **options)
