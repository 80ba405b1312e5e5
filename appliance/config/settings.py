"""Frozen, validated settings: ``config/appliance.toml`` plus ``APPLIANCE_*`` overrides.

Precedence, lowest first: built-in defaults, the TOML file (``--config`` or ``APPLIANCE_CONFIG``,
else ``config/appliance.toml`` of the checkout when present), then environment variables named
``APPLIANCE_<SECTION>__<KEY>`` (for example ``APPLIANCE_STT__MODEL=whisper-tiny-en``).
``APPLIANCE_HOME`` sets the state folder.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
import socket
import string
import tomllib
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.core.errors import ConfigError
from appliance.core.hours import HoursError, OpeningHours
from appliance.core.ports import IncidentSeverity

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The checkout (or install prefix) holding ``config/`` and ``models/`` beside the package."""

DEFAULT_CONFIG_FILE = PACKAGE_ROOT / "config" / "appliance.toml"
DEFAULT_MANIFEST_FILE = PACKAGE_ROOT / "models" / "manifest.toml"
DEFAULT_KNOWLEDGE_FOLDER = PACKAGE_ROOT / "config" / "knowledge"
DEFAULT_CONSENT_FOLDER = PACKAGE_ROOT / "config" / "consent"
INSTALLED_HOME = Path("/var/lib/appliance")
ENV_PREFIX = "APPLIANCE_"


DISCLOSURE_SAYS_AUTOMATED = re.compile(r"(?i:\b(?:automated|virtual assistant)\b)|\bAI\b")
"""What every disclosure must say: that the caller is speaking with an automated assistant
(the EU AI Act, Art. 50(1), asks that people be told they are interacting with an AI system;
several US states' bot-disclosure laws, e.g. Cal. Bus. & Prof. Code 17941, likewise)."""
_JURISDICTION_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def _check_networks(section: str, settings: object, keys: tuple[str, ...]) -> None:
    """Each value of these keys is an address or a network (CIDR)."""
    for key in keys:
        for value in getattr(settings, key):
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ConfigError(
                    "config.invalid", f"{section}.{key}: {value!r} is not an address or CIDR"
                ) from exc


def _check(condition: bool, key: str, rule: str) -> None:
    if not condition:
        raise ConfigError("config.invalid", f"{key}: {rule}")


@dataclass(frozen=True)
class AudioSettings:
    frame_ms: int = 20
    output_sample_rate_hz: int = 22_050
    input_device: str = ""
    output_device: str = ""
    capture_rate_hz: int = 48_000
    """The microphone's capture rate: at 48 kHz its sound is screened for the residue of an
    ultrasonic carrier before it is resampled to 16 kHz; 16000 captures at the pipeline's rate
    (no such screening)."""

    def __post_init__(self) -> None:
        _check(self.frame_ms in (10, 20, 30), "audio.frame_ms", "must be 10, 20 or 30")
        _check(self.capture_rate_hz in (16_000, 48_000), "audio.capture_rate_hz", "16000 or 48000")
        _check(
            8_000 <= self.output_sample_rate_hz <= 48_000,
            "audio.output_sample_rate_hz",
            "must be between 8000 and 48000",
        )


@dataclass(frozen=True)
class EndpointingSettings:
    vad_aggressiveness: int = 2
    start_window_ms: int = 200
    start_ratio: float = 0.6
    preroll_ms: int = 300
    silence_timeout_ms: int = 600
    speculate_after_ms: int = 200
    max_utterance_s: float = 30.0
    barge_in: bool = True

    def __post_init__(self) -> None:
        _check(0 <= self.vad_aggressiveness <= 3, "endpointing.vad_aggressiveness", "0 to 3")
        _check(self.start_window_ms >= 20, "endpointing.start_window_ms", "at least 20")
        _check(0 < self.start_ratio <= 1, "endpointing.start_ratio", "in (0, 1]")
        _check(self.preroll_ms >= 0, "endpointing.preroll_ms", "not negative")
        _check(
            100 <= self.silence_timeout_ms <= 5_000,
            "endpointing.silence_timeout_ms",
            "between 100 and 5000",
        )
        _check(
            0 <= self.speculate_after_ms < self.silence_timeout_ms,
            "endpointing.speculate_after_ms",
            "0 (off) or less than silence_timeout_ms",
        )
        _check(self.max_utterance_s >= 1, "endpointing.max_utterance_s", "at least 1")


@dataclass(frozen=True)
class SttSettings:
    model: str = "whisper-base"
    path: str = ""
    language: str = "en"
    beam_size: int = 1
    compute_type: str = "int8"
    threads: int = 2
    hint: str = "auto"
    """Words Whisper is told to expect (its initial prompt): "auto" takes the knowledge base's
    names and most asked-about words, "" none, any other text is used as it is."""
    remote_address: str = ""
    """A Wyoming speech-recognition server on the organization's GPU host
    (``wyoming-faster-whisper``) behind a TLS terminator: ``ADDRESS:PORT`` (an IPv6 address in
    brackets), an address, never a name; it joins the egress allowlist. Empty: the node's own
    model recognizes alone. The local model is loaded either way: it recognizes while the
    remote cannot."""
    remote_ca_file: str = ""
    """The CA (PEM) the terminator's certificate must chain to, pinned: the only one trusted,
    TLS 1.2 at least, the certificate must carry the address."""
    remote_timeout_s: float = 10.0
    """How long connecting, the TLS handshake, and the wait for the transcript may take."""
    remote_retry_s: float = 30.0
    """After a failure of the remote, the local model recognizes for this long before the
    remote is tried again."""

    def __post_init__(self) -> None:
        if self.remote_address:
            host, _, port = self.remote_address.rpartition(":")
            bracketed = host.startswith("[") and host.endswith("]")
            try:  # an address: the appliance looks up no outside names (deploy/egress.py)
                if ":" in host and not bracketed:
                    raise ValueError("an IPv6 address without brackets")
                ipaddress.ip_address(host[1:-1] if bracketed else host)
            except ValueError as exc:
                raise ConfigError(
                    "config.invalid", "stt.remote_address: ADDRESS:PORT, an address, not a name"
                ) from exc
            _check(
                port.isdigit() and 1 <= int(port) <= 65_535, "stt.remote_address", "port 1-65535"
            )
            _check(bool(self.remote_ca_file), "stt.remote_ca_file", "needed with remote_address")
        _check(0.5 <= self.remote_timeout_s <= 120, "stt.remote_timeout_s", "0.5 to 120")
        _check(1 <= self.remote_retry_s <= 3600, "stt.remote_retry_s", "1 to 3600")
        _check(bool(self.model), "stt.model", "must name a model of the manifest")
        _check(len(self.hint) <= 600, "stt.hint", "at most 600 characters")
        _check(1 <= self.beam_size <= 10, "stt.beam_size", "1 to 10")
        _check(self.threads >= 1, "stt.threads", "at least 1")

    @property
    def remote_host(self) -> str:
        """The remote's address (no brackets), or empty."""
        return self.remote_address.rpartition(":")[0].strip("[]")

    @property
    def remote_port(self) -> int:
        return int(self.remote_address.rpartition(":")[2]) if self.remote_address else 0


DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful, polite voice assistant for a customer service line. "
    "Answer in one or two short spoken sentences. Do not use lists, markdown or emoji."
)


@dataclass(frozen=True)
class LlmSettings:
    model: str = "smollm2-135m"
    path: str = ""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    context_tokens: int = 2048
    max_reply_tokens: int = 96
    temperature: float = 0.2
    repeat_penalty: float = 1.3
    history_turns: int = 6
    threads: int = 2
    seed: int = 7
    contexts: int = 4
    """Replies generated at once, each in its own llama.cpp context (a KV cache of
    ``context_tokens``, about 150 MiB with the default model); their tokens interleave, a reply
    still owed its first sentence first. More wait for a context."""
    fallback_reply: str = "Sorry, something went wrong on my side. Could you say that again?"
    remote_url: str = ""
    """An OpenAI-compatible server on the organization's GPU host (llama.cpp's own,
    ``python -m llama_cpp.server``): ``https://ADDRESS:PORT/v1``, an address, never a name (the
    appliance looks up no outside names); it joins the egress allowlist. Empty: the local
    model answers alone. The local model is loaded either way: it answers while the remote
    cannot."""
    remote_ca_file: str = ""
    """The CA (PEM) the remote's certificate must chain to, pinned: the only one trusted (not
    the system's), TLS 1.2 at least, the certificate must carry the url's address."""
    remote_model: str = "default"
    """The model name sent in each request (the server's ``--model_alias``)."""
    remote_api_key_file: str = ""
    """An owner-only file with the server's API key (its ``--api_key``), sent as
    ``Authorization: Bearer``, read at each request; empty: none sent."""
    remote_timeout_s: float = 10.0
    """How long connecting, the TLS handshake, and the wait for each piece of a reply may take."""
    remote_retry_s: float = 30.0
    """After a failure of the remote, the local model answers for this long before the remote
    is tried again."""

    def __post_init__(self) -> None:
        if self.remote_url:
            _check(self.remote_url.startswith("https://"), "llm.remote_url", "an https:// url")
            netloc = self.remote_url.removeprefix("https://").split("/", 1)[0]
            host, _, port = netloc.rpartition(":")
            try:  # an address: the appliance looks up no outside names (deploy/egress.py)
                ipaddress.ip_address(host.strip("[]"))
            except ValueError as exc:
                raise ConfigError(
                    "config.invalid",
                    "llm.remote_url: https://ADDRESS:PORT/PATH, an address, not a name",
                ) from exc
            _check(port.isdigit() and 1 <= int(port) <= 65_535, "llm.remote_url", "port 1-65535")
            _check(bool(self.remote_ca_file), "llm.remote_ca_file", "needed with remote_url")
            _check(bool(self.remote_model), "llm.remote_model", "needed with remote_url")
        _check(0.5 <= self.remote_timeout_s <= 120, "llm.remote_timeout_s", "0.5 to 120")
        _check(1 <= self.remote_retry_s <= 3600, "llm.remote_retry_s", "1 to 3600")
        _check(bool(self.model), "llm.model", "must name a model of the manifest")
        _check(bool(self.system_prompt.strip()), "llm.system_prompt", "must not be empty")
        _check(256 <= self.context_tokens <= 32_768, "llm.context_tokens", "256 to 32768")
        _check(1 <= self.max_reply_tokens <= 1024, "llm.max_reply_tokens", "1 to 1024")
        _check(0 <= self.temperature <= 2, "llm.temperature", "0 to 2")
        _check(1 <= self.repeat_penalty <= 2, "llm.repeat_penalty", "1 to 2")
        _check(self.history_turns >= 0, "llm.history_turns", "not negative")
        _check(self.threads >= 1, "llm.threads", "at least 1")
        _check(1 <= self.contexts <= 64, "llm.contexts", "1 to 64")
        _check(bool(self.fallback_reply.strip()), "llm.fallback_reply", "must not be empty")

    @property
    def remote_host(self) -> str:
        """The remote's address (no brackets), or empty."""
        netloc = self.remote_url.removeprefix("https://").split("/", 1)[0]
        return netloc.rpartition(":")[0].strip("[]") if self.remote_url else ""

    @property
    def remote_port(self) -> int:
        netloc = self.remote_url.removeprefix("https://").split("/", 1)[0]
        return int(netloc.rpartition(":")[2]) if self.remote_url else 0

    @property
    def remote_path(self) -> str:
        """The API's base path (``/v1``), without a trailing slash."""
        rest = self.remote_url.removeprefix("https://").partition("/")[2]
        return ("/" + rest).rstrip("/") if self.remote_url else ""


