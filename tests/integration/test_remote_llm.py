"""The language model on a GPU host ([llm] remote_url): a fake OpenAI-compatible server over
TLS (http.server + ssl, streamed server-sent events) with a certificate for 127.0.0.1 from a
test CA. Tokens stream; a wrong CA, a refused connection, a timeout and a 5xx fall back to the
local model, which answers until remote_retry_s has passed (an injected clock); a failure in
the middle of a reply ends it with llm.remote_lost; the API key is sent and never logged;
doctor and the metrics say which model answers; the guards run on the remote's replies."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from appliance.config.settings import Settings, load_settings
from appliance.core.errors import ConfigError, LlmError
from appliance.core.ports import ChatMessage
from appliance.deploy import doctor, egress
from appliance.deploy.metrics import VoiceMetrics
from appliance.engines.remote_llm import Backend, FallbackChatModel, RemoteChatModel, Sampling
from appliance.service import remote_model
from appliance.storage.repository import Storage
from appliance.testing.fakes import FakeTranscriber, ToneSynthesizer
from tests.integration.helpers import NoToolModel, fake_service, samples, serve_utterances
from tests.pki import make_ca, write_certificates

pytestmark = pytest.mark.fakes

PIECES = ["Our branch ", "opens at ", "nine on weekdays."]
LOCAL_REPLY = "The local model says hello."
API_KEY = "sk-remote-secret-4242"
ASKED = "When does the zebra pavilion open"


class FakeOpenAI(ThreadingHTTPServer):
    """``/v1/models`` and ``/v1/chat/completions`` (streamed) over TLS; ``mode``: "ok", "503",
    "cut" (two pieces, then the connection closes) or "hang" (never answers)."""

    daemon_threads = True

    def __init__(self, cert: Path, key: Path, pieces: list[str] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.mode = "ok"
        self.pieces = pieces or PIECES
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.release = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that refused the certificate, or left: nothing to report


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _note(self, body: Any) -> None:
        self.server.requests.append((self.path, dict(self.headers.items()), body))

    def do_GET(self) -> None:
        self._note(None)
        payload = json.dumps({"object": "list", "data": [{"id": "default"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self._note(json.loads(self.rfile.read(length)))
        mode = self.server.mode
        if mode == "hang":
            self.server.release.wait(timeout=30)
            return
        if mode == "503":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        pieces = self.server.pieces[:2] if mode == "cut" else self.server.pieces
        for piece in pieces:
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        if mode != "cut":
            self.wfile.write(b"data: [DONE]\n\n")


@dataclasses.dataclass
class Remote:
    server: FakeOpenAI
    ca: Path
    folder: Path


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    ca, cert, key = write_certificates(tmp_path / "pki")
    server = FakeOpenAI(cert, key)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Remote(server, ca, tmp_path)
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LocalModel(NoToolModel):
    """The node's own model: scripted, with its contexts."""

    contexts = 2


def client(port: int, ca: Path, **options: Any) -> RemoteChatModel:
    return RemoteChatModel("127.0.0.1", port, "/v1", str(ca), model="default", **options)


def fallback(remote: RemoteChatModel, clock: Clock, retry_s: float = 30.0) -> FallbackChatModel:
    return FallbackChatModel(remote, LocalModel([LOCAL_REPLY]), retry_s=retry_s, clock=clock)


def reply(model: FallbackChatModel | RemoteChatModel) -> str:
    return "".join(model.stream_chat([ChatMessage("user", ASKED)], 32))


