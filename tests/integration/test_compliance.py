"""The compliance report reads live state (issue 16): each test flips one piece of state and
sees the control that rests on it change, so no control can pass by construction."""

from __future__ import annotations

import dataclasses
import json
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.admin.accounts import hash_password
from appliance.compliance import checks, export, probes
from appliance.compliance.probes import Live, Outcome
from appliance.config.settings import Settings
from appliance.core.errors import IntegrityError
from appliance.core.ports import TurnRecord
from appliance.retention.job import run_retention
from appliance.retention.policy import RetentionPolicy
from appliance.storage import audit
from appliance.storage.keys import load_or_create
from appliance.storage.maintenance import backup
from appliance.storage.repository import Storage
from tests.integration.helpers import StepClock, self_signed

T0 = datetime(2026, 12, 1, 12, 0)  # naive UTC, as the store keeps its times


@pytest.fixture
def clock() -> StepClock:
    return StepClock(T0)


@pytest.fixture
def storage(tmp_path: Path, clock: StepClock) -> Iterator[Storage]:
    store = Storage.open_sqlite(
        tmp_path / "appliance.db", load_or_create(tmp_path / "k"), clock=clock
    )
    yield store
    store.close()


def control(settings: Settings, storage: Storage, reference: str, now: datetime) -> checks.Control:
    rows = checks.controls(settings, storage, now.replace(tzinfo=UTC))
    found = [c for c in rows if c.reference == reference]
    assert len(found) == 1, [c.reference for c in rows]
    return found[0]


def with_section(settings: Settings, section: str, **changes: object) -> Settings:
    return dataclasses.replace(
        settings, **{section: dataclasses.replace(getattr(settings, section), **changes)}
    )


def test_srtp_off_fails_transmission_security_naming_srtp(
    settings: Settings, storage: Storage
) -> None:
    required = control(with_section(settings, "sip", srtp="required"), storage, "164.312(e)(1)", T0)
    assert "SRTP required" in required.evidence
    off = control(with_section(settings, "sip", srtp="off"), storage, "164.312(e)(1)", T0)
    assert off.outcome is Outcome.FAIL
    assert "SRTP is off" in off.reason
    optional = control(settings, storage, "164.312(e)(1)", T0)
    assert optional.outcome is Outcome.WARN and "SRTP is optional" in optional.reason


def test_storage_limitation_fails_until_the_purge_runs_and_when_a_row_outlives_its_period(
    settings: Settings, storage: Storage, clock: StepClock
) -> None:
    never = control(settings, storage, "Art. 5(1)(e)", T0)
    assert never.outcome is Outcome.FAIL and "never ran" in never.reason
    handle = storage.start_call("+15550100", "test")
    handle.record_turn(TurnRecord(1, "hello", "hi"))
    run_retention(storage, RetentionPolicy.from_settings(settings.retention))
    ran = control(settings, storage, "Art. 5(1)(e)", T0)
    assert ran.outcome is Outcome.PASS, ran
    # 31 days on, the transcript (30 days) is past its period and the purge has not run since
    later = T0 + timedelta(days=31)
    late = control(settings, storage, "Art. 5(1)(e)", later)
    assert late.outcome is Outcome.FAIL
    assert "1 transcripts" in late.reason and "last purge 31.0 days ago" in late.evidence
    assert "transcripts 31.0 days ago (period 30 d)" in late.evidence
    clock.now = later
    run_retention(storage, RetentionPolicy.from_settings(settings.retention))
    assert control(settings, storage, "Art. 5(1)(e)", later).outcome is Outcome.PASS


def test_redaction_off_fails_pci_dss_3_3(settings: Settings, storage: Storage) -> None:
    on = control(settings, storage, "3.3 / 3.4", T0)
    assert on.outcome is Outcome.PASS and "[CARD]" in on.evidence
    no_card = with_section(settings, "policy", redact=("ssn", "email"))
    off = control(no_card, storage, "3.3 / 3.4", T0)
    assert off.outcome is Outcome.FAIL and "4111 1111" in off.evidence
    no_cvv = with_section(settings, "policy", redact=("card",))
    assert control(no_cvv, storage, "3.3 / 3.4", T0).outcome is Outcome.FAIL


