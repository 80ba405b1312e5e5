"""Deployment: the units (systemd-analyze), the install script in a throwaway root, the
in-process egress guard, and the notify protocol."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.deploy import egress
from appliance.deploy.notify import notify, watchdog_interval_s

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
SERVICES = (
    "appliance-voice.service",
    "appliance-admin.service",
    "appliance-retention.service",
    "appliance-backup.service",
    "appliance-siem.service",
)
TIMERS = ("appliance-retention.timer", "appliance-backup.timer")


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: scripts/setup installs Debian's systemd")
    return subprocess.run(
        ["systemd-analyze", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "install"), "--root", str(root), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def drop_ins_with(installed: Path, configuration: str) -> dict[str, str]:
    """Install again with ``configuration`` as the site's file, and read each unit's drop-in
    (``site.conf``, by unit); the site's own file is put back after."""
    config = installed / "etc/appliance/appliance.toml"
    kept = config.read_text()
    config.write_text(configuration)
    try:
        again = install(installed, "--venv", str(VENV), "--no-start")
        assert again.returncode == 0, again.stderr
        units = installed / "etc/systemd/system"
        return {p.parent.name[: -len(".d")]: p.read_text() for p in units.glob("*.d/site.conf")}
    finally:
        config.write_text(kept)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    done = install(root, "--venv", str(VENV), "--no-start")
    assert done.returncode == 0, done.stderr
    assert re.search(r"RECOVERY CODE.*\n\n {6}[A-Z2-7]{5}(-[A-Z2-7]{1,5})+\n", done.stderr, re.S)
    return root


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_install_creates_the_expected_files_with_tight_modes(installed: Path) -> None:
    etc, state = installed / "etc/appliance", installed / "var/lib/appliance"
    assert (mode(etc), mode(state)) == (0o750, 0o700)
    key = etc / "master.key"
    assert mode(key) == 0o600 and len(key.read_bytes()) == 32
    assert mode(etc / "appliance.toml") == 0o640
    assert (installed / "opt/appliance/src/appliance/cli/__init__.py").is_file()
    assert (installed / "opt/appliance/src/kamailio/dispatcher.cfg").is_file()  # bench, docs
    assert list(state.glob("models/whisper-base@*/model.bin"))  # assembled and verified
    units = installed / "etc/systemd/system"
    for name in (*SERVICES, *TIMERS):
        assert mode(units / name) == 0o644
    # The recovery code was made once and shown once; the key is sealed to it.
    assert (etc / "recovery.pub").is_file() and not (state / "keys/recovery.pub").exists()
    assert mode(state / "keys/master.key.sealed") == 0o600
    # The keys stay in /etc/appliance, apart from the data tree; the configuration names them.
    assert not (state / "keys/master.key").exists()
    assert not (state / "keys/audit-signing.key").exists()
    assert (
        mode(etc / "audit-signing.key") == 0o600
        and len((etc / "audit-signing.key").read_bytes()) == 32
    )
    config = (etc / "appliance.toml").read_text()
    assert f'master_key_file = "{etc}/master.key"' in config
    assert f'audit_key_file = "{etc}/audit-signing.key"' in config
    voice = (units / "appliance-voice.service").read_text()
    assert f"ExecStart={VENV}/bin/appliance serve" in voice
    site = (units / "appliance-voice.service.d/site.conf").read_text()
    assert "MemoryMax=3G" in site


def test_installing_again_keeps_the_key_and_the_configuration(installed: Path) -> None:
    key = (installed / "etc/appliance/master.key").read_bytes()
    (installed / "etc/appliance/appliance.toml").write_text("# edited by the site\n")
    again = install(installed, "--venv", str(VENV), "--no-start")
    assert again.returncode == 0, again.stderr
    assert (installed / "etc/appliance/master.key").read_bytes() == key
    assert (installed / "etc/appliance/appliance.toml").read_text() == "# edited by the site\n"


def test_the_install_tells_the_operator_to_run_the_red_team_first(installed: Path) -> None:
    """The red-team gate ([service] redteam_gate): the voice unit refuses calls until a report
    passes, so the install says how to make one, as the service's user, before calls."""
    done = install(installed, "--venv", str(VENV), "--no-start")
    assert done.returncode == 0, done.stderr
    said = " ".join(line for line in done.stderr.splitlines() if line.startswith("install: "))
    assert "before the voice unit takes calls, run the red team" in said
    command = f"sudo -u appliance APPLIANCE_HOME={installed}/var/lib/appliance "
    command += f"{VENV}/bin/appliance --config {installed}/etc/appliance/appliance.toml redteam"
    assert command in said and "systemctl restart appliance-voice.service" in said
    assert 'redteam_gate = "refuse" answers calls 503' in said


