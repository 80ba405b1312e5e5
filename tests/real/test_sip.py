"""The SIP line end to end, with Debian's SIPp as the caller on 127.0.0.1 and the real models.

Each test starts `appliance sip` on a free port and runs a SIPp scenario from
appliance/testing/sipp for the signalling; the caller's media is the test's own socket
(testing/media.py), the port the scenario's SDP names: it speaks the caller's RTP (Piper
speech, DTMF) from that port once the call is answered, as a phone does, and captures the
appliance's. The test checks what came back and what was stored."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

import appliance.testing
from appliance.config.settings import Settings
from appliance.service import VoiceService, open_storage
from appliance.storage.schema import Consent
from appliance.telephony.digest import ha1
from appliance.telephony.g711 import alaw_decode, ulaw_decode
from appliance.telephony.rtp import RtpError, parse_packet
from appliance.telephony.sdp import PCMA, PCMU
from appliance.testing.fakes import tone
from appliance.testing.media import CallerMedia, Stream
from tests.real.conftest import APPLIANCE, wer

SCENARIOS = Path(appliance.testing.__file__).parent / "sipp"
QUESTION = "What time do you open on Saturday?"
DISCLOSURE = "This call is with an automated assistant and is transcribed."


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_media_port() -> int:
    """A free UDP port whose neighbour two up is free too: SIPp binds its video port there."""
    for _ in range(50):
        port = free_port()
        if port % 2 == 0 and port + 2 < 65536:
            try:
                with (
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
                ):
                    a.bind(("127.0.0.1", port))
                    b.bind(("127.0.0.1", port + 2))
                return port
            except OSError:
                continue
    raise RuntimeError("no free media port pair in 50 tries")


@dataclass
class Line:
    port: int
    process: subprocess.Popen[str]
    home: Path


@pytest.fixture
def line_env(real_home: Path, real_settings: Settings) -> dict[str, str]:
    """The environment of `appliance sip` (real_settings: the models are in place)."""
    if shutil.which("sipp") is None:
        pytest.fail("sipp is missing: scripts/setup installs Debian's sip-tester")
    low = 20000 + (os.getpid() % 200) * 100
    return {
        **os.environ,
        "APPLIANCE_HOME": str(real_home),
        "APPLIANCE_SIP__DISCLOSURE": DISCLOSURE,
        "APPLIANCE_TOOLS__CREDENTIALS": "demo",  # the demo configuration's callers
        "APPLIANCE_SIP__RTP_PORT_MIN": str(low),
        "APPLIANCE_SIP__RTP_PORT_MAX": str(low + 99),
    }


def launch(args: Sequence[str], env: dict[str, str], port: int) -> Line:
    """``appliance ARGS`` with its line on ``port``, once it says it is listening (after the
    models have loaded)."""
    # Each line its own node name: two lines on one home at once (a test's old and new
    # configuration) would otherwise be one node, and the second would refuse to start.
    env = {"APPLIANCE_SERVICE__NODE": f"line-{port}", **env}
    process = subprocess.Popen(
        [str(APPLIANCE), *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening" not in line:  # say why, and leave no process or pipe behind
        process.kill()
        _, errors = process.communicate(timeout=60)
        raise AssertionError(f"{args[0]} did not start: {errors[-3000:]}")
    return Line(port, process, Path(env["APPLIANCE_HOME"]))


def start_line(env: dict[str, str], **settings: str) -> Line:
    port = free_port()
    extra = {f"APPLIANCE_SIP__{k.upper()}": v for k, v in settings.items()}
    return launch(["sip", "--listen", f"127.0.0.1:{port}"], {**env, **extra}, port)


@pytest.fixture
def lines(line_env: dict[str, str]) -> Iterator[list[Line]]:
    started: list[Line] = []
    yield started
    for line in started:
        line.process.terminate()
        line.process.communicate(timeout=60)


class Capture(CallerMedia):
    """The caller's media socket (testing/media.py), which also decodes what it heard."""

    def audio(self, codec: int) -> bytes:
        """What the appliance said, as 16 kHz PCM16 (packets in sequence order; the 16-bit
        sequence number wraps past 65535 in about 1% of calls, so it is counted on from the
        first packet)."""
        packets = []
        for data in self.packets:
            try:
                packets.append(parse_packet(data))
            except RtpError:
                continue
        first = packets[0].sequence if packets else 0
        packets.sort(key=lambda p: (p.sequence - first) & 0xFFFF)
        assert packets and all(p.payload_type == codec for p in packets)
        decode = ulaw_decode if codec == PCMU else alaw_decode
        pcm = np.concatenate([decode(np.frombuffer(p.payload, dtype=np.uint8)) for p in packets])
        return soxr.resample(pcm, 8_000, 16_000).astype("<i2").tobytes()


