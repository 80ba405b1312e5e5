"""The voice service's monitoring: ``/metrics`` (Prometheus text format) and ``/healthz`` on
an HTTPS listener of its own (``[service] metrics_listen``), so that each node exports its own.

The figures come from where the service already keeps them, read at scrape time: the calls in
progress (``VoiceService.active``), the SIP line's refusal counters, the models' load times,
the stage threads' queues (``SCHEDULER.depths``) and the incidents in the store. What happens
in a call is seen through the same ``TurnRecord`` the store keeps (``CallMetrics.recording``):
voice-to-voice time, stage timings, guard verdicts and route. Every label comes from a fixed
set in code (a stage, a route, a verdict, a refusal reason, an incident kind with a runbook):
no caller's number, no words, no free text (anything else counts as ``other``).

Prometheus scrapes in and nothing goes out: the listener binds to the configured address only
and opens no connection. ``/metrics`` needs the scrape token (deploy/scrape.py); ``/healthz``
needs none and says ``ok`` (200) while the service is serving: ready, the SIP line listening
and taking calls (503 before, while the red-team gate refuses calls, and once it stops). The
systemd watchdog stays ``sd_notify`` (deploy/notify.py).
"""

from __future__ import annotations

import collections
import enum
import logging
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from appliance.config.settings import Settings
from appliance.core.errors import ApplianceError, StorageError
from appliance.core.events import EventType, Route, Stage
from appliance.core.ports import CallRecorder, TurnRecord
from appliance.deploy.scrape import HEALTHY, OTHER, UNHEALTHY, ScrapeToken, incident_family
from appliance.deploy.scrape import self_signed as self_signed_pair
from appliance.engines.remote import Backend, RemoteHealth
from appliance.engines.remote_llm import FallbackChatModel
from appliance.engines.remote_stt import FallbackTranscriber
from appliance.pipeline.scheduling import SCHEDULER
from appliance.service import VoiceService
from appliance.storage.repository import Storage
from appliance.telephony.ua import SipUserAgent

log = logging.getLogger(__name__)


class Refusal(enum.StrEnum):
    """Why a call was not taken: the ``reason`` label of ``appliance_calls_refused_total``."""

    BUSY = "busy"
    """Too many calls at once ([limits] max_concurrent_calls, or the line's dialogs: 486)."""
    FLOOD = "flood"
    """Too many calls or INVITEs from one caller or address ([limits], [sip])."""
    BLOCKED = "blocked"
    """A caller blocked for probing ([limits] probe_action = "block_caller")."""
    REDTEAM_GATE = "redteam_gate"
    """No passing red-team report ([service] redteam_gate = "refuse": 503)."""
    FORBIDDEN = "forbidden"
    """A peer outside [sip] allowed_peers, or wrong digest credentials (403)."""
    OTHER = OTHER


ADMISSION_REFUSALS = {
    "limit.concurrent": Refusal.BUSY,
    "limit.caller": Refusal.FLOOD,
    "limit.address": Refusal.FLOOD,
    "limit.blocked": Refusal.BLOCKED,
}
"""The admission's reasons (identity/abuse.py) as refusal labels."""

STAGE_SPANS: dict[Stage, tuple[EventType, EventType]] = {
    Stage.STT: (EventType.SPEECH_END, EventType.TRANSCRIPT),
    Stage.GUARD: (EventType.TRANSCRIPT, EventType.GUARD_INPUT),
    Stage.KNOWLEDGE: (EventType.GUARD_INPUT, EventType.ROUTE),
    Stage.LLM: (EventType.ROUTE, EventType.FIRST_SENTENCE),
    Stage.TTS: (EventType.FIRST_SENTENCE, EventType.FIRST_AUDIO),
}
"""Each stage's time in a turn, between two of its events (core/events.py): the wait it adds
after the event before it. Work done speculatively, before the end of speech, adds none."""

INPUT_VERDICTS = ("allow", "flag", "block", "refused_topic", "distress", "distress_check")
"""The input guard's verdicts (``InputDecision.verdict``)."""
OUTPUT_VERDICTS = ("ok", "replaced")
"""The output guard's: every sentence said as drafted, or one replaced."""

VOICE_TO_VOICE_BUCKETS_S = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 8.0)
STAGE_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


def _one_of(value: str, allowed: Iterable[str]) -> str:
    return value if value in allowed else OTHER


