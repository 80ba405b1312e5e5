"""Ports: the small typed Protocols through which the pipeline reaches engines and audio (and
identity reaches the store: limits' counters, the caller directory).

Engines (faster-whisper, llama.cpp, Piper, WebRTC VAD) and audio ends (WAV files, sound devices,
phone calls) implement these; ``appliance.testing`` holds fakes of each. An engine loads its
model once and may be shared by many calls; it serializes its own inferences.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from appliance.core.audio import AudioChunk
from appliance.core.events import Route

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    audio_duration_s: float
    processing_s: float
    language: str = ""


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """What storage keeps of one turn. ``audio`` is the caller's utterance (PCM16 mono) and is
    present only when the deployment keeps recordings."""

    index: int
    transcript: str
    reply: str
    interrupted: bool = False
    error_code: str = ""
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    voice_to_voice_ms: float | None = None
    audio: bytes | None = None
    audio_rate_hz: int = 16_000
    guard: Mapping[str, str | list[str]] = field(default_factory=dict)
    """Guard verdicts and reasons (codes only, never text)."""
    escalation: str = ""
    """Non-empty when the turn must open an incident (the distress path)."""
    route: str = ""
    """How the turn was answered (a ``Route`` value)."""
    citations: tuple[str, ...] = ()
    """The knowledge entries and passages the reply rested on (their ids)."""


@dataclass(frozen=True, slots=True)
class InputDecision:
    """What the input guard made of one transcript.

    ``verdict``: "allow", "flag", "block", "refused_topic", "distress" or "distress_check" (an
    unsure distress word: the caller is asked whether they are in danger). ``llm_text`` is the
    fenced, redacted text the model may see; ``stored_text`` what storage may keep;
    ``fixed_reply`` is spoken instead of asking the model. ``state`` is the guard's state after
    this turn, applied with ``TurnGuard.commit`` only when the turn really happens.
    """

    verdict: str
    llm_text: str
    stored_text: str
    fixed_reply: str | None = None
    query: str = ""
    """The caller's words normalized and redacted, unfenced: what knowledge is searched with."""
    reasons: tuple[str, ...] = ()
    record_audio: bool = True
    escalation: str = ""
    state: object = None
    on_topic: bool = True
    """Whether the turn touches the deployment's topics (for topic-drift detection)."""


@runtime_checkable
class TurnGuard(Protocol):
    """The guardrails of one call (layers 1 to 3 and the conversation policy)."""

    system_prompt: str
    fallback_reply: str
    honest_reply: str
    """Said when nothing relevant is known, or a reply cannot be grounded: it offers a person."""
    close_reply: str
    """Ends a reply whose later sentence was stopped; it offers a person too."""

    def screen_input(self, transcript: str, audio_flags: Sequence[str] = ()) -> InputDecision:
        """Layer 1 for one turn; ``audio_flags``: what the screening of its sound found
        (audio_io/screening.py: "audio.ultrasonic", "audio.clipping", "audio.tone_burst")."""
        ...

    def grounded_turn(self, passages: Sequence[str], decision: InputDecision) -> str:
        """The user turn of a knowledge-grounded answer: the passages, then the fenced words."""
        ...

    def vet(
        self,
        spoken: str,
        sentence: str,
        given: Sequence[str] = (),
        asked: str = "",
        passages: Sequence[str] = (),
    ) -> tuple[str, tuple[str, ...]]:
        """The next sentence as it may be said, and the reasons it must not be said after
        ``spoken``: empty when it may. ``given``: what the reply may rest on (knowledge
        passages, the caller's words, tool results); a figure or name outside it is stopped.
        ``asked``: for an answer from passages, the question, which it must not merely echo.
        ``passages``: the knowledge alone, which it must not contradict."""
        ...

    def may_redraft(self, decision: InputDecision, reasons: tuple[str, ...]) -> bool:
        """Whether a reply stopped by ``reasons`` before any of it was said may be drafted
        once more (the new draft is vetted like the first)."""
        ...

    def replacement(self, reasons: tuple[str, ...], *, first: bool) -> str:
        """What is said instead of a stopped sentence: for the first sentence, the honest
        answer or the fallback; for a later one, a close that stands on its own."""
        ...

    def commit(self, decision: InputDecision) -> None: ...


@dataclass(frozen=True, slots=True)
class AgentTurn:
    """A turn the tool agent answered itself (a step of a tool dialogue, or a tool's result)."""

    reply: str
    outcome: str
    """What happened, as a code for events and the turn record (never the caller's words)."""
    secret: bool = False
    """The caller's words answered a factor (a PIN, a code): keep neither transcript nor audio."""
    transfer: bool = False
    """The reply announces a transfer: once it is said, the reply path starts it through the
    call's ``CallControl`` and speaks what ``TurnAgent.after_transfer`` makes of the outcome."""


