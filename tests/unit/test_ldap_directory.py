"""Directory log-ins' logic (admin/directory.py) against ldap3's in-memory directory
(appliance/testing/ldap.py): search-bind, group to role mapping (no group, or several, is no
role), the typed name escaped in the filter (RFC 4515), an unreachable directory as an outcome
with a log line; and ``[ldap]``'s validation."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from appliance.admin.directory import Directory, Outcome
from appliance.config.settings import LdapMembership, LdapSettings, Settings, load_settings
from appliance.core.errors import ConfigError
from appliance.deploy.egress import allowlist
from appliance.testing.ldap import (
    GROUPS,
    PEOPLE,
    SERVICE_DN,
    SERVICE_PASSWORD,
    FakeDirectory,
)

ADMINS = f"cn=appliance-admins,{GROUPS}"
AUDITORS = f"cn=appliance-auditors,{GROUPS}"


def options(tmp_path: Path, **changes: object) -> LdapSettings:
    secret = tmp_path / "bind.password"
    if not secret.exists():
        secret.write_text(SERVICE_PASSWORD + "\n")
        secret.chmod(0o600)
    values: dict[str, object] = {
        "url": "ldaps://192.0.2.20:636",
        "bind_dn": SERVICE_DN,
        "bind_password_file": str(secret),
        "user_base": PEOPLE,
        "role_groups": {"admin": ADMINS, "auditor": AUDITORS},
        **changes,
    }
    return LdapSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def directory() -> FakeDirectory:
    fake = FakeDirectory()
    alice = fake.user("alice", "alice's directory password")
    bob = fake.user("bob", "bob's directory password")
    fake.user("carol", "carol's directory password")
    dave = fake.user("dave", "dave's directory password")
    fake.group("appliance-admins", alice, dave)
    fake.group("appliance-auditors", bob, dave)
    fake.group("other-group", fake.user("erin", "erin's directory password"))
    return fake


def test_the_group_gives_the_role(directory: FakeDirectory, tmp_path: Path) -> None:
    client = Directory(options(tmp_path), directory.connect)
    alice = client.authenticate("alice", "alice's directory password")
    assert (alice.outcome, alice.role) == (Outcome.OK, "admin")
    bob = client.authenticate("bob", "bob's directory password")
    assert (bob.outcome, bob.role) == (Outcome.OK, "auditor")


def test_no_mapped_group_or_several_is_no_role(
    directory: FakeDirectory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = Directory(options(tmp_path), directory.connect)
    with caplog.at_level(logging.WARNING, logger="appliance.admin.directory"):
        carol = client.authenticate("carol", "carol's directory password")
        erin = client.authenticate("erin", "erin's directory password")  # an unmapped group
        dave = client.authenticate("dave", "dave's directory password")  # admins and auditors
    assert [a.outcome for a in (carol, erin, dave)] == [Outcome.NO_ROLE] * 3
    assert [a.role for a in (carol, erin, dave)] == ["", "", ""]
    assert "directory user carol is in none of the mapped groups" in caplog.text
    assert "directory user dave is in several of the mapped groups" in caplog.text
    assert "password" not in caplog.text and "uid=" not in caplog.text  # no password, no DN


def test_a_group_mapping_that_names_no_group_gives_no_role(
    directory: FakeDirectory, tmp_path: Path
) -> None:
    wrong = {"admin": f"cn=appliance-admin,{GROUPS}"}  # a typo: no such group
    client = Directory(options(tmp_path, role_groups=wrong), directory.connect)
    answer = client.authenticate("alice", "alice's directory password")
    assert (answer.outcome, answer.role) == (Outcome.NO_ROLE, "")


def test_the_role_is_read_again_at_every_log_in(directory: FakeDirectory, tmp_path: Path) -> None:
    client = Directory(options(tmp_path), directory.connect)
    assert client.authenticate("alice", "alice's directory password").role == "admin"
    directory.set_members(ADMINS)
    directory.set_members(AUDITORS, f"uid=alice,{PEOPLE}")
    assert client.authenticate("alice", "alice's directory password").role == "auditor"
    directory.set_members(AUDITORS)
    assert client.authenticate("alice", "alice's directory password").outcome is Outcome.NO_ROLE


def test_wrong_unknown_and_empty_passwords_are_refused(
    directory: FakeDirectory, tmp_path: Path
) -> None:
    client = Directory(options(tmp_path), directory.connect)
    assert client.authenticate("alice", "bob's directory password").outcome is Outcome.REFUSED
    assert client.authenticate("zoe", "alice's directory password").outcome is Outcome.REFUSED
    # An empty password would be an unauthenticated bind, which servers accept (RFC 4513
    # 5.1.2): it is refused before the directory is asked.
    searches = len(directory.filters)
    assert client.authenticate("alice", "").outcome is Outcome.REFUSED
    assert len(directory.filters) == searches


def test_the_typed_name_is_escaped_in_the_filter(directory: FakeDirectory, tmp_path: Path) -> None:
    """RFC 4515 3: '*', '(' and ')' in the name are values. Unescaped, ``*)(uid=alice`` in
    this filter would match alice's entry (and log in as her under another name)."""
    wide = "(&(objectClass=inetOrgPerson)(uid={username}))"
    client = Directory(options(tmp_path, user_filter=wide), directory.connect)
    assert client.authenticate("alice", "alice's directory password").outcome is Outcome.OK
    for name in ("*)(uid=alice", "*)(uid=*", "*", "al*"):
        answer = client.authenticate(name, "alice's directory password")
        assert answer.outcome is Outcome.REFUSED, name
    assert r"(&(objectClass=inetOrgPerson)(uid=\2a\29\28uid=\2a))" in directory.filters


def test_member_of_on_the_user_entry(tmp_path: Path) -> None:
    fake = FakeDirectory()
    fake.user("alice", "alice's directory password", member_of=(ADMINS.upper(),))
    fake.user("carol", "carol's directory password", member_of=(f"cn=staff,{GROUPS}",))
    mode = {"membership": LdapMembership.MEMBER_OF}
    client = Directory(options(tmp_path, **mode), fake.connect)
    alice = client.authenticate("alice", "alice's directory password")
    assert (alice.outcome, alice.role) == (Outcome.OK, "admin")  # DNs compare without case
    assert client.authenticate("carol", "carol's directory password").outcome is Outcome.NO_ROLE


def test_an_unreachable_directory_is_an_outcome_with_a_log_line(
    directory: FakeDirectory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory.away = True
    client = Directory(options(tmp_path), directory.connect)
    with caplog.at_level(logging.WARNING, logger="appliance.admin.directory"):
        answer = client.authenticate("alice", "alice's directory password")
    assert answer.outcome is Outcome.UNAVAILABLE
    assert "directory ldaps://192.0.2.20:636 unreachable" in caplog.text
    assert "Connection refused" in caplog.text and "local accounts only" in caplog.text
    assert "alice" not in caplog.text  # the DN and password of the user are not logged


def test_a_refused_service_account_or_an_unsafe_password_file_is_unavailable(
    directory: FakeDirectory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "wrong.password"
    secret.write_text("not the service account's password")
    secret.chmod(0o600)
    client = Directory(options(tmp_path, bind_password_file=str(secret)), directory.connect)
    with caplog.at_level(logging.WARNING, logger="appliance.admin.directory"):
        assert client.authenticate("alice", "x").outcome is Outcome.UNAVAILABLE
    assert "the service account's bind was refused" in caplog.text
    secret.write_text(SERVICE_PASSWORD)
    secret.chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="appliance.admin.directory"):
        assert client.authenticate("alice", "x").outcome is Outcome.UNAVAILABLE
    assert "group or others can read it" in caplog.text


def test_the_settings_refuse_what_would_be_unsafe_or_ambiguous(tmp_path: Path) -> None:
    cases = {
        "ldaps://ldap.example.org:636": "not a name",  # a name would be looked up
        "ldap://192.0.2.20:389": "start_tls",  # a password in clear
        "ldaps://192.0.2.20": "ADDRESS:PORT",
        "ldapi://192.0.2.20:389": "ADDRESS:PORT",
    }
    for url, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            options(tmp_path, url=url)
    with pytest.raises(ConfigError, match=r"ldap\.role_groups\.owner"):
        options(tmp_path, role_groups={"owner": ADMINS})
    with pytest.raises(ConfigError, match="one group for two roles"):
        options(tmp_path, role_groups={"admin": ADMINS, "auditor": ADMINS.upper()})
    with pytest.raises(ConfigError, match="at least one role"):
        options(tmp_path, role_groups={})
    with pytest.raises(ConfigError, match="user_filter"):
        options(tmp_path, user_filter="uid={username}")
    with pytest.raises(ConfigError, match="bind_dn"):
        options(tmp_path, bind_dn="")
    assert options(tmp_path, url="ldap://192.0.2.20:389", start_tls=True).address == (
        "192.0.2.20",
        389,
        False,
    )
    assert not LdapSettings().enabled  # the default: local accounts only


def test_the_directory_joins_the_egress_allowlist(tmp_path: Path) -> None:
    base = load_settings(environ={"APPLIANCE_HOME": str(tmp_path)})
    assert "192.0.2.20" not in allowlist(base)
    with_directory: Settings = dataclasses.replace(base, ldap=options(tmp_path))
    assert "192.0.2.20" in allowlist(with_directory)


def test_the_role_groups_table_loads_from_the_configuration(tmp_path: Path) -> None:
    secret = tmp_path / "bind.password"
    config = tmp_path / "appliance.toml"
    config.write_text(
        '[ldap]\nurl = "ldaps://192.0.2.20:636"\n'
        f'bind_dn = "{SERVICE_DN}"\nbind_password_file = "{secret}"\nuser_base = "{PEOPLE}"\n'
        f'[ldap.role_groups]\nadmin = "{ADMINS}"\noperator = "cn=ops,{GROUPS}"\n'
    )
    settings = load_settings(config, environ={"APPLIANCE_HOME": str(tmp_path)})
    assert settings.ldap.role_groups == {"admin": ADMINS, "operator": f"cn=ops,{GROUPS}"}


def test_the_tls_context_verifies_and_needs_tls_1_2(tmp_path: Path) -> None:
    import ssl

    from appliance.admin.directory import _tls_context

    context = _tls_context("")
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    with pytest.raises(ConfigError, match=r"ldap\.ca_file"):
        _tls_context(str(tmp_path / "no-such-ca.pem"))
