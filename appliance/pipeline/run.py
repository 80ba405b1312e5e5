"""Walks a call: audio in -> endpointing -> STT -> LLM -> sentences -> TTS -> audio out.

The call runs on one media clock: every input frame is one tick, and every tick writes exactly
one output frame (reply audio, or silence while the agent is quiet), as a phone line does. So
barge-in is measured in frames: the first tick at which the caller's speech is detected stops
playback, and no reply audio is written from that tick on.

Streaming: the reply's first sentence is synthesized while the model writes the rest, and audio
starts as soon as that sentence is spoken. At a short pause (``speculate_after_ms``) the turn is
transcribed and answered speculatively, held back behind a gate; when the pause turns out to be
the end of the turn the gate opens at once, and when the caller goes on speaking the work is
thrown away. Inference runs in worker threads, so one call never blocks another call's audio.

Errors of a stage are caught once, here, at the turn boundary: the turn gets an ERROR event, the
caller hears the fallback reply, and the call goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from appliance.config.settings import EndpointingSettings
from appliance.core.audio import PIPELINE_SAMPLE_RATE_HZ, frame_bytes, level_dbfs
from appliance.core.errors import ApplianceError
from appliance.core.events import EventType, Stage, TurnEvent
from appliance.core.ports import (
    AudioSink,
    AudioSource,
    CallRecorder,
    ChatMessage,
    ChatModel,
    InputDecision,
    SpeechDetector,
    Synthesizer,
    Transcriber,
    TurnAgent,
    TurnGuard,
    TurnRecord,
)
from appliance.pipeline.chunking import SentenceChunker
from appliance.pipeline.dialogue import Dialogue
from appliance.pipeline.endpointing import Decision, Endpointer
from appliance.pipeline.scheduling import SCHEDULER

log = logging.getLogger(__name__)
SECRET_NOT_RECORDED = "[authentication answer: not recorded]"
KEYPAD_NOT_RECORDED = "[keypad: not recorded]"

EventHandler = Callable[[TurnEvent], None]


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


@dataclass
class TurnResult:
    """What one turn of a call said and when things happened."""

    index: int
    transcript: str = ""
    reply: str = ""
    events: list[TurnEvent] = field(default_factory=list)
    interrupted: bool = False
    error_code: str = ""
    stored: bool = False
    """True once the turn was committed to storage (a recorder was given and it succeeded)."""
    last_voiced_ms: float | None = None
    """Call-clock time at which the caller's last voiced frame arrived."""

    def first(self, kind: EventType) -> TurnEvent | None:
        return next((e for e in self.events if e.type is kind), None)

    @property
    def voice_to_voice_ms(self) -> float | None:
        """From the last voiced input sample to the first reply audio sample."""
        audio = self.first(EventType.FIRST_AUDIO)
        if audio is None or self.last_voiced_ms is None:
            return None
        return audio.t_ms - self.last_voiced_ms


class _Response:
    """The reply being computed for one turn; gated while it is speculative."""

    def __init__(self, turn: TurnResult, speculative: bool) -> None:
        self.turn = turn
        self.released = not speculative
        self.cancel = threading.Event()
        self.audio = bytearray()
        self.finished = False
        self.started_audio = False
        self.changed = asyncio.Event()
        self.held_events: list[TurnEvent] = []
        self.transcript = ""
        self.reply = ""
        self.utterance = b""
        self.decision: InputDecision | None = None
        self.output_reasons: tuple[str, ...] = ()
        self.agent_outcome = ""
        self.redrafted: tuple[str, ...] = ()
        """Why a first draft of the reply was thrown away before any of it was said."""
        self.task: asyncio.Task[None] | None = None


