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

from appliance.deploy.notify import notify, watchdog_interval_s

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
SERVICES = ("appliance-voice.service", "appliance-admin.service", "appliance-retention.service")


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


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    done = install(root, "--venv", str(VENV), "--no-start")
    assert done.returncode == 0, done.stderr
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
    assert (state / "models/whisper-base/model.bin").is_file()  # assembled and verified
    units = installed / "etc/systemd/system"
    for name in (*SERVICES, "appliance-retention.timer"):
        assert mode(units / name) == 0o644
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


def test_every_installed_unit_verifies(installed: Path) -> None:
    units = installed / "etc/systemd/system"
    names = [*SERVICES, "appliance-retention.timer"]
    result = analyze("verify", *names, cwd=units)
    assert result.returncode == 0, result.stderr


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
