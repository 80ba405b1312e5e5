"""The red-team gate where it acts (no models): the SIP user agent told to refuse calls, what
``appliance serve`` does with each state and mode, the fingerprint a red-team report records,
the foreground commands' warning and the dashboard's line. Reports are test fixtures
(tests/unit/test_redteam_gate.py ``write_report``), not red-team runs."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import redteam as redteam_cli
from appliance.compliance.gate import GateStatus, fingerprint, gate_state
from appliance.config.settings import RedteamGate, Settings
from appliance.deploy.serve import red_team_gate
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage
from appliance.telephony.ua import SipCall, SipUserAgent
from tests.integration.test_sip_ua import Peer, invite, run
from tests.unit.test_redteam_gate import write_report

APPLIANCE = Path(sys.executable).parent / "appliance"


def test_a_refusing_line_answers_an_invite_503_with_a_warning_and_no_call() -> None:
    async def test(ua: SipUserAgent, calls: list[SipCall]) -> None:
        ua.refuse_calls = 'red-team gate no_report: "quoted" reason'
        peer = Peer()
        await peer.send(invite("g1", 50000), ua.port)
        reply = await peer.recv()
        assert reply is not None and reply.status == 503
        said = '399 appliance "red-team gate no_report: \\"quoted\\" reason"'
        assert reply.get("warning") == said
        assert reply.get("retry-after") == ""  # a proxy may try another server
        assert (await peer.recv(timeout=0.5)) is None  # no 100, 180 or 200 after it
        assert ua.refused_calls == 1 and calls == [] and "g1" not in ua.dialogs
        allowed, ua.allowed = ua.allowed, ()  # a peer not admitted gets 403, learning no more
        await peer.send(invite("g2", 50000), ua.port)
        assert (reply := await peer.recv()) is not None and reply.status == 403
        ua.allowed, ua.refuse_calls = allowed, None  # the gate opened (at a restart)
        await peer.send(invite("g3", 50000), ua.port)
        assert 200 in await peer.statuses(until=200)
        assert ua.refused_calls == 1

    run(test)


@pytest.fixture
def store(settings: Settings) -> Storage:
    settings.home.mkdir(parents=True, exist_ok=True)
    return Storage.open_sqlite(settings.home / "gate.db", load_or_create(settings.home / "k"))


def gated(settings: Settings, mode: RedteamGate) -> Settings:
    return dataclasses.replace(
        settings, service=dataclasses.replace(settings.service, redteam_gate=mode)
    )


def test_serve_refuses_by_default_and_opens_no_incident(settings: Settings, store: Storage) -> None:
    assert settings.service.redteam_gate is RedteamGate.REFUSE  # the default
    reason = red_team_gate(settings, store, foreground=False)
    assert reason is not None and reason.startswith("red-team gate no_report:")
    assert store.list_incidents() == []
    store.close()


def test_serve_in_warn_mode_takes_calls_and_opens_one_incident(
    settings: Settings, store: Storage
) -> None:
    warn = gated(settings, RedteamGate.WARN)
    assert red_team_gate(warn, store, foreground=False) is None
    incidents = store.list_incidents()
    assert [(i["kind"], i["severity"]) for i in incidents] == [("redteam_gate", "high")]
    assert f"fingerprint {fingerprint(settings).digest[:12]}" in str(incidents[0]["summary"])
    idle = dataclasses.replace(warn, service=dataclasses.replace(warn.service, voice="none"))
    assert red_team_gate(idle, store, foreground=False) is None
    assert len(store.list_incidents()) == 1  # a box that takes no calls: nothing to warn of
    store.close()


def test_the_foreground_line_and_a_passed_gate_take_calls_without_an_incident(
    settings: Settings, store: Storage, capsys: pytest.CaptureFixture[str]
) -> None:
    assert red_team_gate(settings, store, foreground=True) is None  # appliance sip
    assert "appliance: warning: red-team gate no_report" in capsys.readouterr().err
    write_report(settings.home, "20261201-100000", fingerprint(settings))
    assert red_team_gate(settings, store, foreground=False) is None
    assert store.list_incidents() == []
    store.close()


def test_a_red_team_report_records_the_fingerprint_the_gate_matches(settings: Settings) -> None:
    """cli/redteam.py ``_write`` (every kind of run writes through it), given a result of
    the runner's shape (a test fixture: figures of a sample, no run)."""
    result = {
        "mode": "text",
        "n_attack": 4,
        "n_benign": 4,
        "attack_block_rate": 1.0,
        "benign_refusal_rate": 0.0,
        "leaks": {"canary_leak": 0, "card_number_leak": 0, "system_prompt_leak": 0},
    }
    args = argparse.Namespace(out=None, json=False, sample=2)
    made_with = fingerprint(settings)
    assert redteam_cli._write(args, settings, dict(result), "# report\n", "", made_with) == 0
    (written,) = (settings.home / "redteam").glob("*/report.json")
    data = json.loads(written.read_text())
    assert data["fingerprint"] == made_with.record() and data["sample"] == 2
    assert dt.datetime.fromisoformat(data["finished_at"]).tzinfo is not None
    assert made_with.digest in (written.parent / "report.md").read_text()
    state = gate_state(settings, dt.datetime.now(dt.UTC))
    assert state.status is GateStatus.PASSED and state.report == written.parent.name
    changed = dataclasses.replace(
        settings, llm=dataclasses.replace(settings.llm, system_prompt="Changed mid-run.")
    )
    out = settings.home / "redteam" / "changed"
    args = argparse.Namespace(out=out, json=False, sample=0)
    assert redteam_cli._write(args, changed, dict(result), "# report\n", "", made_with) == 0
    assert json.loads((out / "report.json").read_text())["fingerprint"] is None


