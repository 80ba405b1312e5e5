"""The reply to one turn, stage by stage: transcribe -> screen -> route -> answer -> vet -> speak.

``ReplyPath`` holds one call's conversation state (the dialogue, what was said, what the caller
was offered) and runs each turn's stages in order, one method each. The call (session.py) runs
it for audio; the red team runs the very same path for text (``respond``), so what it measures
is the product.

How a turn is answered is decided here, in code (``route``): the input guard's fixed reply; a
tool dialogue (a request for an action, a step-up); then the knowledge base (knowledge/policy.py):
an approved answer said as written, a document's closest sentences quoted as written, a
grounded model answer from the passages, or the honest unknown with the offer of a person.
Without a knowledge base the model answers under the system prompt alone.

Streaming meets vetting one sentence at a time: each sentence of a model reply is vetted (layer
3) before it is spoken. A stopped first sentence is drafted once more (when the guard allows
it), then replaced by the honest answer or the guard's fallback; a stopped later sentence ends
the reply with a close that stands on its own (``CallGuard.replacement``), so nothing said is
ever withdrawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from appliance.config.settings import EndpointingSettings
from appliance.core.audio import PIPELINE_SAMPLE_RATE_HZ
from appliance.core.events import EventType, Route, Stage
from appliance.core.ports import (
    AgentTurn,
    CallControl,
    ChatMessage,
    ChatModel,
    InputDecision,
    Knowledge,
    KnowledgeAnswer,
    OffloadingTranscriber,
    SpeechDetector,
    Synthesizer,
    Transcriber,
    TransferAttempt,
    TransferOutcome,
    TransferResult,
    TurnAgent,
    TurnGuard,
)
from appliance.pipeline.chunking import SentenceChunker
from appliance.pipeline.dialogue import Dialogue
from appliance.pipeline.scheduling import SCHEDULER

SECRET_NOT_RECORDED = "[authentication answer: not recorded]"
_ASKING = frozenset({Route.MODEL, Route.GROUNDED, Route.FAQ, Route.QUOTED, Route.UNKNOWN})
"""The routes whose turn was a question or a request of the caller's own (a briefing's)."""
_ASKED_KEPT = 4
KEYPAD_NOT_RECORDED = "[keypad: not recorded]"
_SAYS_UNKNOWN = re.compile(
    r"\b(?:i\s+)?(?:do\s+not|don'?t)\s+have\s+(?:that|this|any|the)\s+(?:information|details)\b|"
    r"\bi\s+(?:do\s+not|don'?t)\s+know\b|\bi'?m\s+not\s+sure\b|"
    r"\bsorry\s+for\s+(?:any|the)\s+(?:confusion|misunderstanding)\b|"
    r"\bi\s+can\s+only\s+(?:help|assist)\b|"
    r"\bi(?:\s+am|'?m)?\s+(?:can'?t|cannot|unable\s+to|not\s+able\s+to)\s+"
    r"(?:help|assist|answer|provide|share|give)\b",
    re.I,
)
"""A model opening with "I don't know" or a bare decline ("I can only assist with ..."):
the caller hears the honest answer with the offer of a person instead (the same words every
time)."""
Data = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Engines:
    """The loaded models, shared by every call of the process."""

    vad: SpeechDetector
    stt: Transcriber
    llm: ChatModel
    tts: Synthesizer


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    endpointing: EndpointingSettings = field(default_factory=EndpointingSettings)
    system_prompt: str = "You are a helpful voice assistant. Answer briefly."
    max_reply_tokens: int = 96
    history_turns: int = 6
    output_sample_rate_hz: int = 22_050
    fallback_reply: str = "Sorry, something went wrong on my side. Could you say that again?"
    record_audio: bool = False
    """Keep the caller's utterances with each stored turn (only when retention allows it)."""
    max_call_s: float = 3600.0
    """The call is ended, with ``goodbye_reply``, when it lasts this long."""
    turns_per_minute: int = 30
    """More turns than this in a minute get ``slow_down_reply`` instead of an answer."""
    goodbye_reply: str = "Thank you for calling. Goodbye."
    slow_down_reply: str = (
        "I'm sorry, that's a lot of requests in a short time. Please wait a moment."
    )
    slower_pace: float = 1.35
    """The last reply said again "slower, please" takes this much longer."""
    offer_after_failures: int = 2
    """Turns in a row that got the caller nowhere before a person is offered (0: never)."""
    offer_prompt: str = "Would you like me to put you through to a person? Please say yes or no."


