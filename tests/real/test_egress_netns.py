"""No data leaves the premises, seen from outside the process: `appliance serve` takes a real
SIPp call inside network and mount namespaces made by the test (tests/real/egress_netns.py),
and the only packets sent there are the call's, between the appliance and its configured
peer. Every name lookup would reach the test's own DNS listener, and none does; no library
leaves a telemetry queue in the user's home."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import appliance.testing
from appliance.config.settings import Settings
from appliance.service import VoiceService, open_storage
from appliance.telephony.sdp import PCMU
from tests.real.conftest import APPLIANCE
from tests.real.test_sip import QUESTION, spoken

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_a_served_call_sends_no_packet_but_to_its_peer_and_looks_no_name_up(
    service: VoiceService, real_home: Path, real_settings: Settings, tmp_path: Path
) -> None:
    for tool in ("unshare", "ip", "mount", "sipp"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/setup installs it")
    stream = spoken(service, QUESTION, PCMU, tail_s=8.0)
    (tmp_path / "stream.json").write_text(json.dumps([[t, p.hex()] for t, p in stream.packets]))
    before = len(_calls(real_settings))
    run = subprocess.run(
        ["unshare", "--net", "--mount", "--", sys.executable, "-m", "tests.real.egress_netns",
         "--home", str(real_home), "--models", str(real_settings.models.cache_path(real_home)),
         "--stream", str(tmp_path / "stream.json"), "--appliance", str(APPLIANCE),
         "--scenario", str(Path(appliance.testing.__file__).parent / "sipp/uac_call.xml"),
         "--out", str(tmp_path / "report.json")],
        capture_output=True, text=True, timeout=420, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    # The harness can fail: a child's lookup reached the listener and the capture saw it.
    assert report["control"] == {"heard": True, "captured": True}, report["control"]
    assert "listening" in report["listening"], report["serve_errors"]
    assert report["sipp"] == 0 and report["heard_packets"] > 100, report
    assert report["call_packets"] > 100  # the capture saw the call itself
    assert report["names"] == [], report["names"]  # no lookup, of any name
    assert report["outside"] == [], report["outside"][:10]
    assert not [f for f in report["user_files"] if "Microsoft" in f], report["user_files"]
    assert report["serve"] == 0, report["serve_errors"]
    assert len(_calls(real_settings)) == before + 1  # the call was taken and stored


def _calls(settings: Settings) -> list[object]:
    store = open_storage(settings)
    try:
        return list(store.list_calls(limit=10_000))
    finally:
        store.close()
