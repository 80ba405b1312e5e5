"""Speech recognition on a GPU host, the node's side: the Wyoming client over TLS with a pinned
CA, against a server that speaks the protocol with the reference ``wyoming`` library (the real
recognizer, wyoming-faster-whisper behind stunnel, is tests/real/test_remote_stt.py); the
fallback to the local model and back; the settings, the egress allowlist, doctor and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config.settings import Settings, load_settings
from appliance.core.errors import ConfigError
from appliance.deploy import doctor, egress
from appliance.deploy.metrics import VoiceMetrics
from appliance.engines.remote import Backend
from appliance.engines.remote_stt import FallbackTranscriber, RemoteSttError, WyomingTranscriber
from appliance.service import remote_recognizer, remote_stt
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage
from appliance.testing.fakes import FakeTranscriber, ScriptedChatModel, ToneSynthesizer
from tests.integration.helpers import fake_service, samples
from tests.pki import write_certificates

with warnings.catch_warnings():  # the library imports audioop (deprecated since Python 3.11)
    warnings.simplefilter("ignore", DeprecationWarning)
    from wyoming.asr import Transcript as WyomingTranscript
    from wyoming.event import Event, async_read_event, async_write_event
    from wyoming.info import AsrModel, AsrProgram, Attribution, Info

PCM = bytes(range(256)) * 200  # 51,200 bytes: seven chunks, the last one short


class Server:
    """A Wyoming server on 127.0.0.1 behind TLS (the reference library reads and writes the
    events): it answers each transcription with how many PCM bytes it heard at which rate, or,
    as ``answer`` says, closes without a transcript ("close"), never answers ("stall"), or
    sends a line that is not an event ("junk") or an event too large to take ("huge")."""

    def __init__(self, folder: Path) -> None:
        self.ca, cert, key = write_certificates(folder)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.received: list[list[Event]] = []
        self.answer = "transcript"
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start() -> None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, start: object) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start())  # type: ignore[operator]
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        events: list[Event] = []
        try:
            while (event := await async_read_event(reader)) is not None:
                events.append(event)
                if event.type == "describe":
                    attribution = Attribution("test", "https://example.invalid")
                    model = AsrModel("base-int8", attribution, True, None, None, ["en"])
                    program = AsrProgram(
                        "faster-whisper", attribution, True, None, "3.8.1", [model]
                    )
                    await async_write_event(Info(asr=[program]).event(), writer)
                    break
                if event.type == "audio-stop":
                    if self.answer == "transcript":
                        chunks = [e for e in events if e.type == "audio-chunk"]
                        heard = sum(len(c.payload or b"") for c in chunks)
                        said = f" heard {heard} bytes at {chunks[0].data['rate']} Hz "
                        await async_write_event(WyomingTranscript(said).event(), writer)
                    elif self.answer == "stall":
                        await asyncio.sleep(5)
                    elif self.answer == "junk":
                        writer.write(b"this is not an event\n")
                    elif self.answer == "huge":
                        writer.write(b'{"type": "transcript", "data_length": 16777216}\n')
                    await writer.drain()
                    break
        finally:
            self.received.append(events)
            writer.close()

    def close(self) -> None:
        if self.loop.is_closed():
            return

        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()
            self.loop.stop()

        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(stop()))
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path / "pki")
    yield running
    running.close()


def client(server: Server, ca: Path | None = None) -> WyomingTranscriber:
    return WyomingTranscriber("127.0.0.1", server.port, str(ca or server.ca), timeout_s=5)


def test_a_transcription_is_the_wyoming_event_sequence_over_tls(server: Server) -> None:
    transcript = client(server).transcribe(PCM, 16_000)
    assert transcript.text == f"heard {len(PCM)} bytes at 16000 Hz"  # stripped
    assert transcript.audio_duration_s == pytest.approx(len(PCM) / 2 / 16_000)
    (events,) = server.received
    kinds = [e.type for e in events]
    assert kinds == ["transcribe", "audio-start", *["audio-chunk"] * 7, "audio-stop"]
    assert events[0].data == {"language": "en"}
    assert events[1].data == {"rate": 16_000, "width": 2, "channels": 1}
    assert b"".join(e.payload or b"" for e in events[2:-1]) == PCM
    assert client(server).models() == ["base-int8"]


def test_each_failure_is_a_code_that_names_the_server_never_the_audio(
    server: Server, tmp_path: Path
) -> None:
    other_ca, _, _ = write_certificates(tmp_path / "other")
    with pytest.raises(RemoteSttError) as wrong:
        client(server, other_ca).transcribe(PCM, 16_000)
    assert wrong.value.code == "stt.remote_certificate"
    for answer, code in (
        ("close", "stt.remote_lost"),
        ("junk", "stt.remote_protocol"),
        ("huge", "stt.remote_protocol"),
        ("stall", "stt.remote_timeout"),
    ):
        server.answer = answer
        quick = WyomingTranscriber("127.0.0.1", server.port, str(server.ca), timeout_s=1)
        with pytest.raises(RemoteSttError) as failed:
            quick.transcribe(PCM, 16_000)
        assert failed.value.code == code, (answer, failed.value)
        # What the caller said is in no error: only the server and what went wrong.
        assert f"127.0.0.1:{server.port}" in failed.value.message
        assert "heard" not in failed.value.message and PCM[:16].hex() not in str(failed.value)
    server.answer = "transcript"
    server.close()
    with pytest.raises(RemoteSttError) as refused:
        client(server).transcribe(PCM, 16_000)
    assert refused.value.code == "stt.remote_refused"
    assert f"127.0.0.1:{server.port}" in refused.value.message
    missing = tmp_path / "missing.pem"
    with pytest.raises(RemoteSttError) as no_ca:
        client(server, missing)
    assert no_ca.value.code == "stt.remote_ca"


def test_the_local_model_recognizes_while_the_remote_is_down_until_retry_s(
    server: Server,
) -> None:
    now = [0.0]
    local = FakeTranscriber(["the local model heard it"])
    local.hint = ""  # type: ignore[attr-defined]
    fallback = FallbackTranscriber(client(server), local, retry_s=30, clock=lambda: now[0])  # type: ignore[arg-type]
    assert fallback.transcribe(PCM, 16_000).text.startswith("heard")
    server.answer = "close"
    assert fallback.transcribe(PCM, 16_000).text == "the local model heard it"
    assert not fallback.remote_up and fallback.last_failure == "stt.remote_lost"
    asked = len(server.received)
    assert fallback.transcribe(PCM, 16_000).text == "the local model heard it"
    assert len(server.received) == asked  # still marked down: not asked
    server.answer = "transcript"
    now[0] = 31.0
    assert fallback.transcribe(PCM, 16_000).text.startswith("heard")  # retried, answers again
    assert fallback.remote_up and fallback.turns() == {Backend.REMOTE: 2, Backend.LOCAL: 2}
    fallback.hint = "Example Co"
    assert local.hint == "Example Co"  # type: ignore[attr-defined]


def remote_settings(settings: Settings, server: Server, **changes: object) -> Settings:
    stt = dataclasses.replace(
        settings.stt,
        remote_address=f"127.0.0.1:{server.port}",
        remote_ca_file=str(server.ca),
        **changes,  # type: ignore[arg-type]
    )
    return dataclasses.replace(settings, stt=stt)


def test_doctor_egress_and_metrics_know_the_remote(
    server: Server, settings: Settings, tmp_path: Path
) -> None:
    remote = remote_settings(settings, server)
    check = doctor.remote_stt(remote)
    assert check.status == "PASS" and "base-int8" in check.detail, check
    assert doctor.remote_stt(settings).status == "SKIP"
    assert "127.0.0.1" in egress.allowlist(remote)
    assert "10.0.0.7" in egress.allowlist(
        load_settings(
            environ={
                "APPLIANCE_STT__REMOTE_ADDRESS": "10.0.0.7:10300",
                "APPLIANCE_STT__REMOTE_CA_FILE": str(server.ca),
            }
        )
    )
    recognizer = remote_stt(remote, FakeTranscriber(["local"]))  # type: ignore[arg-type]
    assert isinstance(recognizer, FallbackTranscriber)
    assert remote_recognizer(settings) is None
    service = fake_service(remote, recognizer, ScriptedChatModel(["Hello."]), ToneSynthesizer())
    store = Storage.open_sqlite(tmp_path / "a.db", load_or_create(tmp_path / "k"))
    try:
        metrics = VoiceMetrics(remote, store)
        service.metrics, metrics.service = metrics, service
        recognizer.transcribe(PCM, 16_000)
        server.close()
        recognizer.transcribe(PCM, 16_000)
        down = doctor.remote_stt(remote)
        figures = samples(metrics.exposition().decode())
    finally:
        store.close()
    assert down.status == "FAIL" and "stt.remote_refused" in down.detail
    assert "local model" in down.detail
    assert figures[("appliance_stt_turns_total", (("backend", "remote"),))] == 1
    assert figures[("appliance_stt_turns_total", (("backend", "local"),))] == 1
    assert figures[("appliance_stt_remote_up", ())] == 0


@pytest.mark.parametrize(
    ("address", "ca", "wrong"),
    [
        ("asr.example.com:10300", "ca.pem", "an address, not a name"),
        ("10.0.0.7", "ca.pem", "an address, not a name"),
        ("10.0.0.7:0", "ca.pem", "port 1-65535"),
        ("fd00::7:10300", "ca.pem", "an address, not a name"),  # brackets, or it is ambiguous
        ("10.0.0.7:10300", "", "stt.remote_ca_file"),
    ],
)
def test_a_wrong_remote_address_is_refused_with_the_key(address: str, ca: str, wrong: str) -> None:
    environ = {"APPLIANCE_STT__REMOTE_ADDRESS": address, "APPLIANCE_STT__REMOTE_CA_FILE": ca}
    with pytest.raises(ConfigError, match=wrong):
        load_settings(environ=environ)


def test_an_ipv6_remote_address_is_taken_in_brackets() -> None:
    settings = load_settings(
        environ={
            "APPLIANCE_STT__REMOTE_ADDRESS": "[fd00::7]:10300",
            "APPLIANCE_STT__REMOTE_CA_FILE": "ca.pem",
        }
    )
    assert (settings.stt.remote_host, settings.stt.remote_port) == ("fd00::7", 10300)