@dataclass
class ReplyState:
    """What one turn's reply did: the facts the turn record keeps (codes, never text, except
    the transcript and reply, which storage seals)."""

    transcript: str = ""
    reply: str = ""
    decision: InputDecision | None = None
    route: Route | None = None
    citations: tuple[str, ...] = ()
    output_reasons: tuple[str, ...] = ()
    redrafted: tuple[str, ...] = ()
    """Why a first draft was thrown away before any of it was said."""
    agent_outcome: str = ""
    tokens_started: bool = False
    offered_person: bool = False
    """The reply offered a person (the honest unknown, a close): a yes next transfers."""
    model_saw: str = ""
    """The user text the model was given this turn (what enters the dialogue's history)."""


class TurnOutput(Protocol):
    """Where a turn's reply goes: its events (held back while the turn is speculative), its
    audio, and whether it was cancelled (barge-in, a discarded speculation)."""

    state: ReplyState

    @property
    def cancelled(self) -> bool: ...

    @property
    def audible(self) -> bool:
        """False for the red team: sentences are vetted and kept, never synthesized."""
        ...

    def emit(self, kind: EventType, **data: Data) -> None: ...

    async def wait_released(self) -> None:
        """Return once the turn is no longer speculative (the end of speech is confirmed)."""
        ...

    def play(self, pcm: bytes) -> None: ...

    async def played(self) -> None:
        """Return once the audio given so far has been played (to the last partial frame)."""
        ...

    def hold(self, on: bool) -> None:
        """While on, the caller's speech neither interrupts this reply nor starts a turn (they
        are being transferred)."""
        ...

    def end_call(self, reason: str) -> None:
        """End the call once this reply is over (the caller was put through)."""
        ...


@dataclass(frozen=True)
class Plan:
    """What ``route`` decided: a fixed text to say, or the messages the model answers."""

    route: Route
    text: str | None = None
    messages: list[ChatMessage] | None = None
    given: tuple[str, ...] = ()
    """What a model answer may rest on (layer 3 checks every figure and name against it)."""
    asked: str = ""
    """What the caller asked (a model answer must not merely say it back)."""
    passages: tuple[str, ...] = ()
    """The knowledge passages of an answer from them (it must not contradict them)."""
    transfer: bool = False
    """After the text, transfer the call (the agent announced it) and say how it went."""
    pace: float = 1.0
    """Above 1 the text is spoken slower (the caller asked for it)."""