def test_an_account_without_totp_fails_mfa(settings: Settings, storage: Storage) -> None:
    storage.create_admin_user("root", hash_password("an admin passphrase, long"), "admin", "t")
    storage.set_admin_totp("root", b"x" * 20, "t")
    assert control(settings, storage, "8.4", T0).outcome is Outcome.PASS
    storage.create_admin_user("olga", hash_password("operator passphrase here"), "operator", "t")
    failed = control(settings, storage, "8.4", T0)
    assert failed.outcome is Outcome.FAIL and "olga" in failed.reason
    assert control(settings, storage, "164.312(d)", T0).outcome is Outcome.FAIL
    storage.set_admin_disabled("olga", True, "t")  # a disabled account cannot log in
    assert control(settings, storage, "8.4", T0).outcome is Outcome.PASS


def test_the_access_review_warns_when_none_was_recorded_within_90_days(
    settings: Settings, storage: Storage
) -> None:
    none = control(settings, storage, "CC6.1", T0)
    assert none.outcome is Outcome.WARN and "90 days" in none.reason
    details = {"confirmed": ["root:admin"], "removed": ["olga:operator"]}
    storage.log_event("admin:root", "access_review", "admin_users", "ok", details)
    done = control(settings, storage, "CC6.1", T0)
    assert done.outcome is Outcome.PASS
    assert "1 confirmed, 1 removed" in done.evidence and "admin:root" in done.evidence
    assert control(settings, storage, "CC6.1", T0 + timedelta(days=91)).outcome is Outcome.WARN


def test_an_erasure_a_legal_hold_kept_open_warns_then_fails_after_a_month(
    settings: Settings, storage: Storage, clock: StepClock
) -> None:
    handle = storage.start_call("+15550100", "test")
    storage.set_legal_hold(handle.call_id, "litigation", "t")
    storage.erase_caller("+15550100", "t")
    open_request = control(settings, storage, "Art. 17", T0)
    assert open_request.outcome is Outcome.WARN and "1 open" in open_request.evidence
    assert control(settings, storage, "Art. 17", T0 + timedelta(days=31)).outcome is Outcome.FAIL
    clock.now = T0 + timedelta(days=2)
    storage.set_legal_hold(handle.call_id, None, "t")
    storage.erase_caller("+15550100", "t")
    done = control(settings, storage, "Art. 17", T0 + timedelta(days=31))
    assert done.outcome is Outcome.PASS and "2 completed, 0 open" in done.evidence


def test_encryption_at_rest_is_read_from_the_database(
    tmp_path: Path, settings: Settings, storage: Storage
) -> None:
    storage.start_call("+15550100", "test").record_turn(TurnRecord(1, "hello", "hi"))
    sealed = control(settings, storage, "Art. 32", T0)
    assert sealed.outcome is Outcome.PASS, sealed
    assert "SQLCipher 4." in sealed.evidence and "1 of the 1" in sealed.evidence
    plain = Storage.open_sqlite(tmp_path / "plain.db", None)
    try:
        plain.start_call("+15550100", "test").record_turn(TurnRecord(1, "hello", "hi"))
        found = control(settings, plain, "Art. 32", T0)
    finally:
        plain.close()
    assert found.outcome is Outcome.FAIL and "not encrypted" in found.reason


def test_audit_controls_fail_on_a_broken_chain_and_warn_without_an_export(
    settings: Settings, storage: Storage
) -> None:
    storage.log_event("t", "view", "x", "ok")
    assert control(settings, storage, "164.312(b)", T0).outcome is Outcome.WARN
    storage.log_event("cli:t", "export", "audit_trail", "ok", {"events": 1})
    assert control(settings, storage, "164.312(b)", T0).outcome is Outcome.PASS
    with storage.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
    broken = control(settings, storage, "164.312(b)", T0)
    assert broken.outcome is Outcome.FAIL and "broken" in broken.reason


def test_a_backup_is_read_from_the_audit_trail(
    tmp_path: Path, settings: Settings, storage: Storage
) -> None:
    assert control(settings, storage, "164.308(a)(7)", T0).outcome is Outcome.WARN
    backup(storage, tmp_path / "b.db", "t")
    assert control(settings, storage, "164.308(a)(7)", T0).outcome is Outcome.PASS
    assert control(settings, storage, "164.308(a)(7)", T0 + timedelta(days=8)).outcome is (
        Outcome.WARN
    )


