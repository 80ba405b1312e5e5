"""Speech recognition on a GPU host, for real: Home Assistant's Wyoming server
(``wyoming-faster-whisper``) with the node's own Whisper model on 127.0.0.1, behind Debian's
stunnel4 with a certificate from a test CA the node pins. A call through the service (the real
remote and the real local Whisper; a scripted model and tone synthesis): the first utterance is
the remote's; the server is stopped during the call, and the next is the local model's."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.audio_io.memory import MemorySink, MemorySource
from appliance.config.manifest import model_spec
from appliance.config.settings import Settings
from appliance.core.errors import SttError
from appliance.core.ports import Transcript
from appliance.engines.remote import Backend
from appliance.engines.remote_stt import FallbackTranscriber
from appliance.engines.stt import WhisperTranscriber
from appliance.service import load_synthesizer, remote_stt, run_call
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage
from appliance.testing.fakes import ScriptedChatModel, ToneSynthesizer, quiet
from tests.integration.helpers import fake_service
from tests.pki import write_certificates

pytestmark = pytest.mark.real

QUESTION = "What time do you open on Saturday?"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StopsTheServer:
    """The recognizer of the call, as the pipeline drives one that offloads (the remote's try
    beside the recognition thread, the local model on it): once the remote has recognized an
    utterance, the Wyoming server is stopped (SIGTERM, and waited for) before the next one."""

    def __init__(self, server: subprocess.Popen[bytes], recognizer: FallbackTranscriber) -> None:
        self.server, self.recognizer = server, recognizer
        self.hint = ""
        self.heard: list[str] = []

    def transcribe(self, pcm: bytes, sample_rate_hz: int) -> Transcript:
        raise AssertionError("the pipeline should offload the remote's try")

    def transcribe_remote(self, pcm: bytes, sample_rate_hz: int) -> Transcript | None:
        if self.recognizer.turns()[Backend.REMOTE] >= 1 and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            self.server.wait(timeout=60)
        return self._heard(self.recognizer.transcribe_remote(pcm, sample_rate_hz))

    def transcribe_local(self, pcm: bytes, sample_rate_hz: int) -> Transcript:
        transcript = self._heard(self.recognizer.transcribe_local(pcm, sample_rate_hz))
        assert transcript is not None
        return transcript

    def _heard(self, transcript: Transcript | None) -> Transcript | None:
        if transcript is not None:
            self.heard.append(transcript.text)
        return transcript


def test_a_call_is_recognized_by_the_remote_then_by_the_local_model_once_it_stops(
    real_settings: Settings, tmp_path: Path
) -> None:
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel is None:
        pytest.fail("stunnel4 is missing: scripts/setup installs Debian's stunnel4")
    ca, cert, key = write_certificates(tmp_path / "pki")
    inner, outer = free_port(), free_port()
    model = model_spec(real_settings, "stt").path
    server = subprocess.Popen(
        [sys.executable, "-m", "wyoming_faster_whisper", "--uri", f"tcp://127.0.0.1:{inner}",
         "--model", str(model), "--data-dir", str(tmp_path / "wyoming"), "--language", "en",
         "--beam-size", "1", "--compute-type", "int8", "--cpu-threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    config = tmp_path / "stunnel.conf"
    config.write_text(
        f"foreground = yes\npid =\n[wyoming]\naccept = 127.0.0.1:{outer}\n"
        f"connect = 127.0.0.1:{inner}\ncert = {cert}\nkey = {key}\nsslVersionMin = TLSv1.2\n"
    )
    terminator = subprocess.Popen(
        [stunnel, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        stt = dataclasses.replace(
            real_settings.stt,
            remote_address=f"127.0.0.1:{outer}",
            remote_ca_file=str(ca),
            remote_retry_s=600.0,
        )
        settings = dataclasses.replace(real_settings, home=tmp_path / "home", stt=stt)
        local = WhisperTranscriber(model_spec(settings, "stt"), threads=1)
        recognizer = remote_stt(settings, local)
        assert isinstance(recognizer, FallbackTranscriber)
        deadline = time.monotonic() + 120
        while True:  # up once the server describes itself through the pinned TLS
            assert server.poll() is None and terminator.poll() is None, "a peer exited"
            try:
                assert recognizer.remote.models()
                break
            except SttError:
                assert time.monotonic() < deadline, "the Wyoming server did not answer in 120 s"
                time.sleep(0.5)
        speech = b"".join(c.pcm for c in load_synthesizer(settings).synthesize(QUESTION, 16_000))
        pcm = (quiet(0.3) + speech + quiet(3.0)) * 2
        store = Storage.open_sqlite(tmp_path / "a.db", load_or_create(tmp_path / "k"))
        heard = StopsTheServer(server, recognizer)
        try:
            service = fake_service(
                settings, heard, ScriptedChatModel(["We open at ten."]), ToneSynthesizer()
            )
            call = run_call(
                service, store, MemorySource(pcm), MemorySink(16_000), caller_id="+15550100003"
            )
            outcome = asyncio.run(asyncio.wait_for(call, timeout=120))
        finally:
            store.close()
        assert server.poll() is not None  # stopped during the call
        assert len(heard.heard) == 2 and all("saturday" in t.lower() for t in heard.heard), heard
        assert len(outcome.turns) == 2 and not any(t.error_code for t in outcome.turns)
        assert recognizer.turns() == {Backend.REMOTE: 1, Backend.LOCAL: 1}
        assert not recognizer.remote_up  # (its metrics: tests/integration/test_remote_stt.py)
        assert recognizer.last_failure.startswith("stt.remote_"), recognizer.last_failure
    finally:
        for process in (terminator, server):
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
