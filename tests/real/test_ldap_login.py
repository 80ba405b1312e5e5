"""Directory log-ins against a real OpenLDAP: Debian's slapd, started by the test in its own
folder (slapd.conf, an mdb database loaded with slapadd) on LDAPS and plain LDAP for StartTLS,
127.0.0.1 only, with a CA and a server certificate made here. Two groups: alice in
appliance-admins, bob in appliance-auditors; carol in neither. Logged in through headless
Chromium against the real panel; the enrolment codes from the ``appliance`` command."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.admin.accounts import hash_password
from appliance.admin.directory import Directory, Outcome
from appliance.admin.serve import server
from appliance.config.settings import LdapSettings, Settings, load_settings
from appliance.identity.factors import totp
from appliance.service import open_storage
from appliance.storage.reports import recent_audit_events
from appliance.storage.repository import Storage
from tests.pki import make_ca

pytestmark = pytest.mark.real

SUFFIX = "dc=appliance,dc=test"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
SERVICE_DN = f"cn=panel,{SUFFIX}"
PASSWORDS = {
    "service": "the panel's service password",
    "alice": "alice's directory password",
    "bob": "bob's directory password",
    "carol": "carol's directory password",
    "root": "an admin passphrase, long",
}
CHROMIUM = shutil.which("chromium")
APPLIANCE = Path(sys.executable).parent / "appliance"
SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


DATA = (
    f"""dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: appliance
o: appliance test

dn: {PEOPLE}
objectClass: organizationalUnit
ou: people

dn: {GROUPS}
objectClass: organizationalUnit
ou: groups

dn: {SERVICE_DN}
objectClass: person
cn: panel
sn: panel
userPassword: {PASSWORDS["service"]}
"""
    + "".join(
        f"""
dn: uid={uid},{PEOPLE}
objectClass: inetOrgPerson
uid: {uid}
cn: {uid}
sn: {uid}
userPassword: {PASSWORDS[uid]}
"""
        for uid in ("alice", "bob", "carol")
    )
    + "".join(
        f"""
dn: cn={cn},{GROUPS}
objectClass: groupOfNames
cn: {cn}
member: uid={uid},{PEOPLE}
"""
        for cn, uid in (("appliance-admins", "alice"), ("appliance-auditors", "bob"))
    )
)


@dataclasses.dataclass
class Slapd:
    folder: Path
    ldaps_port: int
    ldap_port: int
    ca_file: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.folder / "slapd.log").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [str(SLAPD), "-d", "0", "-f", str(self.folder / "slapd.conf"), "-h",
                 f"ldaps://127.0.0.1:{self.ldaps_port}/ ldap://127.0.0.1:{self.ldap_port}/"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
            )  # fmt: skip
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:  # a bounded wait for the listeners
            assert self.process.poll() is None, (self.folder / "slapd.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.ldap_port), timeout=1).close()
                socket.create_connection(("127.0.0.1", self.ldaps_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"slapd did not listen: {(self.folder / 'slapd.log').read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        self.process = None


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    if not SLAPD.exists():
        pytest.fail("slapd is missing: scripts/setup installs Debian's slapd")
    folder = tmp_path / "slapd"
    (folder / "db").mkdir(parents=True)
    ca = make_ca("directory-ca")
    ca_file = ca.pem(folder / "directory-ca.crt")
    cert, key = ca.issue(folder, "directory", ip="127.0.0.1")
    schema = Path("/etc/ldap/schema")
    (folder / "slapd.conf").write_text(
        f"""include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {folder}/slapd.pid
