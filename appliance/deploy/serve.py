"""``appliance serve``: the voice service in the foreground, as the systemd unit runs it, with
calls from the SIP line or the local microphone (``[service] voice``); ``appliance sip`` is the
same with the SIP line.

Order of start: the egress guard (before any library can open a socket), the storage, the
models, then READY=1 to systemd; WATCHDOG=1 follows every half watchdog period while the event
loop is alive. SIGTERM (or SIGINT) stops taking calls, lets every call in progress say goodbye
(``[limits] goodbye_reply``) within ``[service] shutdown_timeout_s``, closes each call's record
and the storage, and exits 0. The admin panel runs as its own unit, in its own process.

The red-team gate (compliance/gate.py) is read at start, before the models load, and again
every ``GATE_RECHECK_S`` while the SIP line serves (``GateWatch``): without a passing red-team
report for the running fingerprint, ``[service] redteam_gate = "refuse"`` has the SIP line
answer every INVITE 503 with a Warning naming the gate until one passes, and starts no
microphone call (the microphone reads the gate at start only: restart it once ``appliance
redteam`` passes); ``"warn"`` takes calls and opens an incident of kind ``redteam_gate`` each
time the gate closes. ``appliance sip`` (``foreground``) only prints a warning.

With ``[service] metrics_listen``, ``/metrics`` and ``/healthz`` are served (deploy/metrics.py)
from before the models load (``/healthz`` says 503 until READY=1 and again from STOPPING=1).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import sys
import time

from appliance.audio_io.device import MicrophoneSource, SpeakerSink
from appliance.compliance.gate import GateState, foreground_warning, gate_state
from appliance.config.settings import RedteamGate, Settings
from appliance.core.errors import ApplianceError
from appliance.deploy import egress
from appliance.deploy.line import SipLine
from appliance.deploy.metrics import MetricsListener, VoiceMetrics, start_metrics
from appliance.deploy.notify import notify, watchdog_interval_s
from appliance.identity.abuse import AbuseMonitor
from appliance.service import VoiceService, open_storage, run_call
from appliance.storage.repository import Storage
from appliance.telephony.ua import SipUserAgent

log = logging.getLogger(__name__)


def serve(settings: Settings, *, foreground: bool = False) -> int:
    """The voice service; ``foreground``: a command for trying it out (``appliance sip``),
    which only warns when the red-team gate is not passed."""
    guard = egress.install(egress.allowlist(settings))
    guard.forbid_children()  # the service needs none, and a child would run unguarded
    started = time.monotonic()
    storage = open_storage(settings)
    try:
        storage.claim_node()  # no second process under this node's name
    except ApplianceError:
        storage.close()
        raise
    interrupted = storage.close_interrupted()  # what a kill of this node left active
    if interrupted:
        log.warning("closed %d call(s) this node left active as interrupted", interrupted)

    def audit_block(target: str) -> None:
        with contextlib.suppress(Exception):  # an audit failure must not hide the refusal
            storage.log_repeated("system", "egress_blocked", target.split()[-1], "refused")

    guard.on_block = audit_block
    metrics: VoiceMetrics | None = None
    listener: MetricsListener | None = None
    try:
        if settings.service.metrics_listen:  # before the models: /healthz says 503 meanwhile
            metrics, listener = start_metrics(settings, storage)
        refuse = red_team_gate(settings, storage, foreground=foreground)
        service = VoiceService.load(settings)
        # Limits and blocks in the store: a restart does not reset them (wall-clock time).
        service.monitor = AbuseMonitor(settings.limits, clock=time.time, counters=storage)
        if metrics is not None:
            service.metrics, metrics.service = metrics, service
        return asyncio.run(
            _run(settings, service, storage, started, refuse, metrics, watch_gate=not foreground)
        )
    finally:
        if listener is not None:
            listener.stop()
        storage.close()


def red_team_gate(settings: Settings, storage: Storage, *, foreground: bool) -> str | None:
    """Read the red-team gate and act on it: the reason calls are to be refused (said in the
    SIP refusal), or None when they are taken."""
    if settings.service.voice == "none":
        return None  # this box takes no calls: nothing to refuse or to warn about
    state = gate_state(settings, dt.datetime.now(dt.UTC))
    if state.passed:
        log.info("red-team gate passed (report %s)", state.report)
        return None
    if foreground:
        print(foreground_warning(state), file=sys.stderr)
        return None
    return closed_gate(settings, storage, state)


def closed_gate(settings: Settings, storage: Storage, state: GateState) -> str | None:
    """Act on a gate that is not passed: under "warn" open an incident and take calls (None);
    under "refuse" return the reason the SIP refusal gives."""
    said = f"red-team gate {state.status.value}: {state.reason}"
    if settings.service.redteam_gate == RedteamGate.WARN:
        log.warning("taking calls although the %s", said)
        storage.open_incident(
            "redteam_gate",
            "high",
            f"calls taken without a passing red-team report ({state.status.value}; "
            f"fingerprint {state.fingerprint[:12]}; report {state.report or 'none'})",
        )
        return None
    log.error("refusing calls until a red-team report passes: %s", said)
    return f"red-team gate {state.status.value}: no passing red-team report for this configuration"


GATE_RECHECK_S = 10.0
"""How often a serving line reads the gate again (hashing the prompt, policy, knowledge files,
tool definitions and guard code: a few milliseconds)."""


class GateWatch:
    """The red-team gate read again while the line serves: a knowledge file, the prompt or a
    tool edited under a running service changes the fingerprint, so the line refuses calls
    again (``refuse``) or opens an incident (``warn``) without a restart; once a red-team run
    passes for what now runs, it takes calls again."""

    def __init__(self, settings: Settings, storage: Storage, ua: SipUserAgent) -> None:
        self.settings, self.storage, self.ua = settings, storage, ua
        self.passed = gate_state(settings, dt.datetime.now(dt.UTC)).passed

    def check(self, now: dt.datetime | None = None) -> None:
        state = gate_state(self.settings, now or dt.datetime.now(dt.UTC))
        if state.passed == self.passed:
            return
        self.passed = state.passed
        if state.passed:
            log.info("red-team gate passed (report %s): taking calls", state.report)
            self.ua.refuse_calls = None
            return
        self.ua.refuse_calls = closed_gate(self.settings, self.storage, state)


async def _watch_gate(watch: GateWatch) -> None:
    while True:
        await asyncio.sleep(GATE_RECHECK_S)
        try:
            await asyncio.to_thread(watch.check)
        except Exception as exc:  # a reading that fails leaves the line as it is; say why
            log.error("the red-team gate could not be read again: %s", type(exc).__name__)


STORE_RECHECK_S = 5.0
"""How often a serving line checks that its store answers (its OPTIONS answer says so)."""


async def watch_store(storage: Storage, ua: SipUserAgent, every_s: float = STORE_RECHECK_S) -> None:
    """While the store does not answer, the line's OPTIONS answer is 503 (a proxy sends new
    calls to other nodes); calls in progress go on, degraded. One log line per change."""
    while True:
        try:
            await asyncio.to_thread(storage.ping)
        except ApplianceError as exc:
            if ua.unhealthy is None:
                log.error("the store does not answer (%s): no new calls via the proxy", exc.code)
            ua.unhealthy = "the store does not answer"
        else:
            if ua.unhealthy is not None:
                log.info("the store answers again")
            ua.unhealthy = None
        await asyncio.sleep(every_s)


async def _run(
    settings: Settings,
    service: VoiceService,
    storage: Storage,
    started: float,
    refuse: str | None = None,
    metrics: VoiceMetrics | None = None,
    *,
    watch_gate: bool = False,
) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    watchdog = asyncio.create_task(_watchdog())
    gate_watch: asyncio.Task[None] | None = None
    store_watch: asyncio.Task[None] | None = None
    calls: asyncio.Task[object] | None = None
    source: MicrophoneSource | None = None
    line: SipLine | None = None
    if settings.service.voice == "sip":
        line = SipLine(settings, service, storage)
        line.ua.refuse_calls = refuse
        await line.ua.start()
        if watch_gate and settings.service.voice == "sip":
            gate_watch = asyncio.create_task(_watch_gate(GateWatch(settings, storage, line.ua)))
        store_watch = asyncio.create_task(watch_store(storage, line.ua))
        if metrics is not None:
            metrics.ua = line.ua
        print(f"sip: listening on udp {line.ua.host}:{line.ua.port}", flush=True)
    if settings.service.voice == "microphone" and refuse is None:
        source = MicrophoneSource(
            settings.audio.input_device, settings.audio.frame_ms, settings.audio.capture_rate_hz
        )
        sink = SpeakerSink(
            settings.audio.output_sample_rate_hz,
            settings.audio.output_device,
            settings.audio.frame_ms,
        )
        calls = asyncio.create_task(run_call(service, storage, source, sink, channel="microphone"))
    ready_s = time.monotonic() - started
    refusing = f"; refusing calls ({refuse})" if refuse else ""
    notify(f"READY=1\nSTATUS=ready in {ready_s:.1f} s; voice: {settings.service.voice}{refusing}")
    log.info("ready in %.1f s (voice: %s)", ready_s, settings.service.voice)
    if metrics is not None:
        metrics.serving = True
    waiter = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait(
        {waiter, *([calls] if calls else [])}, return_when=asyncio.FIRST_COMPLETED
    )
    notify("STOPPING=1")
    if metrics is not None:
        metrics.serving = False  # /healthz: 503 from now on, so balancers look elsewhere
    begun = time.monotonic()
    deadline = begun + settings.service.shutdown_timeout_s
    if line is not None:
        line.ua.refuse_new = True  # no new calls; those in progress say goodbye
    # One loop for every call in progress, also one that was just starting: each says goodbye.
    while (service.active or (calls is not None and not calls.done())) and (
        time.monotonic() < deadline
    ):
        for session in list(service.active):
            session.end("shutdown", settings.limits.goodbye_reply)
        await asyncio.sleep(0.2)
    code = 0
    if calls is not None and source is not None:
        if not calls.done():
            log.error("calls did not finish within %.0f s", settings.service.shutdown_timeout_s)
            source.close()  # unblock the device read, then give up on the call
            calls.cancel()
            code = 1
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await calls
            except Exception as exc:  # the run boundary: say what failed, by type only
                log.error("the voice service failed: %s", type(exc).__name__)
                code = 1
        source.close()
        if calls in done and not stopping.is_set():
            code = code or 1  # the microphone went away: let systemd restart the unit
    if line is not None:
        await asyncio.sleep(0.5)  # let the BYEs go out
        line.ua.close()
    waiter.cancel()
    watchdog.cancel()
    for task in (gate_watch, store_watch):
        if task is not None:
            task.cancel()
    log.info("stopped in %.1f s", time.monotonic() - begun)
    return code


async def _watchdog() -> None:
    interval = watchdog_interval_s()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