def test_the_voice_units_drop_in_allows_what_the_egress_guard_allows(installed: Path) -> None:
    """The install's drop-in (scripts/install; README, Deployment): the voice unit's
    IPAddressAllow= gains ``[service] egress_allow``, the ``[notify]`` relay (an IPv6 one
    without its brackets, as systemd takes it) and the HTTP tools' services (by address:
    nothing is looked up), through the same list the in-process guard is given; the admin
    unit's does not."""
    from appliance.config.settings import load_settings

    config = installed / "etc/appliance/appliance.toml"
    kept = config.read_text()
    config.write_text(
        '[service]\negress_allow = ["192.0.2.0/24"]\n'
        '[notify]\nrelay = "[2001:db8::25]"\nserver_name = "mail.bank.internal"\n'
        'from_address = "codes@bank.example"\n'
        "[tools]\nallowed_hosts = [\n"
        '  { name = "core.bank.internal", address = "10.0.0.7" },\n'
        '  { name = "cards.bank.internal", address = "fd00::7/128" },\n]\n'
        '[[tools.http]]\nname = "core_balance"\ndescription = "The balance."\n'
        'url = "https://core.bank.internal/balance/{caller}"\ntriggers = ["balance"]\n'
        'speak = "Your balance is {balance} pounds."\n'
    )
    try:
        again = install(installed, "--venv", str(VENV), "--no-start")
        assert again.returncode == 0, again.stderr
        units = installed / "etc/systemd/system"
        site = (units / "appliance-voice.service.d/site.conf").read_text()
        admin = (units / "appliance-admin.service.d/site.conf").read_text()
        allowed = re.findall(r"^IPAddressAllow=(\S+)$", site, re.MULTILINE)
        guard = egress.allowlist(load_settings(config, environ={}))
    finally:
        config.write_text(kept)
    assert {"192.0.2.0/24", "2001:db8::25", "10.0.0.7", "fd00::7"} <= set(allowed), site
    assert not any("[" in a for a in allowed)
    local = ("127.0.0.1", "127.0.0.1/32", "::1", "::1/128")
    assert allowed == [network for network in guard if network not in local]
    assert "2001:db8::25" not in admin and "192.0.2.0" not in admin and "10.0.0.7" not in admin


def test_the_siem_units_drop_in_allows_the_collector_only_when_on(installed: Path) -> None:
    """[siem] collector joins the SIEM forwarder's IPAddressAllow= (an IPv6 address without its
    brackets) when [siem] is on, and nothing else does; off, the drop-in allows nothing."""
    units = installed / "etc/systemd/system"
    off = (units / "appliance-siem.service.d/site.conf").read_text()
    assert "IPAddressAllow" not in off
    site = drop_ins_with(
        installed,
        '[siem]\nenabled = true\ncollector = "[2001:db8::514]:6514"\n'
        'ca_file = "/etc/appliance/siem-ca.pem"\n',
    )["appliance-siem.service"]
    assert re.findall(r"^IPAddressAllow=(\S+)$", site, re.MULTILINE) == ["2001:db8::514"]


def test_every_installed_unit_verifies(installed: Path) -> None:
    units = installed / "etc/systemd/system"
    names = [*SERVICES, *TIMERS]
    result = analyze("verify", *names, cwd=units)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("unit", SERVICES)
def test_each_service_looks_up_no_names_and_reaches_no_local_resolver(
    installed: Path, unit: str
) -> None:
    text = (installed / "etc/systemd/system" / unit).read_text()
    assert "IPAddressDeny=any" in text and "IPAddressAllow=localhost" not in text
    binds = re.findall(r"^BindReadOnlyPaths=(\S+):(\S+)$", text, re.MULTILINE)
    assert sorted(target for _, target in binds) == ["/etc/nsswitch.conf", "/etc/resolv.conf"]
    sources = {target: Path(source) for source, target in binds}
    for source in sources.values():  # the installed copies of systemd/nsswitch.conf, resolv.conf
        assert source.is_file() and str(source).startswith(str(installed)), source
    nsswitch = sources["/etc/nsswitch.conf"]
    assert egress.name_sources(nsswitch) == ("files",)
    # systemd-resolved's socket, not the folder of the stub resolv.conf it may link to
    assert "-/run/systemd/resolve/io.systemd.Resolve" in text