def closed_port() -> int:
    """A port bound and not listening: a connection to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def remote_settings(home: Path, url: str, ca: Path | str, **llm: Any) -> Settings:
    settings = load_settings(environ={"APPLIANCE_HOME": str(home)})
    options = dataclasses.replace(settings.llm, remote_url=url, remote_ca_file=str(ca), **llm)
    return dataclasses.replace(settings, llm=options)


def test_tokens_stream_with_the_local_sampling_settings(remote: Remote) -> None:
    model = client(remote.server.port, remote.ca, sampling=Sampling(0.4, 1.2, 11))
    pieces = list(model.stream_chat([ChatMessage("user", ASKED)], 40))
    assert pieces == PIECES
    path, headers, body = remote.server.requests[-1]
    assert path == "/v1/chat/completions"
    assert headers["Content-Type"] == "application/json" and "Authorization" not in headers
    assert body["stream"] is True and body["model"] == "default" and body["max_tokens"] == 40
    assert (body["temperature"], body["repeat_penalty"], body["seed"]) == (0.4, 1.2, 11)
    assert body["messages"] == [{"role": "user", "content": ASKED}]


def test_a_wrong_ca_is_refused_the_local_model_answers_and_doctor_names_it(
    remote: Remote,
) -> None:
    other_ca = make_ca("another ca").pem(remote.folder / "other-ca.pem")
    clock = Clock()
    model = fallback(client(remote.server.port, other_ca), clock)
    assert reply(model) == LOCAL_REPLY
    assert not model.remote_up and model.last_failure == "llm.remote_certificate"
    assert model.turns() == {Backend.REMOTE: 0, Backend.LOCAL: 1}
    assert remote.server.requests == []  # nothing was sent to a server not verified
    url = f"https://127.0.0.1:{remote.server.port}/v1"
    check = doctor.remote_llm(remote_settings(remote.folder / "h1", url, other_ca))
    assert check.status == "FAIL" and "certificate" in check.detail
    assert "local model" in check.detail


def test_the_certificate_must_carry_the_address(remote: Remote, tmp_path: Path) -> None:
    """Pinned CA, but a certificate for another address: refused (the hostname check)."""
    ca = make_ca("pinned")
    cert, key = ca.issue(tmp_path, "elsewhere", ip="127.0.0.2")
    elsewhere = FakeOpenAI(cert, key)
    thread = threading.Thread(target=elsewhere.serve_forever, daemon=True)
    thread.start()
    try:
        model = fallback(client(elsewhere.port, ca.pem(tmp_path / "pinned.pem")), Clock())
        assert reply(model) == LOCAL_REPLY and model.last_failure == "llm.remote_certificate"
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()
        thread.join(timeout=10)


def test_doctor_skips_without_a_remote_and_passes_when_it_answers(
    remote: Remote, tmp_path: Path
) -> None:
    plain = load_settings(environ={"APPLIANCE_HOME": str(tmp_path / "h0")})
    assert doctor.remote_llm(plain).status == "SKIP"
    url = f"https://127.0.0.1:{remote.server.port}/v1"
    check = doctor.remote_llm(remote_settings(tmp_path / "h1", url, remote.ca))
    assert check.status == "PASS" and url in check.detail, check
    assert remote.server.requests[-1][0] == "/v1/models"
    refused = f"https://127.0.0.1:{closed_port()}/v1"
    down = doctor.remote_llm(remote_settings(tmp_path / "h2", refused, remote.ca))
    assert down.status == "FAIL" and "refused" in down.detail


def test_server_down_the_local_model_answers_until_retry_s_has_passed(
    remote: Remote, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.engines.remote_llm")
    clock = Clock()
    refused = fallback(client(closed_port(), remote.ca), clock)
    assert reply(refused) == LOCAL_REPLY
    assert not refused.remote_up and refused.last_failure == "llm.remote_refused"

    model = fallback(client(remote.server.port, remote.ca), clock, retry_s=30)
    remote.server.mode = "503"
    assert reply(model) == LOCAL_REPLY and model.last_failure == "llm.remote_status"
    assert len(remote.server.requests) == 1
    remote.server.mode = "ok"
    clock.now += 29.0
    assert reply(model) == LOCAL_REPLY  # still marked down: the remote is not asked
    assert len(remote.server.requests) == 1 and not model.remote_up
    clock.now += 1.0
    assert reply(model) == "".join(PIECES)  # retried after remote_retry_s
    assert model.remote_up and len(remote.server.requests) == 2
    assert model.turns() == {Backend.REMOTE: 1, Backend.LOCAL: 2}
    lines = [r.getMessage() for r in caplog.records if r.name == "appliance.engines.remote_llm"]
    assert len(lines) == 3  # one line per change of state, none for a retry not made
    assert "down (llm.remote_refused)" in lines[0] and "down (llm.remote_status)" in lines[1]
    assert lines[2] == f"remote LLM https://127.0.0.1:{remote.server.port}/v1 answers again"


def test_a_timeout_falls_back(remote: Remote) -> None:
    remote.server.mode = "hang"
    model = fallback(client(remote.server.port, remote.ca, timeout_s=0.5), Clock())
    assert reply(model) == LOCAL_REPLY and model.last_failure == "llm.remote_timeout"


def test_a_failure_mid_reply_ends_it_and_the_next_reply_is_local(remote: Remote) -> None:
    remote.server.mode = "cut"
    clock = Clock()
    model = fallback(client(remote.server.port, remote.ca), clock)
    got: list[str] = []
    with pytest.raises(LlmError) as failed:
        got.extend(model.stream_chat([ChatMessage("user", ASKED)], 32))
    assert failed.value.code == "llm.remote_lost"
    assert got == PIECES[:2]  # what was handed on is not started again by the local model
    assert not model.remote_up and model.last_failure == "llm.remote_lost"
    remote.server.mode = "ok"
    assert reply(model) == LOCAL_REPLY


def test_the_api_key_is_sent_as_bearer_and_never_logged(
    remote: Remote, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key_file = remote.folder / "remote.key"
    key_file.write_text(API_KEY + "\n")
    os.chmod(key_file, 0o600)
    url = f"https://127.0.0.1:{remote.server.port}/v1"
    settings = remote_settings(
        remote.folder / "h", url, remote.ca, remote_api_key_file=str(key_file)
    )
    built = remote_model(settings)
    assert built is not None
    assert reply(built) == "".join(PIECES)
    assert remote.server.requests[-1][1]["Authorization"] == f"Bearer {API_KEY}"
    os.chmod(key_file, 0o644)  # group and others may read it now: refused, the local answers
    model = fallback(built, Clock())
    assert reply(model) == LOCAL_REPLY and model.last_failure == "llm.remote_key"
    assert len(remote.server.requests) == 1
    assert API_KEY not in caplog.text and "zebra" not in caplog.text


def test_the_settings_want_an_address_and_it_joins_the_egress_allowlist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"llm\.remote_url.*address, not a name"):
        remote_settings(tmp_path, "https://gpu.example.org:8443/v1", tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match=r"llm\.remote_url"):
        remote_settings(tmp_path, "http://10.0.0.7:8443/v1", tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match=r"llm\.remote_ca_file"):
        remote_settings(tmp_path, "https://10.0.0.7:8443/v1", "")
    settings = remote_settings(tmp_path, "https://10.0.0.7:8443/v1", tmp_path / "ca.pem")
    assert (settings.llm.remote_host, settings.llm.remote_port) == ("10.0.0.7", 8443)
    assert settings.llm.remote_path == "/v1"
    assert "10.0.0.7" in egress.allowlist(settings)
    plain = load_settings(environ={"APPLIANCE_HOME": str(tmp_path)})
    assert "10.0.0.7" not in egress.allowlist(plain)


def test_a_call_through_the_remote_is_guarded_and_counted(remote: Remote, store: Storage) -> None:
    """The service's reply path on the remote's words: the output guard still runs on the
    node (a card number the remote says is not spoken), and the metrics count the backend."""
    remote.server.pieces = ["Your card is 4111 1111 1111 1111. ", "Anything else?"]
    url = f"https://127.0.0.1:{remote.server.port}/v1"
    settings = remote_settings(remote.folder / "home", url, remote.ca)
    built = remote_model(settings)
    assert built is not None
    clock = Clock()
    model = FallbackChatModel(built, LocalModel([LOCAL_REPLY]), retry_s=30, clock=clock)
    tts = ToneSynthesizer()
    service = fake_service(settings, FakeTranscriber([ASKED, ASKED]), model, tts)
    metrics = VoiceMetrics(settings, store)
    service.metrics, metrics.service = metrics, service
    first = serve_utterances(service, store, 1, "+15550100001")
    assert first.turns and remote.server.requests
    said = " ".join(tts.spoken)
    assert "4111" not in said and "4111" not in first.turns[0].reply
    figures = samples(metrics.exposition().decode())
    assert figures[("appliance_llm_remote_up", ())] == 1
    assert figures[("appliance_llm_turns_total", (("backend", "remote"),))] >= 1
    assert figures[("appliance_llm_turns_total", (("backend", "local"),))] == 0

    remote.server.mode = "503"
    second = serve_utterances(service, store, 1, "+15550100001")
    assert second.turns[0].reply == LOCAL_REPLY
    figures = samples(metrics.exposition().decode())
    assert figures[("appliance_llm_remote_up", ())] == 0
    assert figures[("appliance_llm_turns_total", (("backend", "local"),))] == 1


def test_tool_requests_stay_on_the_local_model_with_its_contexts(remote: Remote) -> None:
    model = fallback(client(remote.server.port, remote.ca), Clock())
    answer = model.request_json([ChatMessage("user", ASKED)], {"type": "object"})
    assert json.loads(answer) == {"tool": "none"}  # the local model's answer
    assert remote.server.requests == [] and model.turns()[Backend.LOCAL] == 0
    assert model.contexts == LocalModel.contexts
