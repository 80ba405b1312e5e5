"""The language model on a GPU host, for real: llama.cpp's own OpenAI-compatible server
(``python -m llama_cpp.server``, llama-cpp-python's [server] extra) on 127.0.0.1 with TLS, a
certificate from a test CA pinned by the node, and an API key the node sends from its file. A
call through the service (fake speech recognition and synthesis; the real remote and the real
local model): the first turn is the remote's; the server is stopped with SIGTERM during the
call, and the next turn is the local model's."""

from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.config.manifest import model_spec
from appliance.config.settings import Settings
from appliance.core.errors import LlmError
from appliance.core.events import EventType
from appliance.core.ports import Transcript
from appliance.deploy.metrics import VoiceMetrics
from appliance.engines.llm import LlamaChat
from appliance.engines.remote_llm import Backend, FallbackChatModel
from appliance.service import remote_chat, remote_model
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage
from appliance.testing.fakes import ToneSynthesizer
from tests.integration.helpers import fake_service, samples, serve_utterances
from tests.pki import write_certificates

pytestmark = pytest.mark.real

QUESTION = "What are your opening hours?"
API_KEY = "sk-node-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StopsTheServer:
    """A transcriber that hears the question each turn and, once the remote has answered a
    reply, stops the server (SIGTERM, and waits for it to exit) before the next turn goes on."""

    def __init__(self, server: subprocess.Popen[bytes], model: FallbackChatModel) -> None:
        self.server, self.model = server, model

    def transcribe(self, pcm: bytes, sample_rate_hz: int) -> Transcript:
        if self.model.turns()[Backend.REMOTE] >= 1 and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            self.server.wait(timeout=60)
        return Transcript(QUESTION, len(pcm) / 2 / sample_rate_hz, 0.0)


def test_a_call_is_answered_by_the_remote_then_by_the_local_model_once_it_stops(
    real_settings: Settings, tmp_path: Path
) -> None:
    ca, cert, key = write_certificates(tmp_path / "pki")
    key_file = tmp_path / "remote.key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    port = free_port()
    gguf = model_spec(real_settings, "llm").path
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
         "--host", "127.0.0.1", "--port", str(port), "--ssl_keyfile", str(key),
         "--ssl_certfile", str(cert), "--n_ctx", "2048", "--n_threads", "1",
         "--model_alias", "default", "--verbose", "False", "--api_key", API_KEY],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        llm = dataclasses.replace(
            real_settings.llm,
            remote_url=f"https://127.0.0.1:{port}/v1",
            remote_ca_file=str(ca),
            remote_api_key_file=str(key_file),
            remote_retry_s=600.0,
            contexts=1,
            threads=1,
        )
        settings = dataclasses.replace(real_settings, home=tmp_path / "home", llm=llm)
        remote = remote_model(settings)
        assert remote is not None
        deadline = time.monotonic() + 180
        while True:  # the server is up once /v1/models answers over the pinned TLS
            assert server.poll() is None, "llama_cpp.server exited"
            try:
                assert "default" in remote.models()
                break
            except LlmError:
                assert time.monotonic() < deadline, "llama_cpp.server did not answer in 180 s"
                time.sleep(0.5)
        local = LlamaChat(
            model_spec(settings, "llm"), temperature=llm.temperature, threads=1, contexts=1
        )
        model = remote_chat(settings, local)
        assert isinstance(model, FallbackChatModel)
        store = Storage.open_sqlite(tmp_path / "a.db", load_or_create(tmp_path / "k"))
        try:
            service = fake_service(
                settings, StopsTheServer(server, model), model, ToneSynthesizer()
            )
            metrics = VoiceMetrics(settings, store)
            service.metrics, metrics.service = metrics, service
            outcome = serve_utterances(service, store, 2, "+15550100002")
            figures = samples(metrics.exposition().decode())
        finally:
            store.close()
        assert server.poll() is not None  # stopped during the call
        # Turn 1 drew tokens from the remote (a slow machine may let turn 2's speech barge in
        # on its audio, so its stored reply may be cut short); turn 2 is spoken whole.
        assert len(outcome.turns) == 2 and outcome.turns[1].reply
        assert any(e.type is EventType.FIRST_TOKEN for e in outcome.turns[0].events)
        assert not any(t.error_code for t in outcome.turns), [t.error_code for t in outcome.turns]
        assert figures[("appliance_llm_turns_total", (("backend", "remote"),))] >= 1
        assert figures[("appliance_llm_turns_total", (("backend", "local"),))] >= 1
        assert figures[("appliance_llm_remote_up", ())] == 0
        assert model.last_failure in {"llm.remote_refused", "llm.remote_unreachable"}
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=30)
