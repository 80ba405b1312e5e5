"""Monitoring: the voice service's /metrics after a call on fake engines (calls, voice-to-voice
buckets, stage timings, guard verdicts, refusals; no caller number or words), its HTTPS
listener (the scrape token, /healthz), and the admin panel's /metrics and /healthz."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import os
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from appliance.admin.accounts import hash_password
from appliance.admin.app import create_app
from appliance.config.settings import Settings, load_settings
from appliance.core.errors import ConfigError, StorageError
from appliance.core.events import Stage
from appliance.core.ports import TurnRecord
from appliance.deploy.metrics import MetricsListener, VoiceMetrics
from appliance.deploy.scrape import ScrapeToken
from appliance.deploy.serve import _run
from appliance.pipeline.scheduling import Scheduler
from appliance.storage.repository import Storage
from appliance.telephony.ua import SipCall, SipUserAgent
from appliance.testing.fakes import FakeTranscriber, ScriptedChatModel, ToneSynthesizer
from tests.integration.helpers import fake_service, samples, serve_utterances

pytestmark = pytest.mark.fakes

TOKEN = "scrape-token-0123456789abcdef"
CALLER = "+15550123987"
WORDS = "Tell me about the zebra pavilion"
REPLY = "Happy to help with that."


def token_file(folder: Path, mode: int = 0o600, value: str = TOKEN) -> Path:
    path = folder / "scrape.token"
    path.write_text(value + "\n")
    os.chmod(path, mode)
    return path


def with_metrics(home: Path, listen: str = "") -> Settings:
    settings = load_settings(environ={"APPLIANCE_HOME": str(home)})
    service = dataclasses.replace(
        settings.service, metrics_listen=listen, metrics_token_file=str(token_file(home))
    )
    return dataclasses.replace(settings, service=service)


def test_a_call_shows_in_the_figures_without_its_caller_or_words(
    tmp_path: Path, store: Storage
) -> None:
    settings = with_metrics(tmp_path)
    service = fake_service(
        settings, FakeTranscriber([WORDS]), ScriptedChatModel([REPLY]), ToneSynthesizer()
    )
    metrics = VoiceMetrics(settings, store)
    service.metrics, metrics.service = metrics, service
    outcome = serve_utterances(service, store, 1, CALLER)
    assert outcome.call_id and outcome.turns
    v2v = [t.voice_to_voice_ms for t in outcome.turns if t.voice_to_voice_ms is not None]
    assert v2v  # the fake call answered with audio

    text = metrics.exposition().decode()
    seen = samples(text)
    assert seen[("appliance_calls_total", ())] == 1
    assert seen[("appliance_calls_in_progress", ())] == 0
    assert seen[("appliance_models_loaded", ())] == 1
    # The histogram: every bucket, the count of turns with a voice-to-voice time, their sum.
    assert seen[("appliance_voice_to_voice_seconds_count", ())] == len(v2v)
    assert seen[("appliance_voice_to_voice_seconds_sum", ())] == pytest.approx(sum(v2v) / 1000)
    assert seen[("appliance_voice_to_voice_seconds_bucket", (("le", "+Inf"),))] == len(v2v)
    assert ("appliance_voice_to_voice_seconds_bucket", (("le", "1.0"),)) in seen
    # Guard verdicts, by direction: one turn in, allowed; its reply said as drafted.
    assert seen[("appliance_guard_verdicts_total", (("direction", "input"), ("verdict", "allow")))]
    output = ("appliance_guard_verdicts_total", (("direction", "output"), ("verdict", "ok")))
    assert seen[output] == 1
    assert seen[("appliance_turns_total", (("route", "model"),))] == 1
    tts = ("appliance_stage_seconds_count", (("stage", Stage.TTS.value),))
    assert seen[tts] == 1
    refused = ("appliance_calls_refused_total", (("reason", "busy"),))
    assert seen[refused] == 0
    # No label or value carries the caller's number or their words (nor the reply's).
    for secret in (CALLER, CALLER[2:], "zebra", "pavilion", "Happy"):
        assert secret not in text


def test_a_refused_call_and_a_turn_not_stored_are_counted(tmp_path: Path, store: Storage) -> None:
    settings = with_metrics(tmp_path)
    settings = dataclasses.replace(
        settings, limits=dataclasses.replace(settings.limits, max_concurrent_calls=1)
    )
    service = fake_service(
        settings, FakeTranscriber([WORDS]), ScriptedChatModel([REPLY]), ToneSynthesizer()
    )
    metrics = VoiceMetrics(settings, store)
    service.metrics, metrics.service = metrics, service
    assert service.monitor is not None and service.monitor.calls.try_acquire()  # the one slot
    assert serve_utterances(service, store, 1, CALLER).refused == "limit.concurrent"

    class Broken:
        call_id = "c1"

        def record_turn(self, turn: TurnRecord) -> None:
            raise StorageError("storage.write", "disk full")

        def finish(self, status: str) -> None: ...

    recorder = metrics.recording(Broken())
    with pytest.raises(StorageError):
        recorder.record_turn(TurnRecord(1, "x", "y", voice_to_voice_ms=800.0))
    seen = samples(metrics.exposition().decode())
    assert seen[("appliance_calls_refused_total", (("reason", "busy"),))] == 1
    assert seen[("appliance_storage_errors_total", (("operation", "turn"),))] == 1
    assert seen[("appliance_voice_to_voice_seconds_count", ())] == 1  # the turn still happened


def test_incidents_are_counted_by_kind_with_unknown_kinds_as_other(
    tmp_path: Path, store: Storage
) -> None:
    metrics = VoiceMetrics(with_metrics(tmp_path), store)
    store.open_incident("flood", "high", "calls refused: limit.caller")
    store.open_incident("made up by a plugin", "low", "x")
    seen = samples(metrics.exposition().decode())
    assert seen[("appliance_incidents", (("kind", "flood"), ("state", "open")))] == 1
    assert seen[("appliance_incidents", (("kind", "other"), ("state", "open")))] == 1
    assert seen[("appliance_models_loaded", ())] == 0  # no service attached yet


@pytest.fixture
def listener(tmp_path: Path, store: Storage) -> Iterator[tuple[MetricsListener, VoiceMetrics]]:
    settings = with_metrics(tmp_path, "127.0.0.1:0")
    metrics = VoiceMetrics(settings, store)
    server = MetricsListener(settings, metrics)
    server.start()
    yield server, metrics
    server.stop()


def fetch(server: MetricsListener, home: Path, path: str, token: str = "") -> tuple[int, str]:
    """GET over HTTPS, the self-signed certificate under APPLIANCE_HOME/metrics as the CA."""
    context = ssl.create_default_context(cafile=str(home / "metrics" / "tls.crt"))
    host, _, port = server.address.rpartition(":")
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read().decode()
    finally:
        connection.close()


def test_the_listener_wants_the_token_for_metrics_and_none_for_healthz(
    listener: tuple[MetricsListener, VoiceMetrics], tmp_path: Path
) -> None:
    server, metrics = listener
    assert server.address.startswith("127.0.0.1:")  # bound to the configured address only
    assert fetch(server, tmp_path, "/metrics")[0] == 401
    assert fetch(server, tmp_path, "/metrics", "wrong-token-0123456789")[0] == 401
    status, text = fetch(server, tmp_path, "/metrics", TOKEN)
    assert status == 200 and "appliance_calls_in_progress 0.0" in text
    assert fetch(server, tmp_path, "/healthz") == (503, "unavailable\n")  # not ready yet
    metrics.serving = True
    metrics.settings = dataclasses.replace(
        metrics.settings, service=dataclasses.replace(metrics.settings.service, voice="none")
    )
    assert fetch(server, tmp_path, "/healthz") == (200, "ok\n")
    assert fetch(server, tmp_path, "/other", TOKEN)[0] == 404


def test_healthz_of_a_sip_service_needs_its_line_listening_and_taking_calls(
    tmp_path: Path, store: Storage
) -> None:
    settings = with_metrics(tmp_path)
    metrics = VoiceMetrics(settings, store)
    metrics.serving = True
    assert not metrics.healthy()  # no line yet
    ua = SipUserAgent(settings.sip, lambda call: None)  # type: ignore[arg-type,return-value]
    metrics.ua = ua
    assert not metrics.healthy()  # not listening
    ua.transport = object()  # type: ignore[assignment]
    assert metrics.healthy()
    ua.refuse_calls = "red-team gate no_report"
    assert not metrics.healthy()


@pytest.mark.parametrize(
    ("mode", "value", "said"),
    [(0o644, TOKEN, "chmod 600"), (0o600, "short", "16 characters"), (0o600, "", "16")],
)
def test_a_token_file_others_may_read_or_a_weak_token_stops_the_start(
    tmp_path: Path, mode: int, value: str, said: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        ScrapeToken.read(str(token_file(tmp_path, mode, value)))
    assert said in caught.value.message


@pytest.fixture
def panel(tmp_path: Path, store: Storage) -> FlaskClient:
    store.create_admin_user("root", hash_password("an admin passphrase, long"), "admin", "test")
    app = create_app(with_metrics(tmp_path), store)
    app.testing = True
    client = app.test_client()
    client.environ_base["wsgi.url_scheme"] = "https"
    return client


def test_the_panel_exports_its_figures_behind_the_token(panel: FlaskClient, store: Storage) -> None:
    assert panel.get("/metrics").status_code == 401
    wrong = {"Authorization": "Bearer nope-nope-nope-nope"}
    assert panel.get("/metrics", headers=wrong).status_code == 401
    page = panel.get("/login").get_data(as_text=True)
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    failed = panel.post("/login", data={"csrf": csrf, "username": "root", "password": "bad"})
    assert failed.status_code == 401
    store.open_incident("probing", "medium", "3 blocked turns")
    answer = panel.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    text = answer.get_data(as_text=True)
    seen = samples(text)
    assert seen[("appliance_panel_logins_total", (("outcome", "failed"),))] == 1
    assert seen[("appliance_panel_logins_total", (("outcome", "ok"),))] == 0
    assert seen[("appliance_incidents", (("kind", "probing"), ("state", "open")))] == 1
    assert seen[("appliance_redteam_gate", (("status", "no_report"),))] == 1
    assert seen[("appliance_redteam_gate", (("status", "passed"),))] == 0
    # The requests before this one: 200 (login page), 401s (the scrapes, the log-in).
    assert seen[("appliance_panel_requests_total", (("status_class", "4xx"),))] == 3
    assert seen[("appliance_panel_requests_total", (("status_class", "2xx"),))] >= 1
    assert "root" not in text  # no user name in any label


def test_the_panel_healthz_says_whether_the_store_answers(
    panel: FlaskClient, store: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = panel.get("/healthz")
    assert (answer.status_code, answer.get_data(as_text=True)) == (200, "ok\n")
    assert answer.content_type.startswith("text/plain")

    def broken(action: str) -> None:
        raise StorageError("storage.unavailable", "the database is gone")

    monkeypatch.setattr(store, "session", broken)
    assert panel.get("/healthz").status_code == 503


def test_without_a_token_file_the_panel_has_no_metrics(tmp_path: Path, store: Storage) -> None:
    settings = load_settings(environ={"APPLIANCE_HOME": str(tmp_path)})
    client = create_app(settings, store).test_client()
    client.environ_base["wsgi.url_scheme"] = "https"
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("refuse", [None, "red-team gate no_report: no passing report"])
def test_serve_is_healthy_while_its_line_listens_and_takes_calls(
    tmp_path: Path, store: Storage, refuse: str | None
) -> None:
    """``appliance serve``'s loop on fake engines: /healthz turns 200 once the SIP line listens
    (never while the red-team gate refuses calls) and 503 again once SIGTERM stops it."""
    settings = with_metrics(tmp_path)
    settings = dataclasses.replace(
        settings,
        sip=dataclasses.replace(settings.sip, listen="127.0.0.1:0", tcp=False),
        service=dataclasses.replace(settings.service, shutdown_timeout_s=1.0),
    )
    service = fake_service(
        settings, FakeTranscriber([WORDS]), ScriptedChatModel([REPLY]), ToneSynthesizer()
    )
    metrics = VoiceMetrics(settings, store)
    service.metrics, metrics.service = metrics, service

    async def main() -> tuple[bool, bool, int]:
        run = asyncio.create_task(_run(settings, service, store, time.monotonic(), refuse, metrics))
        deadline = time.monotonic() + 30
        while not metrics.serving and time.monotonic() < deadline:  # a bounded wait
            await asyncio.sleep(0.05)
        serving = metrics.healthy()
        os.kill(os.getpid(), signal.SIGTERM)  # the loop's own handler takes it
        code = await asyncio.wait_for(run, timeout=30)
        return serving, metrics.healthy(), code

    serving, after, code = asyncio.run(main())
    assert metrics.ua is not None and code == 0
    assert serving is (refuse is None)
    assert after is False


def test_the_sip_lines_refusals_are_read_from_its_own_counters(
    tmp_path: Path, store: Storage
) -> None:
    """A 503 from the red-team gate, a 403 to a peer not admitted and a 486 to a full line,
    each counted once by the user agent and read by the figures under its reason."""
    from tests.integration.test_sip_ua import Peer, invite, run

    metrics = VoiceMetrics(with_metrics(tmp_path), store)

    async def test(ua: SipUserAgent, calls: list[SipCall]) -> None:
        metrics.ua = ua
        peer = Peer()
        ua.refuse_calls = "red-team gate no_report"
        await peer.send(invite("m1", 50000), ua.port)
        assert (reply := await peer.recv()) is not None and reply.status == 503
        ua.refuse_calls = None
        allowed, ua.allowed = ua.allowed, ()
        await peer.send(invite("m2", 50000), ua.port)
        assert (reply := await peer.recv()) is not None and reply.status == 403
        ua.allowed = allowed
        await peer.send(invite("m3", 50000), ua.port)
        assert 200 in await peer.statuses(until=200)
        await peer.send(invite("m4", 50002), ua.port)  # the one dialog is taken
        assert 486 in await peer.statuses(until=486)

    run(test, max_dialogs=1)
    seen = samples(metrics.exposition().decode())
    for reason, count in (("redteam_gate", 1), ("forbidden", 1), ("busy", 1), ("flood", 0)):
        assert seen[("appliance_calls_refused_total", (("reason", reason),))] == count, reason


def test_the_listener_speaks_tls_12_at_least(
    listener: tuple[MetricsListener, VoiceMetrics],
) -> None:
    server, _ = listener
    adapter = server.server.ssl_adapter
    assert adapter is not None
    assert adapter.context.minimum_version == ssl.TLSVersion.TLSv1_2  # type: ignore[attr-defined]


def test_load_times_queue_depths_and_unknown_values_have_fixed_labels(
    tmp_path: Path, store: Storage
) -> None:
    settings = with_metrics(tmp_path)
    scheduler = Scheduler()
    metrics = VoiceMetrics(settings, store, depths=scheduler.depths)
    service = fake_service(
        settings, FakeTranscriber([WORDS]), ScriptedChatModel([REPLY]), ToneSynthesizer()
    )
    service.load_seconds = {"llm": 1.5, "a model of a plug-in": 2.0, "another": 0.5}
    metrics.service = service
    running, release = threading.Event(), threading.Event()

    def hold() -> None:
        running.set()
        release.wait(timeout=30)

    first = scheduler.submit(Stage.LLM, hold, urgent=True)
    assert running.wait(timeout=30)  # the stage's thread is busy with the first job
    waiting = [scheduler.submit(Stage.LLM, lambda: None, urgent=u) for u in (True, False)]
    metrics.turn(TurnRecord(1, "x", "y", guard={"input": "novel", "output": "novel"}, route="x"))
    seen = samples(metrics.exposition().decode())
    release.set()
    for future in (first, *waiting):
        future.result(timeout=30)
    assert seen[("appliance_stage_queue_depth", (("stage", "llm"),))] == 2
    assert seen[("appliance_model_load_seconds", (("model", "llm"),))] == 1.5
    assert seen[("appliance_model_load_seconds", (("model", "other"),))] == 2.5  # one sample
    for direction in ("input", "output"):
        labels = (("direction", direction), ("verdict", "other"))
        assert seen[("appliance_guard_verdicts_total", labels)] == 1
    assert seen[("appliance_turns_total", (("route", "other"),))] == 1


def test_neither_listener_starts_with_a_token_file_others_may_read(
    tmp_path: Path, store: Storage
) -> None:
    settings = with_metrics(tmp_path, "127.0.0.1:0")
    os.chmod(settings.service.metrics_token_file, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        MetricsListener(settings, VoiceMetrics(settings, store))
    with pytest.raises(ConfigError, match="chmod 600"):
        create_app(settings, store)