@dataclass
class ReplyPath:
    """One call's replies. The models are shared; everything else here belongs to the call."""

    stt: Transcriber
    llm: ChatModel
    tts: Synthesizer
    guard: TurnGuard | None
    agent: TurnAgent | None
    knowledge: Knowledge | None
    dialogue: Dialogue
    max_reply_tokens: int = 96
    output_sample_rate_hz: int = 22_050
    control: CallControl | None = None
    """What the call itself can do (transfer); None: nothing (the red team's text runs)."""
    slower_pace: float = 1.35
    offer_after_failures: int = 2
    offer_prompt: str = "Would you like me to put you through to a person? Please say yes or no."
    _caller_said: list[str] = field(default_factory=list)
    _agent_said: list[str] = field(default_factory=list)
    _last_reply: str = ""
    """What the caller heard last ("say that again" says it again)."""
    _failures: int = 0
    """Turns in a row that got the caller nowhere (``_failed``)."""
    _asked: list[str] = field(default_factory=list)
    """What the caller asked, turn by turn, as the guard redacted it (``decision.query``;
    never a tool dialogue's answer: a PIN, a code): a warm transfer's briefing sums it up."""

    @classmethod
    def build(
        cls,
        engines: Engines,
        config: PipelineConfig,
        guard: TurnGuard | None,
        agent: TurnAgent | None = None,
        knowledge: Knowledge | None = None,
        control: CallControl | None = None,
    ) -> ReplyPath:
        """A call's reply path; tools and knowledge work behind the guard (none without it)."""
        prompt = guard.system_prompt if guard is not None else config.system_prompt
        return cls(
            engines.stt,
            engines.llm,
            engines.tts,
            guard,
            agent if guard is not None else None,
            knowledge if guard is not None else None,
            Dialogue(prompt, config.history_turns),
            max_reply_tokens=config.max_reply_tokens,
            output_sample_rate_hz=config.output_sample_rate_hz,
            control=control,
            slower_pace=config.slower_pace,
            offer_after_failures=config.offer_after_failures,
            offer_prompt=config.offer_prompt,
        )

    # -- the stages -----------------------------------------------------------------------------

    async def run(self, out: TurnOutput, audio: bytes, flags: Sequence[str] = ()) -> None:
        """The whole path for one utterance (16 kHz PCM16; ``flags``: what the screening of
        its sound found)."""
        text = await self.transcribe(out, audio)
        if text.strip():
            await self.respond(out, text, audio, flags)

    async def respond(
        self, out: TurnOutput, heard: str, audio: bytes = b"", flags: Sequence[str] = ()
    ) -> None:
        """From a transcript on: screen -> route -> answer (vetted and spoken)."""
        decision = await self.screen(out, heard, flags)
        plan = await self.route(out, heard, decision, audio)
        await self.answer(out, plan)

    async def transcribe(self, out: TurnOutput, audio: bytes) -> str:
        stt, rate = self.stt, PIPELINE_SAMPLE_RATE_HZ
        if isinstance(stt, OffloadingTranscriber):  # the GPU host's try, beside the stage
            remote = await asyncio.to_thread(stt.transcribe_remote, audio, rate)
            if remote is not None:
                transcript = remote
            else:
                transcript = await SCHEDULER.run(Stage.STT, stt.transcribe_local, audio, rate)
        else:
            transcript = await SCHEDULER.run(Stage.STT, stt.transcribe, audio, rate)
        out.state.transcript = transcript.text
        out.emit(
            EventType.TRANSCRIPT,
            text=transcript.text,
            stt_s=round(transcript.processing_s, 4),
            audio_s=round(transcript.audio_duration_s, 3),
        )
        return transcript.text

    async def screen(
        self, out: TurnOutput, heard: str, flags: Sequence[str] = ()
    ) -> InputDecision | None:
        """Layer 1 (and the fence of layer 2): the verdict, the redacted and fenced text. On
        the guard's stage thread: its learned head runs the embedding model."""
        out.state.transcript = out.state.transcript or heard
        if self.guard is None:
            return None
        guard = self.guard

        def timed() -> tuple[InputDecision, float]:
            started = time.perf_counter()
            return guard.screen_input(heard, flags), time.perf_counter() - started

        decision, took_s = await SCHEDULER.run(Stage.GUARD, timed)
        out.state.decision = decision
        out.emit(
            EventType.GUARD_INPUT,
            verdict=decision.verdict,
            reasons=",".join(decision.reasons),
            on_topic=decision.on_topic,
            guard_ms=round(took_s * 1000, 3),
        )
        return decision

    async def route(
        self, out: TurnOutput, heard: str, decision: InputDecision | None, audio: bytes
    ) -> Plan:
        """How the turn is answered, decided in code: the guard, a tool, the knowledge base."""
        plan = await self._plan(out, heard, decision, audio)
        out.state.route = plan.route
        top = out.state.citations[0] if out.state.citations else ""
        out.emit(
            EventType.ROUTE,
            route=plan.route.value,
            citations=",".join(out.state.citations),
            top=top,
        )
        return plan

    async def _plan(
        self, out: TurnOutput, heard: str, decision: InputDecision | None, audio: bytes
    ) -> Plan:
        if decision is None:
            out.state.model_saw = heard
            return Plan(Route.MODEL, messages=self.dialogue.messages_for(heard))
        if decision.fixed_reply is not None:
            return Plan(Route.GUARD, text=decision.fixed_reply)
        if self._last_reply and (pace := asked_again(heard, self.slower_pace)):
            return Plan(Route.REPEAT, text=self._last_reply, pace=pace)
        if self.agent is not None and self.agent.wants(heard):
            handled = await self._agent_turn(out, heard, decision, audio)
            if handled is not None:
                return Plan(Route.TOOL, text=handled.reply, transfer=handled.transfer)
        given = (*self._caller_said, decision.query, *self._agent_said)
        if self.knowledge is None:  # the model alone: it must still not say the turn back
            out.state.model_saw = decision.llm_text
            messages = self.dialogue.messages_for(decision.llm_text)
            return Plan(Route.MODEL, messages=messages, given=given, asked=decision.query)
        context = self._caller_said[-1] if self._caller_said else ""
        found: KnowledgeAnswer = await SCHEDULER.run(
            Stage.KNOWLEDGE, self.knowledge.answer, decision.query, context
        )
        out.state.citations = found.citations
        if found.route in (Route.FAQ, Route.QUOTED):
            return Plan(found.route, text=found.approved)
        if found.route is Route.GROUNDED and self.guard is not None:
            passages = [p.text for p in found.passages]
            out.state.model_saw = decision.llm_text
            user = self.guard.grounded_turn(passages, decision)
            messages = self.dialogue.messages_for(user)
            return Plan(
                Route.GROUNDED,
                messages=messages,
                given=(*passages, *given),
                asked=decision.query,
                passages=tuple(passages),
            )
        out.state.offered_person = True
        return Plan(Route.UNKNOWN, text=self._honest())

    async def _agent_turn(
        self, out: TurnOutput, heard: str, decision: InputDecision, audio: bytes
    ) -> AgentTurn | None:
        """The tool agent changes state (a factor tried, a code used), so never for a
        speculative turn: it waits until the end of speech is confirmed."""
        assert self.agent is not None
        await out.wait_released()
        async with SCHEDULER.context(self.llm):  # the agent may ask the model
            handled = await SCHEDULER.run(
                Stage.LLM, self.agent.handle, heard, decision.llm_text, audio
            )
        if handled is None:
            return None
        self._took_agent_turn(out, handled)
        if handled.secret:
            out.state.decision = dataclasses.replace(
                decision, stored_text=SECRET_NOT_RECORDED, record_audio=False
            )
        return handled

    def _took_agent_turn(self, out: TurnOutput, handled: AgentTurn) -> None:
        out.emit(EventType.AGENT, outcome=handled.outcome)
        out.state.agent_outcome = handled.outcome

    async def keys(self, out: TurnOutput, keys: str) -> None:
        """Key presses (DTMF) answer an open tool dialogue; never a transcript, never the model."""
        assert self.agent is not None
        handled = await SCHEDULER.run(Stage.LLM, self.agent.handle_keys, keys)
        out.state.decision = InputDecision("keypad", "", KEYPAD_NOT_RECORDED, record_audio=False)
        out.state.route = Route.KEYPAD
        if handled is not None:
            self._took_agent_turn(out, handled)
            plan = Plan(Route.KEYPAD, text=handled.reply, transfer=handled.transfer)
            await self.answer(out, plan)

    async def answer(self, out: TurnOutput, plan: Plan) -> None:
        """Say the plan's text, or the model's reply sentence by sentence, each vetted first;
        then, when the caller is getting nowhere, the offer of a person (``_offer_if_stuck``)."""
        if plan.text is not None:
            await self._say_fixed(out, plan.text, plan.pace)
            if plan.transfer:
                await self._transfer(out)
            else:
                await self._offer_if_stuck(out)
            return
        assert plan.messages is not None
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak_queue(out, sentences))
        said: list[str] = []
        reasons: tuple[str, ...] = ()

        def offer(sentence: str) -> bool:
            """Queue a sentence once layer 3 allows it; False stops this draft."""
            nonlocal reasons
            sentence, reasons = self.vet(out, " ".join(said), sentence, plan)
            if reasons:
                return False
            if not said and _SAYS_UNKNOWN.search(sentence):
                reasons = ("model.unknown",)
                return False
            if not said:
                out.emit(EventType.FIRST_SENTENCE)
            said.append(sentence)
            sentences.put_nowait(sentence)
            return True

        try:
            for _draft in range(2):
                reasons = out.state.output_reasons = ()
                await self._draft(out, plan.messages, offer, lambda: not said)
                if not reasons or said:
                    break
                decision = out.state.decision
                if reasons == ("model.unknown",) or _passages_do_not_answer(plan, reasons):
                    break
                if (
                    self.guard is None
                    or decision is None
                    or out.state.redrafted
                    or not self.guard.may_redraft(decision, reasons)
                ):
                    break
                out.state.redrafted = reasons
            if reasons:
                replacement = self._replacement(out, reasons, first=not said)
                if not said:
                    out.emit(EventType.FIRST_SENTENCE)
                said.append(replacement)
                sentences.put_nowait(replacement)
            out.state.reply = " ".join(said)
        finally:
            sentences.put_nowait(None)
            if out.cancelled:
                speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await speaker
        await self._offer_if_stuck(out)

    def vet(
        self, out: TurnOutput, spoken: str, sentence: str, plan: Plan
    ) -> tuple[str, tuple[str, ...]]:
        """Layer 3 for one sentence of a model reply (nothing to vet without guardrails)."""
        if self.guard is None:
            return sentence, ()
        sentence, reasons = self.guard.vet(spoken, sentence, plan.given, plan.asked, plan.passages)
        if reasons:
            out.state.output_reasons = reasons
            out.emit(EventType.GUARD_OUTPUT, reasons=",".join(reasons))
        return sentence, reasons

    async def speak(
        self, out: TurnOutput, sentence: str, *, urgent: bool, pace: float = 1.0
    ) -> None:
        """One sentence to the caller (the first is urgent: the caller waits in silence)."""
        if not out.audible or out.cancelled:
            return
        pcm = await SCHEDULER.run(Stage.TTS, self.synthesize, sentence, pace, urgent=urgent)
        if not out.cancelled:
            out.play(pcm)

    def synthesize(self, text: str, pace: float = 1.0) -> bytes:
        rate = self.output_sample_rate_hz
        return b"".join(chunk.pcm for chunk in self.tts.synthesize(text, rate, pace))

    # -- the turn is over -----------------------------------------------------------------------

    def commit(self, state: ReplyState) -> None:
        """The turn really happened (it was not a discarded speculation): its words join the
        call's history and the support of later replies; an offer of a person stands."""
        decision = state.decision
        if decision is None:
            self.dialogue.commit(state.model_saw or state.transcript, state.reply)
            return
        if self.guard is not None:
            self.guard.commit(decision)
        if state.route in (Route.MODEL, Route.GROUNDED, Route.FAQ, Route.QUOTED) and decision.query:
            self._caller_said.append(decision.query)
            self.dialogue.commit(state.model_saw or decision.llm_text, state.reply)
        if state.route is Route.TOOL and state.reply:
            self._agent_said.append(state.reply)  # a tool's result may be repeated later
        if state.route in _ASKING and decision.query:
            self._asked = [*self._asked[-(_ASKED_KEPT - 1) :], decision.query]
        if state.route is not Route.REPEAT:
            stuck = _failed(state) and not state.offered_person
            self._failures = self._failures + 1 if stuck else 0
        if state.reply:
            self._last_reply = state.reply
        if state.offered_person and self.agent is not None:
            self.agent.offer_person()

    # -- helpers --------------------------------------------------------------------------------

    def _honest(self) -> str:
        return self.guard.honest_reply if self.guard is not None else _DEFAULT_HONEST

    def _replacement(self, out: TurnOutput, reasons: tuple[str, ...], *, first: bool) -> str:
        """The honest answer and the close offer a person (a yes next transfers); the guard's
        fallback does not."""
        if reasons == ("model.unknown",) or self.guard is None:
            text = self._honest()
        else:
            text = self.guard.replacement(reasons, first=first)
        offers = self.guard is None or text in (self._honest(), self.guard.close_reply)
        out.state.offered_person = out.state.offered_person or offers
        return text

    async def _transfer(self, out: TurnOutput) -> None:
        """The announced transfer: once the announcement is heard, each destination in turn
        (the caller is on hold meanwhile), each attempt a TRANSFER event; then what the agent
        makes of the outcome is said (nothing when the caller was put through: the call ends)."""
        control, agent = self.control, self.agent
        assert agent is not None
        attempts: list[TransferAttempt] = []
        out.hold(True)
        try:
            await out.played()
            for index, destination in enumerate(control.destinations if control else (), 1):
                if out.cancelled:
                    break
                briefing = agent.briefing(self._asked)  # said to the person alone (warm)
                attempt = await control.transfer(destination, briefing) if control else None
                if attempt is None:
                    break
                attempts.append(attempt)
                out.emit(
                    EventType.TRANSFER, attempt=index, result=attempt.result.value,
                    status=attempt.status,
                )  # fmt: skip
                if attempt.result is TransferResult.CONNECTED:
                    break
        finally:
            out.hold(False)
        outcome = TransferOutcome(tuple(attempts))
        handled = await asyncio.to_thread(agent.after_transfer, outcome)
        self._took_agent_turn(out, handled)
        if outcome.connected:
            out.end_call("transferred")
            return
        if handled.reply:
            said = out.state.reply
            await self.speak(out, handled.reply, urgent=True)
            out.state.reply = f"{said} {handled.reply}".strip()

    async def _say_fixed(self, out: TurnOutput, text: str, pace: float = 1.0) -> None:
        """A fixed text (an approved answer, a guard's or a tool's reply): no model, one
        synthesis (a voice speaks a two-sentence answer faster than a model drafts one)."""
        out.state.reply = text
        await self.speak(out, text, urgent=True, pace=pace)

    async def _offer_if_stuck(self, out: TurnOutput) -> None:
        """Escalation, decided in code: after ``offer_after_failures`` turns in a row that got
        the caller nowhere (this one the last), or at once when verification failed, the offer
        of a person is said after the reply; the caller's yes next transfers (the agent's
        ACCEPT). Nothing is offered where no person can be (no transfer tool) or already was."""
        state, agent = out.state, self.agent
        if out.cancelled or state.offered_person or agent is None or not _failed(state):
            return
        verification_failed = _outcome(state) in _VERIFICATION_FAILED
        stuck = self.offer_after_failures and self._failures + 1 >= self.offer_after_failures
        if not (verification_failed or stuck) or not agent.may_offer_person():
            return
        state.offered_person = True
        out.emit(EventType.AGENT, outcome="escalation.offered")
        await self.speak(out, self.offer_prompt, urgent=False)
        state.reply = f"{state.reply} {self.offer_prompt}".strip()

    async def _speak_queue(self, out: TurnOutput, sentences: asyncio.Queue[str | None]) -> None:
        first = True
        while (sentence := await sentences.get()) is not None:
            if out.cancelled:
                return
            await self.speak(out, sentence, urgent=first)
            first = False

    async def _draft(
        self,
        out: TurnOutput,
        messages: list[ChatMessage],
        offer: Callable[[str], bool],
        urgent: Callable[[], bool],
    ) -> None:
        """One draft of the model's reply, a token at a time, cut into sentences; stops as
        soon as ``offer`` refuses a sentence or the turn is cancelled."""
        chunker = SentenceChunker()
        tokens = self._tokens(out, messages, urgent)
        async with contextlib.aclosing(tokens):  # a break stops the model at once
            async for piece in tokens:
                if not out.state.tokens_started:
                    out.emit(EventType.FIRST_TOKEN)
                    out.state.tokens_started = True
                if not all(offer(sentence) for sentence in chunker.feed(piece)):
                    return
            for sentence in chunker.flush():
                if not offer(sentence):
                    return

    async def _tokens(
        self, out: TurnOutput, messages: list[ChatMessage], urgent: Callable[[], bool]
    ) -> AsyncGenerator[str, None]:
        llm = self.llm
        pieces = SCHEDULER.generate(
            llm, lambda: llm.stream_chat(messages, self.max_reply_tokens), urgent
        )
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                if out.cancelled:
                    return
                yield piece


