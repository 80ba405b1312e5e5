"""Composition root: builds engines and pipelines from settings. The only place that wires the
rooms together (the CLI and the benchmarks go through it)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config.manifest import model_spec
from appliance.config.secrets import read_owner_only
from appliance.config.settings import CredentialSource, Settings
from appliance.core.audio import frame_bytes
from appliance.core.errors import ConfigError
from appliance.core.models import require_verified
from appliance.core.ports import (
    AudioSink,
    AudioSource,
    CallbackDesk,
    CallControl,
    CallerDirectory,
    CallMetrics,
    CallRecorder,
    CallWatch,
    CodeNotifier,
    InputDecision,
    KeyInbox,
    NoCallControl,
    TurnAgent,
    TurnGuard,
    VoiceEmbedder,
)
from appliance.engines.embed import MiniLmEmbedder
from appliance.engines.llm import LlamaChat
from appliance.engines.remote_llm import FallbackChatModel, RemoteChatModel, Sampling
from appliance.engines.remote_stt import FallbackTranscriber, WyomingTranscriber
from appliance.engines.stt import WhisperTranscriber
from appliance.engines.tts import PiperSynthesizer
from appliance.engines.vad import WebRtcVad
from appliance.guard.call import CallGuard
from appliance.guard.classifier import GuardClassifier, GuardHead
from appliance.guard.injection import Verdict
from appliance.identity.abuse import AbuseMonitor, Action, CallAnomalies
from appliance.identity.app_token import AppTokens
from appliance.identity.directory import DirectoryCredentials, NoDirectory
from appliance.identity.factors import AttemptLimiter, FactorError
from appliance.identity.levels import Factor
from appliance.identity.voice import VoiceTemplate, VoiceVerifier
from appliance.knowledge.base import KnowledgeBase, KnowledgeChange
from appliance.notifiers.sms import ByContact, SmsNotifier
from appliance.notifiers.smtp import SmtpNotifier
from appliance.notifiers.staff import AlertingDesk
from appliance.pipeline.reply import ReplyPath
from appliance.pipeline.session import (
    CallSession,
    Engines,
    EventHandler,
    PipelineConfig,
    TurnResult,
)
from appliance.storage import audit
from appliance.storage.keys import (
    MasterKey,
    audit_key_path,
    default_key_path,
    load_or_create,
    read_key,
)
from appliance.storage.repository import Storage
from appliance.tools.agent import CallerFactors, Credentials, JsonRequester, ToolAgent, VoiceCheck
from appliance.tools.demo import DemoBank, demo_tools
from appliance.tools.http import http_tools
from appliance.tools.plugins import plugin_tools
from appliance.tools.registry import Tool, ToolBox, ToolError

log = logging.getLogger(__name__)


def database_path(settings: Settings) -> Path:
    return settings.home / "appliance.db"


def audit_signing_key_path(settings: Settings) -> Path:
    return audit_key_path(settings.home, settings.storage.audit_key_file)


def audit_checkpoint(settings: Settings, *, create_key: bool = True) -> audit.Checkpoint | None:
    """The audit chain's signed head, in ``APPLIANCE_HOME/keys``, apart from the database
    (None when the signing key does not exist and may not be made)."""
    key_path = audit_signing_key_path(settings)
    if not create_key and not key_path.exists():
        return None
    path = settings.home / "keys" / "audit-checkpoint.json"
    return audit.Checkpoint(path, audit.signing_key(key_path))


def open_storage(settings: Settings, *, create_key: bool = True) -> Storage:
    """The encrypted store under the master key (created, mode 0600, on first start), with the
    audit chain's checkpoint."""
    key_path = default_key_path(settings.home, settings.storage.master_key_file)
    master = load_or_create(key_path) if create_key else read_key(key_path)
    checkpoint = audit_checkpoint(settings, create_key=create_key)
    return storage_opener(settings, checkpoint)(master)