@runtime_checkable
class TurnAgent(Protocol):
    """Tools inside a call, between the input guard and the model (tools/agent.py)."""

    def wants(self, text: str) -> bool:
        """Whether ``handle`` may act on ``text``; no side effects."""
        ...

    def handle(self, heard: str, fenced: str, audio: bytes) -> AgentTurn | None:
        """Answer the turn (and change the dialogue's state), or None for the model to.
        ``heard`` is the transcript (for digits and a yes); ``fenced`` the guarded text that
        the model may see; ``audio`` the utterance (16 kHz PCM16), for a voice factor."""
        ...

    def handle_keys(self, keys: str) -> AgentTurn | None:
        """Key presses (DTMF) answering the open dialogue: a PIN, a code, 1 (yes) or 2 (no);
        0 alone asks for a person."""
        ...

    def may_offer_person(self) -> bool:
        """Whether ``offer_person`` would offer one now (a transfer tool is enabled and no
        dialogue is open); no side effects."""
        ...

    def offer_person(self) -> bool:
        """The caller was offered a person: their next yes transfers the call. False when no
        transfer tool is enabled (then nothing was offered)."""
        ...

    def after_transfer(self, outcome: TransferOutcome) -> AgentTurn:
        """What the caller hears once a transfer it announced is over: nothing when they were
        put through (the line hangs up), else that no one could be reached and the offer of a
        callback. The words come from the outcome, never from the model."""
        ...

    def briefing(self, asked: Sequence[str]) -> str:
        """What the person hears before a warm transfer puts the caller through: why, how
        well the caller is verified, and ``asked`` (the caller's redacted requests, oldest
        first) made safe to say. From code and configuration only; never stored or logged."""
        ...


class TransferResult(enum.StrEnum):
    """How one attempt to put the caller through ended."""

    CONNECTED = "connected"
    """The destination answered (a 2xx in the REFER's NOTIFY, RFC 3515)."""
    DECLINED = "declined"
    """The destination answered with a final failure: busy (486), unavailable (480),
    declined (603), ... (the sipfrag's status)."""
    REFUSED = "refused"
    """The caller's side refused the REFER itself (403, 501, ...)."""
    NO_ANSWER = "no_answer"
    """No final answer within the ring timeout (or no answer to the REFER at all)."""
    UNAVAILABLE = "unavailable"
    """This channel cannot transfer (the microphone), or the call is gone."""


@dataclass(frozen=True, slots=True)
class TransferAttempt:
    destination: str
    result: TransferResult
    status: int = 0
    """The SIP status that decided it (the REFER's response or the sipfrag's), 0 if none."""


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    """Every attempt of one transfer, in the order the destinations were tried."""

    attempts: tuple[TransferAttempt, ...] = ()

    @property
    def connected(self) -> bool:
        return any(a.result is TransferResult.CONNECTED for a in self.attempts)


@runtime_checkable
class CallControl(Protocol):
    """What the pipeline may do to the call itself, besides listening and speaking: transfer
    it (the SIP line: telephony's REFER, or a call to the person bridged to the caller's; the
    microphone has ``NoCallControl``)."""

    @property
    def destinations(self) -> tuple[str, ...]:
        """Where a transfer may go, in order; empty when this channel cannot transfer."""
        ...

    async def transfer(self, destination: str, briefing: str = "") -> TransferAttempt:
        """Put the caller through to ``destination``; returns when that is decided (at most
        the ring timeout). On CONNECTED the line leaves the call (blind) or has bridged the
        caller to the person (warm, after saying ``briefing`` to the person alone)."""
        ...


class NoCallControl:
    """A channel that cannot transfer (the microphone, a file): a request for a person becomes
    the callback offer."""

    @property
    def destinations(self) -> tuple[str, ...]:
        return ()

    async def transfer(self, destination: str, briefing: str = "") -> TransferAttempt:
        return TransferAttempt(destination, TransferResult.UNAVAILABLE)


class CallWatch(Protocol):
    """What the service watches in a call as it happens (abuse handling in ``run_call``),
    handed over typed: a speculation that is discarded never reaches it."""

    def utterance(self, level_dbfs: float) -> None:
        """An utterance ended, this loud (the caller's speech, before it is answered)."""
        ...

    def screened(self, decision: InputDecision) -> None:
        """The input guard's decision on a turn that really happened."""
        ...


