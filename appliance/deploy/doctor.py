"""``appliance doctor``: self-checks, each PASS, WARN, FAIL or SKIP (with why), exit 1 on any FAIL.

Checks: the configuration, the master key file (mode and owner), the database (encrypted, and
sound under the key), every configured model against its pins, the egress guard and what
enforces egress below Python, core dumps, file modes, the retention timer, the SIP line's
secret files, the red-team gate, free disk space and the clock. A check that cannot apply
here (no systemd as PID 1, no admin panel yet) says SKIP and why, never PASS; WARN is a
finding that does not stop the service (exit 0).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from appliance.compliance.gate import gate_state
from appliance.config.manifest import pin_problems, roles_in_use
from appliance.config.settings import RedteamGate, Settings
from appliance.core.errors import ApplianceError
from appliance.deploy import egress, process
from appliance.storage.keys import default_key_path
from appliance.telephony.digest import DigestError, read_accounts

MIN_FREE_BYTES = 1 << 30
EARLIEST_SANE_YEAR = 2025


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "PASS", "WARN", "FAIL" or "SKIP"
    detail: str


def _pass(name: str, detail: str) -> Check:
    return Check(name, "PASS", detail)


def _fail(name: str, detail: str) -> Check:
    return Check(name, "FAIL", detail)


def _skip(name: str, detail: str) -> Check:
    return Check(name, "SKIP", detail)


def _warn(name: str, detail: str) -> Check:
    return Check(name, "WARN", detail)


def key_file(settings: Settings) -> Check:
    path = default_key_path(settings.home, settings.storage.master_key_file)
    try:
        info = path.stat()
    except FileNotFoundError:
        return _fail("master key", f"{path} does not exist (it is created on first start)")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return _fail("master key", f"{path} has mode {mode:04o}: group or others can read it")
    if info.st_uid not in (os.getuid(), 0):
        return _fail("master key", f"{path} belongs to uid {info.st_uid}, not this user or root")
    return _pass("master key", f"{path} mode {mode:04o}, owner uid {info.st_uid}")


def database(settings: Settings) -> Check:
    if settings.storage.url:
        return server_database(settings)
    from appliance.service import database_path, open_storage
    from appliance.storage import sqlite as sqlcipher
    from appliance.storage.migrations import LATEST, applied_versions

    path = database_path(settings)
    if not path.exists():
        return _skip("database", f"{path} does not exist yet (created on first start)")
    try:  # without the key, SQLite must see noise
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as plain:
            plain.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return _fail("database", f"{path} opens without a key: it is NOT encrypted")
    except sqlite3.DatabaseError:
        pass
    try:
        storage = open_storage(settings, create_key=False)
        try:
            result = sqlcipher.integrity_check(storage.engine)
            schema = max(applied_versions(storage.engine), default=0)
        finally:
            storage.close()
    except ApplianceError as exc:
        return _fail("database", f"does not open under the master key: {exc}")
    if result != ["ok"]:
        return _fail("database", f"integrity check: {'; '.join(result[:3])}")
    detail = f"{path} encrypted (SQLCipher), integrity ok, schema {schema}"
    if schema > LATEST:  # it opened, so every newer migration is additive
        return _warn("database", f"{detail}: newer than this appliance ({LATEST}); upgrade it")
    return _pass("database", detail)


def server_database(settings: Settings) -> Check:
    """The PostgreSQL store: it opens under the master key, at this appliance's schema, and
    the link is TLS unless the server is on this machine (content is sealed either way)."""
    from appliance.service import open_storage
    from appliance.storage import postgresql
    from appliance.storage.migrations import LATEST, applied_versions

    try:
        with open_storage(settings, create_key=False) as storage:
            facts = postgresql.server_facts(storage.engine)
            schema = max(applied_versions(storage.engine), default=0)
    except ApplianceError as exc:
        return _fail("database", str(exc))
    url = postgresql.engine_url(settings.storage.url)
    mode = postgresql.sslmode(url)
    detail = f"PostgreSQL {facts['server_version']} at {postgresql.described(url)}, schema {schema}"
    if schema < LATEST:
        return _fail("database", f"{detail}: this appliance needs schema {LATEST}")
    if schema > LATEST:  # it opened, so every newer migration is additive
        return _warn("database", f"{detail}: newer than this appliance ({LATEST}); upgrade it")
    remote = bool(settings.storage.server_address)
    if facts["ssl"] != "true":
        if remote:
            return _fail("database", f"{detail}: the link to another machine is NOT TLS")
        return _warn("database", f"{detail}, on this machine without TLS; values sealed")
    tls = f"TLS {facts['ssl_version']} (sslmode={mode})"
    if remote and mode != "verify-full":
        return _warn("database", f"{detail}, {tls}: the server's name is not verified")
    return _pass("database", f"{detail}, {tls}, values sealed")


def models(settings: Settings) -> Check:
    _, bad = pin_problems(settings)
    if bad:
        return _fail("models", "; ".join(bad))
    return _pass("models", f"{', '.join(roles_in_use(settings))} match their SHA-256 pins")


def egress_guard(settings: Settings) -> Check:
    """Install the guard as the service does, then try to leave: it must refuse."""
    guard = egress.install(egress.allowlist(settings))
    probe = ("192.0.2.1", 9)  # TEST-NET-1 (RFC 5737): never a real peer
    if guard.allowed_host(probe[0]):
        return _fail("egress guard", f"{probe[0]} is inside the allowed peers")
    try:
        with socket.create_connection(probe, timeout=0.2):
            pass
    except PermissionError:
        allowed = ", ".join(egress.allowlist(settings)) or "none"
        return _pass("egress guard", f"outside connections refused; allowed peers: {allowed}")
    except OSError:
        pass
    return _fail("egress guard", "a connection off the premises was not refused in-process")


VOICE_UNIT = Path("/etc/systemd/system/appliance-voice.service")
_UNIT_EGRESS = ("IPAddressDeny=any", "/etc/nsswitch.conf", "/etc/resolv.conf")


def egress_enforcement(settings: Settings) -> Check:
    """Below Python, what stops native code and child processes that the audit hook cannot
    see: here (a child's packet off the premises refused by the host, host names from files
    alone), or else for the service by its installed unit."""
    name = "egress below Python"
    leaving = egress.lookups_leave(egress.name_sources())
    if egress.host_refuses_outside() and not leaving:
        return _pass(
            name,
            "enforced here: the host refused a child process's packet off the "
            "premises, and host names come from files alone",
        )
    here = (
        "a name lookup here would ask " + ", ".join(leaving)
        if leaving
        else f"a child process here could send to {egress.PROBE_ADDRESS[0]}"
    )
    if _systemd_running():
        shown = subprocess.run(
            ["systemctl", "show", VOICE_UNIT.name, "-p", "LoadState", "-p", "IPAddressDeny",
             "-p", "IPAddressAllow", "-p", "BindReadOnlyPaths"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        values = dict(line.partition("=")[::2] for line in shown.splitlines())
        if values.get("LoadState") == "loaded":
            allowed = values.get("IPAddressAllow", "").split()
            if "0.0.0.0/0" in allowed or "::/0" in allowed:
                return _fail(name, f"{VOICE_UNIT.name} allows any address (IPAddressAllow=)")
            deny = values.get("IPAddressDeny", "").split()
            binds = values.get("BindReadOnlyPaths", "")
            if (
                "0.0.0.0/0" in deny
                and "/etc/nsswitch.conf" in binds
                and "/etc/resolv.conf" in binds
            ):
                return _pass(
                    name,
                    f"enforced for the service by {VOICE_UNIT.name} "
                    f"(IPAddressDeny=any, host names from files alone); {here}",
                )
            return _fail(
                name,
                f"{VOICE_UNIT.name} lacks IPAddressDeny=any or its own nsswitch.conf and "
                f"resolv.conf; {here}",
            )
    elif VOICE_UNIT.is_file():
        text = VOICE_UNIT.read_text(encoding="utf-8")
        for dropin in sorted(VOICE_UNIT.with_name(f"{VOICE_UNIT.name}.d").glob("*.conf")):
            text += "\n" + dropin.read_text(encoding="utf-8")
        if any(f"IPAddressAllow={a}" in text for a in ("any", "0.0.0.0/0", "::/0")):
            return _fail(name, f"{VOICE_UNIT.name} or a drop-in allows any address")
        missing = [line for line in _UNIT_EGRESS if line not in text]
        if missing:
            return _fail(name, f"{VOICE_UNIT} lacks {', '.join(missing)}; {here}")
        return _pass(name, f"set in {VOICE_UNIT} (systemd is not running here); {here}")
    return _skip(
        name,
        f"not installed as a service, and {here}: only the in-process guard "
        "holds; scripts/install sets it up in the units, or use a host firewall",
    )


def core_dumps(settings: Settings) -> Check:
    """This process as every command of the appliance runs (``deploy/process.py``): a crash
    must leave no core file (it would hold callers' words and the master key)."""
    if process.dumpable():
        return _fail("core dumps", "a crash would write a core file (RLIMIT_CORE, dumpable)")
    return _pass("core dumps", "off: RLIMIT_CORE 0 and not dumpable; units set LimitCORE=0")


def home_modes(settings: Settings) -> Check:
    """The home and what lies in it are the owner's alone (0700 folders, 0600 files)."""
    if not settings.home.exists():
        return _skip("file modes", f"{settings.home} does not exist yet")
    open_to_others = [
        str(path)
        for path in (settings.home, *settings.home.rglob("*"))
        if not path.is_symlink() and path.stat().st_mode & 0o077
    ]
    if open_to_others:
        more = f" and {len(open_to_others) - 3} more" if len(open_to_others) > 3 else ""
        return _fail("file modes", f"readable by others: {', '.join(open_to_others[:3])}{more}")
    return _pass("file modes", f"{settings.home} and everything in it are owner-only")


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def retention_timer(settings: Settings) -> Check:
    if not _systemd_running():
        return _skip("retention timer", "systemd is not PID 1 here; run `appliance retention run`")
    state = subprocess.run(
        ["systemctl", "is-active", "appliance-retention.timer"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if state != "active":
        return _fail("retention timer", f"appliance-retention.timer is {state or 'unknown'}")
    return _pass("retention timer", "appliance-retention.timer is active")


def disk_space(settings: Settings) -> Check:
    folder = settings.home if settings.home.exists() else settings.home.parent
    free = shutil.disk_usage(folder).free
    detail = f"{free / 2**30:.1f} GiB free under {folder}"
    return _pass("disk space", detail) if free >= MIN_FREE_BYTES else _fail("disk space", detail)


def clock(settings: Settings) -> Check:
    year = time.gmtime().tm_year
    if year < EARLIEST_SANE_YEAR:
        return _fail("clock", f"the year is {year}: audit timestamps and TOTP codes would be wrong")
    if not (_systemd_running() and shutil.which("timedatectl")):
        return _pass(
            "clock", f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} (sync unknown)"
        )
    synced = subprocess.run(
        ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if synced != "yes":
        return _fail("clock", "not synchronized (NTP): TOTP codes and audit times drift")
    return _pass("clock", "synchronized (NTP)")


def tls(settings: Settings) -> Check:
    """The admin panel's certificate: present, not expiring within 30 days (TLS 1.2 minimum
    is fixed in the server)."""
    import datetime as dt

    from cryptography import x509

    cert = Path(settings.admin.tls_cert) if settings.admin.tls_cert else None
    cert = cert or settings.home / "admin" / "tls.crt"
    if not cert.is_file():
        if settings.admin.tls_cert:
            return _fail("TLS and certificate", f"{cert} does not exist")
        return _skip("TLS and certificate", "self-signed on the panel's first start")
    try:
        parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    except ValueError:
        return _fail("TLS and certificate", f"{cert} is not a PEM certificate")
    left = parsed.not_valid_after_utc - dt.datetime.now(dt.UTC)
    if left < dt.timedelta(days=30):
        return _fail("TLS and certificate", f"{cert} expires in {left.days} days")
    return _pass("TLS and certificate", f"TLS 1.2 minimum; {cert} valid {left.days} more days")


def sip_secrets(settings: Settings) -> Check:
    """The SIP line's secret files: the peers' digest accounts (htdigest, with an account for
    the realm) and the registrar password, each readable by its owner only."""
    sip, found = settings.sip, []
    if sip.accounts_file:
        try:
            accounts = read_accounts(sip.accounts_file, sip.auth_realm)
        except DigestError as exc:
            return _fail("SIP secrets", exc.message)
        if not accounts:
            return _fail("SIP secrets", f"{sip.accounts_file} has no account for {sip.auth_realm}")
        found.append(f"{len(accounts)} digest account(s) for realm {sip.auth_realm}")
    if sip.register_password_file:
        path = Path(sip.register_password_file)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError as exc:
            return _fail("SIP secrets", f"cannot read {path}: {exc.strerror}")
        if mode & 0o077:
            return _fail("SIP secrets", f"{path} has mode {mode:04o}: group or others can read it")
        found.append(f"registrar password {path} mode {mode:04o}")
    if not found:
        return _skip("SIP secrets", "no digest accounts file and no registrar password set")
    return _pass("SIP secrets", "; ".join(found))


def knowledge(settings: Settings) -> Check:
    """The knowledge files read cleanly (a bad one is named with its line) and an index exists."""
    from appliance.knowledge.base import INDEX_FILE
    from appliance.knowledge.sources import load_sources

    if not settings.knowledge.enabled:
        return _skip("knowledge", "[knowledge] enabled is false: the model answers alone")
    try:
        sources = load_sources(settings.knowledge.folder_path)
    except ApplianceError as exc:
        return _fail("knowledge", exc.message)
    index = settings.home / INDEX_FILE
    built = "index built" if index.is_file() else "index not built yet (built at start)"
    return _pass(
        "knowledge",
        f"{len(sources.entries)} entries, {len(sources.documents)} documents in "
        f"{settings.knowledge.folder_path}; {built}",
    )


def red_team_gate(settings: Settings) -> Check:
    """The red-team gate (compliance/gate.py): a passing report for the running fingerprint.
    Not passed: FAIL where ``appliance serve`` refuses calls for it, WARN where it only
    opens an incident."""
    state = gate_state(settings, dt.datetime.now(dt.UTC))
    age = f", {state.report_age_days:.1f} days old" if state.report_age_days is not None else ""
    detail = f"{state.status.value} (fingerprint {state.fingerprint[:12]}{age}): {state.reason}"
    if state.passed:
        return _pass("red-team gate", detail)
    if settings.service.redteam_gate == RedteamGate.WARN:
        return _warn("red-team gate", f"{detail}; calls are taken ([service] redteam_gate)")
    return _fail("red-team gate", f"{detail}; `appliance serve` refuses calls until then")


def remote_llm(settings: Settings) -> Check:
    """The language model on the GPU host (``[llm] remote_url``): ``/v1/models`` answers over
    TLS verified against the pinned CA; otherwise the reason, and the node answers with its
    local model."""
    from appliance.engines.remote_llm import RemoteLlmError
    from appliance.service import remote_model

    return _remote(
        "remote LLM", lambda: remote_model(settings), "[llm] remote_url", "answers", RemoteLlmError
    )


def remote_stt(settings: Settings) -> Check:
    """Speech recognition on the GPU host (``[stt] remote_address``): the Wyoming server
    describes itself over TLS verified against the pinned CA; otherwise the reason, and the
    node recognizes with its local model."""
    from appliance.engines.remote_stt import RemoteSttError
    from appliance.service import remote_recognizer

    return _remote(
        "remote STT",
        lambda: remote_recognizer(settings),
        "[stt] remote_address",
        "recognizes",
        RemoteSttError,
    )


class _Served(Protocol):
    @property
    def where(self) -> str: ...

    def models(self) -> list[str]: ...


def _remote(
    name: str,
    remote_of: Callable[[], _Served | None],
    key: str,
    does: str,
    error: type[ApplianceError],
) -> Check:
    """A remote engine asked what it serves: SKIP without one, PASS with its models, FAIL
    naming the code (the node's own model then ``does`` the work)."""
    try:
        remote = remote_of()
        if remote is None:
            return _skip(name, f"{key} is empty: the local model {does}")
        served = remote.models()
    except error as exc:
        return _fail(name, f"{exc.message} [{exc.code}]; the node {does} with its local model")
    models = ", ".join(served) or "no model named"
    return _pass(name, f"{remote.where} answers over the pinned CA ({models})")


CHECKS: tuple[Callable[[Settings], Check], ...] = (
    key_file,
    database,
    models,
    knowledge,
    remote_llm,
    remote_stt,
    egress_guard,
    egress_enforcement,
    core_dumps,
    home_modes,
    retention_timer,
    sip_secrets,
    red_team_gate,
    tls,
    disk_space,
    clock,
)


def run(settings: Settings, *, as_json: bool = False) -> int:
    results = [_pass("configuration", f"valid ({settings.source})")]
    for check in CHECKS:
        try:
            results.append(check(settings))
        except Exception as exc:  # a check that breaks is a failed check, with its type
            results.append(_fail(check.__name__, f"the check itself failed: {exc!r}"))
    if as_json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        for r in results:
            print(f"{r.status:4}  {r.name:20} {r.detail}")
    return 1 if any(r.status == "FAIL" for r in results) else 0