def storage_opener(
    settings: Settings, checkpoint: audit.Checkpoint | None = None
) -> Callable[[MasterKey], Storage]:
    """How the configured store opens under a master key: the PostgreSQL server of
    ``[storage] url``, else the encrypted SQLite file."""
    node = settings.service.node_name
    if settings.storage.url:
        url = settings.storage.url
        return lambda master: Storage.open_url(url, master, checkpoint=checkpoint, node=node)
    path = database_path(settings)
    return lambda master: Storage.open_sqlite(path, master, checkpoint=checkpoint, node=node)


def demo_bookings_file(settings: Settings) -> Path | None:
    """Where the demo backend keeps its bookings: a file under APPLIANCE_HOME in the demo
    configuration (``[tools] credentials = "demo"``), else none (they live for one call)."""
    if settings.tools.credentials is CredentialSource.DEMO:
        return settings.home / "demo" / "bookings.json"
    return None


def extra_tools(settings: Settings) -> dict[str, Tool]:
    """The tools beside the demo ones: those declared in ``[[tools.http]]`` and those of the
    installed plug-ins (the ``appliance.tools`` entry points)."""
    return merge_tools(http_tools(settings.tools), plugin_tools())


def merge_tools(*groups: Mapping[str, Tool]) -> dict[str, Tool]:
    """One name, one tool: a declared or plug-in tool may not take a name already used."""
    tools: dict[str, Tool] = {}
    for group in groups:
        for name, tool in group.items():
            if name in tools:
                raise ToolError("tools.duplicate", f"two tools are named {name!r}")
            tools[name] = tool
    return tools


def deployment_tools(settings: Settings) -> dict[str, Tool]:
    """Every tool this deployment knows (``appliance tools list``)."""
    return merge_tools(demo_tools(DemoBank()), extra_tools(settings))


def pipeline_config(settings: Settings) -> PipelineConfig:
    return PipelineConfig(
        endpointing=settings.endpointing,
        system_prompt=settings.llm.system_prompt,
        max_reply_tokens=settings.llm.max_reply_tokens,
        history_turns=settings.llm.history_turns,
        output_sample_rate_hz=settings.audio.output_sample_rate_hz,
        fallback_reply=settings.llm.fallback_reply,
        record_audio=settings.retention.record_audio,
        max_call_s=settings.limits.max_call_s,
        turns_per_minute=settings.limits.turns_per_minute,
        goodbye_reply=settings.limits.goodbye_reply,
        slower_pace=settings.tts.slower_pace,
        offer_after_failures=settings.transfer.offer_after_failures,
        offer_prompt=settings.transfer.offer_prompt,
    )


def load_knowledge(
    settings: Settings, embedder: tuple[MiniLmEmbedder, str] | None = None
) -> KnowledgeBase | None:
    """The knowledge base (its index built or loaded), or None when ``[knowledge] enabled``
    is false. The embedding model is verified against its pins like every model."""
    if not settings.knowledge.enabled:
        return None
    model, digest = embedder or knowledge_embedder(settings)
    return KnowledgeBase.open(settings.knowledge, model, digest, settings.home)


def load_classifier(
    settings: Settings, embedder: tuple[MiniLmEmbedder, str] | None = None
) -> GuardClassifier | None:
    """The learned head of the input guard over the embedding model (both verified against
    their pins), or None when ``[guard] enabled`` is false."""
    if not settings.guard.enabled:
        return None
    spec = model_spec(settings, "guard")
    require_verified(spec)
    model, digest = embedder or knowledge_embedder(settings)
    path = spec.path if spec.path.is_file() else spec.base_dir / next(iter(spec.files))
    return GuardClassifier(model, GuardHead.load(path, digest))


def speech_hint(settings: Settings, knowledge: KnowledgeBase | None) -> str:
    """What Whisper is told to expect: ``[stt] hint`` as written, or ("auto") the knowledge
    base's own names and words."""
    if settings.stt.hint != "auto":
        return settings.stt.hint
    return knowledge.vocabulary() if knowledge is not None else ""