@dataclass(frozen=True)
class TtsSettings:
    model: str = "piper-joe-medium"
    path: str = ""
    length_scale: float = 1.0
    slower_pace: float = 1.35
    """How much longer the last reply takes when the caller asks to hear it slower ("slower,
    please"): a multiplier of ``length_scale``."""
    threads: int = 1

    def __post_init__(self) -> None:
        _check(bool(self.model), "tts.model", "must name a model of the manifest")
        _check(0.3 <= self.length_scale <= 3, "tts.length_scale", "0.3 to 3")
        _check(1 < self.slower_pace <= 3, "tts.slower_pace", "above 1, at most 3")
        _check(self.threads >= 1, "tts.threads", "at least 1")


# Distress words that alone do not show danger: a turn with only these is asked first.
_DISTRESS_UNSURE = (
    "emergency",
    "following me",
    "threatening me",
    "someone is hurting me",
    "he's hurting me",
    "she's hurting me",
    "they're hurting me",
    "going to jump",
    "whole bottle",
    "trying to get in",
    "get into my flat",
    "get into my house",
    "get into my home",
    "locked in",
)


@dataclass(frozen=True)
class PolicySettings:
    organization: str = "Example Co."
    role: str = "the customer service voice assistant"
    allowed_topics: tuple[str, ...] = (
        "opening hours",
        "appointments",
        "orders and deliveries",
        "account questions",
        "branch locations",
        "payments and billing",
    )
    capability_statement: str = (
        "I can help with opening hours, appointments, orders and deliveries, account "
        "questions, branch locations, and payments."
    )
    topic_keywords: tuple[str, ...] = (
        "balance", "card", "bill", "refund", "parcel", "address", "statement", "transfer",
        "close", "time", "when", "where", "help", "hello", "thank", "human", "person", "speak",
        "agent", "staff", "code", "number", "money", "loan", "mortgage", "overdraft", "fees",
    )  # fmt: skip
    """Words that also count as on topic (guard/topics.py: topic drift is watched)."""
    max_turn_words: int = 150
    """A longer turn is not sent to the model; the caller is asked to be briefer."""
    too_long_reply: str = "That was a lot at once. Could you tell me briefly what you need?"
    refused_keywords: tuple[str, ...] = (
        "diagnosis",
        "diagnose me",
        "prescription",
        "medication",
        "dosage",
        "symptoms",
        "legal advice",
        "lawsuit",
        "sue them",
        "investment advice",
        "invest in",
        "investing in",
        "stock tip",
        "which stocks",
        "cryptocurrency",
        "bitcoin",
        "politics",
        "political",
        "election",
        "vote for",
        "religion",
        "religious",
    )
    refusal_reply: str = (
        "I'm sorry, I can't help with that. I can help with opening hours, appointments, "
        "orders and deliveries, account questions, branch locations, and payments."
    )
    blocked_reply: str = (
        "I can't help with that request. I can help with opening hours, appointments, orders "
        "and deliveries, account questions, branch locations, and payments."
    )
    distress_keywords: tuple[str, ...] = (
        "kill myself",
        "killing myself",
        "suicide",
        "suicidal",
        "end my life",
        "hurt myself",
        "harm myself",
        "self harm",
        "want to die",
        "overdose",
        "taken all my pills",
        "heart attack",
        "can't breathe",
        "cannot breathe",
        "isn't breathing",
        "is not breathing",
        "chest pain",
        "being attacked",
        "breaking in",
        "with a gun",
        "with a knife",
        "i've been shot",
        "i have been shot",
        "i've been stabbed",
        "in danger",
        *_DISTRESS_UNSURE,
    )
    distress_exclusions: tuple[str, ...] = (
        "emergency contact",
        "emergency contacts",
        "emergency fund",
        "emergency funds",
        "emergency savings",
        "emergency credit",
        "emergency cash",
        "heart attack insurance",
        "heart attack cover",
        "in case of emergency",
        "in case of an emergency",
        "get in touch",
        "rate locked in",
        "rate is locked in",
        "locked in rate",
        "locked in a rate",
        "locked in my rate",
        "locked in the rate",
        "price locked in",
        "rate going to jump",
        "rates going to jump",
        "price going to jump",
        "prices going to jump",
        "fees going to jump",
        "payment going to jump",
        "payments going to jump",
    )
    """Phrases that hold a distress word but say nothing of danger ("change my emergency
    contact"): taken out of the turn before the distress words are looked for."""
    distress_unsure: tuple[str, ...] = _DISTRESS_UNSURE
    """Distress words that alone do not show danger ("it's an emergency, I lost my card"): a
    turn with only these gets ``distress_check_reply`` first; a yes takes the distress path,
    anything else is answered as usual. A clear word goes straight to the distress path."""
    distress_check_reply: str = "Are you in danger right now?"
    unclear_audio_reply: str = "Sorry, I couldn't hear that clearly. Could you say it again?"
    """Said instead of acting on a turn whose sound carries an ultrasonic carrier's residue
    (words a microphone demodulated from sound no one hears)."""
    distress_reply: str = (
        "I'm concerned for your safety. If you are in danger, please call your local emergency "
        "number now: 911 in the US, 112 in Europe, 999 in the UK. I'm alerting a member of our "
        "team to help you."
    )
    output_fallback: str = (
        "Sorry, I can't share that. I can help with opening hours, appointments, orders and "
        "deliveries, account questions, branch locations, and payments."
    )
    output_close: str = "If you need more detail, I can put you through to a member of our team."
    """Ends a reply whose later sentence layer 3 stopped: it stands on its own after what was
    already said (never a withdrawal of it)."""
    redact: tuple[str, ...] = (
        "card",
        "cvv",
        "ssn",
        "national_id",
        "iban",
        "account",
        "phone",
        "email",
        "dob",
    )
    flagged: str = "caution"
    """What a flagged (suspicious, not blocked) turn gets: "caution" answers under the strict
    prompt, "refuse" gets the blocked reply."""
    payment_turns: int = 3
    """Turns a payment flow stays open after the last card detail; recording pauses meanwhile."""

    def __post_init__(self) -> None:
        known = {"card", "cvv", "ssn", "national_id", "iban", "account", "phone", "email", "dob"}
        unknown = set(self.redact) - known
        if unknown:
            raise ConfigError("config.invalid", f"policy.redact: unknown kinds {sorted(unknown)}")
        _check(self.flagged in ("caution", "refuse"), "policy.flagged", "caution or refuse")
        _check(0 <= self.payment_turns <= 20, "policy.payment_turns", "0 to 20")
        _check(
            set(self.distress_unsure) <= set(self.distress_keywords),
            "policy.distress_unsure",
            "words that are also in distress_keywords",
        )
        for key in (
            "refusal_reply",
            "blocked_reply",
            "distress_reply",
            "unclear_audio_reply",
            "output_fallback",
            "output_close",
            "too_long_reply",
        ):
            _check(bool(getattr(self, key).strip()), f"policy.{key}", "must not be empty")
        _check(self.max_turn_words >= 10, "policy.max_turn_words", "at least 10")


@dataclass(frozen=True)
class KnowledgeSettings:
    """The organization's own content (knowledge/): FAQ entries and documents, and the answer
    policy that decides, in code, how a question is answered."""

    enabled: bool = True
    """false: no knowledge base; the model answers under the system prompt alone."""
    folder: str = ""
    """FAQ files (``faq/*.toml``) and documents (``documents/*.md|txt|html``); empty means
    ``config/knowledge`` of this installation."""
    model: str = "minilm-l6-int8"
    """The sentence-embedding model of models/manifest.toml (role "embedding")."""
    path: str = ""
    threads: int = 1
    confident: float = 0.70
    """A best FAQ match from this score is answered with its approved answer, as written."""
    margin: float = 0.03
    """... when it leads the next other entry by at least this much (else the model answers
    from both)."""
    related: float = 0.60
    """Passages from this score are given to the model; below it nothing is relevant and the
    caller hears ``unknown_reply``."""
    passages: int = 2
    """How many passages (at most) a grounded answer is given."""
    quote_documents: bool = True
    """A partial match whose best passage is a document is answered with that passage's best
    sentences, quoted as written; false: the model answers from the passages."""
    unknown_reply: str = (
        "I'm sorry, I don't have that information. Would you like me to put you through to a "
        "member of our team?"
    )
    """The honest answer when nothing relevant is known; it offers a person (a yes transfers
    the call)."""

    def __post_init__(self) -> None:
        _check(bool(self.model), "knowledge.model", "must name a model of the manifest")
        _check(self.threads >= 1, "knowledge.threads", "at least 1")
        for key in ("confident", "related", "margin"):
            _check(0 <= getattr(self, key) <= 1, f"knowledge.{key}", "0 to 1")
        _check(self.related <= self.confident, "knowledge.related", "at most knowledge.confident")
        _check(1 <= self.passages <= 8, "knowledge.passages", "1 to 8")
        _check(bool(self.unknown_reply.strip()), "knowledge.unknown_reply", "must not be empty")

    @property
    def folder_path(self) -> Path:
        return Path(self.folder) if self.folder else DEFAULT_KNOWLEDGE_FOLDER