class KeyInbox:
    """Where a channel's key presses (DTMF) go: to the call's session while it runs
    (``run_call`` connects it), never to another call's; before and after, nowhere (the line
    reads the consent digits itself)."""

    def __init__(self) -> None:
        self._handler: Callable[[str], None] | None = None

    def connect(self, handler: Callable[[str], None]) -> None:
        self._handler = handler

    def disconnect(self) -> None:
        self._handler = None

    def deliver(self, keys: str) -> bool:
        """Hand ``keys`` to the session; False when no session takes them (they are dropped)."""
        if self._handler is None or not keys:
            return False
        self._handler(keys)
        return True


class CallbackState(enum.StrEnum):
    """A callback request as staff work it."""

    OPEN = "open"
    CALLED_BACK = "called_back"
    CLOSED = "closed"


class IncidentState(enum.StrEnum):
    """An incident as staff work it: open, acknowledged (someone has it), resolved. Only
    forward: open -> acknowledged -> resolved, or open -> resolved; never back."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class IncidentSeverity(enum.StrEnum):
    """How urgent an incident is; each has its response time (``[incidents]
    response_minutes``)."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class CallbackDesk(Protocol):
    """Where a caller's consented request to be called back is kept for staff (the store)."""

    def request_callback(self, call_id: str, caller: str | None, reason: str) -> str:
        """Store an open request for ``caller`` (the caller ID, kept sealed; None: unknown);
        returns its id. Audited by pseudonym."""
        ...


class StaffNotifier(Protocol):
    """Tells staff something needs them (notifiers/smtp.py: an e-mail to ``[notify]
    staff_address``); the text names no caller, only what to look up."""

    def tell_staff(self, text: str) -> None:
        """Deliver ``text``, or raise NotifyError naming what failed."""
        ...


@dataclass(frozen=True, slots=True)
class KnowledgePassage:
    """A piece of the organization's own content a reply may rest on."""

    id: str
    """Its citation: an FAQ entry's id, or ``document-id#section``."""
    text: str
    title: str = ""
    score: float = 0.0


@dataclass(frozen=True, slots=True)
class KnowledgeAnswer:
    """How the knowledge base would answer a question (knowledge/policy.py decides)."""

    route: Route
    """FAQ or QUOTED (``approved`` is said as written: an entry's answer, a document's
    sentences), GROUNDED (the model answers from ``passages``) or UNKNOWN (nothing relevant)."""
    approved: str = ""
    passages: tuple[KnowledgePassage, ...] = ()
    scores: tuple[tuple[str, float], ...] = ()
    """The best candidates and their scores, for ``appliance knowledge ask`` and the events."""

    @property
    def citations(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.passages)


@runtime_checkable
class Knowledge(Protocol):
    """The organization's knowledge base, searched for each turn (on a stage thread)."""

    def answer(self, question: str, context: str = "") -> KnowledgeAnswer:
        """``context``: the caller's previous words in this call, for a follow-up question
        ("and on Sunday?") that alone matches nothing."""
        ...


@runtime_checkable
class TextEmbedder(Protocol):
    """Sentence embeddings (unit length), one per text, for retrieval."""

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


@runtime_checkable
class CallRecorder(Protocol):
    """Where a call's turns are kept. ``record_turn`` returns only once the turn is durable
    (committed); it raises a StorageError when it is not, and the call goes on."""

    call_id: str

    def record_turn(self, turn: TurnRecord) -> None: ...

    def finish(self, status: str) -> None: ...


class CallMetrics(Protocol):
    """What monitoring learns of the calls of a process (deploy/metrics.py): each call taken,
    refused or stored, from the same records the store keeps (codes and timings, never what
    was said or who said it)."""

    def call_refused(self, reason: str) -> None:
        """A call the admission refused; ``reason``: its code (``limit.concurrent``, ...)."""
        ...

    def recording(self, recorder: CallRecorder) -> CallRecorder:
        """A call was taken: its recorder, through which monitoring sees each turn stored."""
        ...


@runtime_checkable
class VoiceEmbedder(Protocol):
    """A speaker embedding of one utterance (PCM16 mono), for voice biometrics."""

    def embed(self, pcm: bytes, sample_rate_hz: int) -> tuple[float, ...]: ...


@runtime_checkable
class SpeechDetector(Protocol):
    """Says whether one frame (10, 20 or 30 ms of PCM16 mono) holds speech."""

    def is_speech(self, frame: bytes, sample_rate_hz: int) -> bool: ...


@runtime_checkable
class Transcriber(Protocol):
    def transcribe(self, pcm: bytes, sample_rate_hz: int) -> Transcript: ...


@runtime_checkable
class OffloadingTranscriber(Protocol):
    """A transcriber that first asks another host (the GPU host's recognizer). That try waits
    on the network, not on this machine's cores, so the pipeline makes it beside the
    recognition stage's thread (which every call shares); only the local fallback, when the
    remote gives none (``None``), runs on that thread."""

    def transcribe(self, pcm: bytes, sample_rate_hz: int) -> Transcript: ...

    def transcribe_remote(self, pcm: bytes, sample_rate_hz: int) -> Transcript | None: ...

    def transcribe_local(self, pcm: bytes, sample_rate_hz: int) -> Transcript: ...