def knowledge_embedder(settings: Settings) -> tuple[MiniLmEmbedder, str]:
    """The embedding model (verified against its pins) and its identity for the index."""
    spec = model_spec(settings, "embedding")
    embedder = MiniLmEmbedder(spec, threads=settings.knowledge.threads)
    return embedder, ",".join(f"{k}={v}" for k, v in sorted(spec.files.items()))


def audit_knowledge(knowledge: KnowledgeBase | None, storage: Storage, actor: str) -> None:
    """Every rebuild of the knowledge index lands in the audit trail: which entries and
    documents were added, changed (with their versions) or removed."""
    if knowledge is None:
        return
    for change in knowledge.take_changes():
        _audit_change(storage, change, actor)


def _audit_change(storage: Storage, change: KnowledgeChange, actor: str) -> None:
    storage.log_event(actor, "knowledge_changed", "knowledge", "ok", change.summary)


def load_synthesizer(settings: Settings) -> PiperSynthesizer:
    """The configured voice alone, verified and warmed (for prompts and test speech without
    the other models)."""
    tts = PiperSynthesizer(
        model_spec(settings, "tts"),
        length_scale=settings.tts.length_scale,
        threads=settings.tts.threads,
    )
    tts.warm_up()
    return tts


def remote_model(settings: Settings) -> RemoteChatModel | None:
    """The model on the GPU host (``[llm] remote_url``), or None when none is configured."""
    options = settings.llm
    if not options.remote_url:
        return None
    key_file = options.remote_api_key_file
    api_key = (lambda: read_owner_only(key_file, "llm.remote_api_key_file")) if key_file else None
    return RemoteChatModel(
        options.remote_host,
        options.remote_port,
        options.remote_path,
        options.remote_ca_file,
        model=options.remote_model,
        timeout_s=options.remote_timeout_s,
        api_key=api_key,
        sampling=Sampling(options.temperature, options.repeat_penalty, options.seed),
    )


def remote_recognizer(settings: Settings) -> WyomingTranscriber | None:
    """The speech recognizer on the GPU host (``[stt] remote_address``), or None."""
    options = settings.stt
    if not options.remote_address:
        return None
    return WyomingTranscriber(
        options.remote_host,
        options.remote_port,
        options.remote_ca_file,
        language=options.language,
        timeout_s=options.remote_timeout_s,
    )


def remote_stt(
    settings: Settings, local: WhisperTranscriber
) -> WhisperTranscriber | FallbackTranscriber:
    """What utterances are recognized by: the remote recognizer with ``local`` as its
    fallback, or ``local`` alone when no remote is configured."""
    remote = remote_recognizer(settings)
    if remote is None:
        return local
    return FallbackTranscriber(remote, local, retry_s=settings.stt.remote_retry_s)


def remote_chat(settings: Settings, local: LlamaChat) -> LlamaChat | FallbackChatModel:
    """The model replies come from: the remote one with ``local`` as its fallback, or
    ``local`` alone when no remote is configured."""
    remote = remote_model(settings)
    if remote is None:
        return local
    return FallbackChatModel(remote, local, retry_s=settings.llm.remote_retry_s)