_DEFAULT_HONEST = "I'm sorry, I don't have that information."
_GOT_NOWHERE = frozenset({"block", "refused_topic"})
"""Input verdicts that refuse the request (distress has its own path; a flag is answered)."""
_VERIFICATION_FAILED = frozenset({"identity.locked", "step_up.unavailable"})
"""The caller cannot be verified on this call: a person is offered at once."""
_TOOL_FAILED = ("tools.", "identity.wrong", "identity.reused", "step_up.code_unsent")


def _outcome(state: ReplyState) -> str:
    """The agent's last outcome of the turn (a voice check reads "voice.x;step_up.pin")."""
    return state.agent_outcome.rsplit(";", 1)[-1]


def _failed(state: ReplyState) -> bool:
    """The turn got the caller nowhere: a refused request, a reply the output guard replaced,
    a tool that failed, a wrong or refused factor."""
    if state.route is Route.GUARD:
        return state.decision is not None and state.decision.verdict in _GOT_NOWHERE
    if state.route in (Route.TOOL, Route.KEYPAD):
        outcome = _outcome(state)
        return outcome in _VERIFICATION_FAILED or outcome.startswith(_TOOL_FAILED)
    return bool(state.output_reasons)


_AGAIN = re.compile(
    r"\b(?:repeat(?:\s+(?:that|it|this|yourself))?|say\s+(?:that|it|this)\s+again|"
    r"once\s+more|one\s+more\s+time|come\s+again|pardon(?:\s+me)?|"
    r"what\s+did\s+you\s+(?:just\s+)?say|"
    r"(?:didn'?t|did\s+not|couldn'?t|could\s+not)\s+(?:catch|hear|get|understand)\s+"
    r"(?:that|it|you|what\s+you\s+said))\b",
    re.I,
)
_SLOWER = re.compile(
    r"\b(?:(?:a\s+(?:bit|little)\s+)?(?:slower|more\s+slowly|slowly)|slow\s+down|"
    r"too\s+(?:fast|quick(?:ly)?))\b",
    re.I,
)
_FILLER = frozenset({
    "a", "again", "and", "bit", "but", "can", "could", "er", "excuse", "go", "hello", "i", "it",
    "just", "little", "me", "much", "oh", "ok", "okay", "please", "said", "say", "so", "sorry",
    "speak", "speaking", "talk", "talking", "thanks", "that", "the", "then", "this", "uh", "um",
    "way", "what", "will", "would", "you", "you're", "are",
})  # fmt: skip
"""Words that leave a request to hear the reply again just that ("could you say that again,
please?"); any other word makes it a new request."""