def sipp(
    line: Line,
    scenario: str,
    tmp_path: Path,
    *,
    codec: int = PCMU,
    stream: Stream | None = None,
    wait_ms: int = 5000,
    talk_ms: int = 15000,
    transport: str = "u1",
    source: str = "127.0.0.1",
    extra: tuple[str, ...] = (),
    refusal: int = 403,
    caller: str = "+15550142",
) -> tuple[subprocess.CompletedProcess[str], Capture]:
    capture = Capture(source)  # the SDP names the caller's address: media comes from there
    text = (SCENARIOS / scenario).read_text()
    for key, value in {
        "@CODEC@": str(codec),
        "@CAPTURE_PORT@": str(capture.port),
        "@WAIT_MS@": str(wait_ms),
        "@TALK_MS@": str(talk_ms),
        "@REFUSAL@": str(refusal),
        "+15550142": caller,  # the scenarios' From and Contact user
    }.items():
        text = text.replace(key, value)
    xml = tmp_path / scenario
    xml.write_text(text)
    # The caller speaks once answered, when SIPp's scenario would have played it.
    capture.start(stream.packets if stream is not None else (), after_s=wait_ms / 1000)
    try:
        result = subprocess.run(
            ["sipp", f"127.0.0.1:{line.port}", "-sf", str(xml), "-m", "1", "-i", source,
             "-p", str(free_port()), "-mp", str(free_media_port()), "-timeout", "120s", "-nostdin",
             "-trace_err", "-error_file", str(tmp_path / "sipp_errors.log"), "-t", transport,
             *extra],
            capture_output=True, text=True, timeout=180, cwd=tmp_path,
        )  # fmt: skip
    finally:
        time.sleep(0.5)
        capture.stop()
    return result, capture


def spoken(
    service: VoiceService, text: str, codec: int, digits: str = "", tail_s: float = 10.0
) -> Stream:
    stream = Stream(codec=codec)
    stream.silence(0.5)
    for digit in digits:
        stream.digit(digit)
        stream.silence(0.3)
    if text:
        pcm = b"".join(c.pcm for c in service.engines.tts.synthesize(text, 8_000))
        stream.audio(pcm)
    stream.silence(tail_s)  # a phone keeps sending (silence) until it hangs up
    return stream


def call_count(settings: Settings, at_least: int = 0) -> int:
    """Stored calls (waiting up to 30 s for ``at_least``: the line stores after the SIP work)."""
    store = open_storage(settings)
    try:
        deadline = time.monotonic() + 30
        while (count := len(store.list_calls(limit=10_000))) < at_least:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return count
    finally:
        store.close()


def last_call(settings: Settings) -> tuple[str, str, list[str | None], list[Consent]]:
    from sqlalchemy import select

    store = open_storage(settings)
    try:
        deadline = time.monotonic() + 60
        call = store.list_calls(limit=1)[0]
        while call.status == "active" and time.monotonic() < deadline:  # still closing
            time.sleep(0.5)
            call = store.list_calls(limit=1)[0]
        view = store.read_call(call.id, "test", "check")
        with store.session("consent") as db:
            consents = list(db.scalars(select(Consent).where(Consent.call_id == call.id)))
        return call.channel, call.status, [t.transcript for t in view.turns], consents
    finally:
        store.close()