@dataclass
class VoiceService:
    """The loaded models of this process and the pipeline settings; makes call sessions."""

    settings: Settings
    engines: Engines
    config: PipelineConfig
    load_seconds: dict[str, float] = field(default_factory=dict)
    monitor: AbuseMonitor | None = None
    _prompts: dict[tuple[str, int], bytes] = field(default_factory=dict)
    _voice_embedder: VoiceEmbedder | None = None
    _factors: CallerFactors | None = None
    _factors_store: Storage | None = None
    _voice_store: Storage | None = None
    _voice_verifier: VoiceVerifier | None = None
    knowledge: KnowledgeBase | None = None
    classifier: GuardClassifier | None = None
    """The learned head of the input guard ([guard]), shared by every call's guard."""
    active: set[CallSession] = field(default_factory=set)
    """The calls in progress (for a clean shutdown: each gets a goodbye)."""
    metrics: CallMetrics | None = None
    """Monitoring of the calls (``[service] metrics_listen``), when on."""
    _extra_tools: dict[str, Tool] | None = field(default=None, init=False, repr=False)
    """The HTTP and plug-in tools, made once (their TLS context, the plug-ins loaded)."""

    def __post_init__(self) -> None:
        if self.monitor is None:
            self.monitor = AbuseMonitor(self.settings.limits)

    @classmethod
    def load(cls, settings: Settings) -> VoiceService:
        """Verify and load every model once (each refused with its path if altered)."""
        timings: dict[str, float] = {}
        started = time.perf_counter()

        def timed(name: str, since: float) -> float:
            now = time.perf_counter()
            timings[name] = round(now - since, 3)
            return now

        if settings.app_token.enabled:  # a missing or wrong key fails here, naming the key
            AppTokens(settings.app_token)
        mark = started
        vad = WebRtcVad(settings.endpointing.vad_aggressiveness)
        stt = WhisperTranscriber(
            model_spec(settings, "stt"),
            language=settings.stt.language,
            beam_size=settings.stt.beam_size,
            compute_type=settings.stt.compute_type,
            threads=settings.stt.threads,
        )
        stt.warm_up()
        mark = timed("stt", mark)
        llm = LlamaChat(
            model_spec(settings, "llm"),
            context_tokens=settings.llm.context_tokens,
            temperature=settings.llm.temperature,
            repeat_penalty=settings.llm.repeat_penalty,
            threads=settings.llm.threads,
            seed=settings.llm.seed,
            contexts=settings.llm.contexts,
        )
        # Warm the prompt cache with the guarded system prompt's shape (the canary differs
        # per call, so only the text before it is shared).
        llm.warm_up(CallGuard(settings.policy, settings.llm.system_prompt).system_prompt)
        chat = remote_chat(settings, llm)
        mark = timed("llm", mark)
        embedder = (
            knowledge_embedder(settings)
            if settings.knowledge.enabled or settings.guard.enabled
            else None
        )
        knowledge = load_knowledge(settings, embedder)
        classifier = load_classifier(settings, embedder)
        stt.hint = speech_hint(settings, knowledge)
        recognizer = remote_stt(settings, stt)
        mark = timed("knowledge", mark)
        tts = load_synthesizer(settings)
        timed("tts", mark)
        timings["total"] = round(time.perf_counter() - started, 3)
        service = cls(
            settings,
            Engines(vad, recognizer, chat, tts),
            pipeline_config(settings),
            timings,
            knowledge=knowledge,
            classifier=classifier,
        )
        # At start, not at the first call: a plug-in that fails to load, or a CA bundle or
        # client certificate that does not, stops the service with the error naming it.
        service._extra_tools = extra_tools(settings)
        return service

    def session(
        self,
        source: AudioSource,
        sink: AudioSink,
        on_event: EventHandler | None = None,
        recorder: CallRecorder | None = None,
        guard: TurnGuard | None = None,
        agent: TurnAgent | None = None,
        control: CallControl | None = None,
        watch: CallWatch | None = None,
        **overrides: Any,
    ) -> CallSession:
        """A new call on the shared engines, with its own guardrails (always on: a new
        CallGuard unless one is given); ``overrides`` change PipelineConfig fields."""
        config = dataclasses.replace(self.config, **overrides) if overrides else self.config
        return CallSession(
            self.engines,
            config,
            source,
            sink,
            on_event,
            recorder=recorder,
            guard=guard or self.new_guard(),
            agent=agent,
            knowledge=self.knowledge,
            control=control,
            watch=watch,
        )

    def toolbox(
        self, storage: Storage | None, call_id: str, bank: DemoBank | None = None
    ) -> ToolBox:
        """The deployment's tools for one call; every call of a tool lands in the audit trail
        (and the tool_calls table, its arguments sealed under the call's key). Without storage
        (the red team's text runs) nothing is recorded."""

        def audit(caller: str, tool: str, arguments: Mapping[str, Any], outcome: str) -> None:
            assert storage is not None
            who = f"caller:{storage.caller_hash(caller)[:16]}" if caller else "caller:anonymous"
            storage.record_tool_call(call_id, tool, arguments, outcome, actor=who)

        tools = merge_tools(demo_tools(bank or self.demo_bank()), self.declared_tools())
        return ToolBox(
            tools, frozenset(self.settings.tools.enabled), audit=audit if storage else None
        )

    def declared_tools(self) -> dict[str, Tool]:
        """The HTTP and plug-in tools, made once for the process (one TLS context for all)."""
        if self._extra_tools is None:
            self._extra_tools = extra_tools(self.settings)
        return self._extra_tools

    def demo_bank(self) -> DemoBank:
        """The demo backend: in the demo configuration its bookings are kept under
        APPLIANCE_HOME (they outlive the call); otherwise, where callers are the organization's
        own, they live for one call, so no caller's number is written outside the encrypted
        store."""
        return DemoBank(bookings_file=demo_bookings_file(self.settings))

    def tool_agent(
        self,
        storage: Storage | None,
        call_id: str,
        caller_id: str | None,
        control: CallControl | None = None,
        app_token: str | None = None,
    ) -> ToolAgent | None:
        """Tools inside one call (the demo tools; the callers' factors from the demo data or the
        caller directory, as ``[tools] credentials`` says), or None when no tool is enabled or
        the model cannot answer under a grammar. A transfer is possible only when ``control``
        (the call's line) has a destination; callback requests go to ``storage``."""
        if not self.settings.tools.enabled or not isinstance(self.engines.llm, JsonRequester):
            return None
        bank = self.demo_bank()
        credentials: Credentials = bank
        if self.settings.tools.credentials is CredentialSource.DIRECTORY:
            directory: CallerDirectory = NoDirectory() if storage is None else storage
            credentials = DirectoryCredentials(directory)
        made_for_another = self._factors_store is not None and self._factors_store is not storage
        if self._factors is None or made_for_another:
            # Attempt counts and used codes live in the store the calls use (one per service)
            self._factors = CallerFactors.from_settings(
                self.settings.tools,
                counters=storage,
                notifier=self.code_notifier(),
                code_ttl_s=float(self.settings.notify.code_ttl_s),
            )
            self._factors_store = storage

        def record(action: str, outcome: str, error: str) -> None:
            """A code sent or not, in the audit trail: the caller's pseudonym, the call and
            the error's code; never the one-time code or the contact."""
            if storage is None:
                return
            who = (
                f"caller:{storage.caller_hash(caller_id)[:16]}" if caller_id else "caller:anonymous"
            )
            details = {"error": error} if error else None
            storage.log_event(who, action, f"call:{call_id}", outcome, details)

        callbacks: CallbackDesk | None = storage
        notify = self.settings.notify
        if storage is not None and notify.staff_address:
            callbacks = AlertingDesk(storage, SmtpNotifier(notify), notify.staff_message, record)
        passed: set[Factor] = set()
        if app_token is not None and self.settings.app_token.enabled:
            refused = self.app_token_refusal(storage, caller_id or "", app_token)
            record("app_token", "refused" if refused else "ok", refused)
            if not refused:
                passed.add(Factor.APP_TOKEN)
        return ToolAgent(
            self.toolbox(storage, call_id, bank),
            caller=caller_id or "",
            credentials=credentials,
            model=self.engines.llm,
            settings=self.settings.tools,
            factors=self._factors,
            voice=self.voice_check(storage) if storage is not None else None,
            today=datetime.date.today().isoformat(),
            record=record,
            can_transfer=control is not None and bool(control.destinations),
            transfer=self.settings.transfer,
            callbacks=callbacks,
            call_id=call_id,
            passed=passed,
        )

    def app_token_refusal(self, storage: Storage | None, caller: str, token: str) -> str:
        """Why the app's session token does not count for this call ("" when it does: then it
        is used up). The key is read for each call, so a rotated key needs no restart."""
        try:
            AppTokens(self.settings.app_token, counters=storage).verify(token, caller)
        except FactorError as exc:
            return exc.code
        except ConfigError as exc:  # the key file went away or was replaced by garbage
            log.warning("app tokens cannot be checked: %s", exc)
            return exc.code
        return ""

    def code_notifier(self) -> CodeNotifier | None:
        """Where out-of-band codes go ([notify]): e-mail addresses by the SMTP relay, phone
        numbers by the SMS gateway's HTTP tool; None when neither is set."""
        notify = self.settings.notify
        notifiers: list[CodeNotifier] = []
        if notify.enabled:
            notifiers.append(SmtpNotifier(notify))
        if notify.sms_tool:
            gateway = self.declared_tools()[notify.sms_tool]  # the same tool and TLS context

            def send_text(number: str, text: str) -> None:
                gateway.handler("", {"to": number, "text": text})

            notifiers.append(SmsNotifier(notify, send_text))
        if not notifiers:
            return None
        return notifiers[0] if len(notifiers) == 1 else ByContact(tuple(notifiers))

    def prompt_audio(self, text: str, sample_rate_hz: int) -> bytes:
        """A fixed prompt (the busy reply, the disclosure), synthesized once per text and rate:
        a flood, or every call's opening, must not cost a synthesis each."""
        cached = self._prompts.get((text, sample_rate_hz))
        if cached is None:
            cached = b"".join(c.pcm for c in self.engines.tts.synthesize(text, sample_rate_hz))
            self._prompts[(text, sample_rate_hz)] = cached
        return cached

    def voice_embedder(self) -> VoiceEmbedder:
        """The speaker encoder for voice biometrics, loaded on first use; raises
        ``model.unavailable`` when the optional extra is not installed (never a stand-in)."""
        if self._voice_embedder is None:
            from appliance.engines.voiceprint import ResemblyzerEmbedder

            self._voice_embedder = ResemblyzerEmbedder(model_spec(self.settings, "voiceprint"))
        return self._voice_embedder

    def voice_check(self, storage: Storage) -> VoiceCheck | None:
        """The voice factor for calls, when ``[voiceprint] enabled`` and the extra is there."""
        from appliance.engines.voiceprint import voiceprint_available

        options = self.settings.voiceprint
        if not (options.enabled and voiceprint_available()):
            return None
        made_for_another = self._voice_store is not None and self._voice_store is not storage
        if self._voice_verifier is None or made_for_another:
            self._voice_store = storage
            limiter = AttemptLimiter(
                self.settings.tools.max_factor_attempts,
                float(self.settings.tools.lockout_s),
                clock=time.time,
                counters=storage,
            )
            self._voice_verifier = VoiceVerifier(
                options.threshold, limiter, options.challenge_digits
            )

        return VoiceCheck(
            self.voice_embedder(),
            self._voice_verifier,
            lambda caller: self.voice_template(storage, caller),
        )

    def voice_template(self, storage: Storage, caller: str) -> VoiceTemplate | None:
        """The caller's enrolled voice template, the voice factor's only way to one. With
        ``[tools] credentials = "directory"`` a caller the directory does not know, or has
        locked, has none: a lock makes every factor fail, voice included."""
        if not caller:
            return None
        if self.settings.tools.credentials is CredentialSource.DIRECTORY and not (
            DirectoryCredentials(storage).usable(caller)
        ):
            return None
        sealed = storage.voiceprint(caller)
        return VoiceTemplate.from_bytes(sealed) if sealed else None

    def reply_path(
        self, guard: CallGuard | None = None, agent: TurnAgent | None = None
    ) -> ReplyPath:
        """The reply path of one call without its media (the red team runs text through it)."""
        return ReplyPath.build(
            self.engines, self.config, guard or self.new_guard(), agent, self.knowledge
        )

    def new_guard(self) -> CallGuard:
        return CallGuard(
            self.settings.policy,
            self.settings.llm.system_prompt,
            honest_reply=self.settings.knowledge.unknown_reply,
            topic_texts=self.knowledge.topic_texts() if self.knowledge is not None else (),
            known_texts=self.knowledge.known_texts() if self.knowledge is not None else (),
            classifier=self.classifier,
        )


