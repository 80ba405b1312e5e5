"""Turn events: what happened in a turn and when, on the call's monotonic clock.

A turn emits its events in a fixed order (Home Assistant's assist pipeline does the same):
SPEECH_START, SPEECH_END, TRANSCRIPT, GUARD_INPUT (when guardrails are on), ROUTE (how the turn
is answered, with the knowledge entries it cites), FIRST_TOKEN, FIRST_SENTENCE, FIRST_AUDIO,
TURN_END; a turn answered without the model (an approved answer, the honest unknown, a tool)
has no FIRST_TOKEN or FIRST_SENTENCE; a turn the tool agent answers has AGENT (with its outcome)
just before ROUTE; a turn of key presses (DTMF) has KEYPAD (with how many keys, never which),
AGENT, FIRST_AUDIO and TURN_END. A turn that transfers the call has, after the announcement's
FIRST_AUDIO, one TRANSFER per destination tried (its result and SIP status) and a second AGENT
with the outcome. GUARD_OUTPUT (a reply stopped
before it was spoken), BARGE_IN and ERROR may appear before TURN_END; a turn whose transcript
is empty, that got a fixed reply (no model), or that was interrupted or failed, skips the
stages it never reached.
Work done speculatively (before the end of speech was confirmed) keeps the timestamp at which
it really happened, so ``t_ms`` of TRANSCRIPT may be earlier than that of SPEECH_END.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Stage(enum.StrEnum):
    """Where in the data path something happened (audio in -> ... -> audio out)."""

    AUDIO_IN = "audio_in"
    ENDPOINTING = "endpointing"
    STT = "stt"
    GUARD = "guard"
    KNOWLEDGE = "knowledge"
    LLM = "llm"
    TTS = "tts"
    AUDIO_OUT = "audio_out"
    STORAGE = "storage"


class EventType(enum.StrEnum):
    SPEECH_START = "speech_start"
    SPEECH_END = "speech_end"
    TRANSCRIPT = "transcript"
    GUARD_INPUT = "guard_input"
    ROUTE = "route"
    AGENT = "agent"
    KEYPAD = "keypad"
    FIRST_TOKEN = "first_token"
    FIRST_SENTENCE = "first_sentence"
    FIRST_AUDIO = "first_audio"
    TRANSFER = "transfer"
    GUARD_OUTPUT = "guard_output"
    BARGE_IN = "barge_in"
    ERROR = "error"
    TURN_END = "turn_end"


class Route(enum.StrEnum):
    """How a turn was answered: decided in code (pipeline/reply.py), never by the model."""

    GUARD = "guard"
    """The input guard answered (blocked, refused topic, distress, too long, a limit)."""
    TOOL = "tool"
    """A tool's dialogue answered (a request for an action, a step-up, a confirmation)."""
    FAQ = "faq"
    """A confident match: the organization's approved answer, spoken as written."""
    QUOTED = "quoted"
    """A partial match on a document: its best sentences, quoted as written (no model)."""
    GROUNDED = "grounded"
    """A partial match: the model answered from the knowledge passages it was given."""
    UNKNOWN = "unknown"
    """Nothing relevant: the honest "I don't have that information" and the offer of a person."""
    MODEL = "model"
    """No knowledge base is configured: the model answered under the system prompt alone."""
    KEYPAD = "keypad"
    """Key presses (DTMF) answered an open tool dialogue."""
    FIXED = "fixed"
    """A fixed prompt of the call itself (a goodbye, the slow-down reply)."""
    REPEAT = "repeat"
    """The caller asked to hear the last reply again ("say that again", "slower, please"):
    said again as it was (slower when asked), no model."""


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """One event of one turn.

    ``t_ms`` is milliseconds since the call started (monotonic clock). ``frame_index`` is the
    index of the 20 ms media frame at which it happened, when it is tied to the media timeline.
    ``data`` holds small typed facts (a transcript, an error code); it is payload, never logged.
    """

    type: EventType
    turn: int
    t_ms: float
    frame_index: int | None = None
    data: dict[str, str | int | float | bool] = field(default_factory=dict)