argsfile {folder}/slapd.args
TLSCACertificateFile {ca_file}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
TLSProtocolMin 3.3
database mdb
maxsize 16777216
suffix "{SUFFIX}"
directory {folder}/db
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"""
    )
    (folder / "data.ldif").write_text(DATA)
    loaded = subprocess.run(
        [str(SLAPADD), "-f", str(folder / "slapd.conf"), "-l", str(folder / "data.ldif")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    directory = Slapd(folder, free_port(), free_port(), ca_file)
    directory.start()
    try:
        yield directory
    finally:
        directory.stop()


def ldap_settings(slapd: Slapd, **changes: object) -> LdapSettings:
    secret = slapd.folder / "bind.password"
    if not secret.exists():
        secret.write_text(PASSWORDS["service"] + "\n")
        secret.chmod(0o600)
    values: dict[str, object] = {
        "url": f"ldaps://127.0.0.1:{slapd.ldaps_port}",
        "ca_file": str(slapd.ca_file),
        "bind_dn": SERVICE_DN,
        "bind_password_file": str(secret),
        "user_base": PEOPLE,
        "role_groups": {
            "admin": f"cn=appliance-admins,{GROUPS}",
            "auditor": f"cn=appliance-auditors,{GROUPS}",
        },
        **changes,
    }
    return LdapSettings(**values)  # type: ignore[arg-type]


def test_search_bind_over_ldaps_and_starttls(slapd: Slapd) -> None:
    for options in (
        ldap_settings(slapd),
        ldap_settings(slapd, url=f"ldap://127.0.0.1:{slapd.ldap_port}", start_tls=True),
    ):
        directory = Directory(options)
        alice = directory.authenticate("alice", PASSWORDS["alice"])
        assert (alice.outcome, alice.role) == (Outcome.OK, "admin"), options.url
        bob = directory.authenticate("bob", PASSWORDS["bob"])
        assert (bob.outcome, bob.role) == (Outcome.OK, "auditor")
        assert directory.authenticate("carol", PASSWORDS["carol"]).outcome is Outcome.NO_ROLE
        assert directory.authenticate("alice", PASSWORDS["bob"]).outcome is Outcome.REFUSED
        # slapd takes an empty password as an unauthenticated bind (RFC 4513 5.1.2)
        assert directory.authenticate("alice", "").outcome is Outcome.REFUSED
        for name in ("*)(uid=*", "*", "ali*"):
            assert directory.authenticate(name, PASSWORDS["alice"]).outcome is Outcome.REFUSED


def test_the_certificate_is_verified(
    slapd: Slapd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other_ca = make_ca("another-ca").pem(tmp_path / "another-ca.crt")
    for options in (
        ldap_settings(slapd, ca_file=str(other_ca)),
        ldap_settings(
            slapd,
            ca_file=str(other_ca),
            url=f"ldap://127.0.0.1:{slapd.ldap_port}",
            start_tls=True,
        ),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="appliance.admin.directory"):
            answer = Directory(options).authenticate("alice", PASSWORDS["alice"])
        assert answer.outcome is Outcome.UNAVAILABLE, options.url
        assert f"directory {options.url} unreachable" in caplog.text
        assert "certificate verify failed" in caplog.text


def test_a_directory_that_never_answers_is_given_up_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that accepts and says nothing: the connection gives up after timeout_s (a
    bounded wait of its own, not a measured time)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        secret = tmp_path / "bind.password"
        secret.write_text(PASSWORDS["service"])
        secret.chmod(0o600)
        options = LdapSettings(
            url=f"ldaps://127.0.0.1:{port}",
            bind_dn=SERVICE_DN,
            bind_password_file=str(secret),
            user_base=PEOPLE,
            role_groups={"admin": f"cn=appliance-admins,{GROUPS}"},
            timeout_s=1,
        )
        with caplog.at_level(logging.WARNING, logger="appliance.admin.directory"):
            answer = Directory(options).authenticate("alice", PASSWORDS["alice"])
    assert answer.outcome is Outcome.UNAVAILABLE
    assert f"directory ldaps://127.0.0.1:{port} unreachable" in caplog.text


@pytest.fixture
def panel(slapd: Slapd, tmp_path: Path) -> Iterator[tuple[str, Storage, dict[str, str]]]:
    """The panel over HTTPS with [ldap] pointing at slapd; the configuration is a file, so the
    ``appliance`` command reads the same ``[ldap]``."""
    options = ldap_settings(slapd)
    home = tmp_path / "home"
    config = tmp_path / "appliance.toml"
    groups = "".join(f'{role} = "{dn}"\n' for role, dn in options.role_groups.items())
    config.write_text(
        f'[admin]\nlisten = "127.0.0.1:0"\n[ldap]\nurl = "{options.url}"\n'
        f'ca_file = "{options.ca_file}"\nbind_dn = "{SERVICE_DN}"\n'
        f'bind_password_file = "{options.bind_password_file}"\nuser_base = "{PEOPLE}"\n'
        f"[ldap.role_groups]\n{groups}"
    )
    env = {**os.environ, "APPLIANCE_HOME": str(home), "APPLIANCE_CONFIG": str(config)}
    settings: Settings = load_settings(environ=env)
    assert settings.ldap == options
    storage = open_storage(settings)
    codes = {
        "root": storage.create_admin_user("root", hash_password(PASSWORDS["root"]), "admin", "t")
    }
    for uid in ("alice", "bob"):  # as an admin gives a directory user their enrolment code
        issued = subprocess.run(
            [str(APPLIANCE), "admin", "enrolment-code", "--directory", "--username", uid],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert issued.returncode == 0, issued.stderr
        codes[f"ldap:{uid}"] = issued.stdout.splitlines()[-1]
    httpd = server(settings, storage)
    httpd.prepare()
    thread = threading.Thread(target=httpd.serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.bind_addr[1]}", storage, codes
    httpd.stop()
    storage.close()


def password_step(page: object, base: str, name: str, password: str) -> None:
    page.goto(f"{base}/login")  # type: ignore[attr-defined]
    page.fill("input[name=username]", name)  # type: ignore[attr-defined]
    page.fill("input[name=password]", password)  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]


def log_in(page: object, base: str, name: str, account: str, storage: Storage, code: str) -> None:
    password_step(page, base, name, PASSWORDS[name])
    secret = storage.admin_totp(account)
    if secret is None:
        key = page.inner_text("#totp-secret")  # type: ignore[attr-defined]
        secret = base64.b32decode(key + "=" * (-len(key) % 8))
        page.fill("input[name=enrolment]", code)  # type: ignore[attr-defined]
    page.fill("input[name=code]", totp(secret, int(time.time() // 30)))  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_url(f"{base}/")  # type: ignore[attr-defined]


def refused(page: object) -> bool:
    text = page.inner_text("main")  # type: ignore[attr-defined]
    return "That did not work" in text and page.url.endswith("/login")  # type: ignore[attr-defined]


def test_directory_logins_in_chromium(
    slapd: Slapd,
    panel: tuple[str, Storage, dict[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    if CHROMIUM is None:
        pytest.fail("chromium is missing: scripts/setup installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    base, storage, codes = panel
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:

            def page() -> object:
                return browser.new_context(ignore_https_errors=True).new_page()

            alice = page()
            log_in(alice, base, "alice", "ldap:alice", storage, codes["ldap:alice"])
            for url in ("/users", "/audit", "/calls"):
                answer = alice.goto(f"{base}{url}")  # type: ignore[attr-defined]
                assert answer is not None and answer.status == 200, url
            bob = page()
            log_in(bob, base, "bob", "ldap:bob", storage, codes["ldap:bob"])
            assert bob.goto(f"{base}/users").status == 403  # type: ignore[attr-defined]
            assert bob.goto(f"{base}/audit").status == 200  # type: ignore[attr-defined]
            carol = page()
            password_step(carol, base, "carol", PASSWORDS["carol"])
            assert refused(carol)
            assert storage.admin_user("ldap:carol") is None
            # The directory goes away: its users are refused, the local break-glass admin
            # logs in, and the log names the directory.
            slapd.stop()
            with caplog.at_level(logging.WARNING, logger="appliance.admin.directory"):
                again = page()
                password_step(again, base, "alice", PASSWORDS["alice"])
                assert refused(again)
            assert f"directory ldaps://127.0.0.1:{slapd.ldaps_port} unreachable" in caplog.text
            assert "local accounts only" in caplog.text
            root = page()
            log_in(root, base, "root", "root", storage, codes["root"])
            assert root.goto(f"{base}/users").status == 200  # type: ignore[attr-defined]
        finally:
            browser.close()
    logins = [
        (e.actor, e.outcome, json.loads(e.details))
        for e in recent_audit_events(storage, 200)
        if e.action == "login" and e.object == "panel"
    ]
    assert ("admin:ldap:alice", "ok", {"source": "directory"}) in logins
    assert ("admin:ldap:bob", "ok", {"source": "directory"}) in logins
    assert ("admin:root", "ok", {"source": "local"}) in logins
