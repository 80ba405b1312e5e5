"""Tools inside a call: the request, the step-up dialogue, the caller's confirmation, the result.

Between the input guard and the model, for each turn:

1. While a dialogue is open, the caller's words answer it, and the model never sees them: a PIN
   or a code (authenticator or out of band; checked by the factor, with attempt limits; the
   turn is marked secret, so neither its transcript nor its audio is kept), or a yes/no to a
   confirmation.
2. Otherwise, when the words ask for an enabled tool's action (its intent patterns: "move my
   appointment", "speak to a person"), that tool is the request; when several match, the model
   chooses among them under a JSON grammar that allows only those or ``none``.
3. The arguments come from the caller's own words (tools/slots.py: a weekday, a time among
   those offered, a branch named aloud), never from the model, which would invent them; what
   the caller did not say is asked for, one question at a time.
4. The request is checked like any other (ToolBox.call: enabled, arguments, level, confirmation).
   A level too low starts the step-up (PIN, then TOTP, or for a caller with no
   authenticator a code sent out of band to their registered contact); a changing tool reads
   back what it will do and waits for the caller's yes. The yes comes from the caller's turn,
   never from model text. Every attempt is audited by the ToolBox.

When the caller was offered a person (``offer_person``: the honest unknown offers one), their
next yes transfers the call. A transfer is announced only when one is really started (the
call's line can transfer and a destination is configured: ``AgentTurn.transfer``); its outcome
comes back in ``after_transfer``, and what the caller hears is decided by it, never by the
model: put through (the line hangs up), or "no one could be reached" and the offer of a
callback, which a yes stores for staff (``CallbackDesk``). Where no transfer is possible (the
microphone) the request for a person is the callback offer at once. Anything the agent does
not handle goes on as an ordinary turn.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from appliance.config.settings import ToolsSettings, TransferSettings
from appliance.core.audio import PIPELINE_SAMPLE_RATE_HZ
from appliance.core.errors import ApplianceError
from appliance.core.ports import (
    AgentTurn,
    CallbackDesk,
    ChatMessage,
    CodeNotifier,
    Counters,
    TransferOutcome,
    VoiceEmbedder,
)
from appliance.guard import pii
from appliance.identity.factors import (
    AttemptLimiter,
    FactorError,
    OneTimeCodes,
    SecretFactor,
    TotpFactor,
)
from appliance.identity.levels import Assurance, Factor, assurance
from appliance.identity.voice import VoiceTemplate, VoiceVerifier, digits_heard
from appliance.tools.registry import (
    ConfirmationRequired,
    Param,
    StepUpRequired,
    Tool,
    ToolBox,
    ToolError,
)
from appliance.tools.slots import extract

log = logging.getLogger(__name__)

_LEVEL_WORDS = {
    Assurance.ANONYMOUS: "not verified",
    Assurance.ONE_FACTOR: "verified with one factor",
    Assurance.TWO_FACTORS: "verified with two factors",
}
"""A warm transfer's briefing says the caller's assurance level in these words."""
_REASON_WORDS = {
    "request": "The caller asked to speak to a person",
    "complaint": "The caller has a complaint",
    "other": "The caller asked to speak to a person",
}
_BRIEFED_TURNS = 2
"""How many of the caller's latest requests the briefing sums up."""
_BRIEFED_WORDS = 30
_NUMBERS = re.compile(r"\d(?:[\d\s.,/-]*\d)?")
_PLACEHOLDER = re.compile(r"\[[A-Z][A-Z_ ]*\]")


def _briefing_safe(text: str) -> str:
    """One of the caller's requests as the person may hear it: the guard's redaction once
    more (whatever the policy's kinds), then no number at all (a card's digits in parts, a
    PIN, a code, an account), each withheld in words; at most ``_BRIEFED_WORDS`` words."""
    redacted = pii.redact(text).text
    redacted = _NUMBERS.sub("(a number, withheld)", _PLACEHOLDER.sub("(withheld)", redacted))
    words = redacted.split()
    cut = " ".join(words[:_BRIEFED_WORDS])
    return cut + (" ..." if len(words) > _BRIEFED_WORDS else "")


_YES = re.compile(r"\b(?:yes|yeah|yep|correct|confirm|go ahead|please do|sure)\b", re.I)
_NO = re.compile(r"\b(?:no|nope|don't|do not|cancel|stop|wrong)\b", re.I)