class OldTlsServer:
    """A listener that still takes TLS 1.0: what the panel's probe must catch."""

    def __init__(self, cert: Path, key: Path, minimum: ssl.TLSVersion) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # TLS 1.0 is deprecated: the point of this server
            warnings.simplefilter("ignore", DeprecationWarning)
            self.context.minimum_version = minimum
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            try:
                with self.context.wrap_socket(raw, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.stop = True
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.mark.parametrize(
    ("minimum", "outcome"),
    [("TLSv1", Outcome.FAIL), ("TLSv1_2", Outcome.PASS)],
)
def test_the_panel_listener_is_probed_for_its_tls_minimum(
    tmp_path: Path, settings: Settings, storage: Storage, minimum: str, outcome: Outcome
) -> None:
    cert, key = self_signed(tmp_path, days=90)
    server = OldTlsServer(cert, key, getattr(ssl.TLSVersion, minimum))
    try:
        address = f"127.0.0.1:{server.port}"
        live = Live(with_section(settings, "admin", listen=address), storage, T0)
        found = probes.panel_tls(live)
        sip = dataclasses.replace(
            settings.sip, tls_listen=address, tls_cert=str(cert), tls_key=str(key), srtp="required"
        )
        line = probes.sip_transport(Live(dataclasses.replace(settings, sip=sip), storage, T0))
    finally:
        server.close()
    assert found.outcome is outcome, found
    assert line.outcome is outcome, line  # the SIP TLS listener, probed the same way
    if outcome is Outcome.FAIL:
        assert "accepts TLSv1" in found.reason
    else:
        assert "TLS 1.0/1.1 refused" in found.evidence


def report_file(tmp_path: Path, settings: Settings, storage: Storage, suffix: str) -> Path:
    body = export.document(settings, checks.controls(settings, storage))
    signed = export.sign(body, settings)
    path = tmp_path / f"report{suffix}"
    text = export.render_html(signed) if suffix == ".html" else json.dumps(signed)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".json", ".html"])
def test_a_signed_report_verifies_and_an_edited_or_forged_one_does_not(
    tmp_path: Path, settings: Settings, storage: Storage, suffix: str
) -> None:
    pinned = export.public_key(settings)
    path = report_file(tmp_path, settings, storage, suffix)
    verified = export.verify(path, pinned)
    assert verified.summary["fail"] >= 1  # the purge never ran here
    text = path.read_text(encoding="utf-8")
    edited = tmp_path / f"edited{suffix}"
    if suffix == ".html":  # the visible status cell changed, the signed JSON left alone
        edited.write_text(text.replace(">fail<", ">pass<", 1), encoding="utf-8")
        with pytest.raises(IntegrityError, match="differs"):
            export.verify(edited, pinned)
        text = text.replace('"outcome": "fail"', '"outcome": "pass"', 1)  # and in the JSON
    else:
        text = text.replace('"outcome": "fail"', '"outcome": "pass"', 1)
    edited.write_text(text, encoding="utf-8")
    with pytest.raises(IntegrityError, match="signature"):
        export.verify(edited, pinned)
    # forged: a well-formed report signed by another key that names itself
    body = export.document(settings, checks.controls(settings, storage))
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(audit.sign(body, Ed25519PrivateKey.generate())))
    with pytest.raises(IntegrityError, match="another signing key"):
        export.verify(forged, pinned)