@pytest.mark.parametrize("unit", SERVICES)
def test_each_service_scores_2_or_lower_in_systemd_analyze_security(
    installed: Path, unit: str
) -> None:
    result = analyze(
        "security", "--offline=true", f"./{unit}", cwd=installed / "etc/systemd/system"
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout + result.stderr)
    assert found, result.stdout[-2000:]
    assert float(found.group(1)) <= 2.0, result.stdout[-3000:]


def test_uninstall_keeps_data_unless_purged(tmp_path: Path) -> None:
    assert install(tmp_path, "--venv", str(VENV), "--no-start").returncode == 0
    removed = install(tmp_path, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (tmp_path / "opt/appliance").exists()
    assert not (tmp_path / "etc/systemd/system/appliance-voice.service").exists()
    assert (tmp_path / "etc/appliance/master.key").is_file()
    assert (tmp_path / "var/lib/appliance").is_dir()
    purged = install(tmp_path, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (tmp_path / "etc/appliance").exists()
    assert not (tmp_path / "var/lib/appliance").exists()


EGRESS_PROBE = """
import socket, sys
from appliance.deploy import egress
guard = egress.install(sys.argv[1:])
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
socket.create_connection(server.getsockname(), timeout=2).close()
print("loopback ok")
for host in ("10.255.255.1", "example.org", "192.0.2.7"):
    try:
        socket.create_connection((host, 9), timeout=0.3).close()
        print("connected", host)
    except PermissionError:
        print("refused", host)
    except OSError:
        print("allowed", host)
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53))
    print("sent")
except PermissionError:
    print("refused udp")
print("blocked", guard.blocked)
"""


def test_the_egress_hook_refuses_outside_addresses_and_lets_loopback_and_peers_pass() -> None:
    run = subprocess.run(
        [sys.executable, "-c", EGRESS_PROBE, "192.0.2.0/24"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:-1] == [
        "loopback ok",
        "refused 10.255.255.1",
        "refused example.org",  # the DNS lookup itself is refused
        "allowed 192.0.2.7",  # a configured peer (nothing listens there)
        "refused udp",
        "blocked 3",
    ]
    assert "egress blocked: socket.getaddrinfo to 10.255.255.1" in run.stderr  # logged


# Each way round the guard the outside security test found, tried inside a network
# namespace of the test's own (a veth pair with a default route, 10.99.0.7 an outside
# address that listens); 192.0.2.0/24 is the configured peer.
HOLES_PROBE = """
import ctypes, ctypes.util, multiprocessing, socket, subprocess
listener = socket.socket(); listener.bind(("10.99.0.7", 0)); listener.listen(8)
port = listener.getsockname()[1]
early = socket.create_connection(("10.99.0.7", port), timeout=2)  # before the guard
from appliance.deploy import egress
guard = egress.install(["192.0.2.0/24"])
guard.forbid_children()
class Sneaky(socket.socket):
    family = property(lambda self: socket.AF_UNIX)
def fast_open():
    with socket.socket() as s:
        s.sendmsg([b"x"], [], socket.MSG_FASTOPEN, ("10.99.0.7", port))
def udp_sendmsg():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendmsg([b"x"], [], 0, ("10.99.0.7", 9))
def peer():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendmsg([b"x"], [], 0, ("192.0.2.7", 9))
def loopback():
    server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
    socket.create_connection(server.getsockname(), timeout=2).close()
def spawn():
    p = multiprocessing.get_context("spawn").Process(target=print); p.start(); p.join()
for name, attempt in [
    ("udp sendmsg", udp_sendmsg),
    ("tcp fast open", fast_open),
    ("a subclass's family", lambda: Sneaky().connect(("10.99.0.7", port))),
    ("ctypes connect", lambda: ctypes.CDLL(None).connect),
    ("subprocess", lambda: subprocess.run(["true"], check=True)),
    ("multiprocessing spawn", spawn),
    ("a socket connected before", lambda: early.sendall(b"x")),
    ("a packet socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
    ("a raw socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)),
    ("gethostbyname", lambda: socket.gethostbyname("example.org")),
    ("gethostbyname_ex", lambda: socket.gethostbyname_ex("example.org")),
    ("gethostbyaddr", lambda: socket.gethostbyaddr("10.99.0.7")),
    ("getnameinfo", lambda: socket.getnameinfo(("10.99.0.7", 80), 0)),
    ("the peer", peer),
    ("loopback", loopback),
    ("find_library (its ldconfig child)", lambda: ctypes.util.find_library("portaudio")),
]:
    try:
        attempt()
        print("open:", name)
    except PermissionError:
        print("refused:", name)
    except OSError as exc:
        print("closed:" if name.endswith("before") else "error:", name, exc.errno)
"""

NAMESPACE = (
    "ip link set lo up && ip link add eg0 type veth peer name eg1"
    " && ip addr add 10.99.0.2/24 dev eg0 && ip addr add 10.99.0.7/24 dev eg0"
    " && ip link set eg0 up && ip link set eg1 up"
    ' && ip route add default via 10.99.0.1 dev eg0 && exec "$0" -c "$1"'
)


def test_egress_guard_closes_the_holes_an_outside_test_went_through() -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("unshare or ip is missing: scripts/setup installs util-linux and iproute2")
    run = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", NAMESPACE, sys.executable, HOLES_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "refused: udp sendmsg",
        "refused: tcp fast open",
        "refused: a subclass's family",
        "refused: ctypes connect",
        "refused: subprocess",
        "refused: multiprocessing spawn",
        "closed: a socket connected before 32",  # shut down when the guard was installed
        "refused: a packet socket",
        "refused: a raw socket",
        "refused: gethostbyname",
        "refused: gethostbyname_ex",
        "refused: gethostbyaddr",
        "refused: getnameinfo",
        "open: the peer",
        "open: loopback",
        "open: find_library (its ldconfig child)",
    ], run.stderr
    assert "a socket connected before the guard, to 10.99.0.7" in run.stderr


NOT_INSTALLED = "SKIP not installed as a service, and "
DOCTOR_PROBE = """
from appliance.config.settings import Settings
from appliance.deploy import doctor
check = doctor.egress_enforcement(Settings())
print(check.status, check.detail)
"""


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("ip route add default via 10.99.0.1 dev eg0", f"{NOT_INSTALLED}a name lookup here"),
        ("ip route add prohibit default", f"{NOT_INSTALLED}a name lookup here would ask dns"),
        (
            "ip route add default via 10.99.0.1 dev eg0 && mount --bind $N /etc/nsswitch.conf",
            f"{NOT_INSTALLED}a child process here could send to 192.0.2.1",
        ),
        (
            "ip route add prohibit default && mount --bind $N /etc/nsswitch.conf",
            "PASS enforced here",
        ),
    ],
    ids=["open", "packets-refused-names-by-dns", "names-from-files-packets-out", "enforced"],
)
def test_doctor_reports_egress_below_python_only_when_the_host_enforces_it(
    setup: str, expected: str
) -> None:
    """In a namespace of the test: packets off the premises refused by the host (a prohibit
    route answers EACCES, as a firewall's drop or the unit's IPAddressDeny= answers EPERM)
    and host names from the appliance's own nsswitch.conf, each alone and both."""
    script = (
        "ip link set lo up && ip link add eg0 type veth peer name eg1 && "
        "ip addr add 10.99.0.2/24 dev eg0 && ip link set eg0 up && ip link set eg1 up && "
        f'{setup} && exec "$0" -c "$1"'
    )
    run = subprocess.run(
        ["unshare", "--net", "--mount", "--", "sh", "-c", script, sys.executable, DOCTOR_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "N": str(ROOT / "systemd/nsswitch.conf")},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(expected), run.stdout


def test_notify_speaks_the_systemd_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not notify("READY=1") or "NOTIFY_SOCKET" in os.environ
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1")
        assert listener.recv(256) == b"READY=1"
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval_s() is None  # meant for another process


def test_an_upgrade_keeps_the_configuration_and_the_audit_key_auditors_pinned(
    tmp_path: Path,
) -> None:
    """An install from before the keys lived in /etc/appliance: its configuration is kept
    (the log names the two lines to add) and its audit signing key is what the units get."""
    etc, state = tmp_path / "etc/appliance", tmp_path / "var/lib/appliance"
    (etc).mkdir(parents=True)
    (etc / "appliance.toml").write_text("# the site's own\n")
    (etc / "master.key").write_bytes(os.urandom(32))
    (state / "keys").mkdir(parents=True)
    old_key = os.urandom(32)
    (state / "keys/audit-signing.key").write_bytes(old_key)
    done = install(tmp_path, "--venv", str(VENV), "--no-start")
    assert done.returncode == 0, done.stderr
    assert (etc / "appliance.toml").read_text() == "# the site's own\n"
    assert "add under [storage]" in done.stderr and "audit_key_file" in done.stderr
    assert (etc / "audit-signing.key").read_bytes() == old_key
    assert mode(etc / "audit-signing.key") == 0o600
    assert (state / "keys/audit-checkpoint.json").is_file()  # the chain is anchored


def test_the_admin_units_drop_in_allows_the_directory_of_panel_logins(installed: Path) -> None:
    """The panel logs in against [ldap] url: its unit (not the voice unit) may reach it."""
    admin = drop_ins_with(
        installed,
        '[ldap]\nurl = "ldaps://10.0.0.9:636"\nca_file = "/etc/appliance/ldap-ca.pem"\n'
        'bind_dn = "cn=panel,dc=bank,dc=internal"\n'
        'bind_password_file = "/etc/appliance/ldap.secret"\n'
        'user_base = "ou=people,dc=bank,dc=internal"\n'
        '[ldap.role_groups]\nadmin = "cn=appliance-admins,ou=groups,dc=bank,dc=internal"\n',
    )["appliance-admin.service"]
    assert "IPAddressAllow=10.0.0.9" in admin.splitlines(), admin


def test_every_unit_that_opens_the_store_may_reach_its_postgresql_server(installed: Path) -> None:
    """Every unit denies all addresses but its own: with the store on a PostgreSQL server
    elsewhere, the voice service, the panel, the purge, the backup and the SIEM forwarder
    each get that server's address in their drop-in (the install writes these, as the tests
    above show; the server is not reached here, so the drop-ins are made from the settings)."""
    from appliance.config.settings import load_settings
    from appliance.deploy.units import site_drop_ins

    url = "postgresql://appliance@db.bank.internal/appliance?hostaddr=10.0.0.5"
    site = site_drop_ins(load_settings(environ={"APPLIANCE_STORAGE__URL": url}))
    assert set(site) == set(SERVICES)
    for unit in SERVICES:
        assert re.findall(r"^IPAddressAllow=(10\.\S+)$", site[unit], re.MULTILINE) == [
            "10.0.0.5"
        ], (unit, site[unit])
    alone = site_drop_ins(load_settings(environ={}))  # the SQLite file: no server to reach
    for unit in ("appliance-retention.service", "appliance-backup.service"):
        assert "IPAddressAllow" not in alone[unit]
        installed_text = (installed / "etc/systemd/system" / f"{unit}.d/site.conf").read_text()
        assert installed_text == alone[unit]  # what scripts/install wrote


def test_the_kamailio_drop_in_runs_the_dispatcher_config_and_scores_2_or_lower(
    tmp_path: Path,
) -> None:
    """systemd/kamailio.service.d/appliance.conf on Debian's own kamailio.service: the unit
    verifies, starts Kamailio on the repo's dispatcher config, and its exposure falls from
    Debian's 9.2 to 2 or lower."""
    debian = Path("/lib/systemd/system/kamailio.service")
    if not debian.exists():
        pytest.fail("Debian's kamailio.service is missing: scripts/setup installs kamailio")
    shutil.copy(debian, tmp_path / "kamailio.service")
    shutil.copytree(ROOT / "systemd/kamailio.service.d", tmp_path / "kamailio.service.d")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["systemd-analyze", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip

    assert run("verify", "kamailio.service").returncode == 0
    scored = run("security", "--offline=true", "kamailio.service")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", scored.stdout + scored.stderr)
    assert found and float(found.group(1)) <= 2.0, scored.stdout[-3000:]
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(debian, bare / "kamailio.service")
    unhardened = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "./kamailio.service"],
        cwd=bare, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    before = re.search(r"Overall exposure level for \S+: (\d+\.\d)", unhardened.stdout)
    assert before and float(before.group(1)) > 5.0  # what the drop-in is measured against
    drop_in = (ROOT / "systemd/kamailio.service.d/appliance.conf").read_text()
    assert "CFGFILE=/etc/kamailio/appliance-dispatcher.cfg" in drop_in
    assert "NODES=" in drop_in and "ExecStart=\n" in drop_in