@runtime_checkable
class JsonRequester(Protocol):
    """A model that answers under a grammar built from a JSON schema (engines.llm.LlamaChat)."""

    def request_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, Any], max_tokens: int = 128
    ) -> str: ...


class Credentials(Protocol):
    """What a caller enrolled: a PIN's salted hash, an authenticator (TOTP) secret, and the
    contact one-time codes go to."""

    def pin(self, caller: str) -> tuple[bytes, bytes] | None: ...

    def totp_secret(self, caller: str) -> bytes | None: ...

    def contact(self, caller: str) -> str | None: ...


IdentityEvent = Callable[[str, str, str], None]
"""An identity event of the call for the audit trail: (action, outcome, error code); never
the code, the contact or the caller's words."""


@dataclass
class CallerFactors:
    """The factors the agent checks, shared by every call of the process: attempt counts and
    used codes must outlive a call, or hanging up would reset them."""

    pin: SecretFactor
    totp: TotpFactor
    codes: OneTimeCodes | None = None
    """Out-of-band codes, when a notifier is configured ([notify])."""

    @classmethod
    def from_settings(
        cls,
        settings: ToolsSettings,
        counters: Counters | None = None,
        notifier: CodeNotifier | None = None,
        code_ttl_s: float = 300.0,
    ) -> CallerFactors:
        """With ``counters`` (the store) the attempt counts, lockouts and used codes outlive
        the process: a restart does not give a guesser a fresh start. With ``notifier`` the
        out-of-band code is a factor too (its pending codes live in this process)."""
        limiter = AttemptLimiter(
            settings.max_factor_attempts,
            float(settings.lockout_s),
            clock=time.time if counters is not None else time.monotonic,
            counters=counters,
        )
        codes = None
        if notifier is not None:
            codes = OneTimeCodes(notifier.send, limiter, code_ttl_s, reaches=notifier.reaches)
        return cls(SecretFactor("pin", limiter), TotpFactor(limiter), codes)


@dataclass
class VoiceCheck:
    """The optional voice factor: a speaker encoder, the verifier, and the caller's template
    (None when they have not enrolled)."""

    embedder: VoiceEmbedder
    verifier: VoiceVerifier
    template: Callable[[str], VoiceTemplate | None]


class Awaiting(enum.StrEnum):
    """What the open dialogue waits for from the caller."""

    NOTHING = ""
    SLOT = "slot"
    VOICE = "voice"
    PIN = "pin"
    TOTP = "totp"
    CODE = "code"
    """The one-time code sent out of band."""
    CONFIRM = "confirm"
    ACCEPT = "accept"
    """A yes to the offer of a person."""
    CALLBACK = "callback"
    """A yes to the offer of a callback (no one could be reached, or no transfer here)."""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_QUESTION = re.compile(r"\?|^\s*(?:what|when|where|why|how|who|which|do|does|is|are|can)\b", re.I)
TRANSFER_TOOL = "transfer_to_human"


class _CodeSent(enum.Enum):
    """This call's out-of-band code: one is sent at most once a call."""

    NOT_YET = enum.auto()
    SENT = enum.auto()
    FAILED = enum.auto()


@dataclass
class _Pending:
    tool: Tool
    arguments: dict[str, Any]
    awaiting: Awaiting = Awaiting.NOTHING
    slot: Param | None = None
    """The argument being asked for (``Awaiting.SLOT``)."""
    retried: bool = False
    challenge: str = ""
    """The digits the caller is asked to say for the voice factor."""
    confirmed: bool = False
    """Set only by the caller's own yes (``_answer_confirmation``)."""