class CallSession:
    """One call: a source, a sink, the shared engines and this call's dialogue."""

    def __init__(
        self,
        engines: Engines,
        config: PipelineConfig,
        source: AudioSource,
        sink: AudioSink,
        on_event: EventHandler | None = None,
        clock: Callable[[], float] = time.monotonic,
        recorder: CallRecorder | None = None,
        guard: TurnGuard | None = None,
        agent: TurnAgent | None = None,
    ) -> None:
        """``agent`` (tools inside the call) works behind the input guard: it needs ``guard``."""
        if source.sample_rate_hz != PIPELINE_SAMPLE_RATE_HZ:
            raise ValueError(f"sources must deliver {PIPELINE_SAMPLE_RATE_HZ} Hz audio")
        if sink.sample_rate_hz != config.output_sample_rate_hz:
            raise ValueError("sink rate differs from the configured output rate")
        self._engines = engines
        self._config = config
        self._source = source
        self._sink = sink
        self._on_event = on_event
        self._clock = clock
        self._recorder = recorder
        self._guard = guard
        self._agent = agent if guard is not None else None
        self._storing: list[asyncio.Task[None]] = []
        self._frame_ms = source.frame_ms
        self._endpointer = Endpointer(config.endpointing, source.frame_ms)
        prompt = guard.system_prompt if guard is not None else config.system_prompt
        self._dialogue = Dialogue(prompt, config.history_turns)
        self._out_frame = frame_bytes(config.output_sample_rate_hz, source.frame_ms)
        self._silence = bytes(self._out_frame)
        self._t0 = 0.0
        self._tick = 0
        self._turn: TurnResult | None = None
        self._response: _Response | None = None
        self._speaking: _Response | None = None
        self.turns: list[TurnResult] = []
        self.end_reason = ""
        self._goodbye: str | None = None
        self._turn_ticks: list[int] = []
        self._keys = ""
        self.frames_written = 0
        self.underruns = 0

    # -- the media loop ---------------------------------------------------------------------

    async def run(self) -> list[TurnResult]:
        """Run the call until its source ends and the last reply has been played."""
        self._t0 = self._clock()
        try:
            max_ticks = int(self._config.max_call_s * 1000 / self._frame_ms)
            while not self.end_reason and (frame := await self._source.read_frame()) is not None:
                self._on_input(frame)
                await self._output_tick()
                self._tick += 1
                if self._tick >= max_ticks and not self.end_reason:
                    self.end("max_call_length", self._config.goodbye_reply)
            if not self.end_reason and self._endpointer.flush() is Decision.SPEECH_END:
                self._speech_end()
            await self._drain()
        finally:
            await self._cancel_all()
            await asyncio.gather(*self._storing, return_exceptions=True)
            await self._sink.close()
            await self._finish_record()
        return self.turns

    async def _finish_record(self) -> None:
        if self._recorder is None:
            return
        try:
            status = f"ended:{self.end_reason}" if self.end_reason else "ended"
            await SCHEDULER.run(Stage.STORAGE, self._recorder.finish, status)
        except ApplianceError as exc:
            log.error("call record could not be closed: %s", exc.code)

    async def _drain(self) -> None:
        """After the caller's audio ends, keep the line open until the reply is played."""
        deadline = time.monotonic()
        while self._speaking is not None or self._response is not None:
            await self._output_tick()
            self._tick += 1
            if self._source.realtime:
                deadline += self._frame_ms / 1000
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    def end(self, reason: str, goodbye: str | None = None) -> None:
        """End the call: stop listening, say ``goodbye`` (if any) after what is playing, hang up.
        For the service (abuse, quotas) and the call's own limits."""
        if self.end_reason:
            return
        self.end_reason = reason
        self._goodbye = goodbye
        log.info("call ending: %s", reason)
        if self._response is not None and not self._response.released:
            self._discard_speculation()
        self._maybe_goodbye()

    def _maybe_goodbye(self) -> None:
        """Once nothing else is being said, start the goodbye of an ending call."""
        if not self._goodbye or self._response is not None or self._speaking is not None:
            return
        goodbye, self._goodbye = self._goodbye, None
        self._turn = TurnResult(index=len(self.turns) + 1)
        self.turns.append(self._turn)
        self._start_response(b"", speculative=False, fixed_reply=goodbye)

    @property
    def source(self) -> AudioSource:
        return self._source

    def keys(self, keys: str) -> None:
        """Key presses (DTMF) from the caller, for the tool dialogue only: a PIN, a code, 1 for
        yes. They are never a transcript and never reach the model; while the agent talks they
        wait for it to finish."""
        if self._agent is None or self.end_reason:
            return
        self._keys += keys
        self._maybe_keys()

    def _maybe_keys(self) -> None:
        busy = self._response is not None or self._speaking is not None
        if not self._keys or busy or self._endpointer.in_speech:
            return
        keys, self._keys = self._keys, ""
        self._turn = TurnResult(index=len(self.turns) + 1)
        self.turns.append(self._turn)
        self._emit(self._turn, EventType.KEYPAD, frame_index=self._tick, keys=len(keys))
        response = _Response(self._turn, speculative=False)
        response.task = asyncio.create_task(self._keypad(response, keys))
        self._response = response

    async def _keypad(self, response: _Response, keys: str) -> None:
        assert self._agent is not None
        try:
            handled = await SCHEDULER.run(Stage.LLM, self._agent.handle_keys, keys)
            reply = handled.reply if handled is not None else ""
            response.decision = InputDecision(
                "keypad", "", KEYPAD_NOT_RECORDED, fixed_reply=reply, record_audio=False
            )
            if handled is not None:
                self._hold_or_emit(response, EventType.AGENT, outcome=handled.outcome)
                response.agent_outcome = handled.outcome
                response.reply = reply
                response.audio.extend(await SCHEDULER.run(Stage.TTS, self._synthesize, reply))
        except ApplianceError as exc:
            log.warning("keypad turn failed: %s", exc.code)
            response.turn.error_code = exc.code
        finally:
            response.finished = True
            response.changed.set()

    def _now_ms(self) -> float:
        return (self._clock() - self._t0) * 1000.0

    def _on_input(self, frame: bytes) -> None:
        agent_busy = self._speaking is not None or (
            self._response is not None and self._response.released
        )
        if agent_busy and not self._config.endpointing.barge_in:
            is_speech = False  # half duplex: the agent does not listen while it talks
        else:
            is_speech = self._engines.vad.is_speech(frame, PIPELINE_SAMPLE_RATE_HZ)
        decision = self._endpointer.process(frame, is_speech)
        if decision is Decision.SPEECH_START:
            if agent_busy:
                self._barge_in()
            self._turn = TurnResult(index=len(self.turns) + 1)
            self.turns.append(self._turn)
            self._emit(self._turn, EventType.SPEECH_START, frame_index=self._tick)
        if self._turn is not None and self._endpointer.in_speech and is_speech:
            self._turn.last_voiced_ms = self._now_ms()
        if decision is Decision.SPECULATE:
            self._start_response(self._endpointer.pending_audio(), speculative=True)
        elif decision is Decision.RESUMED:
            self._discard_speculation()
        elif decision is Decision.SPEECH_END:
            self._speech_end()

    def _speech_end(self) -> None:
        turn = self._turn
        assert turn is not None
        level = round(level_dbfs(self._endpointer.utterance), 1)
        self._emit(turn, EventType.SPEECH_END, frame_index=self._tick, level_dbfs=level)
        minute = 60_000 // self._frame_ms
        self._turn_ticks = [t for t in self._turn_ticks if self._tick - t < minute] + [self._tick]
        if len(self._turn_ticks) > self._config.turns_per_minute:
            self._discard_speculation()
            self._start_response(b"", speculative=False, fixed_reply=self._config.slow_down_reply)
            return
        pending = self._response
        if pending is not None and not pending.released and pending.turn is turn:
            self._release(pending)
        else:
            self._discard_speculation()
            self._start_response(self._endpointer.utterance, speculative=False)

    async def _output_tick(self) -> None:
        """Write one output frame: the speaking reply's audio, or silence."""
        response = self._speaking
        if response is None and self._response is not None and self._response.released:
            response = self._speaking = self._response
        if response is not None and not self._source.realtime:
            # Lockstep: media time waits for the pipeline, as on an infinitely fast machine.
            while len(response.audio) < self._out_frame and not response.finished:
                response.changed.clear()
                await response.changed.wait()
        frame = self._silence
        if response is not None:
            if len(response.audio) >= self._out_frame or (response.finished and response.audio):
                frame = bytes(response.audio[: self._out_frame]).ljust(self._out_frame, b"\0")
                del response.audio[: self._out_frame]
                if not response.started_audio:
                    response.started_audio = True
                    self._emit(response.turn, EventType.FIRST_AUDIO, frame_index=self._tick)
            elif not response.finished:
                self.underruns += int(response.started_audio)
            if response.finished and not response.audio:
                self._end_turn(response)
        await self._sink.write_frame(frame)
        self.frames_written += 1

    # -- responses ----------------------------------------------------------------------------

    def _start_response(
        self, audio: bytes, *, speculative: bool, fixed_reply: str | None = None
    ) -> None:
        assert self._turn is not None
        response = _Response(self._turn, speculative)
        if self._config.record_audio:
            response.utterance = audio
        response.task = asyncio.create_task(self._respond(response, audio, fixed_reply))
        self._response = response

    def _release(self, response: _Response) -> None:
        response.released = True
        held, response.held_events = response.held_events, []
        for event in held:
            self._publish(response.turn, event)
        response.changed.set()

    def _discard_speculation(self) -> None:
        response = self._response
        if response is not None and not response.released:
            self._stop(response)
            self._response = None

    def _barge_in(self) -> None:
        """The caller spoke over the agent: stop playback now and the generation behind it."""
        for response in {id(r): r for r in (self._speaking, self._response) if r}.values():
            if not response.released:
                self._stop(response)
                continue
            response.turn.interrupted = True
            self._emit(response.turn, EventType.BARGE_IN, frame_index=self._tick)
            self._stop(response)
            self._end_turn(response)
        self._speaking = None
        self._response = None

    def _stop(self, response: _Response) -> None:
        response.cancel.set()
        response.audio.clear()
        if response.task is not None:
            response.task.cancel()

    def _end_turn(self, response: _Response) -> None:
        """The turn is over: commit it (when there is storage), then say so with TURN_END."""
        turn = response.turn
        turn.transcript = response.transcript
        turn.reply = response.reply
        decision = response.decision
        if decision is None:
            self._dialogue.commit(response.transcript, response.reply)
        else:
            if self._guard is not None:
                self._guard.commit(decision)
            if decision.fixed_reply is None:  # only what the model saw enters its history
                self._dialogue.commit(decision.llm_text, response.reply)
        if self._speaking is response:
            self._speaking = None
        if self._response is response:
            self._response = None
        self._maybe_goodbye()
        self._maybe_keys()
        if self._recorder is None:
            self._emit(
                turn,
                EventType.TURN_END,
                frame_index=self._tick,
                interrupted=turn.interrupted,
                reply=turn.reply,
            )
            return
        guard: dict[str, str | list[str]] = {}
        if decision is not None:
            guard = {
                "input": decision.verdict,
                "input_reasons": list(decision.reasons),
                "output": "replaced" if response.output_reasons else "ok",
                "output_reasons": list(response.output_reasons),
                "redrafted_reasons": list(response.redrafted),
            }
            if response.agent_outcome:
                guard["agent"] = response.agent_outcome
        record = TurnRecord(
            index=turn.index,
            transcript=decision.stored_text if decision is not None else turn.transcript,
            reply=turn.reply,
            interrupted=turn.interrupted,
            error_code=turn.error_code,
            timings_ms={e.type.value: round(e.t_ms, 1) for e in turn.events},
            voice_to_voice_ms=turn.voice_to_voice_ms,
            audio=(response.utterance or None)
            if decision is None or decision.record_audio
            else None,
            audio_rate_hz=PIPELINE_SAMPLE_RATE_HZ,
            guard=guard,
            escalation=decision.escalation if decision is not None else "",
        )
        self._storing.append(asyncio.create_task(self._store(turn, record, self._tick)))

    async def _store(self, turn: TurnResult, record: TurnRecord, frame_index: int) -> None:
        """A turn is acknowledged (TURN_END, stored=True) only after it is committed; when
        storage fails the call goes on, degraded, and the turn says so."""
        assert self._recorder is not None
        try:
            await SCHEDULER.run(Stage.STORAGE, self._recorder.record_turn, record)
            turn.stored = True
        except ApplianceError as exc:
            log.error("turn %d could not be stored: %s", turn.index, exc.code)
            turn.error_code = turn.error_code or exc.code
            self._emit(turn, EventType.ERROR, code=exc.code, stage=Stage.STORAGE.value)
        self._emit(
            turn,
            EventType.TURN_END,
            frame_index=frame_index,
            interrupted=turn.interrupted,
            stored=turn.stored,
            reply=turn.reply,
        )

    async def _cancel_all(self) -> None:
        for response in (self._speaking, self._response):
            if response is not None and response.task is not None and not response.task.done():
                self._stop(response)
                with contextlib.suppress(asyncio.CancelledError):
                    await response.task

    async def _respond(self, response: _Response, audio: bytes, fixed_reply: str | None) -> None:
        """STT -> LLM -> sentences -> TTS for one turn; the one place a turn's errors land."""
        try:
            if fixed_reply is not None:  # a limit or the call's end speaks, not the model
                response.reply = fixed_reply
                response.audio.extend(await SCHEDULER.run(Stage.TTS, self._synthesize, fixed_reply))
            else:
                await self._compute_reply(response, audio)
        except asyncio.CancelledError:
            response.cancel.set()
            raise
        except Exception as exc:
            # Logged by code or type only: an exception's text may quote what was said.
            code = exc.code if isinstance(exc, ApplianceError) else "pipeline.internal"
            log.warning("turn %d failed: %s (%s)", response.turn.index, code, type(exc).__name__)
            response.turn.error_code = code
            stage = _stage_of(exc) if isinstance(exc, ApplianceError) else "pipeline"
            self._hold_or_emit(response, EventType.ERROR, code=code, stage=stage)
            await self._speak_fallback(response)
        finally:
            response.finished = True
            response.changed.set()

    async def _compute_reply(self, response: _Response, audio: bytes) -> None:
        transcript = await SCHEDULER.run(
            Stage.STT, self._engines.stt.transcribe, audio, PIPELINE_SAMPLE_RATE_HZ
        )
        response.transcript = transcript.text
        self._hold_or_emit(
            response,
            EventType.TRANSCRIPT,
            text=transcript.text,
            stt_s=round(transcript.processing_s, 4),
            audio_s=round(transcript.audio_duration_s, 3),
        )
        if not transcript.text.strip():
            return
        llm_text = transcript.text
        if self._guard is not None:
            started = time.perf_counter()
            decision = self._guard.screen_input(transcript.text)
            response.decision = decision
            self._hold_or_emit(
                response,
                EventType.GUARD_INPUT,
                verdict=decision.verdict,
                reasons=",".join(decision.reasons),
                on_topic=decision.on_topic,
                guard_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            if decision.fixed_reply is not None:
                response.reply = decision.fixed_reply
                pcm = await SCHEDULER.run(Stage.TTS, self._synthesize, decision.fixed_reply)
                response.audio.extend(pcm)
                return
            llm_text = decision.llm_text
            if self._agent is not None and self._agent.wants(transcript.text):
                await self._agent_turn(response, decision, transcript.text, audio)
                if response.decision is not decision:
                    return
        messages = self._dialogue.messages_for(llm_text)
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak(response, sentences))
        spoken = ""
        first_sentence = True

        def offer(sentence: str) -> bool:
            """Queue a sentence for speech once layer 3 allows it; False stops the reply."""
            nonlocal spoken, first_sentence
            if self._guard is not None:
                sentence, reasons = self._guard.vet(spoken, sentence)
                if reasons:
                    response.output_reasons = reasons
                    self._hold_or_emit(response, EventType.GUARD_OUTPUT, reasons=",".join(reasons))
                    return False
            spoken = f"{spoken} {sentence}".strip()
            if first_sentence:
                first_sentence = False
                self._hold_or_emit(response, EventType.FIRST_SENTENCE)
            sentences.put_nowait(sentence)
            return True

        try:
            for _draft in range(2):
                response.output_reasons = ()
                chunker = SentenceChunker()
                tokens = self._stream_tokens(response, messages, lambda: first_sentence)
                async with contextlib.aclosing(tokens):  # a break stops the model at once
                    async for piece in tokens:
                        if not response.reply:
                            self._hold_or_emit(response, EventType.FIRST_TOKEN)
                        response.reply += piece
                        if not all(offer(sentence) for sentence in chunker.feed(piece)):
                            break
                    else:
                        for sentence in chunker.flush():
                            if not offer(sentence):
                                break
                reasons = response.output_reasons
                if not (reasons and first_sentence and response.decision is not None):
                    break
                assert self._guard is not None
                if response.redrafted or not self._guard.may_redraft(response.decision, reasons):
                    break
                response.redrafted = reasons
            if response.output_reasons:
                assert self._guard is not None
                if first_sentence:  # the fallback is the first thing said
                    first_sentence = False
                    self._hold_or_emit(response, EventType.FIRST_SENTENCE)
                sentences.put_nowait(self._guard.fallback_reply)
                spoken = f"{spoken} {self._guard.fallback_reply}".strip()
            response.reply = spoken if self._guard is not None else response.reply.strip()
        finally:
            sentences.put_nowait(None)
            if response.cancel.is_set():
                speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await speaker

    async def _agent_turn(
        self, response: _Response, decision: InputDecision, heard: str, audio: bytes
    ) -> None:
        """Let the tool agent answer the turn; it changes state (a factor tried, a code used),
        so never for a speculative turn: wait until the end of speech is confirmed."""
        assert self._agent is not None
        while not response.released:
            response.changed.clear()
            await response.changed.wait()
        async with SCHEDULER.context(self._engines.llm):  # the agent may ask the model
            handled = await SCHEDULER.run(
                Stage.LLM, self._agent.handle, heard, decision.llm_text, audio
            )
        if handled is None:
            return
        self._hold_or_emit(response, EventType.AGENT, outcome=handled.outcome)
        response.agent_outcome = handled.outcome
        response.decision = dataclasses.replace(
            decision,
            fixed_reply=handled.reply,
            stored_text=SECRET_NOT_RECORDED if handled.secret else decision.stored_text,
            record_audio=decision.record_audio and not handled.secret,
        )
        response.reply = handled.reply
        response.audio.extend(await SCHEDULER.run(Stage.TTS, self._synthesize, handled.reply))

    async def _speak(self, response: _Response, sentences: asyncio.Queue[str | None]) -> None:
        first = True  # the caller waits in silence for it; the rest is heard after it
        while (sentence := await sentences.get()) is not None:
            if response.cancel.is_set():
                return
            pcm = await SCHEDULER.run(Stage.TTS, self._synthesize, sentence, urgent=first)
            first = False
            if response.cancel.is_set():
                return
            response.audio.extend(pcm)
            response.changed.set()

    def _synthesize(self, text: str) -> bytes:
        rate = self._config.output_sample_rate_hz
        return b"".join(chunk.pcm for chunk in self._engines.tts.synthesize(text, rate))

    async def _speak_fallback(self, response: _Response) -> None:
        try:
            pcm = await SCHEDULER.run(Stage.TTS, self._synthesize, self._config.fallback_reply)
            response.audio.extend(pcm)
        except ApplianceError as exc:
            log.error("fallback reply could not be spoken: %s", exc.code)

    async def _stream_tokens(
        self, response: _Response, messages: list[ChatMessage], urgent: Callable[[], bool]
    ) -> AsyncGenerator[str, None]:
        """The model's pieces, a token at a time on the LLM thread (``urgent()`` until the first
        sentence), until the reply ends or the response is cancelled."""
        llm = self._engines.llm
        pieces = SCHEDULER.generate(
            llm, lambda: llm.stream_chat(messages, self._config.max_reply_tokens), urgent
        )
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                if response.cancel.is_set():
                    return
                yield piece

    # -- events --------------------------------------------------------------------------------

    def _hold_or_emit(
        self, response: _Response, kind: EventType, **data: str | int | float | bool
    ) -> None:
        event = TurnEvent(kind, response.turn.index, self._now_ms(), None, dict(data))
        if response.released:
            self._publish(response.turn, event)
        else:
            response.held_events.append(event)

    def _emit(
        self,
        turn: TurnResult,
        kind: EventType,
        frame_index: int | None = None,
        **data: str | int | float | bool,
    ) -> None:
        self._publish(turn, TurnEvent(kind, turn.index, self._now_ms(), frame_index, dict(data)))

    def _publish(self, turn: TurnResult, event: TurnEvent) -> None:
        turn.events.append(event)
        if self._on_event is not None:
            self._on_event(event)


def _stage_of(exc: ApplianceError) -> str:
    prefix = exc.code.split(".", 1)[0]
    return next((s.value for s in Stage if s.value == prefix), "pipeline")