@dataclass(frozen=True)
class Consent:
    decision: str  # "granted", "not_required"
    disclosure_version: str
    method: str  # "spoken", "dtmf", "configuration"


@dataclass
class CallOutcome:
    call_id: str | None
    turns: list[TurnResult]
    refused: str = ""
    """Why the call was not taken (a limit), or empty."""
    end_reason: str = ""


async def run_call(
    service: VoiceService,
    storage: Storage,
    source: AudioSource,
    sink: AudioSink,
    *,
    caller_id: str | None = None,
    address: str | None = None,
    identity: str | None = None,
    channel: str = "wav",
    on_event: EventHandler | None = None,
    consent: Consent | None = None,
    control: CallControl | None = None,
    keypad: KeyInbox | None = None,
    app_token: str | None = None,
) -> CallOutcome:
    """One call, start to end, with admission, abuse handling, storage and guardrails.

    Refused calls (a flood, a blocked caller, too many at once) hear the busy reply and leave an
    audit event; the first refusal of a flood opens an incident. Repeated probing in a call
    (guard blocks) warns, ends the call or blocks the caller, as ``[limits] probe_action`` says;
    a volume spike or topic drift does what ``[limits] anomaly_action`` says. Each opens an
    incident.

    The caller ID is a hint (a SIP peer writes any From it likes), so what counts and blocks
    "a caller" is that number as seen from where it came: the digest ``identity`` the peer
    proved, else its ``address``. A stranger sending a customer's number from elsewhere uses
    up their own quota, never the customer's.

    ``control`` is what the channel can do to the call (the SIP line: transfer); without it
    (the microphone, a file) a request for a person becomes the callback offer. ``keypad``
    takes the channel's key presses to this call's session while it runs. ``app_token`` is the
    session token the organization's gateway passed for a caller signed in to its app
    (``[app_token]``): verified, it is a possession factor of this call.
    """
    control = control if control is not None else NoCallControl()
    monitor = service.monitor
    assert monitor is not None
    caller_key = await asyncio.to_thread(storage.caller_hash, caller_id) if caller_id else None
    who = f"caller:{caller_key[:16]}" if caller_key else "caller:anonymous"
    limit_key = _limit_key(caller_key, address, identity)
    # The windows may live in the store: off the event loop, like every store call here.
    admission = await asyncio.to_thread(monitor.admit, limit_key, address)
    if not admission.allowed:
        if service.metrics is not None:
            service.metrics.call_refused(admission.reason)
        # Counted by where it came from: a caller ID is the sender's to choose.
        counted = f"address:{address}" if address else who
        await asyncio.to_thread(
            _refuse, storage, counted, admission.reason, admission.incident, caller_key
        )
        rate = sink.sample_rate_hz
        pcm = await asyncio.to_thread(
            service.prompt_audio, service.settings.limits.busy_reply, rate
        )
        frame = frame_bytes(rate, service.settings.audio.frame_ms)
        for start in range(0, len(pcm), frame):
            await sink.write_frame(pcm[start : start + frame].ljust(frame, b"\0"))
        await sink.close()
        return CallOutcome(None, [], refused=admission.reason)
    try:
        if service.knowledge is not None:  # an edited knowledge file takes effect on the next call
            await asyncio.to_thread(service.knowledge.refresh_if_changed)
            await asyncio.to_thread(audit_knowledge, service.knowledge, storage, "system:knowledge")
        record = await asyncio.to_thread(storage.start_call, caller_id, channel)
        if consent is not None:  # what the caller agreed to, before any turn is stored
            await asyncio.to_thread(
                storage.record_consent,
                record.call_id,
                consent.decision,
                consent.disclosure_version,
                consent.method,
            )
        probes = 0
        session: CallSession | None = None
        loop = asyncio.get_running_loop()
        writes: list[asyncio.Future[Any]] = []

        anomalies = CallAnomalies(service.settings.limits)

        def act(kind: str, severity: str, summary: str, action: Action) -> None:
            """An incident (stored off the event loop), then the configured action."""
            writes.append(
                loop.run_in_executor(
                    None,
                    lambda: storage.open_incident(
                        kind, severity, f"{summary}; action {action}", call_id=record.call_id
                    ),
                )
            )
            if action is Action.BLOCK_CALLER and limit_key:
                writes.append(loop.run_in_executor(None, monitor.block, limit_key))
            if action in (Action.END_CALL, Action.BLOCK_CALLER) and session is not None:
                session.end(f"abuse:{action}", service.settings.limits.goodbye_reply)

        def utterance(level: float) -> None:
            if anomalies.utterance(level):
                act("volume_spike", "low", "an utterance far louder", anomalies.action())

        def screened(decision: InputDecision) -> None:
            nonlocal probes
            if anomalies.turn(decision.on_topic):
                turns = service.settings.limits.topic_drift_turns
                act("topic_drift", "low", f"{turns} off-topic turns in a row", anomalies.action())
            if decision.verdict != Verdict.BLOCK:
                return
            probes += 1
            count = probes
            # Counted for the day in the store, off the event loop; past the in-call limit the
            # call ends at once (that count is this call's, in memory).
            decided = loop.run_in_executor(None, monitor.probe, limit_key, count)
            writes.append(decided)
            if count >= service.settings.limits.probes_per_call:
                act("probing", "medium", f"{count} blocked turns", monitor.probe_action())
                return

            def after_day_count(done: asyncio.Future[Action]) -> None:
                failed = done.cancelled() or done.exception() is not None
                if not failed and (action := done.result()) is not Action.NONE:
                    act("probing", "medium", f"{count} blocked turns", action)

            decided.add_done_callback(after_day_count)

        agent = await asyncio.to_thread(
            service.tool_agent, storage, record.call_id, caller_id, control, app_token
        )
        session = service.session(
            source,
            sink,
            on_event=on_event,
            watch=_Watch(utterance, screened),
            recorder=record if service.metrics is None else service.metrics.recording(record),
            agent=agent,
            control=control,
            output_sample_rate_hz=sink.sample_rate_hz,  # 8 kHz on a phone line
        )
        service.active.add(session)
        if keypad is not None:
            keypad.connect(session.keys)
        try:
            turns = await session.run()
        finally:
            if keypad is not None:
                keypad.disconnect()
            service.active.discard(session)
        await asyncio.gather(*writes, return_exceptions=True)
        return CallOutcome(record.call_id, turns, end_reason=session.end_reason)
    finally:
        monitor.release()


@dataclass(frozen=True)
class _Watch:
    """The ``CallWatch`` of ``run_call``: its abuse handling, typed."""

    utterance: Callable[[float], None]
    screened: Callable[[InputDecision], None]


def _limit_key(caller_key: str | None, address: str | None, identity: str | None) -> str | None:
    """What the per-caller limits and blocks count: the caller ID (a hint) tied to what the
    peer cannot forge, its proved account or else its address (local channels: the number)."""
    if caller_key is None:
        return None
    if identity:
        return f"account:{identity}|{caller_key}"
    if address:
        return f"address:{address}|{caller_key}"
    return caller_key


def _refuse(storage: Storage, who: str, reason: str, incident: str, caller_key: str | None) -> None:
    storage.log_repeated("system", "call_refused", who, reason)
    if incident:
        storage.open_incident(incident, "high", f"calls refused: {reason}", caller_hash=caller_key)
