"""`appliance serve` as systemd runs it (notify, watchdog, SIGTERM with a goodbye) and
`appliance doctor` passing, then failing on a world-readable key and on a tampered model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from appliance.config.manifest import model_spec
from appliance.config.settings import Settings
from appliance.service import open_storage
from tests.real.conftest import APPLIANCE, run_cli


def notifications(listener: socket.socket, until: str, timeout_s: float) -> list[str]:
    listener.settimeout(timeout_s)
    seen: list[str] = []
    while until not in seen:
        seen += listener.recv(4096).decode().split("\n")
    return seen


def serve(env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen[str], socket.socket]:
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    process = subprocess.Popen(
        [str(APPLIANCE), "serve"],
        env={**env, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return process, listener


def test_serve_notifies_systemd_and_stops_cleanly_on_sigterm(
    real_home: Path, real_settings: Settings, tmp_path: Path
) -> None:
    env = {**os.environ, "APPLIANCE_HOME": str(real_home), "APPLIANCE_SERVICE__VOICE": "none"}
    env["APPLIANCE_SERVICE__REDTEAM_GATE"] = "warn"  # no red-team report in this home
    env["APPLIANCE_SERVICE__NODE"] = "serve-test"
    # A call this node was in when it was killed (never given its end), and another node's.
    with open_storage(real_settings) as store:
        store.node = "serve-test"
        cut = store.start_call("+15550100", "sip").call_id
        store.node = "another-node"
        other = store.start_call("+15550101", "sip").call_id
    process, listener = serve(env, tmp_path)
    signalled = False
    with listener:
        try:
            seen = notifications(listener, "READY=1", timeout_s=120)
            assert any(s.startswith("STATUS=ready in") for s in seen)
            assert "WATCHDOG=1" in notifications(listener, "WATCHDOG=1", timeout_s=10)
            process.send_signal(signal.SIGTERM)
            signalled = True
            assert "STOPPING=1" in notifications(listener, "STOPPING=1", timeout_s=30)
        finally:
            if not signalled:  # one SIGTERM only: a second, once the loop has closed, kills
                process.send_signal(signal.SIGTERM)
            _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    assert "closed 1 call(s) this node left active as interrupted" in errors
    with open_storage(real_settings) as store:
        assert store.read_call(cut, "test", "check").status == "ended:interrupted"
        assert store.read_call(other, "test", "check").status == "active"
        store.end_call(other, "ended")  # the other node's, ended as it would have


def test_sigterm_during_a_microphone_call_says_goodbye_and_closes_the_record(
    pulse: dict[str, str], real_home: Path, real_settings: Settings, tmp_path: Path
) -> None:
    env = {**pulse, "APPLIANCE_HOME": str(real_home), "APPLIANCE_SERVICE__VOICE": "microphone"}
    env["APPLIANCE_SERVICE__REDTEAM_GATE"] = "warn"  # no red-team report: take the call anyway
    process, listener = serve(env, tmp_path)
    with listener:
        try:
            notifications(listener, "READY=1", timeout_s=120)
            process.send_signal(signal.SIGTERM)
            notifications(listener, "STOPPING=1", timeout_s=30)
        finally:
            _, errors = process.communicate(timeout=120)
    assert process.returncode == 0, errors
    calls = json.loads(run_cli("calls", "list", "--json", home=real_home).stdout)
    last = calls[0]
    assert (last["channel"], last["status"]) == ("microphone", "ended:shutdown")
    shown = run_cli("calls", "show", last["id"], "--reason", "test", "--json", home=real_home)
    turns = json.loads(shown.stdout)["turns"]
    assert turns[-1]["reply"] == real_settings.limits.goodbye_reply


def test_doctor_passes_then_fails_on_a_readable_key_and_a_tampered_model(
    real_home: Path, real_settings: Settings, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    assert run_cli("calls", "list", home=home).returncode == 0  # creates the key and database
    warn = {"APPLIANCE_SERVICE__REDTEAM_GATE": "warn"}  # a fresh home has no red-team report
    ok = run_cli("doctor", "--json", home=home, env=warn)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    checks = {c["name"]: c["status"] for c in json.loads(ok.stdout)}
    assert checks["master key"] == checks["database"] == checks["models"] == "PASS"
    assert checks["egress guard"] == "PASS"
    assert checks["core dumps"] == checks["file modes"] == "PASS"
    assert checks["red-team gate"] == "WARN"
    refusing = run_cli("doctor", home=home)  # the default: serve would refuse calls
    assert refusing.returncode == 1 and "FAIL  red-team gate" in refusing.stdout

    key = home / "keys" / "master.key"
    key.chmod(0o644)
    bad = run_cli("doctor", home=home, env=warn)
    assert bad.returncode == 1 and "FAIL  master key" in bad.stdout
    key.chmod(0o600)

    spec = model_spec(real_settings, "tts")
    copy = tmp_path / "voice" / spec.path.name
    copy.parent.mkdir()
    shutil.copy(spec.path, copy)
    shutil.copy(f"{spec.path}.json", f"{copy}.json")
    with copy.open("r+b") as handle:  # one byte changed
        handle.seek(4096)
        byte = handle.read(1)
        handle.seek(4096)
        handle.write(bytes([byte[0] ^ 0xFF]))
    tampered = run_cli("doctor", home=home, env={**warn, "APPLIANCE_TTS__PATH": str(copy)})
    assert tampered.returncode == 1
    assert "FAIL  models" in tampered.stdout and "altered" in tampered.stdout


def test_bench_startup_reports_ready_and_shutdown_times(
    real_home: Path, real_settings: Settings
) -> None:
    result = run_cli("bench", "startup", "--json", "--runs", "1", home=real_home)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["runs"] == 1
    for key in ("start_to_ready", "sigterm_to_exit"):
        assert report[key]["n"] == 1 and report[key]["median_ms"] > 0


def test_doctor_checks_the_sip_secret_files(real_settings: Settings, tmp_path: Path) -> None:
    import dataclasses

    from appliance.deploy.doctor import sip_secrets
    from appliance.telephony.digest import ha1

    def check(**sip: str) -> tuple[str, str]:
        settings = dataclasses.replace(
            real_settings, sip=dataclasses.replace(real_settings.sip, **sip)
        )
        result = sip_secrets(settings)
        return result.status, result.detail

    assert check()[0] == "SKIP"
    accounts = tmp_path / "accounts"
    accounts.write_text(f"pbx:appliance:{ha1('pbx', 'appliance', 'pw')}\n")
    accounts.chmod(0o644)
    status, detail = check(accounts_file=str(accounts))
    assert status == "FAIL" and "chmod 600" in detail
    accounts.chmod(0o600)
    assert check(accounts_file=str(accounts)) == ("PASS", "1 digest account(s) for realm appliance")
    assert check(accounts_file=str(accounts), auth_realm="other")[0] == "FAIL"  # none for it
    password = tmp_path / "registrar-password"
    password.write_text("secret\n")
    password.chmod(0o640)
    status, detail = check(register_password_file=str(password))
    assert status == "FAIL" and "0640" in detail
    password.chmod(0o600)
    assert check(register_password_file=str(password))[0] == "PASS"