@dataclass(frozen=True)
class LimitsSettings:
    """Rate limits, quotas and abuse handling: excess is refused politely, never queued."""

    max_concurrent_calls: int = 4
    calls_per_caller_per_hour: int = 20
    calls_per_address_per_minute: int = 30
    turns_per_minute: int = 20
    max_call_s: int = 1800
    probes_per_call: int = 3
    """Guard blocks in one call before the probe action is taken."""
    probes_per_caller_per_day: int = 6
    """Guard blocks across one caller's calls in a day before the probe action is taken."""
    probe_action: str = "end_call"
    """warn (log and incident), end_call (goodbye and hang up, incident), block_caller (end the
    call and refuse the caller for block_minutes, incident)."""
    block_minutes: int = 60
    volume_spike_db: float = 15.0
    """An utterance this many dB above the caller's median level so far is a volume spike."""
    topic_drift_turns: int = 4
    """Off-topic turns in a row (guard/topics.py) that count as topic drift."""
    anomaly_action: str = "warn"
    """For a volume spike or topic drift: warn (log and incident), end_call or block_caller."""
    busy_reply: str = "I'm sorry, we can't take your call right now. Please call again later."
    goodbye_reply: str = "Thank you for calling. Goodbye."

    def __post_init__(self) -> None:
        for key in (
            "max_concurrent_calls",
            "calls_per_caller_per_hour",
            "calls_per_address_per_minute",
            "turns_per_minute",
            "probes_per_call",
            "probes_per_caller_per_day",
            "block_minutes",
        ):
            _check(getattr(self, key) >= 1, f"limits.{key}", "at least 1")
        _check(60 <= self.max_call_s <= 24 * 3600, "limits.max_call_s", "60 to 86400")
        for key in ("probe_action", "anomaly_action"):
            _check(
                getattr(self, key) in ("warn", "end_call", "block_caller"),
                f"limits.{key}",
                "warn, end_call or block_caller",
            )
        _check(3 <= self.volume_spike_db <= 60, "limits.volume_spike_db", "3 to 60")
        _check(self.topic_drift_turns >= 2, "limits.topic_drift_turns", "at least 2")


DEFAULT_RESPONSE_MINUTES: dict[str, int] = {
    IncidentSeverity.HIGH.value: 15,
    IncidentSeverity.MEDIUM.value: 240,
    IncidentSeverity.LOW.value: 1440,
}
DEFAULT_RUNBOOKS: dict[str, str] = {
    "distress": "A caller may be in danger (self-harm or an emergency). Now: open the call "
    "(Calls, with the incident as your reason) and read the turn named in the summary; call "
    "the caller back at once if you have their number (callbacks, or the directory). If life "
    "may be at risk, call the emergency services for them. Acknowledge when you start; "
    "resolve with what was done (called_back, emergency_services, false_alarm).",
    "flood": "Calls from one caller or address were refused past the limits of [limits]. "
    "Check the audit trail's call_refused events for where they come from; if it goes on, "
    "block the source at the PBX or the firewall. Resolve as blocked, benign or false_alarm.",
    "probing": "A caller's turns were blocked by the input guard again and again (prompt "
    "injection or extraction attempts). Read the call with a reason; if it is an attack, "
    'consider [limits] probe_action = "block_caller" and run `appliance redteam` with its '
    "wording. Resolve as attack, benign or false_alarm.",
    "volume_spike": "One utterance was far louder than the caller's others (shouting, or a "
    "sound played into the line). Read the call's turns with a reason and check whether the "
    "agent was misled. Resolve as benign, attack or false_alarm.",
    "topic_drift": "A caller stayed off topic for several turns in a row. Read the call with a "
    "reason: a confused caller may need a person (offer a callback), an attacker a block. "
    "Resolve as benign, called_back or attack.",
    "redteam_gate": "The appliance took calls with no passing red-team report for what now "
    "decides its behaviour (models, prompt, knowledge, tools). Run `appliance redteam` now; "
    "resolve once a report passes for the current fingerprint.",
    "siem_queue_full": "Security events are not reaching the SIEM: its collector has been away "
    "long enough to fill the queue under APPLIANCE_HOME/siem (or its disk is full). Nothing is "
    "lost (the events wait in the store): check `appliance siem status` and "
    "`journalctl -u appliance-siem`, bring the collector back or free the disk; the forwarder "
    "sends the backlog in order by itself. Resolve as collector_restored or disk_freed.",
}
"""A runbook for each kind of incident the appliance opens (grep ``open_incident(`` and
``escalation=``): what the person who picks it up does."""
NO_RUNBOOK = (
    "No runbook is configured for incidents of kind {kind!r}: add one under "
    "[incidents.runbooks] in the configuration. Until then: read the summary and the call, "
    "acknowledge, act, and resolve with a note code."
)
RUNBOOK_KIND = re.compile(r"[a-z0-9_]{1,64}")


@dataclass(frozen=True)
class IncidentSettings:
    """Incident response: how soon each severity must be resolved, and the runbook shown for
    each kind. The file's tables are merged over the defaults: a severity or kind left out
    keeps its built-in value."""

    response_minutes: dict[str, int] = field(
        default_factory=lambda: dict(DEFAULT_RESPONSE_MINUTES), hash=False
    )
    """Minutes from opening by which an incident of each severity (high, medium, low) must be
    resolved; acknowledging does not stop the clock. Past it, it counts as overdue."""
    runbooks: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RUNBOOKS), hash=False)
    """Incident kind -> what to do, shown on the incident page."""

    def __post_init__(self) -> None:
        severities = {s.value for s in IncidentSeverity}
        for severity, minutes in self.response_minutes.items():
            _check(
                severity in severities,
                f"incidents.response_minutes.{severity}",
                "a severity: high, medium or low",
            )
            _check(
                1 <= minutes <= 525_600,
                f"incidents.response_minutes.{severity}",
                "1 to 525600 minutes (a year)",
            )
        for kind, text in self.runbooks.items():
            _check(
                bool(RUNBOOK_KIND.fullmatch(kind)),
                f"incidents.runbooks.{kind}",
                "a kind is lower-case letters, digits and _",
            )
            _check(
                0 < len(text.strip()) <= 4000,
                f"incidents.runbooks.{kind}",
                "a text of 1 to 4000 characters",
            )
        # Frozen: the merged tables are set once, here (dataclasses' documented way).
        merged_minutes = {**DEFAULT_RESPONSE_MINUTES, **self.response_minutes}
        object.__setattr__(self, "response_minutes", merged_minutes)
        object.__setattr__(self, "runbooks", {**DEFAULT_RUNBOOKS, **self.runbooks})

    def runbook(self, kind: str) -> str:
        """The runbook of ``kind``, or a text saying that none is configured."""
        return self.runbooks.get(kind) or NO_RUNBOOK.format(kind=kind)


class CredentialSource(enum.StrEnum):
    """What callers' factors are checked against."""

    DEMO = "demo"
    """The fictional callers of ``tools/demo_data.json`` (the demo configuration)."""
    DIRECTORY = "directory"
    """The organization's own callers, enrolled with ``appliance callers``."""


_SERVER_NAME = re.compile(r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
IDEMPOTENT_METHODS = frozenset({"GET", "PUT", "DELETE"})
"""RFC 9110 9.2.2: a request that may be sent again without changing the outcome (retried)."""
PARAM_KINDS = ("string", "integer", "date", "choice")
CALLER_PLACEHOLDER = "caller"
"""``{caller}`` in a URL is the caller ID of the call (the number being verified)."""
_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def placeholders(template: str, key: str) -> tuple[str, ...]:
    """The ``{name}`` (or ``{dotted.path}``) placeholders of ``template``, in order; a stray
    brace or a format specification is a ConfigError naming ``key``."""
    names = _PLACEHOLDER.findall(template)
    rest = _PLACEHOLDER.sub("", template)
    _check("{" not in rest and "}" not in rest, key, "a brace that opens or closes no {field}")
    for name in names:
        _check(bool(_FIELD_PATH.fullmatch(name)), key, f"{{{name}}} is not a field name")
    return tuple(names)


@dataclass(frozen=True)
class AllowedHost:
    """A host HTTP tools may reach: the name its certificate carries (and the URLs name) and
    the address to connect to, so no name is ever looked up."""

    name: str = ""
    address: str = ""

    def check(self, key: str) -> None:
        _check(bool(_SERVER_NAME.fullmatch(self.name)), f"{key}.name", "a DNS name is needed")
        try:  # an address, or a network of one address: the connection needs a single one
            network = ipaddress.ip_network(self.address, strict=False)
        except ValueError as exc:
            raise ConfigError(
                "config.invalid", f"{key}.address: {self.address!r} is not an address"
            ) from exc
        _check(
            network.num_addresses == 1,
            f"{key}.address",
            "one address (a /32 or /128 at most): the connection goes to it",
        )

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_network(self.address, strict=False).network_address)


@dataclass(frozen=True)
class HttpParam:
    """An argument of an HTTP tool, typed as a Python tool's (tools/registry.py ``Param``)."""

    name: str = ""
    kind: str = "string"
    description: str = ""
    required: bool = True
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    max_length: int = 200
    pattern: str = ""
    ask: str = ""

    def check(self, key: str) -> None:
        _check(bool(_NAME.fullmatch(self.name)), f"{key}.name", "lower-case letters, digits, _")
        _check(self.name != CALLER_PLACEHOLDER, f"{key}.name", '"caller" is the caller ID')
        _check(self.kind in PARAM_KINDS, f"{key}.kind", "string, integer, date or choice")
        _check(self.kind != "choice" or bool(self.choices), f"{key}.choices", "a choice needs them")
        _check(
            self.kind in ("date", "choice") or not self.required,
            f"{key}.required",
            "a string or integer cannot be taken from the caller's words yet (tools/slots.py): "
            "make it required = false, or a choice",
        )
        _check(1 <= self.max_length <= 2000, f"{key}.max_length", "1 to 2000")
        if self.minimum is not None and self.maximum is not None:
            _check(self.minimum <= self.maximum, f"{key}.maximum", "at least minimum")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ConfigError("config.invalid", f"{key}.pattern: {exc}") from exc