@dataclass
class Rig:
    """What a test of the line works with: the environment of `appliance sip`, the settings
    of its home (the calls it stored), the test's folder (SIPp's files) and the lines it
    started, stopped after the test; the real service (its voice speaks for the caller, its
    ear hears the appliance) is loaded when first asked for."""

    env: dict[str, str]
    settings: Settings
    folder: Path
    lines: list[Line]
    request: pytest.FixtureRequest

    @property
    def service(self) -> VoiceService:
        service: VoiceService = self.request.getfixturevalue("service")
        return service

    def start(self, env: dict[str, str] | None = None, **settings: str) -> Line:
        """`appliance sip` on a free port (``settings``: [sip] keys), stopped after the test."""
        line = start_line(self.env if env is None else env, **settings)
        self.lines.append(line)
        return line

    def sipp(
        self, line: Line, scenario: str, **options: Any
    ) -> tuple[subprocess.CompletedProcess[str], Capture]:
        return sipp(line, scenario, self.folder, **options)

    def spoken(self, text: str, codec: int = PCMU, **options: Any) -> Stream:
        return spoken(self.service, text, codec, **options)

    def last_call(self) -> tuple[str, str, list[str | None], list[Consent]]:
        return last_call(self.settings)

    def heard(self, capture: Capture, codec: int = PCMU) -> str:
        """What the appliance said on the call, as the real speech recognition hears it."""
        return self.service.engines.stt.transcribe(capture.audio(codec), 16_000).text