@runtime_checkable
class ChatModel(Protocol):
    """Streams the reply's text pieces. Closing the iterator early stops the generation."""

    def stream_chat(self, messages: Sequence[ChatMessage], max_tokens: int) -> Iterator[str]: ...


@runtime_checkable
class Synthesizer(Protocol):
    """Speaks text; yields audio chunks at ``sample_rate_hz`` as they are ready. ``pace``
    above 1 speaks that much longer (a caller asked for it slower)."""

    def synthesize(
        self, text: str, sample_rate_hz: int, pace: float = 1.0
    ) -> Iterator[AudioChunk]: ...


@runtime_checkable
class AudioSource(Protocol):
    """Caller audio, one frame at a time, at ``sample_rate_hz``.

    ``realtime`` is True when frames arrive at the pace of speech (a microphone, a phone call,
    a paced file). A source that is not realtime is read in lockstep: media time stands still
    while the pipeline computes, as if the machine were infinitely fast.
    """

    sample_rate_hz: int
    frame_ms: int
    realtime: bool

    async def read_frame(self) -> bytes | None:
        """The next frame, exactly ``frame_ms`` long, or None at the end of the stream."""
        ...


@runtime_checkable
class ScreenedAudio(Protocol):
    """A source that screens its sound at the rate it is captured (audio_io/screening.py):
    the flags of the utterance since the last reset (reset as each utterance starts)."""

    def audio_flags(self) -> tuple[str, ...]: ...

    def reset_audio_flags(self) -> None: ...


@runtime_checkable
class AudioSink(Protocol):
    """Where the agent's voice goes, one frame per input frame (silence when quiet)."""

    sample_rate_hz: int

    async def write_frame(self, pcm: bytes) -> None: ...

    async def close(self) -> None: ...


class Counters(Protocol):
    """Where limits and lockouts keep their counts, so they outlive a process (the store).
    Keys may name a person or an address: the store keeps only a keyed hash of them. Times
    are wall-clock seconds (they must mean the same after a restart)."""

    def window_hit(
        self, scope: str, key: str, at: float, window_s: float, limit: int, record: bool
    ) -> bool:
        """In one transaction: whether fewer than ``limit`` events of ``key`` fall in the
        ``window_s`` before ``at``; the event is counted when so, or always with ``record``."""
        ...

    def window_count(self, scope: str, key: str, since: float) -> int: ...

    def state(self, scope: str, key: str) -> str | None:
        """A small value kept for ``key`` (a lockout's state), or None."""
        ...

    def set_state(self, scope: str, key: str, value: str | None) -> None: ...

    def change_state(
        self, scope: str, key: str, change: Callable[[str | None], str | None]
    ) -> str | None:
        """Read, change and write ``key``'s value in one transaction (parallel calls for the
        same key lose no update); returns the value written."""
        ...


class CredentialKind(enum.StrEnum):
    """What the caller directory keeps for an enrolled caller, besides their number and name."""

    PIN = "pin"
    """The PIN's scrypt salt (16 bytes) then hash (32 bytes), never the PIN."""
    TOTP = "totp"
    """The authenticator's shared secret (RFC 6238), raw bytes."""
    CONTACT = "contact"
    """Where one-time codes go (an e-mail address or a phone number), UTF-8."""


class CodeNotifier(Protocol):
    """Delivers a one-time code out of band (notifiers/smtp.py: the organization's SMTP relay)."""

    def reaches(self, contact: str) -> bool:
        """Whether ``contact`` is something this notifier delivers to (an e-mail address)."""
        ...

    def send(self, contact: str, code: str) -> None:
        """Deliver ``code`` to ``contact``, or raise NotifyError (or ConfigError for a secret
        file it may not use); neither the code nor the contact is logged."""
        ...


class EntryState(enum.StrEnum):
    """A caller ID as the directory knows it."""

    ABSENT = "absent"
    ACTIVE = "active"
    LOCKED = "locked"
    """Enrolled, but every factor fails (voice included) until staff unlock it."""


class CallerDirectory(Protocol):
    """The organization's enrolled callers (the store): what identity needs to check a factor.
    The caller ID only names the entry to check against; it proves nothing."""

    def entry_state(self, caller: str) -> EntryState: ...

    def credential(self, caller: str, kind: CredentialKind) -> bytes | None:
        """The caller's enrolled ``kind``, or None: not enrolled, not set, or locked."""
        ...