@dataclass
class ToolAgent:
    toolbox: ToolBox
    caller: str
    """The caller ID the tools and factors look up (it seeds the record, never proves who)."""
    credentials: Credentials
    model: JsonRequester
    settings: ToolsSettings
    factors: CallerFactors
    voice: VoiceCheck | None = None
    today: str = ""
    record: IdentityEvent | None = None
    """Where the agent reports identity events (a code sent or not) for the audit trail."""
    can_transfer: bool = False
    """The call's line can transfer and a destination is configured (``CallControl``)."""
    transfer: TransferSettings = field(default_factory=TransferSettings)
    callbacks: CallbackDesk | None = None
    """Where a consented callback request goes (the store); None: none can be kept."""
    call_id: str = ""
    clock: Callable[[], dt.datetime] = field(default=_utc_now)
    """Now, for the opening hours ([transfer] hours): outside them, the callback offer."""
    passed: set[Factor] = field(default_factory=set)
    _pending: _Pending | None = None
    _code: _CodeSent = _CodeSent.NOT_YET
    _tried: set[str] = field(default_factory=set)
    _transfer_reason: str = "request"
    """Why the transfer under way was asked for (the tool's ``reason``): for the briefing."""

    @property
    def level(self) -> Assurance:
        return assurance(self.passed)

    def wants(self, text: str) -> bool:
        """Whether ``handle`` may act on ``text`` (no side effects): a dialogue is open, or an
        enabled tool is triggered."""
        return self._pending is not None or bool(self._candidates(text))

    def handle(self, heard: str, fenced: str, audio: bytes = b"") -> AgentTurn | None:
        text = heard
        pending = self._pending
        if pending is not None:
            match pending.awaiting:
                case Awaiting.VOICE:
                    return self._answer_voice(pending, text, audio)
                case Awaiting.PIN | Awaiting.TOTP | Awaiting.CODE:
                    return self._answer_factor(pending, text)
                case Awaiting.SLOT:
                    return self._answer_slot(pending, text)
                case Awaiting.ACCEPT:
                    answered = self._answer_offer(pending, text)
                    if answered is not None:
                        return answered
                    # neither yes nor no: the offer lapses and the words are a new request
                case Awaiting.CALLBACK:
                    answered = self._answer_callback(text)
                    if answered is not None:
                        return answered
                case _:
                    return self._answer_confirmation(pending, text)
        if self._pending is not None:
            return None
        candidates = self._candidates(text)
        if not candidates:
            return None
        tool = self._choose(fenced, candidates)
        if tool is None:
            return None
        self._pending = _Pending(tool, self._arguments(tool, text, {}))
        return self._advance()

    def may_offer_person(self) -> bool:
        """Whether ``offer_person`` would offer one now (no side effects)."""
        return self._transfer_tool() is not None and self._pending is None

    def offer_person(self) -> bool:
        """The caller was offered a person: a yes next transfers them."""
        tool = self._transfer_tool()
        if tool is None or self._pending is not None:
            return False
        self._pending = _Pending(tool, {"reason": "request"}, Awaiting.ACCEPT)
        return True

    def handle_keys(self, keys: str) -> AgentTurn | None:
        """Key presses answer the open dialogue: digits for a PIN or a code, 1 (yes) or 2 (no)
        to a confirmation; with no dialogue open they mean nothing. 0 alone asks for a person,
        whatever is open (no PIN or code is a single digit)."""
        pending = self._pending
        digits = keys.rstrip("#")
        if digits == "0" and (tool := self._transfer_tool()) is not None:
            self._pending = _Pending(tool, {"reason": "request"})
            return self._advance()
        if pending is None or not digits:
            return None
        if pending.awaiting in (Awaiting.CONFIRM, Awaiting.ACCEPT, Awaiting.CALLBACK):
            answer = "yes" if digits == "1" else "no"
            if pending.awaiting is Awaiting.ACCEPT:
                return self._answer_offer(pending, answer)
            if pending.awaiting is Awaiting.CALLBACK:
                return self._answer_callback(answer)
            return self._answer_confirmation(pending, answer)
        if pending.awaiting in (Awaiting.PIN, Awaiting.TOTP, Awaiting.CODE):
            return self._answer_factor(pending, digits)
        return None  # a voice check needs the voice, a slot the caller's words

    # -- steps ---------------------------------------------------------------------------------

    def _transfer_tool(self) -> Tool | None:
        tool = self.toolbox.tools.get(TRANSFER_TOOL)
        return tool if tool is not None and tool.name in self.toolbox.enabled else None

    def _candidates(self, text: str) -> frozenset[str]:
        return frozenset(t.name for t in self.toolbox.visible() if t.triggered_by(text))

    def _choose(self, text: str, candidates: frozenset[str]) -> Tool | None:
        """The tool the caller asks for: the one whose intent matched, or, when several did,
        the model's choice among them (or none) under a JSON grammar."""
        if len(candidates) == 1:
            return self.toolbox.tools[next(iter(candidates))]
        listed = "\n".join(
            f"- {t.name}: {t.description}" for t in self.toolbox.visible() if t.name in candidates
        )
        system = (
            f"{'Today is ' + self.today + '. ' if self.today else ''}Choose the tool for "
            f"what the caller asks, or none.\nTools:\n{listed}\n"
            "- none: the caller asks for something else."
        )
        raw = self.model.request_json(
            [ChatMessage("system", system), ChatMessage("user", text)],
            self.toolbox.call_schema(only=candidates),
        )
        try:
            request = json.loads(raw)
        except ValueError:
            return None  # the grammar makes this rare; an ordinary reply then
        tool = self.toolbox.tools.get(str(request.get("tool")))
        return tool if tool is not None and tool.name in candidates else None

    def _arguments(self, tool: Tool, text: str, known: dict[str, Any]) -> dict[str, Any]:
        """``known`` with every argument the caller named in ``text`` (a move takes the last
        day named: "from Wednesday to Thursday")."""
        found = dict(known)
        last = tool.name.startswith("move")
        for param in tool.params:
            if param.name not in found:
                value = extract(param, text, self._today(), last=last)
                if value is not None:
                    found[param.name] = value
        return found

    def _today(self) -> dt.date:
        try:
            return dt.date.fromisoformat(self.today) if self.today else dt.date.today()
        except ValueError:
            return dt.date.today()

    def _advance(self) -> AgentTurn:
        """Try the pending tool: it runs, or the next step of its dialogue is asked for."""
        pending = self._pending
        assert pending is not None
        missing = [p for p in pending.tool.params if p.required and p.name not in pending.arguments]
        if missing:
            pending.awaiting, pending.slot, pending.retried = Awaiting.SLOT, missing[0], False
            return AgentTurn(missing[0].ask or f"What {missing[0].description}?", "tool.slot")
        try:
            result = self.toolbox.call(
                self.caller, pending.tool.name, pending.arguments, level=self.level,
                confirmed=pending.confirmed,
            )  # fmt: skip
        except StepUpRequired:
            return self._step_up(pending)
        except ConfirmationRequired:
            pending.awaiting = Awaiting.CONFIRM
            action = pending.tool.summary(pending.tool.validate(pending.arguments))
            return AgentTurn(self.settings.confirm_prompt.format(action=action), "tool.confirm")
        except ToolError as exc:
            self._pending = None
            return AgentTurn(self.settings.failed_reply, exc.code)
        self._pending = None
        if pending.tool.name == TRANSFER_TOOL:
            return self._start_transfer(pending)
        return AgentTurn(result, "tool.ok")

    # -- a person, or a callback ------------------------------------------------------------------

    def _start_transfer(self, pending: _Pending) -> AgentTurn:
        """The transfer is announced only when it will really be attempted; the words are the
        configuration's, never the tool's or the model's. Outside the opening hours (or on a
        holiday) no one would answer: the callback offer instead."""
        if not self.transfer.opening_hours().open_at(self.clock()):
            self._offer_callback(pending)
            return AgentTurn(self.transfer.after_hours_reply, "transfer.after_hours")
        if self.can_transfer:
            self._transfer_reason = str(pending.arguments.get("reason") or "request")
            return AgentTurn(self.transfer.announce, "transfer.started", transfer=True)
        self._offer_callback(pending)
        return AgentTurn(self.transfer.unavailable_reply, "transfer.unavailable")

    def after_transfer(self, outcome: TransferOutcome) -> AgentTurn:
        """Each attempt is audited (the ToolBox's trail and the call's tool calls); put through,
        nothing more is said; else the caller hears that no one could be reached and is
        offered a callback."""
        audit = self.toolbox.audit
        for index, attempt in enumerate(outcome.attempts, 1):
            if audit is not None:
                code = f"transfer.{attempt.result.value}"
                details = {"attempt": index, "destination": attempt.destination}
                audit(self.caller, TRANSFER_TOOL, {**details, "status": attempt.status}, code)
        if outcome.connected:
            return AgentTurn("", "transfer.connected")
        tool = self.toolbox.tools.get(TRANSFER_TOOL)
        if tool is not None:
            self._offer_callback(_Pending(tool, {}))
        return AgentTurn(self.transfer.unreachable_reply, "transfer.failed")

    def briefing(self, asked: Sequence[str]) -> str:
        """What the person hears before a warm transfer puts the caller through: the
        ``[transfer] briefing`` template with the reason, the assurance level in words and
        the caller's latest requests (``asked``: the guard's redacted text), redacted here
        once more and stripped of every number. The words come from code and configuration,
        never from the model; the text is spoken, never stored or logged."""
        said = [_briefing_safe(t) for t in asked if t.strip()][-_BRIEFED_TURNS:]
        return self.transfer.briefing.format(
            reason=_REASON_WORDS.get(self._transfer_reason, _REASON_WORDS["request"]),
            verified=_LEVEL_WORDS[self.level],
            summary="; ".join(said) if said else "nothing yet beyond asking for a person",
        )

    def _offer_callback(self, pending: _Pending) -> None:
        pending.awaiting = Awaiting.CALLBACK
        self._pending = pending

    def _answer_callback(self, text: str) -> AgentTurn | None:
        """The caller's own yes (never the model's) stores the request; a no is respected;
        anything else lets the offer lapse and goes on as a new turn."""
        self._pending = None
        if _YES.search(text) and not _NO.search(text):
            if self.callbacks is None:
                return AgentTurn(self.settings.failed_reply, "callback.unavailable")
            self.callbacks.request_callback(self.call_id, self.caller or None, "transfer")
            return AgentTurn(self.transfer.callback_stored_reply, "callback.requested")
        if _NO.search(text) and len(text.split()) <= 6:
            return AgentTurn(self.transfer.callback_declined_reply, "callback.declined")
        return None

    def _step_up(self, pending: _Pending) -> AgentTurn:
        voice = self.voice
        if (
            voice is not None
            and Factor.VOICE not in self.passed
            and "voice" not in self._tried
            and voice.template(self.caller) is not None
        ):
            self._tried.add("voice")  # one voice attempt a call, then the other factors
            pending.awaiting, pending.challenge = Awaiting.VOICE, voice.verifier.challenge()
            digits = ", ".join(pending.challenge)
            return AgentTurn(self.settings.voice_prompt.format(digits=digits), "step_up.voice")
        # Every caller ID is asked for a PIN, enrolled or not, locked or not: the dialogue must
        # not tell someone who spoofs a number whether it is enrolled (the check fails alike).
        if Factor.PIN not in self.passed and self.caller:
            pending.awaiting = Awaiting.PIN
            return AgentTurn(self.settings.pin_prompt, "step_up.pin")
        if Factor.TOTP not in self.passed and self.credentials.totp_secret(self.caller):
            pending.awaiting = Awaiting.TOTP
            return AgentTurn(self.settings.totp_prompt, "step_up.totp")
        # No authenticator: a code out of band, to the contact the caller registered.
        if Factor.OUT_OF_BAND not in self.passed and (turn := self._send_code(pending)):
            return turn
        self._pending = None
        return AgentTurn(self.settings.cannot_verify, "step_up.unavailable")

    def _send_code(self, pending: _Pending) -> AgentTurn | None:
        """Send a one-time code (once a call; asked again, the same code is awaited), or say
        it could not be sent and offer a person; None when there is no code to offer."""
        codes = self.factors.codes
        contact = self.credentials.contact(self.caller) if codes is not None else None
        if codes is None or not contact or not codes.reaches(contact):
            return None
        if codes.locked(self.caller):  # no fresh code for a guesser, no flood of e-mails
            self._pending = None
            return AgentTurn(self.settings.locked_reply, "identity.locked")
        if self._code is _CodeSent.NOT_YET:
            try:
                codes.issue(self.caller, contact)
            except ApplianceError as exc:  # the relay is down, refused, or may not be used
                self._code = _CodeSent.FAILED
                log.warning("no one-time code was sent: %s", exc.code)
                self._report("oob_code_failed", "failed", exc.code)
            else:
                self._code = _CodeSent.SENT
                self._report("oob_code_sent", "ok", "")
        if self._code is _CodeSent.FAILED:
            self._pending = None
            if self.offer_person():
                return AgentTurn(self.settings.code_not_sent, "step_up.code_unsent")
            return AgentTurn(self.settings.cannot_verify, "step_up.code_unsent")
        pending.awaiting = Awaiting.CODE
        return AgentTurn(self.settings.code_prompt, "step_up.code")

    def _report(self, action: str, outcome: str, error: str) -> None:
        if self.record is None:
            return
        try:
            self.record(action, outcome, error)
        except ApplianceError as exc:  # the audit trail failing must not fail the caller's turn
            log.warning("identity event %s not recorded: %s", action, exc.code)

    def _answer_voice(self, pending: _Pending, text: str, audio: bytes) -> AgentTurn | None:
        """The caller said the challenge: their voice and the digits must both match."""
        voice = self.voice
        template = voice.template(self.caller) if voice is not None else None
        if voice is None or template is None or not digits_heard(text):
            self._pending = None
            return None
        pending.awaiting = Awaiting.NOTHING
        try:
            embedding = voice.embedder.embed(audio, PIPELINE_SAMPLE_RATE_HZ)
            match = voice.verifier.verify(self.caller, template, embedding, text, pending.challenge)
        except ApplianceError as exc:  # too short, locked: on to the other factors
            outcome = exc.code
        else:
            outcome = match.reason
            if match.passed:
                self.passed.add(Factor.VOICE)
        turn = self._advance()
        return AgentTurn(turn.reply, f"{outcome};{turn.outcome}", secret=True)

    def _answer_factor(self, pending: _Pending, text: str) -> AgentTurn | None:
        digits = digits_heard(text)
        if not digits:
            self._pending = None  # the caller moved on: the dialogue is dropped
            if _NO.search(text):
                return AgentTurn(self.settings.declined_reply, "step_up.declined")
            return None
        factor: SecretFactor | TotpFactor | OneTimeCodes
        try:
            match pending.awaiting:
                case Awaiting.PIN:
                    factor = self.factors.pin
                    factor.verify(self.caller, digits, self.credentials.pin(self.caller))
                    self.passed.add(Factor.PIN)
                case Awaiting.TOTP:
                    factor = self.factors.totp
                    factor.verify(self.caller, digits, self.credentials.totp_secret(self.caller))
                    self.passed.add(Factor.TOTP)
                case _:
                    assert self.factors.codes is not None  # offered only with a notifier
                    factor = self.factors.codes
                    factor.verify(self.caller, digits)
                    self.passed.add(Factor.OUT_OF_BAND)
        except FactorError as exc:
            if factor.locked(self.caller):  # this failure (or an earlier call's) locked it
                self._pending = None
                return AgentTurn(self.settings.locked_reply, "identity.locked", secret=True)
            return AgentTurn(self.settings.wrong_answer, exc.code, secret=True)
        pending.awaiting = Awaiting.NOTHING
        turn = self._advance()
        return AgentTurn(turn.reply, turn.outcome, secret=True)

    def _answer_confirmation(self, pending: _Pending, text: str) -> AgentTurn | None:
        if _YES.search(text) and not _NO.search(text):
            pending.awaiting, pending.confirmed = Awaiting.NOTHING, True
            return self._advance()
        self._pending = None
        if _NO.search(text):
            return AgentTurn(self.settings.declined_reply, "tool.declined")
        return None  # something else: the change is not made, the turn goes on to the model

    def _answer_slot(self, pending: _Pending, text: str) -> AgentTurn | None:
        """The caller answers the question for one argument (and may name others with it)."""
        slot = pending.slot
        assert slot is not None
        arguments = self._arguments(pending.tool, text, pending.arguments)
        if slot.name in arguments:
            pending.arguments = arguments
            pending.awaiting, pending.slot = Awaiting.NOTHING, None
            return self._advance()
        if _NO.search(text) and not _QUESTION.search(text):
            self._pending = None
            return AgentTurn(self.settings.declined_reply, "tool.declined")
        if pending.retried or _QUESTION.search(text):
            self._pending = None  # the caller moved on: the request is dropped
            return None
        pending.retried = True
        return AgentTurn(f"Sorry, I didn't catch that. {slot.ask}", "tool.slot")

    def _answer_offer(self, pending: _Pending, text: str) -> AgentTurn | None:
        """A yes to the offer of a person transfers; a no is respected; anything else moves on."""
        if _YES.search(text) and not _NO.search(text):
            pending.awaiting = Awaiting.NOTHING
            return self._advance()
        self._pending = None
        if _NO.search(text) and len(text.split()) <= 6:
            return AgentTurn(self.settings.offer_declined_reply, "transfer.declined")
        return None