def test_a_probe_that_breaks_is_a_failed_control_never_a_pass(
    settings: Settings, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(live: Live) -> probes.Finding:
        raise RuntimeError("cannot read")

    monkeypatch.setattr(
        checks, "CONTROLS", (("X", "ref", "a control", "compliance.dataflow", (broken,)),)
    )
    (row,) = checks.controls(settings, storage)
    assert row.outcome is Outcome.FAIL and "RuntimeError" in row.reason


SHIPPED_UNITS = Path(__file__).resolve().parents[2] / "systemd"


def test_unit_hardening_and_egress_are_read_from_the_installed_units(
    tmp_path: Path, settings: Settings, storage: Storage
) -> None:
    live = Live(settings, storage, T0)
    units = tmp_path / "units"
    units.mkdir()
    assert probes.unit_hardening(live, units).outcome is Outcome.WARN  # nothing installed
    for name in probes.SERVICES:
        (units / name).write_text((SHIPPED_UNITS / name).read_text())
    hardened = probes.unit_hardening(live, units)
    assert hardened.outcome is Outcome.PASS, hardened
    assert probes.egress(live, units).outcome is Outcome.PASS
    voice = units / probes.SERVICES[0]
    kept = [line for line in voice.read_text().splitlines()
            if not line.startswith(("Protect", "Private", "Restrict", "SystemCall", "NoNew",
                                    "Capability", "IPAddressDeny", "Lock", "Memory"))]  # fmt: skip
    voice.write_text("\n".join(kept) + "\n")
    weak = probes.unit_hardening(live, units)
    assert weak.outcome is Outcome.FAIL and "appliance-voice.service" in weak.reason
    open_egress = probes.egress(live, units)
    assert open_egress.outcome is Outcome.FAIL and "MISSING" in open_egress.evidence


def test_an_altered_model_fails_change_management(
    tmp_path: Path, settings: Settings, storage: Storage
) -> None:
    from appliance.config.manifest import model_spec

    spec = model_spec(settings, "guard")  # the smallest pinned file: the guard's head
    path = spec.path
    assert path.is_file()
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes() + b" ")
    altered = with_section(settings, "guard", path=str(copy))
    found = control(altered, storage, "CC8.1", T0)
    assert found.outcome is Outcome.FAIL and "altered" in found.reason
    assert probes.model_pins(Live(settings, storage, T0)).outcome is Outcome.PASS