def asked_again(heard: str, slower_pace: float) -> float | None:
    """The pace to say the last reply again at when ``heard`` only asks for that ("sorry, could
    you say that again?": 1.0; "slower, please": ``slower_pace``); None for anything else ("can
    you repeat my balance" asks for the balance)."""
    again, slower = _AGAIN.search(heard), _SLOWER.search(heard)
    if again is None and slower is None:
        return None
    rest = _SLOWER.sub(" ", _AGAIN.sub(" ", heard))
    if any(word not in _FILLER for word in re.findall(r"[a-z']+", rest.lower())):
        return None
    return slower_pace if slower else 1.0


def _passages_do_not_answer(plan: Plan, reasons: tuple[str, ...]) -> bool:
    """A first draft from passages that stated what they do not hold (a figure, a name, a
    phone number or e-mail address) or only said the question back: the passages do not
    answer it, and a second draft (another prefill and decode) rarely finds what they lack
    (measured on the answers set's tune half). The honest answer at once."""
    return plan.route is Route.GROUNDED and all(
        r.startswith(_NOT_IN_PASSAGES) and r != _CONTRADICTS for r in reasons
    )


_CONTRADICTS = "output.ungrounded.contradiction"
"""The passages do hold the answer (the draft turned it round): a second draft may say it."""
_NOT_IN_PASSAGES = (
    "output.ungrounded.",
    "output.personal_data.phone",
    "output.personal_data.email",
)