@dataclass(frozen=True)
class HttpTool:
    """A tool declared in the configuration (``[[tools.http]]``) that calls one of the
    organization's own HTTPS services (tools/http.py)."""

    name: str = ""
    description: str = ""
    method: str = "GET"
    url: str = ""
    """``https://`` only, its host one of ``[tools] allowed_hosts``; ``{param}`` and
    ``{caller}`` placeholders in the path and query are filled URL-encoded."""
    params: tuple[HttpParam, ...] = ()
    scopes: tuple[str, ...] = ()
    required_level: int = 2
    changes_data: bool = False
    triggers: tuple[str, ...] = ()
    timeout_s: float = 5.0
    retries: int = 0
    speak: str = ""
    """What the caller hears: the only fields of the JSON response that are used
    (``{balance}``, ``{account.balance}``); nothing else of the response is kept."""

    def check(self, key: str, hosts: tuple[AllowedHost, ...]) -> None:
        from urllib.parse import urlsplit

        _check(bool(_NAME.fullmatch(self.name)), f"{key}.name", "lower-case letters, digits, _")
        _check(bool(self.description.strip()), f"{key}.description", "is needed")
        _check(self.method in HTTP_METHODS, f"{key}.method", ", ".join(HTTP_METHODS))
        _check(bool(self.url), f"{key}.url", "is needed")
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError("config.invalid", f"{key}.url: {exc}") from exc
        _check(parts.scheme == "https", f"{key}.url", "https:// only")
        _check(not parts.username and not parts.password, f"{key}.url", "no user or password")
        _check(not parts.fragment, f"{key}.url", "no #fragment")
        _check(port is None or port > 0, f"{key}.url", "a port from 1 to 65535")
        names = {host.name.lower().rstrip(".") for host in hosts}
        host = (parts.hostname or "").rstrip(".")
        _check(
            host in names,
            f"{key}.url",
            f"its host {host!r} is not one of tools.allowed_hosts (a name with its address)",
        )
        params = {p.name for p in self.params}
        _check(len(params) == len(self.params), f"{key}.params", "two with one name")
        for name in placeholders(f"{parts.path}?{parts.query}", f"{key}.url"):
            _check(
                name in params or name == CALLER_PLACEHOLDER,
                f"{key}.url",
                f"{{{name}}} is not a parameter (nor {{caller}})",
            )
        for index, param in enumerate(self.params):
            param.check(f"{key}.params[{index}]")
        _check(self.required_level in (0, 1, 2), f"{key}.required_level", "0, 1 or 2")
        _check(0.1 <= self.timeout_s <= 30, f"{key}.timeout_s", "0.1 to 30 seconds")
        _check(0 <= self.retries <= 3, f"{key}.retries", "0 to 3")
        _check(
            self.retries == 0 or self.method in IDEMPOTENT_METHODS,
            f"{key}.retries",
            f"only GET, PUT and DELETE are sent again, not {self.method}",
        )
        _check(bool(self.triggers), f"{key}.triggers", "at least one intent pattern")
        for pattern in self.triggers:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError("config.invalid", f"{key}.triggers: {exc}") from exc
        _check(bool(self.speak.strip()), f"{key}.speak", "is needed")
        placeholders(self.speak, f"{key}.speak")


@dataclass(frozen=True)
class ToolsSettings:
    enabled: tuple[str, ...] = (
        "transfer_to_human",
        "book_appointment",
        "move_appointment",
        "cancel_appointment",
    )
    """The tools this deployment uses; the model is shown only these. The appointment tools
    are on because the knowledge base promises that appointments can be booked, moved or
    cancelled on this line."""
    credentials: CredentialSource = CredentialSource.DIRECTORY
    """Where the PIN, TOTP and voice factors look a caller up: ``directory`` (the caller
    directory in the encrypted store, ``appliance callers``) or ``demo`` (the fictional callers
    of demo_data.json: only the demo configuration, ``scripts/demo``, sets it)."""
    max_factor_attempts: int = 3
    """Wrong PINs or codes before that factor locks (for lockout_s, doubled each time)."""
    lockout_s: int = 300
    voice_prompt: str = (
        "To do that I need to check it's you. Please say these digits after me: {digits}."
    )
    pin_prompt: str = "To do that I need to check it's you. Please say your PIN, digit by digit."
    totp_prompt: str = (
        "Thank you. Now please read me the six-digit code from your authenticator app."
    )
    confirm_prompt: str = "To confirm: {action}. Shall I go ahead? Please say yes or no."
    wrong_answer: str = "That doesn't match, I'm afraid. Please try again."
    locked_reply: str = (
        "For your security I can't check that again right now. A member of staff can help you."
    )
    cannot_verify: str = (
        "I can't verify you well enough on this call to do that. A member of staff can help you."
    )
    declined_reply: str = "All right, I haven't done that. Is there anything else?"
    offer_declined_reply: str = "All right. Is there anything else I can help you with?"
    failed_reply: str = "Sorry, I couldn't do that with those details."
    code_prompt: str = (
        "Thank you. I've sent a six-digit code to the contact details we hold for you. "
        "Please read it to me, or key it in."
    )
    """Said when an out-of-band code was sent ([notify]); never names the contact."""
    code_not_sent: str = (
        "I'm sorry, I couldn't send you a code just now. "
        "Would you like me to put you through to a member of our team?"
    )
    """Said when the code could not be sent; a yes transfers (when transfer_to_human is on)."""
    http: tuple[HttpTool, ...] = ()
    """Tools that call the organization's own HTTPS services (``[[tools.http]]``); each is used
    only when ``enabled`` names it."""
    allowed_hosts: tuple[AllowedHost, ...] = ()
    """The hosts HTTP tools may reach, each a name and its address: nothing is looked up, and
    the addresses join the egress allowlist."""
    ca_file: str = ""
    """The CA bundle (PEM) the services' certificates must chain to; empty: the system's."""
    client_cert: str = ""
    """A client certificate chain (PEM) and its key, for services that require mutual TLS."""
    client_key: str = ""
    bearer_file: str = ""
    """An owner-only file holding a bearer token, sent as ``Authorization: Bearer``; read at
    each request (a file group or others can read is refused). Empty: none sent."""

    def __post_init__(self) -> None:
        _check(self.max_factor_attempts >= 1, "tools.max_factor_attempts", "at least 1")
        hosts = [host.name.lower().rstrip(".") for host in self.allowed_hosts]
        for index, host in enumerate(self.allowed_hosts):
            host.check(f"tools.allowed_hosts[{index}]")
            _check(hosts.count(hosts[index]) == 1, f"tools.allowed_hosts[{index}].name", "twice")
        names = [tool.name for tool in self.http]
        for index, tool in enumerate(self.http):
            tool.check(f"tools.http[{index}]", self.allowed_hosts)
            _check(names.count(tool.name) == 1, f"tools.http[{index}].name", "used twice")
        _check(
            bool(self.client_cert) == bool(self.client_key),
            "tools.client_key",
            "client_cert and client_key go together",
        )
        _check(self.lockout_s >= 1, "tools.lockout_s", "at least 1 second")
        _check("{action}" in self.confirm_prompt, "tools.confirm_prompt", "must hold {action}")
        _check("{digits}" in self.voice_prompt, "tools.voice_prompt", "must hold {digits}")


_MAIL_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass(frozen=True)
class NotifySettings:
    """Notifiers of out-of-band one-time codes: the organization's own SMTP relay
    (notifiers/smtp.py). With no ``relay`` there is none, and no out-of-band code is offered."""

    relay: str = ""
    """The SMTP relay's address (IPv4 or IPv6), never a name: the appliance looks no name up
    (deploy/egress.py), and the address joins the egress allowlist."""
    port: int = 587
    """The submission port (RFC 6409); STARTTLS (RFC 3207) is required on it."""
    server_name: str = ""
    """The name the relay's certificate must carry (checked, and sent as SNI)."""
    ca_file: str = ""
    """The CA bundle (PEM) the relay's certificate must chain to; empty: the system's."""
    from_address: str = ""
    username: str = ""
    """Log in to the relay (after STARTTLS) with this user and the password in ..."""
    password_file: str = ""
    """... this file, owner-only (read at each send; a file group or others can read is
    refused). Both empty: no login."""
    timeout_s: float = 5.0
    """How long each step of the exchange with the relay may take (the caller waits)."""
    code_ttl_s: int = 300
    """How long a code stays good (single use either way)."""
    subject: str = "Your verification code"
    message: str = (
        "Your verification code is {code}. It is valid for {minutes} minutes. "
        "Do not share it with anyone."
    )
    """The e-mail's text: the code and its validity, nothing about the caller or account."""
    staff_address: str = ""
    """Where staff are told of a new callback request (an e-mail address, by the same relay);
    empty: they see it on the panel's Callbacks page and ``appliance callbacks list`` only."""
    staff_subject: str = "A caller asked to be called back"
    staff_message: str = (
        "A caller asked to be called back (request {request}). The number is on the admin "
        "panel's Callbacks page."
    )
    """The notice's text: the request's id, never the caller's number or words."""
    sms_tool: str = ""
    """Codes by text message for callers whose contact is a phone number: the name of a
    ``[[tools.http]]`` entry (method POST, parameters ``to`` and ``text``) that hands a message
    to the organization's SMS gateway. It must not be in ``[tools] enabled``: no caller may
    send a text. Empty: codes go by e-mail only."""
    sms_message: str = "Your verification code is {code}. It is valid for {minutes} minutes."
    """The text message: the code and its validity, nothing about the caller or account."""

    @property
    def enabled(self) -> bool:
        return bool(self.relay)

    def __post_init__(self) -> None:
        if self.relay:
            try:  # an address: the appliance looks up no outside names (deploy/egress.py)
                ipaddress.ip_address(self.relay.strip("[]"))
            except ValueError as exc:
                raise ConfigError(
                    "config.invalid", "notify.relay: give the relay's address, not a name"
                ) from exc
            _check(
                bool(_SERVER_NAME.fullmatch(self.server_name)),
                "notify.server_name",
                "the name on the relay's certificate is needed with a relay",
            )
            _check(
                bool(_MAIL_ADDRESS.fullmatch(self.from_address)),
                "notify.from_address",
                "an e-mail address is needed with a relay",
            )
        _check(1 <= self.port <= 65_535, "notify.port", "1 to 65535")
        _check(
            bool(self.username) == bool(self.password_file),
            "notify.password_file",
            "username and password_file go together",
        )
        _check(1.0 <= self.timeout_s <= 30.0, "notify.timeout_s", "1 to 30")
        _check(60 <= self.code_ttl_s <= 900, "notify.code_ttl_s", "60 to 900")
        _check("{code}" in self.message, "notify.message", "must hold {code}")
        _check(bool(self.subject.strip()), "notify.subject", "must not be empty")
        if self.staff_address:
            _check(bool(self.relay), "notify.staff_address", "needs notify.relay")
            _check(
                bool(_MAIL_ADDRESS.fullmatch(self.staff_address)),
                "notify.staff_address",
                "an e-mail address",
            )
        _check("{request}" in self.staff_message, "notify.staff_message", "must hold {request}")
        _check("{code}" in self.sms_message, "notify.sms_message", "must hold {code}")


_APP_NAME = re.compile(r"[!-~]{1,48}")
"""RFC 5424 6.2.5: APP-NAME is 1 to 48 printable US-ASCII characters, no space."""


