"""Directory log-ins through the panel (Flask's test client, ldap3's in-memory directory):
the group's role, TOTP enrolled per directory user with an enrolment code, the role read again
at every log-in, no role for no group, the same answer as a wrong password, local accounts as
break-glass while the directory is away, and the audit trail's source of each log-in."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.admin.accounts import hash_password, verify_password
from appliance.admin.app import create_app
from appliance.admin.directory import Directory
from appliance.cli.operate import new_enrolment_code
from appliance.config.settings import LdapSettings, Settings, load_settings
from appliance.identity.factors import totp
from appliance.service import open_storage
from appliance.storage.reports import recent_audit_events
from appliance.storage.repository import Storage
from appliance.testing.ldap import GROUPS, PEOPLE, SERVICE_DN, SERVICE_PASSWORD, FakeDirectory

ADMINS = f"cn=appliance-admins,{GROUPS}"
AUDITORS = f"cn=appliance-auditors,{GROUPS}"
PASSWORDS = {
    "alice": "alice's directory password",
    "bob": "bob's directory password",
    "carol": "carol's directory password",
    "root": "an admin passphrase, long",
    "olga": "olga's local passphrase",
}


class Panel:
    def __init__(self, app: Flask, storage: Storage, fake: FakeDirectory, settings: Settings):
        self.app, self.storage, self.fake, self.settings = app, storage, fake, settings
        self.enrolment: dict[str, str] = {}
        self.steps: dict[str, int] = {}

    def client(self) -> FlaskClient:
        c = self.app.test_client()
        c.environ_base["wsgi.url_scheme"] = "https"
        return c

    def password_step(self, c: FlaskClient, name: str, password: str) -> tuple[int, str]:
        page = c.get("/login").get_data(as_text=True)
        answer = c.post(
            "/login", data={"csrf": _csrf(page), "username": name, "password": password}
        )
        return answer.status_code, answer.get_data(as_text=True)

    def log_in(self, name: str, account: str, enrolment: str | None = None) -> FlaskClient:
        """A full log-in (password, then TOTP, enrolled on the first); ``account`` is the
        record's name (``ldap:alice`` for a directory user)."""
        c = self.client()
        status, text = self.password_step(c, name, PASSWORDS[name])
        assert status == 200, text
        secret = self.storage.admin_totp(account)
        if secret is None:
            key = re.search(r'id="totp-secret">([A-Z2-7]+)<', text)
            assert key, text
            secret = base64.b32decode(key.group(1) + "=" * (-len(key.group(1)) % 8))
        step = max(int(time.time() // 30), self.steps.get(account, -2) + 1)
        self.steps[account] = step
        form = {
            "csrf": _csrf(text),
            "code": totp(secret, step),
            "enrolment": enrolment if enrolment is not None else self.enrolment.get(account, ""),
        }
        done = c.post("/login", data=form)
        assert done.status_code == 302, done.get_data(as_text=True)
        return c


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


@pytest.fixture
def panel(tmp_path: Path) -> Iterator[Panel]:
    fake = FakeDirectory()
    alice = fake.user("alice", PASSWORDS["alice"])
    bob = fake.user("bob", PASSWORDS["bob"])
    fake.user("carol", PASSWORDS["carol"])
    fake.user("olga", "olga's directory password")
    fake.group("appliance-admins", alice)
    fake.group("appliance-auditors", bob)
    secret = tmp_path / "bind.password"
    secret.write_text(SERVICE_PASSWORD)
    secret.chmod(0o600)
    base = load_settings(environ={"APPLIANCE_HOME": str(tmp_path)})
    ldap = LdapSettings(
        url="ldaps://192.0.2.20:636",
        bind_dn=SERVICE_DN,
        bind_password_file=str(secret),
        user_base=PEOPLE,
        role_groups={"admin": ADMINS, "auditor": AUDITORS},
    )
    settings = dataclasses.replace(base, ldap=ldap)
    storage = open_storage(settings)
    state = Panel(
        create_app(settings, storage, directory=Directory(ldap, fake.connect)),
        storage,
        fake,
        settings,
    )
    for name, role in (("root", "admin"), ("olga", "operator")):
        state.enrolment[name] = storage.create_admin_user(
            name, hash_password(PASSWORDS[name]), role, "test"
        )
    state.app.testing = True
    yield state
    storage.close()


def _issue_code(panel: Panel, name: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``appliance admin enrolment-code --directory --username NAME``, its code."""
    args = argparse.Namespace(username=name, directory=True)
    assert new_enrolment_code(args, panel.settings) == 0  # it opens the store of its own
    return capsys.readouterr().out.splitlines()[-1]


def _events(storage: Storage, action: str) -> list[tuple[str, str, str, dict[str, object]]]:
    return [
        (e.actor, e.object, e.outcome, json.loads(e.details))
        for e in recent_audit_events(storage, 500)
        if e.action == action
    ]


def test_a_directory_user_gets_the_group_role_and_enrols_totp(
    panel: Panel, capsys: pytest.CaptureFixture[str]
) -> None:
    # The first log-in without an enrolment code cannot bind an authenticator.
    c = panel.client()
    status, text = panel.password_step(c, "alice", PASSWORDS["alice"])
    assert status == 200 and 'id="totp-secret"' in text
    key = re.search(r'id="totp-secret">([A-Z2-7]+)<', text)
    assert key
    secret = base64.b32decode(key.group(1) + "=" * (-len(key.group(1)) % 8))
    wrong = {"csrf": _csrf(text), "code": totp(secret, int(time.time() // 30)), "enrolment": "x"}
    assert c.post("/login", data=wrong).status_code == 401
    assert panel.storage.admin_totp("ldap:alice") is None
    # An admin issues the code; the directory user enrols with it and is an admin.
    panel.enrolment["ldap:alice"] = _issue_code(panel, "alice", capsys)
    alice = panel.log_in("alice", "ldap:alice")
    assert alice.get("/users").status_code == 200
    record = panel.storage.admin_user("ldap:alice")
    assert record is not None and record.role == "admin"
    assert not verify_password(record.password_hash, PASSWORDS["alice"])  # no password kept
    assert panel.storage.admin_totp("ldap:alice") is not None
    assert ("admin:ldap:alice", "panel", "ok", {"source": "directory"}) in _events(
        panel.storage, "login"
    )
    # The local break-glass admin's log-in is recorded as local.
    panel.log_in("root", "root")
    assert ("admin:root", "panel", "ok", {"source": "local"}) in _events(panel.storage, "login")


def test_the_role_is_the_directory_s_at_each_log_in(
    panel: Panel, capsys: pytest.CaptureFixture[str]
) -> None:
    panel.enrolment["ldap:alice"] = _issue_code(panel, "alice", capsys)
    as_admin = panel.log_in("alice", "ldap:alice")
    assert as_admin.get("/users").status_code == 200
    panel.fake.set_members(ADMINS)
    panel.fake.set_members(AUDITORS, f"uid=alice,{PEOPLE}", f"uid=bob,{PEOPLE}")
    as_auditor = panel.log_in("alice", "ldap:alice")
    assert as_auditor.get("/users").status_code == 403
    assert as_auditor.get("/audit").status_code == 200
    # The admin session of before ends: the record's role changed under it.
    assert as_admin.get("/users").status_code == 302
    # Newest first: the record made by enrolment-code had no role until the first log-in.
    changes = [details for *_, details in _events(panel.storage, "change_role")]
    assert changes == [
        {"role": "auditor", "was": "admin", "source": "directory"},
        {"role": "admin", "was": "", "source": "directory"},
    ]


def test_no_mapped_group_is_no_role_with_a_wrong_password_s_answer(panel: Panel) -> None:
    c = panel.client()
    carol = panel.password_step(c, "carol", PASSWORDS["carol"])
    wrong = panel.password_step(panel.client(), "alice", "not alice's password")
    assert carol[0] == wrong[0] == 401

    def plain(text: str) -> str:
        return re.sub(r'name="csrf" value="[^"]+"', "", text)

    assert plain(carol[1]) == plain(wrong[1])
    assert panel.storage.admin_user("ldap:carol") is None  # no record, no role
    failed = _events(panel.storage, "login")
    assert (
        "admin:anonymous",
        "user:carol",
        "failed",
        {"source": "directory", "reason": "no_role"},
    ) in failed


def test_filter_syntax_and_record_names_are_refused_without_asking(panel: Panel) -> None:
    sent = len(panel.fake.filters)
    for name in ("*)(uid=*", "*", "ldap:alice"):
        status, _ = panel.password_step(panel.client(), name, PASSWORDS["alice"])
        assert status == 401, name
    assert len(panel.fake.filters) == sent


def test_a_local_account_decides_for_its_own_name(panel: Panel) -> None:
    """The directory's olga cannot log in as the local olga, nor as herself."""
    status, _ = panel.password_step(panel.client(), "olga", "olga's directory password")
    assert status == 401
    olga = panel.log_in("olga", "olga")
    assert olga.get("/calls").status_code == 200


def test_an_unreachable_directory_leaves_the_local_accounts(
    panel: Panel, caplog: pytest.LogCaptureFixture
) -> None:
    panel.fake.away = True
    with caplog.at_level(logging.WARNING, logger="appliance.admin.directory"):
        status, _ = panel.password_step(panel.client(), "alice", PASSWORDS["alice"])
    assert status == 401
    assert "directory ldaps://192.0.2.20:636 unreachable" in caplog.text
    assert "local accounts only" in caplog.text
    root = panel.log_in("root", "root")
    assert root.get("/users").status_code == 200
    failed = _events(panel.storage, "login")
    # alice has no record here and the directory could not say who she is: the trail keeps
    # a keyed pseudonym of the typed name (it may be a password typed in the wrong field)
    details = {
        "source": "directory",
        "reason": "unavailable",
        "name": panel.storage.caller_hash("alice")[:16],
    }
    assert ("admin:anonymous", "user:unknown", "failed", details) in failed
    assert not any("alice" in str(event) for event in failed)


def test_a_directory_enrolment_code_needs_a_directory(
    panel: Panel, capsys: pytest.CaptureFixture[str]
) -> None:
    off = dataclasses.replace(panel.settings, ldap=LdapSettings())
    args = argparse.Namespace(username="alice", directory=True)
    assert new_enrolment_code(args, off) == 1
    assert "[ldap] url is not set" in capsys.readouterr().err
    assert panel.storage.admin_user("ldap:alice") is None