class VoiceMetrics:
    """The figures of one voice service process, in a registry of its own (not the library's
    global one). It is the ``CallMetrics`` of ``run_call``; ``service`` and ``ua`` are attached
    once they exist (before, the models count as not loaded and the line as not listening)."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        depths: Callable[[], Mapping[Stage, int]] = SCHEDULER.depths,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.depths = depths
        self.service: VoiceService | None = None
        self.ua: SipUserAgent | None = None
        self.serving = False
        """Set once the service is ready (READY=1), cleared when it stops."""
        self._lock = threading.Lock()
        self._refused: collections.Counter[Refusal] = collections.Counter()
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "appliance_calls", "Calls taken (past admission and consent)", registry=self.registry
        )
        self.voice_to_voice = Histogram(
            "appliance_voice_to_voice_seconds",
            "From the caller's last voiced sample to the first sample of the reply",
            buckets=VOICE_TO_VOICE_BUCKETS_S,
            registry=self.registry,
        )
        self.stages = Histogram(
            "appliance_stage_seconds",
            "Time each stage adds to a turn",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=self.registry,
        )
        self.verdicts = Counter(
            "appliance_guard_verdicts",
            "Guard verdicts on turns, input and output",
            ["direction", "verdict"],
            registry=self.registry,
        )
        self.routes = Counter(
            "appliance_turns", "Turns, by how they were answered", ["route"], registry=self.registry
        )
        self.storage_errors = Counter(
            "appliance_storage_errors",
            "Store operations that failed: a turn not stored, a scrape's read of the store",
            ["operation"],
            registry=self.registry,
        )
        self.registry.register(_Figures(self))

    # -- CallMetrics -------------------------------------------------------------------------

    def call_refused(self, reason: str) -> None:
        with self._lock:
            self._refused[ADMISSION_REFUSALS.get(reason, Refusal.OTHER)] += 1

    def recording(self, recorder: CallRecorder) -> CallRecorder:
        self.calls.inc()
        return _Recording(recorder, self)

    # -- what a turn's record says -----------------------------------------------------------

    def turn(self, record: TurnRecord) -> None:
        if record.voice_to_voice_ms is not None:
            self.voice_to_voice.observe(max(0.0, record.voice_to_voice_ms) / 1000)
        timings = record.timings_ms
        for stage, (start, end) in STAGE_SPANS.items():
            if start.value in timings and end.value in timings:
                spent_ms = max(0.0, timings[end.value] - timings[start.value])
                self.stages.labels(stage.value).observe(spent_ms / 1000)
        verdict = record.guard.get("input")
        if isinstance(verdict, str):
            self.verdicts.labels("input", _one_of(verdict, INPUT_VERDICTS)).inc()
        output = record.guard.get("output")
        if isinstance(output, str):
            self.verdicts.labels("output", _one_of(output, OUTPUT_VERDICTS)).inc()
        if record.route:
            self.routes.labels(_one_of(record.route, {r.value for r in Route})).inc()

    # -- read at scrape time -----------------------------------------------------------------

    def refusals(self) -> dict[Refusal, int]:
        """Every refusal so far: the admission's, counted here, and the SIP line's own
        counters (read, not counted twice)."""
        with self._lock:
            counts = dict(self._refused)
        ua = self.ua
        if ua is not None:
            for reason, n in (
                (Refusal.BUSY, ua.busy),
                (Refusal.FLOOD, ua.shed),
                (Refusal.REDTEAM_GATE, ua.refused_calls),
                (Refusal.FORBIDDEN, ua.forbidden),
            ):
                counts[reason] = counts.get(reason, 0) + n
        return counts

    def healthy(self) -> bool:
        """Serving: ready, and the SIP line (when the service has one) listening and taking
        calls."""
        if not self.serving:
            return False
        if self.settings.service.voice != "sip":
            return True
        ua = self.ua
        return ua is not None and ua.transport is not None and ua.refuse_calls is None

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Recording:
    """A call's recorder seen by monitoring: each turn counted as the store records it."""

    def __init__(self, inner: CallRecorder, metrics: VoiceMetrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self.call_id = inner.call_id

    def record_turn(self, turn: TurnRecord) -> None:
        try:
            self.inner.record_turn(turn)
        except ApplianceError:
            self.metrics.storage_errors.labels("turn").inc()
            raise
        finally:
            self.metrics.turn(turn)

    def finish(self, status: str) -> None:
        self.inner.finish(status)


class _Figures(Collector):
    """The figures read when Prometheus scrapes."""

    def __init__(self, metrics: VoiceMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # nothing read at registration

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        service = metrics.service
        active = GaugeMetricFamily("appliance_calls_in_progress", "Calls in progress")
        active.add_metric([], len(service.active) if service is not None else 0)
        yield active
        refused = CounterMetricFamily(
            "appliance_calls_refused", "Calls not taken, by reason", labels=["reason"]
        )
        counts = metrics.refusals()
        for reason in Refusal:
            refused.add_metric([reason.value], counts.get(reason, 0))
        yield refused
        loaded = GaugeMetricFamily(
            "appliance_models_loaded", "1 once every model is verified and loaded"
        )
        loaded.add_metric([], 1 if service is not None else 0)
        yield loaded
        seconds = GaugeMetricFamily(
            "appliance_model_load_seconds",
            "Seconds each model took to verify, load and warm at start",
            labels=["model"],
        )
        spent_by: dict[str, float] = {}
        for model, spent in (service.load_seconds if service is not None else {}).items():
            label = _one_of(model, LOADED_PARTS)
            spent_by[label] = spent_by.get(label, 0.0) + spent
        for label, spent in sorted(spent_by.items()):
            seconds.add_metric([label], spent)
        yield seconds
        yield from _remote_llm(service)
        yield from _remote_stt(service)
        depth = GaugeMetricFamily(
            "appliance_stage_queue_depth",
            "Jobs waiting for a stage's thread (the models are shared by every call)",
            labels=["stage"],
        )
        depths = metrics.depths()
        for stage in Stage:
            if stage in depths:
                depth.add_metric([stage.value], depths[stage])
        yield depth
        try:
            yield incident_family(metrics.storage, metrics.settings.incidents.runbooks)
        except StorageError:
            metrics.storage_errors.labels("scrape").inc()


def _remote_llm(service: VoiceService | None) -> Iterator[Metric]:
    """Whether the model on the GPU host answers (1, also before its first reply) or the
    node's own answers for it (0), and the replies each drafted ([llm] remote_url); with no
    remote configured, every reply is the local model's, counted by the routes above."""
    llm = service.engines.llm if service is not None else None
    if isinstance(llm, FallbackChatModel):
        yield from _remote_health(
            llm, "llm", "the remote language model answers", "Replies drafted by the language "
            "model, by where (a redraft counts again)",
        )  # fmt: skip


def _remote_stt(service: VoiceService | None) -> Iterator[Metric]:
    """The same for speech recognition on the GPU host ([stt] remote_address)."""
    stt = service.engines.stt if service is not None else None
    if isinstance(stt, FallbackTranscriber):
        yield from _remote_health(
            stt, "stt", "the remote speech recognizer answers",
            "Utterances recognized, by where",
        )  # fmt: skip


def _remote_health(health: RemoteHealth, role: str, up: str, turns: str) -> Iterator[Metric]:
    gauge = GaugeMetricFamily(f"appliance_{role}_remote_up", f"1 while {up}, 0 while it fails")
    gauge.add_metric([], 1 if health.remote_up else 0)
    yield gauge
    counter = CounterMetricFamily(f"appliance_{role}_turns", turns, labels=["backend"])
    counts = health.turns()
    for backend in Backend:
        counter.add_metric([backend.value], counts[backend])
    yield counter


LOADED_PARTS = ("stt", "llm", "knowledge", "tts", "total")
"""What ``VoiceService.load`` times (``load_seconds``)."""


def application(metrics: VoiceMetrics, token: ScrapeToken) -> Callable[..., Iterable[bytes]]:
    """The listener's WSGI app: ``/metrics`` behind the token, ``/healthz`` open."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", b"method not allowed\n")
        if path == "/healthz":
            if metrics.healthy():
                return _answer(start_response, "200 OK", HEALTHY)
            return _answer(start_response, "503 Service Unavailable", UNHEALTHY)
        if path == "/metrics":
            if not token.allows(environ.get("HTTP_AUTHORIZATION")):
                return _answer(
                    start_response,
                    "401 Unauthorized",
                    b"a scrape token is needed\n",
                    [("WWW-Authenticate", 'Bearer realm="metrics"')],
                )
            return _answer(start_response, "200 OK", metrics.exposition(), [], CONTENT_TYPE_LATEST)
        return _answer(start_response, "404 Not Found", b"not found\n")

    return app


def _answer(
    start_response: Callable[..., Any],
    status: str,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
    content_type: str = "text/plain; charset=utf-8",
) -> list[bytes]:
    start_response(
        status,
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *(headers or []),
        ],
    )
    return [body]


def certificate(settings: Settings) -> tuple[Path, Path]:
    """The configured certificate and key, or a self-signed pair under APPLIANCE_HOME/metrics."""
    options = settings.service
    if options.metrics_tls_cert:
        return Path(options.metrics_tls_cert), Path(options.metrics_tls_key)
    host = options.metrics_listen.rpartition(":")[0]
    return self_signed_pair(settings.home / "metrics", host, "metrics listener")


class MetricsListener:
    """The HTTPS listener (cheroot, TLS 1.2 at least) on its own thread."""

    WORKERS = 4

    def __init__(self, settings: Settings, metrics: VoiceMetrics) -> None:
        token = ScrapeToken.read(settings.service.metrics_token_file)
        host, _, port = settings.service.metrics_listen.rpartition(":")
        cert, key = certificate(settings)
        self.server = wsgi.Server(
            (host, int(port)),
            application(metrics, token),
            numthreads=self.WORKERS,
            server_name="appliance-metrics",
            timeout=10,
        )
        adapter = BuiltinSSLAdapter(str(cert), str(key))
        adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.server.ssl_adapter = adapter
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self.server.bind_addr[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        self.server.prepare()  # bound here: a port in use fails the start, not later
        self._thread = threading.Thread(
            target=self.server.serve, name="appliance-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.server.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)


def start_metrics(settings: Settings, storage: Storage) -> tuple[VoiceMetrics, MetricsListener]:
    """The figures and their listener, started (``[service] metrics_listen`` is set)."""
    metrics = VoiceMetrics(settings, storage)
    listener = MetricsListener(settings, metrics)
    listener.start()
    print(f"metrics: https://{listener.address}/metrics", flush=True)
    log.info("metrics listening on %s", listener.address)
    return metrics, listener