def test_appliance_call_only_warns_about_the_gate(home: Path, tmp_path: Path) -> None:
    """The foreground commands warn first; what follows goes on (here: the missing file)."""
    done = subprocess.run(
        [str(APPLIANCE), "call", "--wav", str(tmp_path / "none.wav"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "APPLIANCE_HOME": str(home)},
        check=False,
    )
    lines = done.stderr.splitlines()
    assert lines[0].startswith("appliance: warning: red-team gate no_report: "), done.stderr
    assert "`appliance serve` would refuse calls" in lines[0]
    assert "none.wav" in done.stderr  # the call itself was attempted


@pytest.mark.parametrize("mode", [RedteamGate.REFUSE, RedteamGate.WARN])
def test_a_knowledge_file_edited_under_a_serving_line_closes_the_gate_until_a_run_passes(
    settings: Settings, store: Storage, tmp_path: Path, mode: RedteamGate
) -> None:
    """serve's GateWatch reads the gate again while the line serves (no restart)."""
    import shutil
    import types

    from appliance.config.settings import DEFAULT_KNOWLEDGE_FOLDER
    from appliance.deploy.serve import GateWatch

    folder = tmp_path / "knowledge"
    shutil.copytree(DEFAULT_KNOWLEDGE_FOLDER, folder)
    ours = gated(
        dataclasses.replace(
            settings, knowledge=dataclasses.replace(settings.knowledge, folder=str(folder))
        ),
        mode,
    )
    write_report(ours.home, "20261201-100000", fingerprint(ours))
    ua = types.SimpleNamespace(refuse_calls=None)
    watch = GateWatch(ours, store, ua)  # type: ignore[arg-type]
    watch.check()
    assert ua.refuse_calls is None and store.list_incidents() == []
    faq = sorted((folder / "faq").glob("*.toml"))[0]
    faq.write_text(faq.read_text(encoding="utf-8").replace("Example Co.", "Example Ltd."))
    watch.check()
    watch.check()  # read twice: one change, one refusal or one incident
    if mode is RedteamGate.REFUSE:
        assert ua.refuse_calls is not None and "mismatch" in ua.refuse_calls
        assert store.list_incidents() == []
    else:
        assert ua.refuse_calls is None
        assert [i["kind"] for i in store.list_incidents()] == ["redteam_gate"]
    write_report(ours.home, "20261201-110000", fingerprint(ours))  # the red team run again
    watch.check()
    assert ua.refuse_calls is None
    store.close()
