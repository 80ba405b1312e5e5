"""A call on one media clock: audio in -> endpointing -> the reply path -> audio out.

The call runs on one media clock: every input frame is one tick, and every tick writes exactly
one output frame (reply audio, or silence while the agent is quiet), as a phone line does. So
barge-in is measured in frames: the first tick at which the caller's speech is detected stops
playback, and no reply audio is written from that tick on.

Turn-taking: at a short pause (``speculate_after_ms``) the turn is answered speculatively by the
reply path (reply.py), its events and audio held back behind a gate; when the pause turns out
to be the end of the turn the gate opens at once, and when the caller goes on speaking the work
is thrown away. Model work runs on the stage threads (scheduling.py), so one call never blocks
another call's audio.

Errors of a stage are caught once, here, at the turn boundary: the turn gets an ERROR event
naming the stage (from the error's class), the caller hears the fallback reply, and the call
goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from appliance.core.audio import PIPELINE_SAMPLE_RATE_HZ, frame_bytes, level_dbfs
from appliance.core.errors import ApplianceError
from appliance.core.events import EventType, Route, Stage, TurnEvent
from appliance.core.ports import (
    AudioSink,
    AudioSource,
    CallControl,
    CallRecorder,
    CallWatch,
    InputDecision,
    Knowledge,
    ScreenedAudio,
    TurnAgent,
    TurnGuard,
    TurnRecord,
)
from appliance.pipeline.endpointing import Decision, Endpointer
from appliance.pipeline.reply import Data, Engines, PipelineConfig, Plan, ReplyPath, ReplyState
from appliance.pipeline.scheduling import SCHEDULER

log = logging.getLogger(__name__)

EventHandler = Callable[[TurnEvent], None]


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
    route: str = ""
    """How the turn was answered (a ``Route`` value)."""
    citations: tuple[str, ...] = ()
    """The knowledge entries and passages the reply rested on."""

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
    """The reply being computed for one turn, on the call's media clock: gated while it is
    speculative; the reply path (reply.py) writes its events and audio here (``TurnOutput``)."""

    def __init__(self, session: CallSession, turn: TurnResult, speculative: bool) -> None:
        self._session = session
        self.turn = turn
        self.state = ReplyState()
        self.released = not speculative
        self.cancel = threading.Event()
        self.audio = bytearray()
        self.finished = False
        self.started_audio = False
        self.changed = asyncio.Event()
        self.held_events: list[tuple[TurnEvent, InputDecision | None]] = []
        self.utterance = b""
        self.task: asyncio.Task[None] | None = None
        self.holding = False
        """The caller is being transferred: their speech neither interrupts nor starts a turn."""

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()

    @property
    def audible(self) -> bool:
        return True

    def emit(self, kind: EventType, **data: Data) -> None:
        """Published now, or held until the speculation is confirmed (with its real time)."""
        event = TurnEvent(kind, self.turn.index, self._session.now_ms(), None, dict(data))
        decision = self.state.decision if kind is EventType.GUARD_INPUT else None
        if self.released:
            self._session.publish(self.turn, event, decision)
        else:
            self.held_events.append((event, decision))

    async def wait_released(self) -> None:
        while not self.released:
            self.changed.clear()
            await self.changed.wait()

    def play(self, pcm: bytes) -> None:
        self.audio.extend(pcm)
        self.changed.set()

    async def played(self) -> None:
        frame = self._session._out_frame
        while len(self.audio) >= frame and not self.cancelled:
            await asyncio.sleep(self._session._frame_ms / 1000)

    def hold(self, on: bool) -> None:
        self.holding = on

    def end_call(self, reason: str) -> None:
        self._session.end(reason)


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
        knowledge: Knowledge | None = None,
        control: CallControl | None = None,
        watch: CallWatch | None = None,
    ) -> None:
        """``agent`` (tools inside the call) and ``knowledge`` work behind the input guard:
        they need ``guard``. ``control``: what the call's channel can do (a transfer).
        ``watch``: who hears of each utterance's loudness and each input decision (typed)."""
        if source.sample_rate_hz != PIPELINE_SAMPLE_RATE_HZ:
            raise ValueError(f"sources must deliver {PIPELINE_SAMPLE_RATE_HZ} Hz audio")
        if sink.sample_rate_hz != config.output_sample_rate_hz:
            raise ValueError("sink rate differs from the configured output rate")
        self._engines = engines
        self._config = config
        self._source = source
        self._sink = sink
        self._on_event = on_event
        self._watch = watch
        self._clock = clock
        self._recorder = recorder
        self._guard = guard
        self._agent = agent if guard is not None else None
        self._storing: list[asyncio.Task[None]] = []
        self._frame_ms = source.frame_ms
        self._endpointer = Endpointer(config.endpointing, source.frame_ms)
        self.reply = ReplyPath.build(engines, config, guard, self._agent, knowledge, control)
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
        response = _Response(self, self._turn, speculative=False)
        response.task = asyncio.create_task(
            self._respond(response, lambda: self.reply.keys(response, keys))
        )
        self._response = response

    def now_ms(self) -> float:
        """Milliseconds since the call started, on its clock."""
        return (self._clock() - self._t0) * 1000.0

    def _on_input(self, frame: bytes) -> None:
        agent_busy = self._speaking is not None or (
            self._response is not None and self._response.released
        )
        on_hold = any(r is not None and r.holding for r in (self._speaking, self._response))
        if on_hold or (agent_busy and not self._config.endpointing.barge_in):
            # half duplex: the agent does not listen while it talks, nor while it transfers
            is_speech = False
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
            self._turn.last_voiced_ms = self.now_ms()
        if decision is Decision.SPECULATE:
            self._start_response(self._endpointer.pending_audio(), speculative=True)
        elif decision is Decision.RESUMED:
            self._discard_speculation()
        elif decision is Decision.SPEECH_END:
            self._speech_end()
            # The screen starts afresh once the utterance is answered, not when speech starts:
            # the endpointer sees speech some frames late, and those frames were screened.
            if isinstance(self._source, ScreenedAudio):
                self._source.reset_audio_flags()

    def _speech_end(self) -> None:
        turn = self._turn
        assert turn is not None
        level = round(level_dbfs(self._endpointer.utterance), 1)
        self._emit(turn, EventType.SPEECH_END, frame_index=self._tick, level_dbfs=level)
        if self._watch is not None:
            self._watch.utterance(level)
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
        response = _Response(self, self._turn, speculative)
        if self._config.record_audio:
            response.utterance = audio
        # Read now: the task starts later, after the screen may have been reset
        flags = self._source.audio_flags() if isinstance(self._source, ScreenedAudio) else ()

        def work() -> Coroutine[Any, Any, None]:
            if fixed_reply is not None:  # a limit or the call's end speaks, not the model
                response.state.route = Route.FIXED
                return self.reply.answer(response, Plan(Route.FIXED, text=fixed_reply))
            return self.reply.run(response, audio, flags)

        response.task = asyncio.create_task(self._respond(response, work))
        self._response = response

    def _release(self, response: _Response) -> None:
        response.released = True
        held, response.held_events = response.held_events, []
        for event, decision in held:
            self.publish(response.turn, event, decision)
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
        state = response.state
        turn.transcript = state.transcript
        turn.reply = state.reply
        turn.route = state.route.value if state.route is not None else ""
        turn.citations = state.citations
        self.reply.commit(state)
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
        decision = state.decision
        guard: dict[str, str | list[str]] = {}
        if decision is not None:
            guard = {
                "input": decision.verdict,
                "input_reasons": list(decision.reasons),
                "output": "replaced" if state.output_reasons else "ok",
                "output_reasons": list(state.output_reasons),
                "redrafted_reasons": list(state.redrafted),
            }
            if state.agent_outcome:
                guard["agent"] = state.agent_outcome
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
            route=turn.route,
            citations=turn.citations,
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

    async def _respond(
        self, response: _Response, work: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        """The reply path's work for one turn; the one place a turn's errors land."""
        try:
            await work()
        except asyncio.CancelledError:
            response.cancel.set()
            raise
        except Exception as exc:
            # Logged by code or type only: an exception's text may quote what was said.
            code = exc.code if isinstance(exc, ApplianceError) else "pipeline.internal"
            log.warning("turn %d failed: %s (%s)", response.turn.index, code, type(exc).__name__)
            response.turn.error_code = code
            stage = getattr(exc, "stage", None) or "pipeline"
            response.emit(EventType.ERROR, code=code, stage=str(stage))
            try:
                await self.reply.speak(response, self._config.fallback_reply, urgent=True)
            except ApplianceError as again:
                log.error("fallback reply could not be spoken: %s", again.code)
        finally:
            response.finished = True
            response.changed.set()

    # -- events --------------------------------------------------------------------------------

    def _emit(
        self,
        turn: TurnResult,
        kind: EventType,
        frame_index: int | None = None,
        **data: str | int | float | bool,
    ) -> None:
        self.publish(turn, TurnEvent(kind, turn.index, self.now_ms(), frame_index, dict(data)))

    def publish(
        self, turn: TurnResult, event: TurnEvent, decision: InputDecision | None = None
    ) -> None:
        """An event of a turn that really happened; with ``decision`` (the input guard's, of a
        GUARD_INPUT event) the watch hears of it, typed."""
        turn.events.append(event)
        if self._on_event is not None:
            self._on_event(event)
        if decision is not None and self._watch is not None:
            self._watch.screened(decision)


__all__ = ["CallSession", "Engines", "EventHandler", "PipelineConfig", "TurnResult"]