def test_vendor_management_reads_the_register_and_fails_an_unpinned_model(
    settings: Settings, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.compliance import sbom

    real = sbom.register(settings)
    found = control(settings, storage, "CC9.2", T0)
    assert f"{len(real.packages)} Python packages" in found.evidence
    assert found.outcome is not Outcome.FAIL, found
    model = next(m for m in real.models if m.configured)
    unpinned = dataclasses.replace(model, files=())
    monkeypatch.setattr(sbom, "register", lambda s: dataclasses.replace(real, models=(unpinned,)))
    failed = control(settings, storage, "CC9.2", T0)
    assert failed.outcome is Outcome.FAIL and model.name in failed.reason


def test_an_incident_past_its_response_time_fails_incident_response(
    settings: Settings, storage: Storage, clock: StepClock
) -> None:
    incident = storage.open_incident("guard_block", "high", "rule:injection x3")
    assert control(settings, storage, "CC7.2", T0 + timedelta(minutes=10)).outcome is (Outcome.PASS)
    late = control(settings, storage, "CC7.2", T0 + timedelta(minutes=16))
    assert late.outcome is Outcome.FAIL and "guard_block" in late.reason
    storage.acknowledge_incident(incident, "admin:root")  # acknowledging does not stop it
    assert control(settings, storage, "164.308(a)(6)", T0 + timedelta(minutes=16)).outcome is (
        Outcome.FAIL
    )
    storage.resolve_incident(incident, "admin:root", None)  # at T0, by the store's clock
    on_time = control(settings, storage, "CC7.2", T0 + timedelta(minutes=16))
    assert on_time.outcome is Outcome.PASS and "0 unresolved" in on_time.evidence
    clock.now = T0 + timedelta(minutes=20)
    late_one = storage.open_incident("guard_block", "high", "rule:injection x3")
    clock.now = T0 + timedelta(minutes=40)
    storage.resolve_incident(late_one, "admin:root", None)
    resolved_late = control(settings, storage, "CC7.2", T0 + timedelta(minutes=41))
    assert resolved_late.outcome is Outcome.WARN and "1 resolved late" in resolved_late.evidence


def test_a_jurisdiction_without_its_script_fails_transparency(
    tmp_path: Path, settings: Settings, storage: Storage
) -> None:
    import shutil

    shipped = settings.sip.consent_folder_path
    folder = tmp_path / "consent"
    shutil.copytree(shipped, folder)
    found = control(with_section(settings, "sip", consent_folder=str(folder)), storage,
                    "Art. 13; EU AI Act Art. 50", T0)  # fmt: skip
    assert found.outcome is Outcome.PASS and "us-all-party/" in found.evidence
    (folder / "uk.en.toml").unlink()
    missing = control(with_section(settings, "sip", consent_folder=str(folder)), storage,
                      "Art. 13; EU AI Act Art. 50", T0)  # fmt: skip
    assert missing.outcome is Outcome.FAIL and "no English script for uk" in missing.reason


def test_change_management_fails_until_a_red_team_report_matches_what_runs(
    settings: Settings, storage: Storage
) -> None:
    from appliance.compliance.gate import fingerprint
    from tests.unit.test_redteam_gate import write_report

    none = control(settings, storage, "CC8.1", T0)
    assert none.outcome is Outcome.FAIL and "no red-team report" in none.reason
    write_report(settings.home, "20261130-100000", fingerprint(settings),
                 finished=(T0 - timedelta(days=1)).replace(tzinfo=UTC))  # fmt: skip
    assert control(settings, storage, "CC8.1", T0).outcome is Outcome.PASS
    assert control(settings, storage, "CC8.1", T0 + timedelta(days=100)).outcome is Outcome.WARN
    folder = write_report(settings.home, "20261130-110000", fingerprint(settings),
                          finished=(T0 - timedelta(hours=1)).replace(tzinfo=UTC))  # fmt: skip
    sampled = folder / "report.json"
    sampled.write_text(json.dumps({**json.loads(sampled.read_text()), "sample": 2}))
    found = control(settings, storage, "CC8.1", T0)
    assert found.outcome is Outcome.WARN and "a sample" in found.reason
    sampled.unlink()
    changed = with_section(settings, "llm", system_prompt="You are a pirate. " * 3)
    mismatch = control(changed, storage, "CC8.1", T0)
    assert mismatch.outcome is Outcome.FAIL and "system_prompt" in mismatch.reason


def test_the_data_flow_names_the_in_process_engines_and_every_configured_peer(
    settings: Settings,
) -> None:
    from appliance.admin.compliance import flows, peers

    plain = peers(settings)
    assert plain[0].address == "in this process" and "llama.cpp" in plain[0].who
    assert [p.who for p in plain if "PBX" in p.who or "SMTP" in p.who] == []
    sip = dataclasses.replace(
        settings.sip, registrar="127.0.0.1:5070", register_user="appliance", srtp="off"
    )
    configured = dataclasses.replace(
        settings,
        sip=sip,
        notify=dataclasses.replace(
            settings.notify, relay="127.0.0.1", server_name="relay.test", from_address="a@b.test"
        ),
        transfer=dataclasses.replace(settings.transfer, destinations=("sip:desk@127.0.0.1",)),
    )
    found = {p.who: p for p in peers(configured)}
    assert found["PBX (registrar)"].address == "127.0.0.1:5070"
    assert found["SMTP relay"].protection == "STARTTLS"
    assert "plain RTP (SRTP off)" in found["Transfer destinations (people)"].protection
    audio = flows(configured)[0]
    assert audio.protection.startswith("plain RTP (SRTP off)")
    assert "keys in clear signalling" in audio.protection


def test_minimisation_and_the_master_key_age_are_read(settings: Settings, storage: Storage) -> None:
    import os

    assert control(settings, storage, "Art. 5(1)(c), 25", T0).outcome is Outcome.PASS
    no_email = with_section(settings, "policy", redact=("card", "cvv"))
    off = control(no_email, storage, "Art. 5(1)(c), 25", T0)
    assert off.outcome is Outcome.WARN and "email" in off.reason
    kept = with_section(settings, "retention", recordings_hours=24)
    assert "raw audio kept 24 h" in control(kept, storage, "Art. 5(1)(c), 25", T0).evidence
    assert storage.master is not None
    written = (T0 - timedelta(days=400)).replace(tzinfo=UTC).timestamp()
    os.utime(storage.master.path, (written, written))
    old = probes.master_key_age(Live(settings, storage, T0))
    assert old.outcome is Outcome.WARN and "400.0 days ago" in old.evidence
