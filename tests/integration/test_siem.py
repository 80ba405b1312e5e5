"""Security events to the SIEM (deploy/siem.py): RFC 5425 framing, RFC 5424 messages carrying
identifiers only, the bounded disk queue (one incident when full or out of disk, no call ever
waiting), resuming from what was delivered after a restart, resending across a broken
connection, the TLS collector against a local TLS listener, the settings and the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import socket
import ssl
import struct
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance.config.settings import SiemSettings, load_settings
from appliance.core.errors import ConfigError, IncidentError, SiemError
from appliance.core.ports import TurnRecord
from appliance.deploy import siem
from appliance.deploy.egress import allowlist
from appliance.deploy.siem import Forwarder, SiemEvent, TlsCollector
from appliance.storage import audit
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage
from appliance.storage.schema import AuditEvent, Incident
from tests.integration.test_storage_cli import cli
from tests.pki import write_certificates

SEQUENCE = re.compile(rb'\[meta sequenceId="(\d+)"\]')
RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>(?P<version>1) (?P<timestamp>\S+) (?P<hostname>\S+) "
    rb"(?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
    rb"(?P<sd>(?:\[[^ \]]+(?: [^=\s]+=\"(?:[^\"\\]|\\.)*\")*\])+) "
    rb"(?P<msg>\{.*\})$"
)
"""RFC 5424 6: HEADER (PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID), SD elements,
then the MSG (here a JSON object)."""


@dataclasses.dataclass
class FakeCollector:
    """A collector that keeps what reaches it; ``away`` refuses, ``lose_after`` takes that
    many frames of the next batch and then breaks (the batch not known delivered)."""

    received: list[bytes] = dataclasses.field(default_factory=list)
    away: bool = False
    lose_after: int | None = None
    calls: int = 0

    def deliver(self, frames: Sequence[bytes]) -> None:
        self.calls += 1
        if self.away:
            raise SiemError("siem.unreachable", "the collector did not answer")
        if self.lose_after is not None:
            self.received.extend(frames[: self.lose_after])
            self.lose_after = None
            raise SiemError("siem.unconfirmed", "closed before what was sent was known read")
        self.received.extend(frames)


def seqs(frames: Sequence[bytes]) -> list[int]:
    return [int(SEQUENCE.search(f).group(1)) for f in frames]  # type: ignore[union-attr]


def settings_for(**changes: object) -> SiemSettings:
    base = SiemSettings(enabled=True, collector="127.0.0.1:6514", ca_file="ca.pem")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage.open_sqlite(tmp_path / "a.db", load_or_create(tmp_path / "k"))
    yield store
    store.close()


def add_events(storage: Storage, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        storage.log_event("cli:tester", "probe", f"probe:{i}", "ok", {"n": i})


def incidents_of(storage: Storage, kind: str) -> list[Incident]:
    with storage.session("check") as db:
        return list(db.scalars(select(Incident).where(Incident.kind == kind)))


def all_seqs(storage: Storage) -> list[int]:
    with storage.session("check") as db:
        return list(db.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))


# -- framing and format ---------------------------------------------------------------------


def test_octet_counting_frames_count_octets_and_split_back() -> None:
    text = "<109>1 - - - - - - é"  # 20 characters, 21 octets (é is two)
    framed = siem.frame(text.encode())
    assert len(text) == 20
    assert framed == b"21 " + text.encode()  # RFC 5425 4.3: MSG-LEN in octets
    stream = siem.frame(b"one") + siem.frame(b"two two") + b"12 trunc"
    assert siem.unframe(stream) == ([b"one", b"two two"], b"12 trunc")


def test_a_message_has_every_rfc5424_field_and_identifiers_only() -> None:
    event = SiemEvent(
        seq=7,
        at=datetime(2026, 12, 1, 9, 0, 0, 120000),
        actor='admin:o"l]g\\a',
        action="legal_hold",
        object="call:abc",
        outcome="ok",
        details=siem.safe_details(
            json.dumps({"reason": "Mrs Smith's complaint", "turns": 3, "role": "admin"})
        ),
        prev_hash="a" * 64,
        hash="b" * 64,
    )
    message = siem.to_syslog(event, "appliance one", "voice-appliance", "4242")
    found = RFC5424.match(message)
    assert found is not None, message
    assert int(found["pri"]) == 13 * 8 + 5  # facility log audit, severity notice
    assert found["timestamp"] == b"2026-12-01T09:00:00.120000Z"
    assert found["hostname"] == b"applianceone"  # no space in a HEADER field
    assert (found["app"], found["procid"], found["msgid"]) == (
        b"voice-appliance",
        b"4242",
        b"audit",
    )
    assert found["sd"].startswith(b'[meta sequenceId="7"][audit@32473 seq="7" ')
    assert b'actor="admin:o\\"l\\]g\\\\a"' in found["sd"]  # RFC 5424 6.3.3 escapes
    body = json.loads(found["msg"])
    assert (body["seq"], body["action"], body["hash"]) == (7, "legal_hold", "b" * 64)
    assert body["details"] == {"turns": 3, "role": "admin"}  # the free-text reason left out
    assert b"Smith" not in message


def test_details_keep_counts_and_codes_only() -> None:
    raw = json.dumps(
        {
            "turns": 4,
            "replaced": True,
            "kind": "pin",
            "state": "open ; DROP",  # not a code
            "reason": "fraud",  # a code-looking value, but a free-text key
            "callers": ["x", "y"],
            "to": "+15551234567",
        }
    )
    assert siem.safe_details(raw) == {"turns": 4, "replaced": True, "kind": "pin"}
    assert siem.safe_details("not json") == {}


def test_an_incident_travels_with_its_codes_and_severity(storage: Storage) -> None:
    handle = storage.start_call(None, "sip")
    handle.record_turn(
        TurnRecord(1, "I want to hurt myself", "Help is coming.", escalation="distress")
    )
    (event,) = [e for e in siem.events_after(storage, 0, 100) if e.action == "incident_opened"]
    assert event.incident is not None
    assert (event.incident.kind, event.incident.severity) == ("distress", "high")
    message = siem.to_syslog(event, "host", "voice-appliance", "1")
    assert message.startswith(b"<%d>1 " % (13 * 8 + 2))  # high: critical
    assert b" incident [meta " in message and b'kind="distress" severity="high"' in message
    assert b"hurt" not in message and b"turn 1" not in message  # nor the summary


def test_each_incident_event_says_the_state_it_left(storage: Storage) -> None:
    incident = storage.open_incident("flood", "medium", "12 calls refused")
    storage.acknowledge_incident(incident, "admin:olga")
    storage.resolve_incident(incident, "admin:olga", "blocked")
    with pytest.raises(IncidentError):
        storage.resolve_incident(incident, "admin:olga")  # refused, audited
    events = [e for e in siem.events_after(storage, 0, 100) if e.incident is not None]
    said = [(e.action, e.outcome, e.incident.state) for e in events if e.incident]
    assert said == [
        ("incident_opened", "flood", "open"),
        ("incident_ack", "ok", "acknowledged"),
        ("incident_resolve", "ok", "resolved"),
        ("incident_resolve", "refused", "resolved"),
    ]
    assert [e.severity for e in events] == [
        siem.Severity.ERROR,  # medium
        siem.Severity.NOTICE,
        siem.Severity.NOTICE,
        siem.Severity.WARNING,
    ]
    assert events[2].details == {"from": "acknowledged", "kind": "flood", "severity": "medium",
                                 "note": "blocked"}  # fmt: skip


# -- the queue, its bound, and never blocking --------------------------------------------------


def test_a_full_queue_takes_no_more_and_opens_one_incident(storage: Storage, home: Path) -> None:
    add_events(storage, 40)
    collector = FakeCollector(away=True)
    forwarder = Forwarder(storage, settings_for(queue_max_bytes=4096), home, collector, "h")
    for _ in range(5):
        forwarder.fill()
        with pytest.raises(SiemError):
            forwarder.send()
    assert forwarder.queue.size() <= 4096
    assert 0 < forwarder.queue.state().queued < 40  # the rest waits in the store
    (incident,) = incidents_of(storage, "siem_queue_full")  # one, not one per event or round
    assert "full" in incident.summary
    collector.away = False
    forwarder.drain()
    assert seqs(collector.received) == all_seqs(storage)  # the incident's own event too
    assert not forwarder.queue.state().full  # the episode is over: a new one gets an incident
    add_events(storage, 40, start=40)
    collector.away = True
    forwarder.fill()
    assert len(incidents_of(storage, "siem_queue_full")) == 2


def test_a_call_never_waits_on_the_siem(storage: Storage, home: Path) -> None:
    """The forwarder stuck in a send to a collector that never answers: calls and their
    audit events go on (the test would hang otherwise)."""
    release, entered = threading.Event(), threading.Event()

    class StuckCollector:
        def deliver(self, frames: Sequence[bytes]) -> None:
            entered.set()
            release.wait(60)
            raise SiemError("siem.unreachable", "gave up")

    add_events(storage, 3)
    forwarder = Forwarder(storage, settings_for(), home, StuckCollector(), "h")
    stop = threading.Event()
    thread = threading.Thread(target=forwarder.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert entered.wait(60)
        handle = storage.start_call(None, "sip")
        handle.record_turn(TurnRecord(1, "hello", "hi"))
        storage.log_event("system", "call_ended", f"call:{handle.call_id}", "ok")
        assert len(all_seqs(storage)) == 4
    finally:
        stop.set()
        release.set()
        thread.join(30)
    assert not thread.is_alive()


def test_a_disk_full_queue_write_opens_the_incident_and_keeps_the_file(
    storage: Storage, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_events(storage, 3)
    forwarder = Forwarder(storage, settings_for(), home, FakeCollector(), "h")
    forwarder.fill()
    before = forwarder.queue.path.read_bytes()
    add_events(storage, 3, start=3)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)  # the write itself went through, then ENOSPC
    assert forwarder.fill() == 0
    assert forwarder.fill() == 0
    assert forwarder.queue.path.read_bytes() == before  # the torn write taken back
    (incident,) = incidents_of(storage, "siem_queue_full")
    assert "no space" in incident.summary
    monkeypatch.undo()
    forwarder.drain()
    collector = forwarder.collector
    assert isinstance(collector, FakeCollector)
    assert seqs(collector.received) == all_seqs(storage)


# -- delivery: resume, resend ---------------------------------------------------------------


def test_a_restarted_forwarder_resumes_after_what_was_delivered(
    storage: Storage, home: Path
) -> None:
    add_events(storage, 5)
    first = FakeCollector()
    Forwarder(storage, settings_for(app_name="siem-test"), home, first, "h").drain()
    add_events(storage, 4, start=5)
    second = FakeCollector()
    Forwarder(storage, settings_for(), home, second, "h").drain()  # a new process
    assert seqs(first.received) == [1, 2, 3, 4, 5]
    assert seqs(second.received) == [6, 7, 8, 9]
    assert all(b" h siem-test " in f for f in first.received)  # HOSTNAME, [siem] app_name
    assert all(b" h voice-appliance " in f for f in second.received)


def test_after_a_failure_the_last_messages_confirmed_go_again_first(
    storage: Storage, home: Path
) -> None:
    """A collector may close after reading a batch and die before writing it (rsyslogd on
    SIGTERM does): after any failure the last ``RESEND`` confirmed messages are sent again."""
    assert siem.RESEND == 200  # as config/appliance.toml and the README say
    add_events(storage, siem.RESEND + 5)
    collector = FakeCollector()
    forwarder = Forwarder(storage, settings_for(), home, collector, "h")
    forwarder.drain()
    assert len(forwarder.queue.sent()) == siem.RESEND  # the last ones, kept beside the queue
    assert forwarder.queue.pending(forwarder.state.delivered) == []
    add_events(storage, 3, start=siem.RESEND + 5)
    collector.away = True
    with pytest.raises(SiemError):
        forwarder.drain()
    collector.away = False
    collector.received.clear()
    Forwarder(storage, settings_for(), home, collector, "h").drain()  # also after a restart
    last = siem.RESEND + 5
    assert seqs(collector.received) == [*range(6, last + 1), last + 1, last + 2, last + 3]


def test_events_purged_before_they_were_sent_leave_a_gap_the_receiver_sees(
    storage: Storage, home: Path
) -> None:
    add_events(storage, 6)
    with storage.session("purge") as db:  # as retention does: the last purged anchors the chain
        third = db.scalars(select(AuditEvent).where(AuditEvent.seq == 3)).one()
        audit.set_anchor(db, third)
        for row in db.scalars(select(AuditEvent).where(AuditEvent.seq <= 3)):
            db.delete(row)
    collector = FakeCollector()
    Forwarder(storage, settings_for(), home, collector, "h").drain()
    assert seqs(collector.received) == [4, 5, 6]


def test_records_queued_before_a_crash_are_not_queued_twice(storage: Storage, home: Path) -> None:
    add_events(storage, 4)
    forwarder = Forwarder(storage, settings_for(), home, FakeCollector(away=True), "h")
    forwarder.fill()
    (home / "siem" / "state.json").unlink()  # as if it crashed before saving the state
    collector = FakeCollector()
    Forwarder(storage, settings_for(), home, collector, "h").drain()
    assert seqs(collector.received) == [1, 2, 3, 4]


def test_a_broken_batch_is_resent_whole_duplicates_only_across_the_reconnect(
    storage: Storage, home: Path
) -> None:
    add_events(storage, 6)
    collector = FakeCollector(lose_after=4)
    forwarder = Forwarder(storage, settings_for(), home, collector, "h")
    with pytest.raises(SiemError, match="unconfirmed"):
        forwarder.drain()
    assert forwarder.queue.state().delivered == 0
    forwarder.drain()
    assert seqs(collector.received) == [1, 2, 3, 4, 1, 2, 3, 4, 5, 6]


# -- the TLS collector against a local TLS listener ---------------------------------------------


class Listener:
    """A TLS server on 127.0.0.1 taking one connection at a time: ``read_all`` reads to the
    end and closes; otherwise it reads a little and resets the connection (data unread)."""

    def __init__(self, folder: Path) -> None:
        self.ca, cert, key = write_certificates(folder)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.received: list[bytes] = []

    def serve_one(self, read_all: bool) -> threading.Thread:
        def run() -> None:
            conn, _ = self.sock.accept()
            with self.context.wrap_socket(conn, server_side=True) as tls:
                data = b""
                while True:
                    chunk = tls.recv(65536)
                    data += chunk
                    if not chunk or not read_all:
                        break
                self.received.append(data)
                if not read_all:
                    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


def test_tls_delivery_is_confirmed_by_the_close_and_resent_after_a_reset(
    storage: Storage, home: Path, tmp_path: Path
) -> None:
    listener = Listener(tmp_path)
    config = settings_for(collector=f"127.0.0.1:{listener.port}", ca_file=str(listener.ca))
    add_events(storage, 30)
    forwarder = Forwarder(storage, config, home, TlsCollector(config), "h")
    thread = listener.serve_one(read_all=False)
    with pytest.raises(SiemError) as broken:
        forwarder.drain()
    thread.join(30)
    assert broken.value.code in ("siem.unconfirmed", "siem.broken")
    assert forwarder.queue.state().delivered == 0
    thread = listener.serve_one(read_all=True)
    assert forwarder.drain() == 30
    thread.join(30)
    messages, rest = siem.unframe(listener.received[-1])
    assert rest == b"" and seqs(messages) == list(range(1, 31))  # all of them again, in order
    listener.sock.close()


def test_a_collector_whose_certificate_does_not_verify_gets_nothing(
    storage: Storage, home: Path, tmp_path: Path
) -> None:
    (tmp_path / "server").mkdir()
    (tmp_path / "other").mkdir()
    listener = Listener(tmp_path / "server")
    wrong_ca, _, _ = write_certificates(tmp_path / "other")
    config = settings_for(collector=f"127.0.0.1:{listener.port}", ca_file=str(wrong_ca))
    add_events(storage, 2)
    forwarder = Forwarder(storage, config, home, TlsCollector(config), "h")

    def refuse() -> None:
        conn, _ = listener.sock.accept()
        with contextlib.suppress(OSError), conn:  # the client aborts the handshake
            listener.context.wrap_socket(conn, server_side=True).recv(1)

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    with pytest.raises(SiemError) as refused:
        forwarder.drain()
    thread.join(30)
    assert refused.value.code == "siem.certificate"
    assert forwarder.queue.state().delivered == 0
    listener.sock.close()


def test_the_name_given_is_the_name_checked(storage: Storage, home: Path, tmp_path: Path) -> None:
    """[siem] server_name set: the certificate must carry it (this one carries 127.0.0.1)."""
    listener = Listener(tmp_path)
    config = settings_for(
        collector=f"127.0.0.1:{listener.port}", ca_file=str(listener.ca), server_name="siem.test"
    )
    add_events(storage, 1)
    forwarder = Forwarder(storage, config, home, TlsCollector(config), "h")
    names: list[str | None] = []
    listener.context.sni_callback = lambda sock, name, context: names.append(name)

    def refuse() -> None:
        conn, _ = listener.sock.accept()
        with contextlib.suppress(OSError), conn:
            listener.context.wrap_socket(conn, server_side=True).recv(1)

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    with pytest.raises(SiemError) as refused:
        forwarder.drain()
    thread.join(30)
    assert refused.value.code == "siem.certificate"
    assert names == ["siem.test"]  # sent as SNI too
    assert siem.tls_context(config).minimum_version is ssl.TLSVersion.TLSv1_2
    listener.sock.close()


def test_the_appliance_presents_its_own_certificate_when_given_one(
    storage: Storage, home: Path, tmp_path: Path
) -> None:
    listener = Listener(tmp_path)
    (tmp_path / "client").mkdir()
    client_ca, client_cert, client_key = write_certificates(tmp_path / "client")
    listener.context.verify_mode = ssl.CERT_REQUIRED
    listener.context.load_verify_locations(client_ca)
    config = settings_for(
        collector=f"127.0.0.1:{listener.port}",
        ca_file=str(listener.ca),
        cert_file=str(client_cert),
        key_file=str(client_key),
    )
    add_events(storage, 2)
    thread = listener.serve_one(read_all=True)
    assert Forwarder(storage, config, home, TlsCollector(config), "h").drain() == 2
    thread.join(30)
    assert seqs(siem.unframe(listener.received[-1])[0]) == [1, 2]
    listener.sock.close()


def test_a_collector_that_never_answers_the_handshake_times_out(
    storage: Storage, home: Path, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never speaks TLS
        ca, _, _ = write_certificates(tmp_path)
        port = silent.getsockname()[1]
        config = settings_for(collector=f"127.0.0.1:{port}", ca_file=str(ca), timeout_s=1.0)
        add_events(storage, 1)
        with pytest.raises(SiemError) as failed:
            Forwarder(storage, config, home, TlsCollector(config), "h").drain()
    assert failed.value.code == "siem.tls"


class CountedStop(threading.Event):
    """A stop event that records each wait asked of it and stops after ``rounds``."""

    def __init__(self, rounds: int, before_last: object = None) -> None:
        super().__init__()
        self.rounds = rounds
        self.waits: list[float] = []
        self.before_last = before_last

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0.0))
        if len(self.waits) == self.rounds - 1 and callable(self.before_last):
            self.before_last()
        if len(self.waits) >= self.rounds:
            self.set()
        return self.is_set()


def test_the_forwarder_backs_off_doubling_to_its_bound_then_polls(
    storage: Storage, home: Path
) -> None:
    add_events(storage, 3)
    collector = FakeCollector(away=True)
    config = settings_for(retry_max_s=4.0, poll_s=0.5)
    forwarder = Forwarder(storage, config, home, collector, "h")

    def back() -> None:
        collector.away = False

    stop = CountedStop(6, before_last=back)
    forwarder.run(stop)
    assert stop.waits == [1.0, 2.0, 4.0, 4.0, 4.0, 0.5]
    assert seqs(collector.received) == [1, 2, 3]
    assert forwarder.queue.path == home / "siem" / "queue"


# -- settings, egress, CLI --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"collector": "siem.example.org:6514"}, "siem.collector"),
        ({"collector": "10.0.0.5"}, "siem.collector"),
        ({"enabled": True, "ca_file": "ca.pem"}, "siem.collector"),
        ({"enabled": True, "collector": "10.0.0.5:6514"}, "siem.ca_file"),
        ({"cert_file": "c.pem"}, "siem.key_file"),
        ({"app_name": "voice appliance"}, "siem.app_name"),
        ({"queue_max_bytes": 100}, "siem.queue_max_bytes"),
    ],
)
def test_bad_siem_settings_name_their_key(values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        SiemSettings(**values)  # type: ignore[arg-type]


def test_the_collector_joins_the_egress_allowlist_when_on(home: Path) -> None:
    env = {"APPLIANCE_HOME": str(home), "APPLIANCE_SIEM__COLLECTOR": "[2001:db8::5]:6514"}
    assert "2001:db8::5" not in allowlist(load_settings(environ=env))
    on = load_settings(
        environ={**env, "APPLIANCE_SIEM__ENABLED": "1", "APPLIANCE_SIEM__CA_FILE": "ca.pem"}
    )
    assert "2001:db8::5" in allowlist(on)
    assert (on.siem.host, on.siem.port) == ("2001:db8::5", 6514)


def test_the_shipped_configuration_has_the_siem_off(home: Path) -> None:
    settings = load_settings(environ={"APPLIANCE_HOME": str(home)})
    assert settings.siem == SiemSettings()
    assert not settings.siem.enabled


def test_the_cli_forwards_once_and_shows_the_queue(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = cli(home, "siem", "forward", "--once")
    assert done.returncode == 0 and "off" in done.stdout
    listener = Listener(tmp_path)
    monkeypatch.setenv("APPLIANCE_SIEM__ENABLED", "true")
    monkeypatch.setenv("APPLIANCE_SIEM__COLLECTOR", f"127.0.0.1:{listener.port}")
    monkeypatch.setenv("APPLIANCE_SIEM__CA_FILE", str(listener.ca))
    made = cli(home, "admin", "create-token", "--name", "ci", "--role", "auditor")  # audited
    assert made.returncode == 0, made.stderr
    thread = listener.serve_one(read_all=True)
    sent = cli(home, "siem", "forward", "--once")
    thread.join(30)
    status = cli(home, "siem", "status")
    assert sent.returncode == 0, sent.stderr
    delivered = seqs(siem.unframe(listener.received[-1])[0])
    assert delivered and f"delivered {len(delivered)} events" in sent.stdout
    assert (
        f"delivered up to event {delivered[-1]}" in status.stdout and "0 waiting" in status.stdout
    )
    state = json.loads((home / "siem" / "state.json").read_text())
    (home / "siem" / "state.json").write_text(json.dumps({**state, "full": True}))
    full = cli(home, "siem", "status")
    assert full.returncode == 1 and "the queue is full" in full.stdout
    listener.sock.close()
