"""The red-team gate on the real line: `appliance serve` (what the unit runs) with the real
models, and Debian's SIPp as the caller on 127.0.0.1. With the default
``[service] redteam_gate = "refuse"`` and no passing report for what runs, an INVITE gets 503
with the gate named in its Warning, not the agent; with "warn" the call is answered and an
incident of kind redteam_gate is opened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.compliance.gate import fingerprint
from appliance.config.settings import Settings, load_settings
from appliance.service import open_storage
from tests.real.conftest import APPLIANCE
from tests.real.test_serve_doctor import notifications
from tests.real.test_serve_doctor import serve as notified_serve
from tests.real.test_sip import Line, free_port, launch, sipp
from tests.real.test_sip import line_env as line_env  # the environment of the line's tests

# A prompt of these tests alone: whatever reports the shared home holds, none was made with it.
PROMPT = "You are the red-team gate test's assistant. Answer in one short sentence."


@pytest.fixture
def served(line_env: dict[str, str]) -> Iterator[list[Line]]:
    started: list[Line] = []
    yield started
    for line in started:
        line.process.send_signal(signal.SIGTERM)
        line.process.communicate(timeout=60)


def serve(env: dict[str, str], served: list[Line], gate: str) -> Line:
    port = free_port()
    environment = {
        "APPLIANCE_LLM__SYSTEM_PROMPT": PROMPT,
        **env,
        "APPLIANCE_SERVICE__VOICE": "sip",
        "APPLIANCE_SERVICE__REDTEAM_GATE": gate,
        "APPLIANCE_SIP__LISTEN": f"127.0.0.1:{port}",
    }
    line = launch(["serve"], environment, port)
    served.append(line)
    return line


def gate_incidents(home: Path) -> int:
    store = open_storage(load_settings(environ={"APPLIANCE_HOME": str(home)}))
    try:
        return sum(i["kind"] == "redteam_gate" for i in store.list_incidents(limit=10_000))
    finally:
        store.close()


def test_serve_refuses_a_sipp_call_with_503_naming_the_gate(
    line_env: dict[str, str], real_settings: Settings, served: list[Line], tmp_path: Path
) -> None:
    line = serve(line_env, served, "refuse")
    before = gate_incidents(line.home)
    result, capture = sipp(line, "uac_gate_refused.xml", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]  # 503 with the Warning, then our ACK
    assert capture.packets == []  # no media: the agent never answered
    line.process.send_signal(signal.SIGTERM)
    _, errors = line.process.communicate(timeout=60)
    served.clear()
    assert line.process.returncode == 0, errors
    assert "refusing calls until a red-team report passes" in errors
    assert gate_incidents(line.home) == before


@pytest.mark.slow
def test_serve_in_warn_mode_answers_the_call_and_opens_an_incident(
    line_env: dict[str, str], real_settings: Settings, served: list[Line], tmp_path: Path
) -> None:
    before = gate_incidents(Path(line_env["APPLIANCE_HOME"]))
    line = serve(line_env, served, "warn")
    assert gate_incidents(line.home) == before + 1  # opened at start, before READY
    result, capture = sipp(line, "uac_call.xml", tmp_path, wait_ms=1000, talk_ms=4000)
    assert result.returncode == 0, result.stdout[-3000:]  # 200, then our BYE: answered
    assert capture.packets  # the disclosure's RTP reached the caller
    assert gate_incidents(line.home) == before + 1  # once per start, not per call


def test_serve_refusing_starts_no_microphone_call(
    real_home: Path, real_settings: Settings, tmp_path: Path
) -> None:
    """No sound device here: a microphone call that started would end the service (exit 1,
    for systemd to restart it); refusing, it idles until SIGTERM and exits 0."""
    env = {
        **os.environ,
        "APPLIANCE_HOME": str(real_home),
        "APPLIANCE_SERVICE__VOICE": "microphone",
        "APPLIANCE_LLM__SYSTEM_PROMPT": PROMPT,
    }
    env.pop("PULSE_SERVER", None)
    process, listener = notified_serve(env, tmp_path)
    with listener:
        try:
            seen = notifications(listener, "READY=1", timeout_s=120)
            assert any("refusing calls (red-team gate" in s for s in seen), seen
            assert "WATCHDOG=1" in notifications(listener, "WATCHDOG=1", timeout_s=10)
            assert process.poll() is None  # still up, taking no call
        finally:
            process.send_signal(signal.SIGTERM)
            _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors


@pytest.mark.slow
def test_a_passing_red_team_run_opens_the_gate_and_a_new_prompt_closes_it(
    line_env: dict[str, str], real_settings: Settings, served: list[Line], tmp_path: Path
) -> None:
    """Issue 16's check: `appliance redteam` (a stratified sample of the built-in corpus)
    records the fingerprint; `serve` then answers; with the system prompt changed it refuses
    until the red team passes for the new fingerprint."""
    home = tmp_path / "home"
    env = {**line_env, "APPLIANCE_HOME": str(home), "APPLIANCE_LLM__SYSTEM_PROMPT": PROMPT}
    run = subprocess.run(
        [str(APPLIANCE), "redteam", "--sample", "2"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "red-team gate: passed: report " in run.stderr, run.stderr[-3000:]
    (report,) = (home / "redteam").glob("*/report.json")
    recorded = json.loads(report.read_text())["fingerprint"]["digest"]
    assert recorded == fingerprint(load_settings(environ=env)).digest
    line = serve(env, served, "refuse")
    result, capture = sipp(line, "uac_call.xml", tmp_path, wait_ms=1000, talk_ms=4000)
    assert result.returncode == 0, result.stdout[-3000:]  # answered: the gate is open
    assert capture.packets
    changed = {**env, "APPLIANCE_LLM__SYSTEM_PROMPT": PROMPT + " Be cheerful."}
    line = serve(changed, served, "refuse")
    result, capture = sipp(line, "uac_gate_refused.xml", tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]  # 503 naming the gate
    assert capture.packets == []