@dataclass(frozen=True)
class SiemSettings:
    """Security events to the organization's SIEM: every audit event (incidents among them)
    as an RFC 5424 syslog message over TLS (RFC 5425), sent by ``appliance siem forward``
    (its own unit, appliance-siem.service) from a bounded queue under ``APPLIANCE_HOME/siem``
    (deploy/siem.py). Off by default."""

    enabled: bool = False
    collector: str = ""
    """The collector's ``ADDRESS:PORT`` (``[ADDRESS]:PORT`` for IPv6), never a name: the
    appliance looks no name up, and the address joins the egress allowlist."""
    server_name: str = ""
    """The name the collector's certificate must carry (checked, and sent as SNI); empty: the
    certificate must carry the collector's address (an IP subjectAltName)."""
    ca_file: str = ""
    """The CA bundle (PEM) the collector's certificate must chain to (needed when enabled)."""
    cert_file: str = ""
    """The appliance's own certificate (PEM), for a collector that asks for one, with ..."""
    key_file: str = ""
    """... its private key (PEM). Both or neither."""
    app_name: str = "voice-appliance"
    """RFC 5424 APP-NAME of every message (1 to 48 printable ASCII characters, no space)."""
    queue_max_bytes: int = 16 * 1024 * 1024
    """The on-disk queue's bound: when full, no more events are taken (they wait in the store)
    and one ``siem_queue_full`` incident is opened."""
    poll_s: float = 5.0
    """How often the forwarder looks for new events."""
    retry_max_s: float = 60.0
    """The longest wait between reconnections (the wait doubles from 1 s up to it)."""
    timeout_s: float = 10.0
    """How long connecting, the TLS handshake, and each send may take."""

    def __post_init__(self) -> None:
        if self.collector:
            host, _, port = self.collector.rpartition(":")
            try:  # an address: the appliance looks up no outside names (deploy/egress.py)
                ipaddress.ip_address(host.strip("[]"))
            except ValueError as exc:
                raise ConfigError(
                    "config.invalid", "siem.collector: ADDRESS:PORT, an address, not a name"
                ) from exc
            _check(port.isdigit() and 1 <= int(port) <= 65_535, "siem.collector", "port 1-65535")
        if self.enabled:
            _check(bool(self.collector), "siem.collector", "needed when siem.enabled")
            _check(bool(self.ca_file), "siem.ca_file", "needed when siem.enabled")
        if self.server_name:
            _check(bool(_SERVER_NAME.fullmatch(self.server_name)), "siem.server_name", "a DNS name")
        _check(
            bool(self.cert_file) == bool(self.key_file),
            "siem.key_file",
            "cert_file and key_file go together",
        )
        _check(bool(_APP_NAME.fullmatch(self.app_name)), "siem.app_name", "1-48 printable ASCII")
        _check(4096 <= self.queue_max_bytes <= 1 << 40, "siem.queue_max_bytes", "4096 to 1 TiB")
        _check(0.05 <= self.poll_s <= 3600.0, "siem.poll_s", "0.05 to 3600")
        _check(1.0 <= self.retry_max_s <= 3600.0, "siem.retry_max_s", "1 to 3600")
        _check(1.0 <= self.timeout_s <= 120.0, "siem.timeout_s", "1 to 120")

    @property
    def host(self) -> str:
        """The collector's address (no brackets)."""
        return self.collector.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.collector.rpartition(":")[2]) if self.collector else 0


@dataclass(frozen=True)
class StorageSettings:
    url: str = ""
    """A PostgreSQL server, ``postgresql://USER@HOST:PORT/DB`` (psycopg 3, the
    ``postgresql`` extra; libpq's query options such as ``sslrootcert`` and ``passfile``
    pass through; a server not on this machine gets ``sslmode=verify-full`` unless the URL
    names another). Empty means the encrypted SQLite file ``APPLIANCE_HOME/appliance.db``."""
    master_key_file: str = ""
    """Empty means ``APPLIANCE_HOME/keys/master.key``; the systemd credential
    ``appliance-master-key`` wins when the unit hands one over."""
    audit_key_file: str = ""
    """The audit trail's Ed25519 signing key (checkpoints, exports). Empty means
    ``APPLIANCE_HOME/keys/audit-signing.key`` (made on first use); the credential
    ``appliance-audit-key`` wins when set. Installed, both keys live in ``/etc/appliance``,
    apart from the data tree."""

    def __post_init__(self) -> None:
        scheme = self.url.split("://", 1)[0] if "://" in self.url else None
        _check(
            not self.url or scheme in ("postgresql", "postgres", "postgresql+psycopg"),
            "storage.url",
            "must be a PostgreSQL URL (postgresql://USER@HOST/DB); leave it empty for SQLite",
        )
        netloc = urllib.parse.urlsplit(self.url).netloc
        _check(
            netloc.count("@") <= 1,
            "storage.url",
            "percent-encode an '@' in the user or password (%40), or use passfile=",
        )
        try:
            host, address = self._server()
        except ValueError as exc:
            raise ConfigError("config.invalid", "storage.url: the port is not a number") from exc
        _check(
            not host or bool(address),
            "storage.url",
            f"names the server {host!r} by name: give its address too (hostaddr=IP in the "
            "query), so the egress allowlist can hold it; the name stays for TLS verify-full",
        )

    def _server(self) -> tuple[str, str]:
        """The server's host and its address, both empty when it is on this machine (a Unix
        socket, or loopback); the address is empty when only a name was given."""
        if not self.url:
            return "", ""
        split = urllib.parse.urlsplit(self.url)
        split.port  # noqa: B018  (a port that is not a number raises here)
        query = dict(urllib.parse.parse_qsl(split.query))
        host = split.hostname or query.get("host", "")
        address = query.get("hostaddr", "")
        candidate = address or host
        if not candidate or candidate.startswith("/") or candidate == "localhost":
            return "", ""
        try:
            if ipaddress.ip_address(candidate).is_loopback:
                return "", ""
        except ValueError:
            return host, ""
        return host, candidate

    @property
    def server_address(self) -> str:
        """The PostgreSQL server's address when it is on another machine (the egress
        allowlist holds it), else empty."""
        return self._server()[1]


@dataclass(frozen=True)
class RetentionSettings:
    recordings_hours: int = 0
    transcripts_days: int = 30
    calls_days: int = 90
    tool_calls_days: int = 90
    incidents_days: int = 365
    """Resolved incidents, counted from their resolution ([incidents]); one not resolved stays."""
    callbacks_days: int = 30
    """A callback request that was called back or closed goes this long after (an open one
    stays until staff handle it)."""
    audit_years: int = 7
    batch_size: int = 500

    def __post_init__(self) -> None:
        _check(0 <= self.recordings_hours <= 24 * 365, "retention.recordings_hours", "0 to 8760")
        keys = ("transcripts_days", "calls_days", "tool_calls_days", "incidents_days")
        for key in (*keys, "callbacks_days"):
            _check(1 <= getattr(self, key) <= 36_500, f"retention.{key}", "1 to 36500")
        _check(
            self.transcripts_days <= self.calls_days,
            "retention.transcripts_days",
            "cannot exceed calls_days (a call's record holds its transcripts)",
        )
        _check(1 <= self.audit_years <= 100, "retention.audit_years", "1 to 100")
        _check(1 <= self.batch_size <= 100_000, "retention.batch_size", "1 to 100000")

    @property
    def record_audio(self) -> bool:
        """Raw audio is kept only when a retention period is configured for it."""
        return self.recordings_hours > 0


@dataclass(frozen=True)
class GuardSettings:
    """The learned signal of layer 1 (guard/classifier.py): a head over the knowledge base's
    embedding model, trained by scripts/train-guard, its score one more reason beside the
    rules of [policy]."""

    enabled: bool = True
    model: str = "injection-head-minilm"
    """The head of models/manifest.toml (role "guard"), pinned by hash like every model."""
    path: str = ""

    def __post_init__(self) -> None:
        _check(bool(self.model), "guard.model", "must name a model of the manifest")


@dataclass(frozen=True)
class VoiceprintSettings:
    """Voice biometrics, an optional factor (needs the optional extra; see README)."""

    enabled: bool = False
    model: str = "resemblyzer-ge2e"
    path: str = ""
    threshold: float = 0.75
    """Cosine score from which a voice matches its template (same speaker over a phone line
    scored 0.88-0.96 in our tests, other speakers 0.35-0.57)."""
    min_enrolment_utterances: int = 3
    challenge_digits: int = 6

    def __post_init__(self) -> None:
        _check(bool(self.model), "voiceprint.model", "must name a model of the manifest")
        _check(0.5 <= self.threshold < 1.0, "voiceprint.threshold", "0.5 to below 1")
        _check(self.min_enrolment_utterances >= 1, "voiceprint.min_enrolment_utterances", ">= 1")
        _check(4 <= self.challenge_digits <= 12, "voiceprint.challenge_digits", "4 to 12")


class RedteamGate(enum.StrEnum):
    """What ``appliance serve`` does when no passing red-team report matches what decides the
    appliance's behaviour (compliance/gate.py)."""

    REFUSE = "refuse"
    """The SIP line answers every INVITE 503 (with a Warning naming the gate), and no
    microphone call starts, until ``appliance redteam`` passes for the running fingerprint."""
    WARN = "warn"
    """Calls are taken, and an incident of kind ``redteam_gate`` is opened once per start."""


@dataclass(frozen=True)
class ServiceSettings:
    """How ``appliance serve`` runs (the systemd units run it)."""

    voice: str = "sip"
    """Where calls come from: "sip" (the phone line of [sip]), "microphone" (the local sound
    device; the unit's PrivateDevices= hides it, so give the unit DeviceAllow= for it) or
    "none" (the voice service idles; for a box that only hosts the other parts)."""
    egress_allow: tuple[str, ...] = ()
    """Addresses or networks (CIDR) outside loopback the process may connect to: the SIP
    trunks and peers. Everything else is refused inside the process (deploy/egress.py)."""
    node: str = ""
    """This voice node's name among several on one store (letters, digits, ``.-_``, at most
    64): its calls carry it, and at its start it closes the calls it left active when it was
    killed. Empty: the host's name."""
    admin_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    """Networks the admin panel may be reached from (the units' IPAddressAllow=)."""
    memory_max: str = "3G"
    """The voice unit's MemoryMax= (systemd syntax)."""
    shutdown_timeout_s: float = 20.0
    """How long calls in progress get to say goodbye on SIGTERM."""
    redteam_gate: RedteamGate = RedteamGate.REFUSE
    """Without a passing red-team report for the current fingerprint: "refuse" calls, or
    "warn" (take them and open an incident). The foreground commands only warn."""
    metrics_listen: str = ""
    """HOST:PORT of the voice service's own HTTPS listener for ``/metrics`` (Prometheus) and
    ``/healthz``; empty: no listener. It binds to this address only."""
    metrics_token_file: str = ""
    """The scrape token (one line, the file mode 0600): ``/metrics`` of the voice service and
    of the admin panel answer only ``Authorization: Bearer <token>``; empty: no ``/metrics``."""
    metrics_tls_cert: str = ""
    """The certificate chain (PEM) and its key for the metrics listener; empty: a self-signed
    pair made once under APPLIANCE_HOME/metrics."""
    metrics_tls_key: str = ""

    @property
    def node_name(self) -> str:
        return self.node or socket.gethostname()[:64]

    def __post_init__(self) -> None:
        _check(
            re.fullmatch(r"[A-Za-z0-9._-]{0,64}", self.node) is not None,
            "service.node",
            "letters, digits, '.', '-' and '_', at most 64",
        )
        _check(
            self.voice in ("sip", "microphone", "none"), "service.voice", "sip, microphone or none"
        )
        if self.metrics_listen:
            host, _, port = self.metrics_listen.rpartition(":")
            _check(
                bool(host) and port.isascii() and port.isdigit() and int(port) < 65536,
                "service.metrics_listen",
                "HOST:PORT (port 0: any free port)",
            )
            _check(
                bool(self.metrics_token_file),
                "service.metrics_token_file",
                "set when metrics_listen is (no /metrics without a scrape token)",
            )
        _check(
            bool(self.metrics_tls_cert) == bool(self.metrics_tls_key),
            "service.metrics_tls_key",
            "both or neither",
        )
        _check_networks("service", self, ("egress_allow", "admin_allow"))
        _check(bool(re.fullmatch(r"\d+[KMGT]?", self.memory_max)), "service.memory_max", "like 3G")
        _check(1 <= self.shutdown_timeout_s <= 300, "service.shutdown_timeout_s", "1 to 300")
        _check(
            self.redteam_gate in tuple(RedteamGate), "service.redteam_gate", '"refuse" or "warn"'
        )


