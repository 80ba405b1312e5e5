"""The appliance behind a real PBX: Debian's Kamailio, started by the test on 127.0.0.1 with the
repo's config (appliance/testing/kamailio/pbx.cfg), as registrar and record-routing proxy.

`appliance sip` registers to it (digest authentication), SIPp calls the appliance's account at
the PBX, Kamailio looks it up and relays the call; the caller presses 0 for a person, and the
appliance's REFER, the caller's NOTIFYs and the appliance's BYE all pass through Kamailio by the
dialog's route set. Real models load (the line is the real `appliance sip`)."""

from __future__ import annotations

import dataclasses
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import appliance.testing
from appliance.config.settings import Settings
from appliance.telephony.sdp import PCMU
from appliance.testing.media import Stream
from tests.real import test_sip
from tests.real.test_sip import Line, free_port, last_call, sipp, start_line

CONFIG = Path(appliance.testing.__file__).parent / "kamailio" / "pbx.cfg"
DESK = "sip:desk@192.0.2.10"

pytestmark = pytest.mark.slow
line_env = test_sip.line_env  # the SIP line's fixtures
lines = test_sip.lines


@dataclasses.dataclass
class Pbx:
    port: int
    process: subprocess.Popen[str]
    log: Path
    password: str

    def wait_for(self, pattern: str, timeout_s: float = 30.0) -> str:
        """The first log line matching ``pattern`` (a bounded wait)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            found = re.search(pattern, text)
            if found is not None:
                return found.group(0)
            assert self.process.poll() is None, text[-3000:]
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} in the PBX's log: {text[-3000:]}")


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[Pbx]:
    if shutil.which("kamailio") is None:
        pytest.fail("kamailio is missing: scripts/setup installs Debian's kamailio")
    run = tmp_path / "kamailio"
    run.mkdir()
    port, password = free_port(), secrets.token_hex(12)
    log = run / "pbx.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["kamailio", "-f", str(CONFIG), "-DD", "-E", "-Y", str(run), "-m", "32", "-M", "4",
             "-l", f"udp:127.0.0.1:{port}", "-A", 'ACCOUNT="appliance"',
             "-A", f'PASSWORD="{password}"'],
            stdout=out, stderr=subprocess.STDOUT, text=True, cwd=run,
        )  # fmt: skip
    pbx = Pbx(port, process, log, password)
    try:
        pbx.wait_for(r"Listening on")
        yield pbx
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_a_call_through_kamailio_is_received_and_transferred_through_it(
    real_settings: Settings,
    line_env: dict[str, str],
    lines: list[Line],
    pbx: Pbx,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "register.password"
    secret.write_text(pbx.password)
    secret.chmod(0o600)
    env = {**line_env, "APPLIANCE_TRANSFER__DESTINATIONS": DESK}
    registration = {
        "registrar": f"127.0.0.1:{pbx.port}",
        "register_user": "appliance",
        "register_password_file": str(secret),
    }
    lines.append(line := start_line(env, **registration))
    registered = pbx.wait_for(r"registered appliance at \S+")
    assert f":{line.port}" in registered  # the contact is the line's own address
    # The caller waits out the disclosure (about 4 s of audio; a key pressed while it plays is
    # not the agent's yet), with room to spare, then presses 0 for a person.
    stream = Stream(codec=PCMU)
    stream.silence(12.0)
    stream.digit("0")
    stream.silence(0.3)
    stream.digit("#")
    stream.silence(40.0)
    at_pbx = dataclasses.replace(line, port=pbx.port)  # SIPp calls the PBX, not the line
    result, _ = sipp(
        at_pbx, "uac_transfer_pbx.xml", tmp_path, stream=stream, wait_ms=1000, talk_ms=60000,
        extra=("-trace_msg", "-message_file", str(tmp_path / "messages.log")),
    )  # fmt: skip
    assert result.returncode == 0, (last_call(real_settings), result.stdout[-3000:])
    trace = (tmp_path / "messages.log").read_text(errors="replace")
    refer = trace[trace.index("REFER sip:") :]
    assert re.search(rf"(?im)^Refer-To: <{re.escape(DESK)}>", refer), refer[:800]
    # The REFER came through the PBX: its top Via is Kamailio's, the appliance's below it.
    vias = re.findall(r"(?im)^Via: SIP/2\.0/UDP ([\d.]+:\d+)", refer.split("\r\n\r\n")[0])
    assert vias[:2] == [f"127.0.0.1:{pbx.port}", f"127.0.0.1:{line.port}"], refer[:800]
    pbx.wait_for(r"INVITE for appliance relayed to sip:appliance@127\.0\.0\.1:\d+")
    pbx.wait_for(r"in-dialog REFER routed to")
    pbx.wait_for(r"in-dialog NOTIFY routed to")
    pbx.wait_for(r"in-dialog BYE routed to")
    channel, status, _, _ = last_call(real_settings)
    assert (channel, status) == ("sip", "ended:transferred")