@pytest.fixture
def rig(
    line_env: dict[str, str],
    real_settings: Settings,
    lines: list[Line],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Rig:
    return Rig(line_env, real_settings, tmp_path, lines, request)


@pytest.mark.parametrize(
    ("codec", "transport"),
    [(PCMU, "u1"), (PCMA, "u1"), (PCMU, "t1")],
    ids=["ulaw-udp", "alaw-udp", "ulaw-tcp"],
)
def test_a_call_is_answered_with_the_disclosure_first_then_transcribed_and_replied(
    rig: Rig, codec: int, transport: str
) -> None:
    line = rig.start()
    stream = rig.spoken(QUESTION, codec)
    result, capture = rig.sipp(
        line, "uac_call.xml", codec=codec, stream=stream, transport=transport
    )
    assert result.returncode == 0, result.stdout[-3000:]
    heard = rig.heard(capture, codec)
    assert heard.lower().startswith("this call is with an automated assistant"), heard
    channel, status, transcripts, consents = rig.last_call()
    assert (channel, status) == ("sip", "ended")
    assert transcripts and wer(QUESTION, transcripts[0] or "") <= 0.25, transcripts
    assert len(heard.split()) > len(DISCLOSURE.split()) + 1, heard  # the reply came after it
    assert [(c.decision, c.method) for c in consents] == [("not_required", "configuration")]


def test_consent_by_dtmf_and_without_consent_only_a_minimal_record_and_our_bye(rig: Rig) -> None:
    line = rig.start(consent_required="true", consent_timeout_s="4")
    result, _ = rig.sipp(
        line, "uac_call.xml", stream=rig.spoken(QUESTION, digits="1"), wait_ms=3500,
        talk_ms=20000,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    _, _, transcripts, consents = rig.last_call()
    assert [(c.decision, c.method) for c in consents] == [("granted", "dtmf")]
    assert transcripts and "1" not in (transcripts[0] or "")  # a key press is no transcript
    # Refused: the caller hears the alternative, the appliance hangs up (its BYE), and only
    # the minimal record stays.
    result, capture = rig.sipp(
        line, "uac_wait_bye.xml", stream=rig.spoken("", digits="2"), wait_ms=3500,
        talk_ms=30000,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    _, status, transcripts, consents = rig.last_call()
    assert status == "ended:no_consent" and transcripts == []
    assert [(c.decision, c.method) for c in consents] == [("refused", "dtmf")]
    heard = rig.heard(capture).lower()
    assert "nothing from this call will be kept" in heard, heard


def test_a_california_caller_on_a_one_party_line_is_asked_and_a_refusal_keeps_the_minimum(
    rig: Rig,
) -> None:
    """The line is US one-party; the From is a San Francisco number, so the call is under the
    all-party script: its disclosure, then its consent question (Whisper hears both); the
    caller presses 2 and only the call row and the refused consent, with the script's
    version, are kept: no turns, no recordings."""
    from sqlalchemy import func, select

    from appliance.config.consent import LineScripts
    from appliance.storage.schema import Recording

    line = rig.start(jurisdiction="us-one-party", consent_timeout_s="10")
    script = LineScripts.load(rig.settings).suggested["us-all-party"]
    stream = Stream(codec=PCMU)
    stream.silence(0.5)
    for _ in range(10):  # 2 every 2.5 s: one lands once the question is asked (the disclosure
        stream.digit("2")  # takes about 9 s here, and a key pressed before the question is
        stream.silence(2.4)  # not its answer)
    stream.silence(10.0)
    result, capture = rig.sipp(
        line, "uac_wait_bye.xml", stream=stream, wait_ms=1000, talk_ms=60000,
        caller="+14155550142",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    heard = rig.heard(capture).lower()
    assert "speaking with an automated assistant" in heard, heard
    assert "agree to this call being recorded" in heard, heard
    assert "nothing from this call will be kept" in heard, heard
    _, status, transcripts, consents = rig.last_call()
    assert status == "ended:no_consent" and transcripts == []
    version = f"us-all-party/{script.version}"
    assert [(c.decision, c.method, c.disclosure_version) for c in consents] == [
        ("refused", "dtmf", version)
    ]
    store = open_storage(rig.settings)
    try:
        with store.session("recordings") as db:
            assert db.scalar(select(func.count()).select_from(Recording)) == 0
    finally:
        store.close()


def test_keypad_digits_over_sip_arrive_in_order_and_step_a_caller_up_to_a_tool(rig: Rig) -> None:
    """The caller asks for their balance, then keys the PIN and the authenticator code as
    RFC 4733 events: only digits that arrive whole and in order pass both factors, and the
    level-2 tool runs (its outcome is in the call's tool_calls)."""
    from sqlalchemy import select

    from appliance.identity.factors import totp
    from appliance.storage.schema import ToolCall
    from appliance.tools.demo import DemoBank

    caller = "+15550100"  # demo data: PIN 4921 and a TOTP secret
    line = rig.start({**rig.env, "APPLIANCE_TOOLS__ENABLED": "account_balance"})
    secret = DemoBank().totp_secret(caller)
    assert secret is not None
    code = totp(secret, int(time.time() // 30))  # good for this step and the next
    stream = rig.spoken("What is my account balance?", tail_s=8.0)
    for keys, pause in (("4921#", 6.0), (f"{code}#", 15.0)):  # still sending at our BYE
        for key in keys:
            stream.digit(key)
            stream.silence(0.2)
        stream.silence(pause)
    result, _ = rig.sipp(line, "uac_call.xml", stream=stream, talk_ms=30_000, caller=caller)
    assert result.returncode == 0, result.stdout[-3000:]
    channel, status, transcripts, _ = rig.last_call()
    assert (channel, status) == ("sip", "ended")
    store = open_storage(rig.settings)
    try:
        with store.session("tool calls") as db:
            outcomes = [(t.tool, t.outcome) for t in db.scalars(select(ToolCall))]
    finally:
        store.close()
    assert ("account_balance", "ok") in outcomes, (outcomes, transcripts)
    assert code not in " ".join(t or "" for t in transcripts)  # keys are never transcribed


def test_cancel_while_ringing_gets_487(rig: Rig) -> None:
    line = rig.start(ring_ms="3000")
    result, capture = rig.sipp(line, "uac_cancel.xml")
    assert result.returncode == 0, result.stdout[-3000:]
    assert capture.packets == []  # never answered: no media


def test_a_caller_from_an_address_that_is_not_allowed_gets_403(rig: Rig) -> None:
    line = rig.start(allowed_peers="10.0.0.0/8")
    result, _ = rig.sipp(line, "uac_forbidden.xml")
    assert result.returncode == 0, result.stdout[-3000:]


def test_a_peer_outside_the_allowlist_is_challenged_and_taken_only_with_right_credentials(
    rig: Rig,
) -> None:
    accounts = rig.folder / "sip-accounts"
    accounts.write_text(f"trunk1:appliance:{ha1('trunk1', 'appliance', 'pa55-w0rd')}\n")
    accounts.chmod(0o600)
    line = rig.start(allowed_peers="10.0.0.0/8", accounts_file=str(accounts))
    before = call_count(rig.settings)
    # SIPp answers the 401 with MD5 qop=auth digest credentials; the call is set up and ended.
    result, _ = rig.sipp(
        line, "uac_auth.xml", wait_ms=5000, extra=("-au", "trunk1", "-ap", "pa55-w0rd")
    )  # past the disclosure, so the call is recorded
    assert result.returncode == 0, result.stdout[-3000:]
    assert call_count(rig.settings, at_least=before + 1) == before + 1
    # A wrong password: 401, then 403, and no call.
    result, _ = rig.sipp(line, "uac_auth_refused.xml", extra=("-au", "trunk1", "-ap", "guess"))
    assert result.returncode == 0, result.stdout[-3000:]
    # No credentials at all: challenged (401), not answered.
    result, _ = rig.sipp(line, "uac_forbidden.xml", refusal=401)
    assert result.returncode == 0, result.stdout[-3000:]
    assert call_count(rig.settings) == before + 1


def test_bench_calls_reports_latency_gaps_cpu_and_memory_per_round(
    real_home: Path, real_settings: Settings, line_env: dict[str, str]
) -> None:
    result = subprocess.run(
        [str(APPLIANCE), "bench", "calls", "--calls", "1", "--json"],
        env=line_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (round_,) = report["rounds"]
    assert report["targets"] == []  # judged on rounds of 4 calls only
    assert round_["stt_model"] == real_settings.stt.model
    assert round_["calls"] == 1 and round_["failed"] == 0 and round_["failures"] == []
    assert round_["voice_to_voice"]["n"] == 1 and round_["voice_to_voice"]["median_ms"] > 0
    assert round_["rss_mib"] > 0 and round_["rtp_gaps"] >= 0


def test_a_sipp_flood_is_shed_while_a_call_from_elsewhere_still_completes(rig: Rig) -> None:
    line = rig.start()
    flood_dir = rig.folder / "flood"
    flood_dir.mkdir()
    xml = flood_dir / "flood.xml"
    xml.write_text(
        (SCENARIOS / "uac_flood.xml").read_text().replace("@CODEC@", "0")
        .replace("@CAPTURE_PORT@", "9")
    )  # fmt: skip
    flood = subprocess.Popen(
        ["sipp", f"127.0.0.1:{line.port}", "-sf", str(xml), "-i", "127.0.0.1",
         "-p", str(free_port()), "-r", "200", "-rp", "1000", "-m", "2000", "-l", "2000",
         "-timeout", "30s", "-nostdin", "-recv_timeout", "5000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=flood_dir,
    )  # fmt: skip
    try:
        time.sleep(2.0)  # the flood is on
        result, _ = rig.sipp(line, "uac_call.xml", stream=rig.spoken(QUESTION), source="127.0.0.2")
    finally:
        screen, _ = flood.communicate(timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    _, status, transcripts, _ = rig.last_call()
    assert status == "ended" and transcripts and wer(QUESTION, transcripts[0] or "") <= 0.25
    shed = re.search(r"503 <-+\s+(\d+)", screen)
    assert shed is not None and int(shed.group(1)) >= 1500, screen[-3000:]  # shed, not served


def test_a_caller_who_asks_for_a_person_gets_a_refer_to_the_destination_then_our_bye(
    rig: Rig,
) -> None:
    """SIPp's phone acts on the REFER (202, NOTIFY sipfrag 100 then 200); the appliance then
    leaves the call with its BYE, and the call record says it was transferred."""
    desk = "sip:desk@192.0.2.10"
    line = rig.start({**rig.env, "APPLIANCE_TRANSFER__DESTINATIONS": desk})
    # Two ways of asking in one turn: a word Whisper drops from one still leaves the other
    ask = "I would like to speak to a person, please. Put me through."
    result, _ = rig.sipp(
        line, "uac_transfer.xml", stream=rig.spoken(ask, tail_s=30.0), talk_ms=60000,
        extra=("-trace_msg", "-message_file", str(rig.folder / "messages.log")),
    )  # fmt: skip
    assert result.returncode == 0, (rig.last_call(), result.stdout[-3000:])
    trace = (rig.folder / "messages.log").read_text(errors="replace")
    refer = trace[trace.index("REFER sip:") :]
    assert re.search(rf"(?im)^Refer-To: <{re.escape(desk)}>", refer), refer[:800]
    assert re.search(r"(?im)^Referred-By: <sip:appliance@", refer)
    channel, status, _, _ = rig.last_call()
    assert (channel, status) == ("sip", "ended:transferred")


def _has_tone(pcm16k: bytes, freq_hz: float) -> bool:
    """Whether some 200 ms of ``pcm16k`` is mostly a tone at ``freq_hz`` (a marker, not speech)."""
    samples = np.frombuffer(pcm16k, dtype="<i2").astype(np.float64)
    window = 3200
    bins = np.fft.rfftfreq(window, 1 / 16_000)
    near = np.abs(bins - freq_hz) <= 40
    for start in range(0, len(samples) - window, window // 2):
        power = np.abs(np.fft.rfft(samples[start : start + window])) ** 2
        if power.sum() > 1e9 and power[near].sum() / power.sum() > 0.8:
            return True
    return False


def _markers(stream: Stream, freq_hz: float, count: int) -> None:
    """``count`` 1.5 s marker tones 5 s apart: one lands after the bridge is up however long
    the announcement, the hold and the briefing took on this machine."""
    for _ in range(count):
        stream.audio(tone(1.5, 8_000, freq_hz))
        stream.silence(3.5)


def _caller_pressing_zero(markers: int = 0) -> Stream:
    """The caller waits out the disclosure (about 4 s of audio; a key pressed while it plays is
    not the agent's yet) with room to spare, presses 0 for a person, then marker tones."""
    stream = Stream(codec=PCMU)
    stream.silence(12.0)
    stream.digit("0")
    stream.silence(0.3)
    stream.digit("#")
    stream.silence(12.0)
    _markers(stream, 1200.0, markers)
    stream.silence(30.0)
    return stream


def _person(rig: Rig, scenario: str, capture: Capture) -> tuple[subprocess.Popen[str], int]:
    """SIPp as the person the appliance calls (``scenario``: a UAS whose SDP names the test's
    ``capture`` socket), on a free port."""
    port = free_port()
    text = (SCENARIOS / scenario).read_text()
    for key, value in {"@CODEC@": str(PCMU), "@CAPTURE_PORT@": str(capture.port),
                       "@TALK_MS@": "90000"}.items():  # fmt: skip
        text = text.replace(key, value)
    (rig.folder / scenario).write_text(text)
    process = subprocess.Popen(
        ["sipp", "-sf", str(rig.folder / scenario), "-m", "1", "-i", "127.0.0.1",
         "-p", str(port), "-mp", str(free_media_port()), "-timeout", "120s", "-nostdin",
         "-t", "u1", "-trace_err", "-error_file", str(rig.folder / "person_errors.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=rig.folder,
    )  # fmt: skip
    return process, port


def _warm_line(rig: Rig, port: int, **transfer: str) -> Line:
    extra = {f"APPLIANCE_TRANSFER__{k.upper()}": v for k, v in transfer.items()}
    return rig.start(
        {**rig.env, "APPLIANCE_TRANSFER__MODE": "warm",
         "APPLIANCE_TRANSFER__DESTINATIONS": f"sip:person@127.0.0.1:{port}", **extra},
    )  # fmt: skip


def _ended(person: subprocess.Popen[str], capture: Capture) -> None:
    if person.poll() is None:
        person.kill()
        person.communicate(timeout=10)
    capture.stop()


@pytest.mark.slow
def test_a_warm_transfer_briefs_the_person_then_bridges_both_ways(rig: Rig) -> None:
    """SIPp as the caller, who presses 0 for a person, and a second SIPp as the person (a UAS
    whose media is the test's socket): the appliance calls the person, the caller hears the
    hold tone, the person hears the briefing (Whisper transcribes it), then each side's marker
    tone reaches the other through the appliance's bridge; the caller's BYE ends the person's
    leg with ours."""
    person_capture = Capture()
    person_side = Stream(codec=PCMU)  # from the briefing's first packet on: markers
    person_side.silence(10.0)
    _markers(person_side, 1800.0, 6)
    person_side.silence(30.0)
    person_capture.start(person_side.packets)
    person, port = _person(rig, "uas_person.xml", person_capture)
    try:
        line = _warm_line(rig, port)
        result, caller_capture = rig.sipp(
            line, "uac_call.xml", stream=_caller_pressing_zero(markers=5), wait_ms=1000,
            talk_ms=60000,
        )  # fmt: skip
        assert result.returncode == 0, (rig.last_call(), result.stdout[-3000:])
        out, _ = person.communicate(timeout=60)
        assert person.returncode == 0, out[-3000:]
    finally:
        _ended(person, person_capture)
    heard_by_person = person_capture.audio(PCMU)
    briefing = rig.service.engines.stt.transcribe(heard_by_person[: 16_000 * 2 * 14], 16_000).text
    assert "caller" in briefing.lower() and "verified" in briefing.lower(), briefing
    assert _has_tone(heard_by_person, 1200.0), "the caller's marker did not reach the person"
    heard_by_caller = caller_capture.audio(PCMU)
    assert _has_tone(heard_by_caller, 425.0), "the caller heard no hold tone"
    assert _has_tone(heard_by_caller, 1800.0), "the person's marker did not reach the caller"
    channel, status, _, _ = rig.last_call()
    assert (channel, status) == ("sip", "ended:transferred")


@pytest.mark.slow
def test_a_person_who_does_not_answer_gets_the_caller_the_callback_offer(rig: Rig) -> None:
    """The person's phone (SIPp) rings and never answers: past the ring timeout the appliance
    cancels (the phone answers 200 and 487, ACKed) and the caller hears that no one could be
    reached and the offer of a callback (Whisper transcribes it)."""
    person_capture = Capture()
    person, port = _person(rig, "uas_no_answer.xml", person_capture)
    try:
        line = _warm_line(rig, port, ring_timeout_s="4")
        result, caller_capture = rig.sipp(
            line, "uac_call.xml", stream=_caller_pressing_zero(), wait_ms=1000, talk_ms=45000
        )
        assert result.returncode == 0, (rig.last_call(), result.stdout[-3000:])
        out, _ = person.communicate(timeout=60)
        assert person.returncode == 0, out[-3000:]
    finally:
        _ended(person, person_capture)
    heard = rig.heard(caller_capture).lower()
    assert "call you back" in heard, heard
    channel, status, _, _ = rig.last_call()
    assert (channel, status) == ("sip", "ended")