@dataclass(frozen=True)
class SipSettings:
    """The SIP phone line (``appliance sip``): UDP, G.711, RFC 4733 DTMF."""

    listen: str = "127.0.0.1:5060"
    """HOST:PORT the user agent listens on (UDP)."""
    advertise: str = ""
    """The address put in Contact and SDP; empty means the listen host."""
    tcp: bool = True
    """Listen on TCP as well as UDP, at the same port."""
    tcp_idle_s: float = 30.0
    """A TCP or TLS connection that sends nothing for this long is closed, unless a call
    lives on it (half-open connections and half-sent messages do not hold a descriptor)."""
    tcp_per_address: int = 32
    """Open TCP and TLS connections one address may hold; more are closed at once."""
    tls_listen: str = ""
    """HOST:PORT for SIP over TLS (SIPS, usually port 5061); empty means no TLS listener."""
    tls_cert: str = ""
    """The certificate chain (PEM) and its key for the TLS listener."""
    tls_key: str = ""
    registrar: str = ""
    """HOST:PORT of the PBX or trunk to register with (REGISTER, digest authentication);
    empty means the appliance does not register (peers send calls to it directly)."""
    register_user: str = ""
    register_domain: str = ""
    """The domain of the address of record; empty means the registrar's host."""
    register_password_file: str = ""
    """A file (mode 0600) holding the digest password: secrets stay out of the configuration."""
    register_expires_s: int = 3600
    srtp: str = "optional"
    """SRTP (AES_CM_128_HMAC_SHA1_80, SDES keys): "optional" (used when the peer offers it),
    "required" (a call without it gets 488) or "off"."""
    allowed_peers: tuple[str, ...] = ("127.0.0.0/8",)
    """Trunks and peers (addresses or CIDR) whose INVITEs are taken without a password."""
    trusted_proxies: tuple[str, ...] = ()
    """Proxies (addresses or CIDR; Kamailio in front of several nodes) whose INVITEs carry the
    caller's address in ``proxy_source_header``: limits and lockouts count that address, not
    the proxy's. A proxy must be among ``allowed_peers`` (or authenticate) to be taken."""
    proxy_source_header: str = "X-Appliance-Source"
    """The header a trusted proxy sets to the caller's address (kamailio/dispatcher.cfg)."""
    accounts_file: str = ""
    """Peers outside ``allowed_peers`` may call with SIP digest credentials from this file
    (htdigest format, ``user:realm:HA1``, mode 0600); empty means they get 403."""
    auth_realm: str = "appliance"
    """The digest realm of ``accounts_file`` (its lines for other realms are ignored)."""
    require_credentials: bool = False
    """Ask for digest credentials from allowed peers too (address and password both)."""
    rtp_port_min: int = 40000
    rtp_port_max: int = 40999
    """Media ports are taken at random from this range (open it in the host firewall for the
    peers)."""
    symmetric_rtp: bool = False
    """Media is taken only from the address and port the caller's SDP names. True (for callers
    behind NAT, whose SDP names an address they cannot be reached at): the first packet's
    source is latched instead, and nothing from any other source is taken after it."""
    media_timeout_s: float = 10.0
    """A call whose caller sends no media for this long is ended (BYE)."""
    ring_ms: int = 0
    """How long the line rings (180) before it answers; a CANCEL in that time gets 487."""
    invites_per_address_per_10s: int = 10
    """New INVITEs one source address may send in 10 s; more get 503 (a flood is shed before
    any media or model work)."""
    max_dialogs: int = 16
    """Calls being set up or in progress at once; more get 486 Busy Here."""
    unconfirmed_per_address: int = 4
    """Calls one address may have answered but not yet confirmed (no ACK) at once; more get
    486, so a peer whose INVITEs never ACK cannot hold the whole line."""
    disclosure: str = (
        "Hello. You are speaking with an automated assistant. This call is transcribed and "
        "stored to help you and to improve our service."
    )
    """Spoken first, before anything is recorded or transcribed (with ``jurisdiction`` empty;
    otherwise the jurisdiction's script speaks its own). It must say the caller is speaking
    with an automated assistant ("automated", "AI" or "virtual assistant")."""
    disclosure_version: str = "2026-11-en-1"
    consent_required: bool = False
    consent_prompt: str = "To continue, please say yes or press 1. To stop, say no or press 2."
    consent_timeout_s: float = 8.0
    no_consent_reply: str = (
        "No problem. Nothing from this call will be kept. Please call our branch team instead. "
        "Goodbye."
    )
    jurisdiction: str = ""
    """The line's jurisdiction: the script ``<consent_folder>/<jurisdiction>.en.toml`` is
    spoken and followed instead of the texts above. Empty: the texts above are the line's
    script ("configured"). Either way a caller's number may make a call stricter, never laxer
    (appliance/core/jurisdiction.py)."""
    consent_folder: str = ""
    """The consent and disclosure scripts; empty means ``config/consent`` of this
    installation."""

    def __post_init__(self) -> None:
        _check(
            bool(self.accounts_file) or not self.require_credentials,
            "sip.require_credentials",
            "needs sip.accounts_file",
        )
        host, _, port = self.listen.rpartition(":")
        _check(
            bool(host) and port.isascii() and port.isdigit() and int(port) < 65536,
            "sip.listen",
            "HOST:PORT (port 0: any free port)",
        )
        _check(
            1024 <= self.rtp_port_min < self.rtp_port_max <= 65535,
            "sip.rtp_port_max",
            "above rtp_port_min, both 1024 to 65535",
        )
        _check(1 <= self.media_timeout_s <= 300, "sip.media_timeout_s", "1 to 300")
        _check(0 <= self.ring_ms <= 60_000, "sip.ring_ms", "0 to 60000")
        if self.registrar:
            reg_host, _, reg_port = self.registrar.rpartition(":")
            _check(
                bool(reg_host) and reg_port.isascii() and reg_port.isdigit(),
                "sip.registrar",
                "HOST:PORT",
            )
            try:  # an address: the appliance looks up no outside names (deploy/egress.py)
                ipaddress.ip_address(reg_host.strip("[]"))
            except ValueError as exc:
                raise ConfigError(
                    "config.invalid", "sip.registrar: give the PBX's address, not a name"
                ) from exc
            _check(bool(self.register_user), "sip.register_user", "is needed with a registrar")
        _check(60 <= self.register_expires_s <= 86_400, "sip.register_expires_s", "60 to 86400")
        if self.tls_listen:
            tls_host, _, tls_port = self.tls_listen.rpartition(":")
            _check(
                bool(tls_host) and tls_port.isascii() and tls_port.isdigit(),
                "sip.tls_listen",
                "HOST:PORT",
            )
            _check(bool(self.tls_cert and self.tls_key), "sip.tls_cert", "and tls_key are needed")
        _check(self.srtp in ("optional", "required", "off"), "sip.srtp", "optional, required, off")
        _check(self.invites_per_address_per_10s >= 1, "sip.invites_per_address_per_10s", ">= 1")
        _check(self.max_dialogs >= 1, "sip.max_dialogs", "at least 1")
        _check(self.unconfirmed_per_address >= 1, "sip.unconfirmed_per_address", "at least 1")
        _check(self.tcp_idle_s > 0, "sip.tcp_idle_s", "must be positive")
        _check(self.tcp_per_address >= 1, "sip.tcp_per_address", "at least 1")
        _check(bool(self.disclosure.strip()), "sip.disclosure", "must not be empty")
        _check(
            bool(DISCLOSURE_SAYS_AUTOMATED.search(self.disclosure)),
            "sip.disclosure",
            'must say the caller is speaking with an automated assistant ("automated", "AI" '
            'or "virtual assistant")',
        )
        _check(
            not self.jurisdiction
            or (
                bool(_JURISDICTION_ID.fullmatch(self.jurisdiction))
                and self.jurisdiction != "configured"
            ),
            "sip.jurisdiction",
            'empty, or a script\'s id (lower-case letters, digits, hyphens; not "configured")',
        )
        _check(
            0 < len(self.disclosure_version) <= 53,
            "sip.disclosure_version",
            '1 to 53 characters ("configured/" and it are stored in 64)',
        )
        _check(bool(self.consent_prompt.strip()), "sip.consent_prompt", "must not be empty")
        _check(bool(self.no_consent_reply.strip()), "sip.no_consent_reply", "must not be empty")
        _check_networks("sip", self, ("allowed_peers", "trusted_proxies"))
        _check(
            re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,63}", self.proxy_source_header) is not None,
            "sip.proxy_source_header",
            "a header name: letters, digits and '-'",
        )

    @property
    def consent_folder_path(self) -> Path:
        return Path(self.consent_folder) if self.consent_folder else DEFAULT_CONSENT_FOLDER


class TransferMode(enum.StrEnum):
    """How a caller is put through to a person."""

    BLIND = "blind"
    """REFER (RFC 3515) in the caller's dialog: their phone calls the person, we leave."""
    WARM = "warm"
    """The appliance calls the person itself, briefs them, then bridges the two calls' media
    (any caller phone will do: nothing is asked of it)."""


_SIP_URI = re.compile(r"sips?:(?:[^@\s<>;]+@)?[A-Za-z0-9.\-\[\]:]+(?:;[^\s<>]*)?", re.I)
_DIAL_HOST = re.compile(
    r"sip:(?:[^@\s<>;]+@)?(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[^:;\[\]]+))(?::\d{1,5})?"
    r"(?P<params>(?:;[^\s<>]*)?)",
    re.I,
)
BRIEFING_FIELDS = ("reason", "verified", "summary")
"""What ``[transfer] briefing`` may name: why, the assurance level in words, what was asked."""


