"""Tools inside a call: the request, the step-up dialogue, the caller's confirmation, the result.

Between the input guard and the model, for each turn:

1. While a dialogue is open, the caller's words answer it, and the model never sees them: a PIN
   or an authenticator code (checked by the factor, with attempt limits; the turn is marked
   secret, so neither its transcript nor its audio is kept), or a yes/no to a confirmation.
2. Otherwise, when the words trigger an enabled tool, the model is asked for a tool request
   under a JSON grammar that allows only the triggered tools or ``none``.
3. The request is checked like any other (ToolBox.call: enabled, arguments, level, confirmation).
   A level too low starts the step-up (PIN, then TOTP); a changing tool reads back what it
   will do and waits for the caller's yes. The yes comes from the caller's turn, never from
   model text. Every attempt is audited by the ToolBox.

Anything the agent does not handle goes on to the model as an ordinary turn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from appliance.config.settings import ToolsSettings
from appliance.core.audio import PIPELINE_SAMPLE_RATE_HZ
from appliance.core.errors import ApplianceError
from appliance.core.ports import AgentTurn, ChatMessage, VoiceEmbedder
from appliance.identity.factors import AttemptLimiter, FactorError, SecretFactor, TotpFactor
from appliance.identity.levels import Assurance, Factor, assurance
from appliance.identity.voice import VoiceTemplate, VoiceVerifier, digits_heard
from appliance.tools.registry import ConfirmationRequired, StepUpRequired, Tool, ToolBox, ToolError

_YES = re.compile(r"\b(?:yes|yeah|yep|correct|confirm|go ahead|please do|sure)\b", re.I)
_NO = re.compile(r"\b(?:no|nope|don't|do not|cancel|stop|wrong)\b", re.I)


@runtime_checkable
class JsonRequester(Protocol):
    """A model that answers under a grammar built from a JSON schema (engines.llm.LlamaChat)."""

    def request_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, Any], max_tokens: int = 128
    ) -> str: ...


class Credentials(Protocol):
    """What a caller enrolled: a PIN's salted hash and an authenticator (TOTP) secret."""

    def pin(self, caller: str) -> tuple[bytes, bytes] | None: ...

    def totp_secret(self, caller: str) -> bytes | None: ...


@dataclass
class CallerFactors:
    """The factors the agent checks, shared by every call of the process: attempt counts and
    used codes must outlive a call, or hanging up would reset them."""

    pin: SecretFactor
    totp: TotpFactor

    @classmethod
    def from_settings(cls, settings: ToolsSettings) -> CallerFactors:
        limiter = AttemptLimiter(settings.max_factor_attempts, float(settings.lockout_s))
        return cls(SecretFactor("pin", limiter), TotpFactor(limiter))


@dataclass
class VoiceCheck:
    """The optional voice factor: a speaker encoder, the verifier, and the caller's template
    (None when they have not enrolled)."""

    embedder: VoiceEmbedder
    verifier: VoiceVerifier
    template: Callable[[str], VoiceTemplate | None]


