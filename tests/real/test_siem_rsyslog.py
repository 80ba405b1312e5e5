"""Security events to a real SIEM collector: Debian's rsyslogd, started by the test on
127.0.0.1 with TLS (rsyslog-gnutls, a throwaway CA), receiving RFC 5425 syslog. The collector
is stopped (SIGTERM) while events flow and started again: every event arrives, in seq order,
with no gap, a duplicate only across the reconnect, and no transcript text anywhere."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config.settings import load_settings
from appliance.core.ports import TurnRecord
from appliance.deploy.siem import RESEND, Forwarder
from appliance.service import open_storage
from tests.pki import write_certificates

pytestmark = pytest.mark.real

SECRET_WORDS = "my tangerine passport says seventeen walrus"
SEQUENCE = re.compile(rb'\[meta sequenceId="(\d+)"\]')


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Rsyslog:
    """A private rsyslogd: TLS input on ``port``, each run writing what it receives, raw, to
    its own file (``received-N.log``)."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.ca, self.cert, self.key = write_certificates(folder)
        self.runs: list[Path] = []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if shutil.which("rsyslogd") is None:
            pytest.fail("rsyslogd is missing: scripts/setup installs rsyslog and rsyslog-gnutls")
        run = len(self.runs)
        received = self.folder / f"received-{run}.log"
        work = self.folder / f"work-{run}"
        work.mkdir()
        config = self.folder / f"rsyslog-{run}.conf"
        config.write_text(
            f'global(workDirectory="{work}"\n'
            f'       DefaultNetstreamDriverCAFile="{self.ca}"\n'
            f'       DefaultNetstreamDriverCertFile="{self.cert}"\n'
            f'       DefaultNetstreamDriverKeyFile="{self.key}")\n'
            'module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1"\n'
            '       StreamDriver.AuthMode="anon")\n'
            'template(name="raw" type="string" string="%rawmsg%\\n")\n'
            f'input(type="imtcp" address="127.0.0.1" port="{self.port}")\n'
            f'action(type="omfile" file="{received}" template="raw")\n',
            encoding="utf-8",
        )
        with (self.folder / f"rsyslog-{run}.out").open("wb") as log:
            self.process = subprocess.Popen(
                ["rsyslogd", "-n", "-f", str(config), "-i", str(self.folder / f"pid-{run}")],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
            )
        self.runs.append(received)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # bounded: until the input listens
            assert self.process.poll() is None, self.output(run)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"rsyslogd did not listen: {self.output(run)}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None

    def output(self, run: int) -> str:
        return (self.folder / f"rsyslog-{run}.out").read_text(errors="replace")[-3000:]

    def sequences(self, run: int) -> list[int]:
        try:
            data = self.runs[run].read_bytes()
        except FileNotFoundError:
            return []
        return [int(n) for n in SEQUENCE.findall(data)]


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    folder = tmp_path / "rsyslog"
    folder.mkdir()
    collector = Rsyslog(folder, free_tcp_port())
    try:
        yield collector
    finally:
        collector.stop()


def wait_until(condition: object, what: str, timeout_s: float = 60.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_event_arrives_in_order_across_a_collector_restart(
    tmp_path: Path, rsyslog: Rsyslog
) -> None:
    home = tmp_path / "home"
    settings = load_settings(
        environ={
            "APPLIANCE_HOME": str(home),
            "APPLIANCE_SIEM__ENABLED": "true",
            "APPLIANCE_SIEM__COLLECTOR": f"127.0.0.1:{rsyslog.port}",
            "APPLIANCE_SIEM__CA_FILE": str(rsyslog.ca),
            "APPLIANCE_SIEM__POLL_S": "0.1",
            "APPLIANCE_SIEM__RETRY_MAX_S": "1",
        }
    )
    rsyslog.start()
    with open_storage(settings) as storage:
        handle = storage.start_call(None, "sip")
        handle.record_turn(TurnRecord(1, SECRET_WORDS, "I am sorry to hear that."))
        handle.record_turn(TurnRecord(2, SECRET_WORDS, "Help is coming.", escalation="distress"))
        storage.read_call(handle.call_id, "admin:olga", reason="quality review of walrus")
        forwarder = Forwarder(storage, settings.siem, settings.home)
        stop = threading.Event()
        thread = threading.Thread(target=forwarder.run, args=(stop,), daemon=True)
        thread.start()
        try:
            for i in range(RESEND + 30):
                storage.log_event("cli:tester", "probe", f"probe:{i}", "ok", {"n": i})
            wait_until(lambda: len(rsyslog.sequences(0)) >= RESEND + 20, "the first events")
            for i in range(RESEND + 30, RESEND + 50):  # events go on while the collector stops
                storage.log_event("cli:tester", "probe", f"probe:{i}", "ok", {"n": i})
                if i == RESEND + 35:
                    rsyslog.stop()
            rsyslog.start()
            for i in range(RESEND + 50, RESEND + 60):
                storage.log_event("cli:tester", "probe", f"probe:{i}", "ok", {"n": i})
            last = storage.verify_audit()
            assert last.ok
            total = last.events
            wait_until(lambda: total in rsyslog.sequences(1), "the last event")
        finally:
            stop.set()
            thread.join(timeout=30)
    first, second = rsyslog.sequences(0), rsyslog.sequences(1)
    # Each run of the collector saw a consecutive stretch: in order, no gap, no duplicate ...
    assert first == list(range(1, len(first) + 1))
    assert second == list(range(second[0], total + 1))
    # ... and together every event: duplicates only where the second run began (the last
    # RESEND messages confirmed before the stop, sent again), recognisable by their seq.
    assert 1 < second[0] <= len(first) + 1
    assert len(first) - second[0] + 1 <= RESEND
    assert set(first) | set(second) == set(range(1, total + 1))
    raw = b"".join(path.read_bytes() for path in rsyslog.runs)
    assert SECRET_WORDS.encode() not in raw
    assert b"walrus" not in raw  # nor the free-text reason of the read
    assert b'[incident@32473 id="' in raw and b'kind="distress"' in raw
    assert b'action="read"' in raw and b'actor="admin:olga"' in raw