def _dialable(uri: str) -> str:
    """Why a warm transfer cannot call ``uri`` (empty: it can): it must be ``sip:`` with an IP
    literal host over UDP, since the appliance resolves no names and places calls on UDP."""
    found = _DIAL_HOST.fullmatch(uri)
    if found is None:
        return f"{uri!r}: warm transfer calls sip:user@ADDRESS:PORT (not sips:)"
    try:
        ipaddress.ip_address(found.group("v6") or found.group("v4"))
    except ValueError:
        return f"{uri!r} names a host: warm transfer needs an IP address (no DNS lookups)"
    transport = re.search(r";transport=([^;]+)", found.group("params"), re.I)
    if transport is not None and transport.group(1).lower() != "udp":
        return f"{uri!r}: warm transfer places calls over UDP only"
    return ""


@dataclass(frozen=True)
class TransferSettings:
    """Putting a caller through to a person over SIP (the transfer tool), and the callback
    request when no one can be reached."""

    destinations: tuple[str, ...] = ()
    """SIP URIs of the people or queues to transfer to, tried in order (``sip:desk@10.0.0.5``).
    Empty: no transfer; a request for a person becomes the callback offer."""
    mode: TransferMode = TransferMode.BLIND
    ring_timeout_s: float = 30.0
    """How long one destination may take to answer (the REFER's final NOTIFY) before the
    next is tried."""
    announce: str = "I'm transferring you to a member of our team now. Please hold."
    """Said only when a transfer is really started (a destination is configured and the line
    can transfer), just before the REFER."""
    unreachable_reply: str = (
        "I'm sorry, no one from our team could be reached right now. Would you like us to call "
        "you back? Please say yes or no."
    )
    unavailable_reply: str = (
        "I can't put you through to a person on this line, but a member of our team can call "
        "you back. Would you like that? Please say yes or no."
    )
    callback_stored_reply: str = (
        "Thank you. I've asked a member of our team to call you back as soon as they can."
    )
    callback_declined_reply: str = "All right. Is there anything else I can help you with?"
    hours: tuple[str, ...] = ()
    """When staff take calls, one line per range: ``"mon-fri 09:00-17:30"``, ``"sat 10:00-14:00"``
    (core/hours.py). Empty: at any time. Outside them a request for a person hears
    ``after_hours_reply`` and the callback offer instead of a transfer."""
    holidays: tuple[str, ...] = ()
    """Dates (YYYY-MM-DD) on which no one takes calls, whatever ``hours`` say."""
    timezone: str = "UTC"
    """The zone ``hours`` and ``holidays`` are read in (an IANA name: ``Europe/London``)."""
    after_hours_reply: str = (
        "Our team isn't available at the moment, but a member of our team can call you back. "
        "Would you like that? Please say yes or no."
    )
    offer_after_failures: int = 2
    """After this many turns in a row that got the caller nowhere (a blocked or refused
    request, a guard's fallback, a tool that failed), the agent offers a person; a failed
    verification (locked, or no factor left) offers one at once. 0: only when asked."""
    offer_prompt: str = "Would you like me to put you through to a person? Please say yes or no."
    hold_message: str = "Please hold while I tell a member of our team about your call."
    """Warm mode: said to the caller once the person's phone is being called, followed by a
    soft tone every few seconds until they are put through. Empty: the tone alone."""
    briefing: str = (
        "Hello, this is the voice assistant with a caller for you. {reason}. The caller is "
        "{verified}. They asked about: {summary}. I am putting them through now."
    )
    """Warm mode: what the person hears on answering, before the caller is put through. The
    fields: ``{reason}``, ``{verified}`` (not verified / verified with one factor / with two
    factors), ``{summary}`` (what the caller asked, redacted: never a number). Synthesized,
    never stored or logged."""

    def __post_init__(self) -> None:
        try:
            self.opening_hours()
        except HoursError as exc:
            raise ConfigError("config.invalid", f"transfer.hours: {exc}") from exc
        _check(0 <= self.offer_after_failures <= 20, "transfer.offer_after_failures", "0 to 20")
        for value in self.destinations:
            _check(
                bool(_SIP_URI.fullmatch(value)),
                "transfer.destinations",
                f"{value!r} is not a sip: or sips: URI (sip:user@host)",
            )
        if self.mode == TransferMode.WARM:
            for value in self.destinations:
                why = _dialable(value)
                _check(not why, "transfer.destinations", why)
        try:
            named = {f for _, f, spec, conv in string.Formatter().parse(self.briefing) if f}
            plain = all(
                not spec and not conv
                for _, f, spec, conv in string.Formatter().parse(self.briefing)
            )
        except ValueError as exc:
            raise ConfigError("config.invalid", f"transfer.briefing: {exc}") from exc
        _check(
            named <= set(BRIEFING_FIELDS) and plain,
            "transfer.briefing",
            "only {reason}, {verified} and {summary} may be named",
        )
        _check(1 <= self.ring_timeout_s <= 300, "transfer.ring_timeout_s", "1 to 300 seconds")
        for key in (
            "announce",
            "unreachable_reply",
            "unavailable_reply",
            "callback_stored_reply",
            "after_hours_reply",
            "offer_prompt",
            "briefing",
        ):
            _check(bool(getattr(self, key).strip()), f"transfer.{key}", "must not be empty")

    def opening_hours(self) -> OpeningHours:
        """``hours``, ``holidays`` and ``timezone`` read (HoursError names what is wrong)."""
        return OpeningHours.parse(self.hours, self.holidays, self.timezone)


@dataclass(frozen=True)
class AppTokenSettings:
    """A session token from the organization's own app (identity/app_token.py): a signed JWT
    that the organization's SIP gateway passes in a header of the INVITE for a caller already
    signed in to the app. Verified, it counts as a possession factor. Off without a key."""

    public_key_file: str = ""
    """The app's signing key (PEM public key: Ed25519 for EdDSA, P-256 for ES256, RSA for
    RS256; the algorithm follows the key, never the token's header). Empty: no app tokens."""
    header: str = "X-App-Token"
    """The INVITE header that carries the token (the gateway sets it)."""
    issuer: str = ""
    """The ``iss`` every token must carry (required with a key)."""
    audience: str = "voice-appliance"
    """The ``aud`` every token must carry."""
    max_lifetime_s: int = 300
    """``exp`` may be at most this long after ``iat``: a long-lived token is refused."""
    leeway_s: int = 30
    """Clock difference allowed between the app's server and the appliance."""

    @property
    def enabled(self) -> bool:
        return bool(self.public_key_file)

    def __post_init__(self) -> None:
        if self.enabled:
            _check(bool(self.issuer.strip()), "app_token.issuer", "needed with a key")
            _check(bool(self.audience.strip()), "app_token.audience", "needed with a key")
        _check(
            bool(re.fullmatch(r"[A-Za-z0-9-]{1,64}", self.header)),
            "app_token.header",
            "a SIP header name (letters, digits, '-')",
        )
        _check(10 <= self.max_lifetime_s <= 3600, "app_token.max_lifetime_s", "10 to 3600")
        _check(0 <= self.leeway_s <= 300, "app_token.leeway_s", "0 to 300")


@dataclass(frozen=True)
class AdminSettings:
    """The admin web panel (``appliance admin serve``): TLS only, argon2id + TOTP, roles."""

    listen: str = "127.0.0.1:8443"
    tls_cert: str = ""
    """The certificate chain (PEM) and key; empty: a self-signed one is made on first start
    under APPLIANCE_HOME/admin/."""
    tls_key: str = ""
    idle_s: int = 900
    """A session ends after this long without a request ..."""
    max_s: int = 28_800
    """... and after this long in all."""
    failures_per_account: int = 10
    """Failed logins (per account, and per address below) in 15 minutes before every login
    is refused, with the same answer, until old failures age out."""
    failures_per_address: int = 50

    def __post_init__(self) -> None:
        host, _, port = self.listen.rpartition(":")
        _check(
            bool(host) and port.isascii() and port.isdigit() and int(port) < 65536,
            "admin.listen",
            "HOST:PORT",
        )
        _check(60 <= self.idle_s <= self.max_s <= 7 * 86_400, "admin.idle_s", "60 to max_s")
        _check(bool(self.tls_cert) == bool(self.tls_key), "admin.tls_key", "both or neither")
        for key in ("failures_per_account", "failures_per_address"):
            _check(getattr(self, key) >= 1, f"admin.{key}", "at least 1")


PANEL_ROLES = ("admin", "operator", "auditor")
"""The panel's roles (admin/accounts.py ROLES), named here for ``[ldap.role_groups]``."""


class LdapMembership(enum.StrEnum):
    """Where the directory says which groups a user is in."""

    GROUP = "group"
    """Each role group's entry lists its members' DNs in ``member_attribute`` (groupOfNames
    ``member``, groupOfUniqueNames ``uniqueMember``): the directory matches the DN."""
    MEMBER_OF = "member_of"
    """The user's entry lists the DNs of its groups in ``memberOf`` (Active Directory,
    OpenLDAP's memberof overlay)."""


_LDAP_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