@dataclass
class _Pending:
    tool: Tool
    arguments: dict[str, Any]
    awaiting: str = ""  # "voice", "pin", "totp" or "confirm"
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
    passed: set[Factor] = field(default_factory=set)
    _pending: _Pending | None = None
    _tried: set[str] = field(default_factory=set)

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
        if pending is not None and pending.awaiting == "voice":
            return self._answer_voice(pending, text, audio)
        if pending is not None and pending.awaiting in ("pin", "totp"):
            return self._answer_factor(pending, text)
        if pending is not None:
            return self._answer_confirmation(pending, text)
        candidates = self._candidates(text)
        if not candidates:
            return None
        request = self._request(fenced, candidates)
        if request is None:
            return None
        self._pending = _Pending(*request)
        return self._advance()

    def handle_keys(self, keys: str) -> AgentTurn | None:
        """Key presses answer the open dialogue: digits for a PIN or a code, 1 (yes) or 2 (no)
        to a confirmation; with no dialogue open they mean nothing."""
        pending = self._pending
        digits = keys.rstrip("#")
        if pending is None or not digits:
            return None
        if pending.awaiting == "confirm":
            return self._answer_confirmation(pending, "yes" if digits == "1" else "no")
        if pending.awaiting in ("pin", "totp"):
            return self._answer_factor(pending, digits)
        return None  # a voice check needs the voice

    # -- steps ---------------------------------------------------------------------------------

    def _candidates(self, text: str) -> frozenset[str]:
        return frozenset(t.name for t in self.toolbox.visible() if t.triggered_by(text))

    def _request(self, text: str, candidates: frozenset[str]) -> tuple[Tool, dict[str, Any]] | None:
        listed = "\n".join(
            f"- {t.name}: {t.description}" for t in self.toolbox.visible() if t.name in candidates
        )
        system = (
            f"{'Today is ' + self.today + '. ' if self.today else ''}Fill in the tool request for "
            f"what the caller asks, or choose none.\nTools:\n{listed}\n"
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
        if tool is None or tool.name not in candidates:
            return None
        return tool, dict(request.get("arguments") or {})

    def _advance(self) -> AgentTurn:
        """Try the pending tool: it runs, or the next step of its dialogue is asked for."""
        pending = self._pending
        assert pending is not None
        try:
            result = self.toolbox.call(
                self.caller, pending.tool.name, pending.arguments, level=self.level,
                confirmed=pending.confirmed,
            )  # fmt: skip
        except StepUpRequired:
            return self._step_up(pending)
        except ConfirmationRequired:
            pending.awaiting = "confirm"
            action = pending.tool.summary(pending.tool.validate(pending.arguments))
            return AgentTurn(self.settings.confirm_prompt.format(action=action), "tool.confirm")
        except ToolError as exc:
            self._pending = None
            return AgentTurn(self.settings.failed_reply, exc.code)
        self._pending = None
        return AgentTurn(result, "tool.ok")

    def _step_up(self, pending: _Pending) -> AgentTurn:
        voice = self.voice
        if (
            voice is not None
            and Factor.VOICE not in self.passed
            and "voice" not in self._tried
            and voice.template(self.caller) is not None
        ):
            self._tried.add("voice")  # one voice attempt a call, then the other factors
            pending.awaiting, pending.challenge = "voice", voice.verifier.challenge()
            digits = ", ".join(pending.challenge)
            return AgentTurn(self.settings.voice_prompt.format(digits=digits), "step_up.voice")
        if Factor.PIN not in self.passed and self.credentials.pin(self.caller) is not None:
            pending.awaiting = "pin"
            return AgentTurn(self.settings.pin_prompt, "step_up.pin")
        if Factor.TOTP not in self.passed and self.credentials.totp_secret(self.caller):
            pending.awaiting = "totp"
            return AgentTurn(self.settings.totp_prompt, "step_up.totp")
        self._pending = None
        return AgentTurn(self.settings.cannot_verify, "step_up.unavailable")

    def _answer_voice(self, pending: _Pending, text: str, audio: bytes) -> AgentTurn | None:
        """The caller said the challenge: their voice and the digits must both match."""
        voice = self.voice
        template = voice.template(self.caller) if voice is not None else None
        if voice is None or template is None or not digits_heard(text):
            self._pending = None
            return None
        pending.awaiting = ""
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
        factor = self.factors.pin if pending.awaiting == "pin" else self.factors.totp
        try:
            if isinstance(factor, SecretFactor):
                factor.verify(self.caller, digits, self.credentials.pin(self.caller))
                self.passed.add(Factor.PIN)
            else:
                factor.verify(self.caller, digits, self.credentials.totp_secret(self.caller))
                self.passed.add(Factor.TOTP)
        except FactorError as exc:
            if factor.locked(self.caller):  # this failure (or an earlier call's) locked it
                self._pending = None
                return AgentTurn(self.settings.locked_reply, "identity.locked", secret=True)
            return AgentTurn(self.settings.wrong_answer, exc.code, secret=True)
        pending.awaiting = ""
        turn = self._advance()
        return AgentTurn(turn.reply, turn.outcome, secret=True)

    def _answer_confirmation(self, pending: _Pending, text: str) -> AgentTurn | None:
        if _YES.search(text) and not _NO.search(text):
            pending.awaiting, pending.confirmed = "", True
            return self._advance()
        self._pending = None
        if _NO.search(text):
            return AgentTurn(self.settings.declined_reply, "tool.declined")
        return None  # something else: the change is not made, the turn goes on to the model