@dataclass(frozen=True)
class LdapSettings:
    """Directory logins to the admin panel (admin/directory.py): LDAP over TLS with a service
    account's bind for the search, then a bind as the user found (search-bind), and the role
    from the user's group. Empty ``url``: local accounts only."""

    url: str = ""
    """``ldaps://ADDRESS:PORT`` (TLS from the first byte), or ``ldap://ADDRESS:PORT`` with
    ``start_tls = true`` (RFC 4513 3); an address, never a name: the appliance looks up no
    outside names (deploy/egress.py), and the address joins the egress allowlist."""
    start_tls: bool = False
    ca_file: str = ""
    """The CA bundle (PEM) the directory's certificate must chain to; empty: the system's. The
    certificate is always verified, with the url's address in its names, TLS 1.2 at least."""
    bind_dn: str = ""
    """The service account that searches for users ..."""
    bind_password_file: str = ""
    """... with the password in this owner-only file (read at each log-in; a file group or
    others can read is refused)."""
    user_base: str = ""
    """Where users are searched for (the whole subtree)."""
    user_filter: str = "(uid={username})"
    """The search filter; ``{username}`` is the name typed at log-in, escaped (RFC 4515 3), so
    ``*`` or ``)`` in it match nothing but themselves. Exactly one entry must match."""
    membership: LdapMembership = LdapMembership.GROUP
    member_attribute: str = "member"
    """With ``membership = "group"``: the group entries' attribute holding members' DNs."""
    role_groups: dict[str, str] = field(default_factory=dict, hash=False)
    """Role to group DN (``[ldap.role_groups]``, roles admin, operator, auditor). A user in no
    mapped group gets no role and cannot log in; one in several is refused too (no default
    role, no guess: fix the directory)."""
    timeout_s: int = 5
    """How long (whole seconds) connecting and each answer may take; past it the directory is
    unreachable and only local accounts log in."""

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @property
    def address(self) -> tuple[str, int, bool]:
        """The directory's address, port and whether TLS starts at connect (ldaps)."""
        scheme, _, rest = self.url.partition("://")
        host, _, port = rest.rstrip("/").rpartition(":")
        return host.strip("[]"), int(port), scheme == "ldaps"

    def __post_init__(self) -> None:
        _check(1 <= self.timeout_s <= 30, "ldap.timeout_s", "1 to 30")
        if not self.url:
            return
        scheme, _, rest = self.url.partition("://")
        host, _, port = rest.rstrip("/").rpartition(":")
        _check(
            scheme in ("ldaps", "ldap") and bool(host) and port.isascii() and port.isdigit(),
            "ldap.url",
            "ldaps://ADDRESS:PORT, or ldap://ADDRESS:PORT with start_tls = true",
        )
        _check(1 <= int(port) <= 65_535, "ldap.url", "a port of 1 to 65535")
        try:  # an address: the appliance looks up no outside names (deploy/egress.py)
            ipaddress.ip_address(host.strip("[]"))
        except ValueError as exc:
            raise ConfigError(
                "config.invalid", "ldap.url: give the directory's address, not a name"
            ) from exc
        _check(
            (scheme == "ldaps") != self.start_tls,
            "ldap.start_tls",
            "ldap:// needs start_tls = true (no directory password goes in clear); ldaps:// "
            "is TLS already",
        )
        _check(bool(self.bind_dn), "ldap.bind_dn", "the service account is needed with a url")
        _check(bool(self.bind_password_file), "ldap.bind_password_file", "needed with bind_dn")
        _check(bool(self.user_base), "ldap.user_base", "needed with a url")
        _check(
            self.user_filter.startswith("(")
            and self.user_filter.endswith(")")
            and self.user_filter.count("{username}") >= 1
            and self.user_filter.replace("{username}", "").count("{") == 0,
            "ldap.user_filter",
            "a parenthesized filter holding {username}, e.g. (uid={username})",
        )
        _check(
            bool(_LDAP_ATTRIBUTE.fullmatch(self.member_attribute)),
            "ldap.member_attribute",
            "an attribute name",
        )
        for role, group in self.role_groups.items():
            _check(role in PANEL_ROLES, f"ldap.role_groups.{role}", "admin, operator or auditor")
            _check(bool(group.strip()), f"ldap.role_groups.{role}", "a group's DN")
        groups = [group.strip().lower() for group in self.role_groups.values()]
        _check(len(set(groups)) == len(groups), "ldap.role_groups", "one group for two roles")
        _check(bool(self.role_groups), "ldap.role_groups", "at least one role's group")


@dataclass(frozen=True)
class ModelsSettings:
    manifest: str = ""
    cache: str = ""
    """Where models assembled from parts are kept (``cache:`` sources); empty means
    ``APPLIANCE_HOME/models`` when installed, and ``${XDG_CACHE_HOME:-~/.cache}/appliance/models``
    in a git checkout, so every clone and test run shares one copy."""

    @property
    def manifest_path(self) -> Path:
        return Path(self.manifest) if self.manifest else DEFAULT_MANIFEST_FILE

    def cache_path(self, home: Path) -> Path:
        if self.cache:
            return Path(self.cache)
        if (PACKAGE_ROOT / ".git").exists():
            base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            return Path(base) / "appliance" / "models"
        return home / "models"


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: default_home())
    audio: AudioSettings = field(default_factory=AudioSettings)
    endpointing: EndpointingSettings = field(default_factory=EndpointingSettings)
    stt: SttSettings = field(default_factory=SttSettings)
    llm: LlmSettings = field(default_factory=LlmSettings)
    tts: TtsSettings = field(default_factory=TtsSettings)
    voiceprint: VoiceprintSettings = field(default_factory=VoiceprintSettings)
    models: ModelsSettings = field(default_factory=ModelsSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    knowledge: KnowledgeSettings = field(default_factory=KnowledgeSettings)
    guard: GuardSettings = field(default_factory=GuardSettings)
    tools: ToolsSettings = field(default_factory=ToolsSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    siem: SiemSettings = field(default_factory=SiemSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    incidents: IncidentSettings = field(default_factory=IncidentSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    sip: SipSettings = field(default_factory=SipSettings)
    transfer: TransferSettings = field(default_factory=TransferSettings)
    app_token: AppTokenSettings = field(default_factory=AppTokenSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    ldap: LdapSettings = field(default_factory=LdapSettings)
    source: str = "defaults"
    """Where the settings came from (the file path, or 'defaults'), for messages."""

    def __post_init__(self) -> None:
        """What spans two sections: the SMS gateway is one of the declared HTTP tools."""
        name = self.notify.sms_tool
        if not name:
            return
        tool = next((t for t in self.tools.http if t.name == name), None)
        _check(tool is not None, "notify.sms_tool", f"no [[tools.http]] is named {name!r}")
        assert tool is not None
        _check(tool.method == "POST", "notify.sms_tool", f"{name!r} must be a POST")
        names = {p.name for p in tool.params}
        _check({"to", "text"} <= names, "notify.sms_tool", f"{name!r} needs parameters to and text")
        _check(
            name not in self.tools.enabled,
            "notify.sms_tool",
            f"{name!r} is in tools.enabled: no caller may send a text message, leave it out",
        )


SECTIONS: dict[str, type[Any]] = {
    "audio": AudioSettings,
    "endpointing": EndpointingSettings,
    "stt": SttSettings,
    "llm": LlmSettings,
    "tts": TtsSettings,
    "voiceprint": VoiceprintSettings,
    "models": ModelsSettings,
    "policy": PolicySettings,
    "knowledge": KnowledgeSettings,
    "guard": GuardSettings,
    "tools": ToolsSettings,
    "notify": NotifySettings,
    "siem": SiemSettings,
    "limits": LimitsSettings,
    "incidents": IncidentSettings,
    "storage": StorageSettings,
    "retention": RetentionSettings,
    "service": ServiceSettings,
    "sip": SipSettings,
    "transfer": TransferSettings,
    "app_token": AppTokenSettings,
    "admin": AdminSettings,
    "ldap": LdapSettings,
}


def default_home() -> Path:
    """``APPLIANCE_HOME``, else ``./.appliance`` in a checkout, else ``/var/lib/appliance``."""
    env = os.environ.get("APPLIANCE_HOME")
    if env:
        return Path(env)
    if (PACKAGE_ROOT / "pyproject.toml").is_file():
        return PACKAGE_ROOT / ".appliance"
    return INSTALLED_HOME


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check a TOML value (or convert an environment string) to the field's type."""
    from_env = isinstance(value, str) and kind is not str and kind != tuple[str, ...]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_env and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env:
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_env:
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str and isinstance(value, str):
        return value
    elif isinstance(kind, type) and issubclass(kind, enum.StrEnum) and isinstance(value, str):
        try:
            return kind(value)
        except ValueError as exc:
            choices = ", ".join(f'"{choice.value}"' for choice in kind)
            raise ConfigError("config.invalid", f"{key}: one of {choices}") from exc
    elif kind == tuple[str, ...]:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if from_env or isinstance(value, str):
            return tuple(v.strip() for v in str(value).split(",") if v.strip())
    elif (table := _table_kind(kind)) is not None:
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            return tuple(_build_section(f"{key}[{i}]", table, v) for i, v in enumerate(value))
        raise ConfigError(
            "config.type", f"{key}: expected an array of tables ([[{key}]]), got {value!r}"
        )
    elif typing.get_origin(kind) is dict:
        # A TOML table of one value type ([incidents.runbooks]); no environment form.
        if isinstance(value, dict):
            item = typing.get_args(kind)[1]
            return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
        raise ConfigError("config.type", f"{key}: expected a table ([{key}]), got {value!r}")
    elif _optional_kind(kind) is not None:
        return _coerce(value, _optional_kind(kind), key)
    raise ConfigError(
        "config.type", f"{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}"
    )


def _table_kind(kind: Any) -> type[Any] | None:
    """X of ``tuple[X, ...]`` when X is a settings dataclass (a TOML array of tables)."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) is not tuple or len(args) != 2 or args[1] is not Ellipsis:
        return None
    return args[0] if dataclasses.is_dataclass(args[0]) and isinstance(args[0], type) else None


def _optional_kind(kind: Any) -> Any:
    """X of ``X | None`` (TOML has no null: a value given is an X)."""
    args = typing.get_args(kind)
    if type(None) in args and len(args) == 2:
        return next(arg for arg in args if arg is not type(None))
    return None


REPLACED_KEYS = {
    "policy.facts": "the knowledge base replaced it: put the facts in FAQ entries or documents "
    "under [knowledge] folder (config/knowledge/ by default)",
}
"""Keys an older configuration may still hold, and what took their place."""


def _build_section(name: str, cls: type[Any], values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if f"{name}.{key}" in REPLACED_KEYS:
            raise ConfigError(
                "config.replaced_key", f"{name}.{key}: {REPLACED_KEYS[f'{name}.{key}']}"
            )
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError("config.unknown_key", f"[{name}] has unknown keys: {', '.join(unknown)}")
    kwargs = {k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        section, _, key = var[len(ENV_PREFIX) :].lower().partition("__")
        if section not in SECTIONS:
            raise ConfigError("config.unknown_section", f"{var}: no section [{section}]")
        overrides.setdefault(section, {})[key] = value
    return overrides


def load_settings(
    config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read, merge and validate the settings; raise ConfigError with the key at fault."""
    env = os.environ if environ is None else environ
    path = config_file or (Path(env["APPLIANCE_CONFIG"]) if env.get("APPLIANCE_CONFIG") else None)
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError("config.missing", f"configuration file {path} not found") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("config.syntax", f"{path}: {exc}") from exc
        source = str(path)
    unknown = sorted(set(data) - set(SECTIONS) - {"home"})
    if unknown:
        raise ConfigError("config.unknown_section", f"{source}: unknown sections {unknown}")
    overrides = _env_overrides(env)
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError("config.type", f"[{name}] must be a table")
        merged = {**raw, **overrides.get(name, {})}
        sections[name] = _build_section(name, cls, merged)
    if env.get("APPLIANCE_HOME"):
        home = Path(env["APPLIANCE_HOME"])
    elif isinstance(data.get("home"), str) and data["home"]:
        home = Path(data["home"])
    else:
        home = default_home()
    return Settings(home=home, source=source, **sections)


__all__ = [
    "AllowedHost",
    "AppTokenSettings",
    "AudioSettings",
    "EndpointingSettings",
    "HttpParam",
    "HttpTool",
    "IncidentSettings",
    "KnowledgeSettings",
    "LdapMembership",
    "LdapSettings",
    "LlmSettings",
    "ModelsSettings",
    "NotifySettings",
    "PolicySettings",
    "RedteamGate",
    "RetentionSettings",
    "Settings",
    "SiemSettings",
    "StorageSettings",
    "SttSettings",
    "TransferMode",
    "TransferSettings",
    "TtsSettings",
    "load_settings",
]
