"""Where model work runs: one thread per stage, shared by every call of the process, with the
work that keeps a caller waiting in silence first.

A model is never run by two threads at once, and each library keeps its thread pools (OpenMP,
ONNX Runtime, ggml) bound to one calling thread instead of spawning a team per caller. On a
small machine several calls then queue for the same CPUs, and plain first-come order lets the
long tail of one reply (its later sentences) hold up another caller who has heard nothing yet.
So every job says whether it is *urgent*: a transcription, the reply's tokens until its first
sentence, and the speech of that first sentence are; the rest of a reply is not. A stage runs
its urgent jobs first, oldest first, and runs the rest only while no urgent job is queued or
running in any stage (or once one has waited ``patience_s``, so a reply's tail is late, never
lost).

Generation is scheduled a token at a time (``generate``): each step is one job, so the replies
of several calls interleave on the one LLM thread, each on its own model context. A reply
still owed its first sentence goes before the tails of the others, and among those the one
begun first goes first (sharing the thread evenly would make every caller wait as long as the
last). ``contexts`` replies are generated at once; more wait for a context to come free.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import heapq
import itertools
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from appliance.core.events import Stage

T = TypeVar("T")


@dataclass(order=True)
class _Job:
    since: float
    """When the work it belongs to began waiting: urgent jobs run oldest first."""
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    future: concurrent.futures.Future[Any] = field(compare=False)
    urgent: bool = field(compare=False)
    queued_at: float = field(default_factory=time.monotonic, compare=False)


class Scheduler:
    """The stage threads and the urgency board they share."""

    def __init__(self, patience_s: float = 1.5) -> None:
        self.patience_s = patience_s
        self._board = threading.Condition()
        self._urgent = 0  # urgent jobs queued or running, and replies owed a first sentence
        self._queues: dict[Stage, tuple[list[_Job], collections.deque[_Job]]] = {}
        self._seq = itertools.count()
        self._threads: dict[Stage, threading.Thread] = {}
        self._contexts: weakref.WeakKeyDictionary[object, threading.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def submit(
        self, stage: Stage, fn: Callable[[], T], urgent: bool, since: float | None = None
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        job = _Job(
            time.monotonic() if since is None else since, next(self._seq), fn, future, urgent
        )
        with self._board:
            if stage not in self._queues:
                self._queues[stage] = ([], collections.deque())
                thread = threading.Thread(
                    target=self._work, args=(stage,), name=f"appliance-{stage.value}", daemon=True
                )
                self._threads[stage] = thread
                thread.start()
            if urgent:
                heapq.heappush(self._queues[stage][0], job)
            else:
                self._queues[stage][1].append(job)
            self._urgent += urgent
            self._board.notify_all()
        return future

    async def run(
        self,
        stage: Stage,
        fn: Callable[..., T],
        *args: Any,
        urgent: bool = True,
        since: float | None = None,
    ) -> T:
        """``fn(*args)`` on the stage's thread, awaited from the event loop."""
        return await asyncio.wrap_future(self.submit(stage, lambda: fn(*args), urgent, since))

    def depths(self) -> dict[Stage, int]:
        """Jobs waiting for each stage's thread (urgent and background; not the one running):
        the queue depths monitoring shows."""
        with self._board:
            return {stage: len(now) + len(later) for stage, (now, later) in self._queues.items()}

    def _next(self, stage: Stage) -> _Job:
        urgent, rest = self._queues[stage]
        with self._board:
            while True:
                if urgent:
                    return heapq.heappop(urgent)
                if rest and (
                    self._urgent == 0 or time.monotonic() - rest[0].queued_at >= self.patience_s
                ):
                    return rest.popleft()
                self._board.wait(timeout=0.05 if rest else None)

    def _work(self, stage: Stage) -> None:
        while True:
            job = self._next(stage)
            if job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(job.fn())
                except BaseException as exc:  # handed to whoever awaits the job
                    job.future.set_exception(exc)
            if job.urgent:
                with self._board:
                    self._urgent -= 1
                    self._board.notify_all()

    # -- generation, a token at a time ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def context(self, model: object) -> AsyncIterator[None]:
        """Hold one of the model's ``contexts`` (its attribute; 1 when it has none) while a
        reply is generated or a tool request is made with it."""
        with self._board:
            slots = self._contexts.get(model)
            if slots is None:
                slots = threading.Semaphore(max(1, int(getattr(model, "contexts", 1))))
                self._contexts[model] = slots
        while not slots.acquire(blocking=False):  # every context is in use
            await asyncio.sleep(0.02)
        try:
            yield
        finally:
            slots.release()

    async def generate(
        self, model: object, open_stream: Callable[[], Iterator[str]], urgent: Callable[[], bool]
    ) -> AsyncGenerator[str, None]:
        """The pieces of ``open_stream()`` (a ChatModel's ``stream_chat``), each computed as one
        job on the LLM thread; ``urgent()`` is asked before every step. Closing this iterator
        closes the stream (the model stops generating)."""
        stream: Iterator[str] | None = None
        done = object()
        since = time.monotonic()
        claimed = False  # counted as urgent work between steps too, so no tail slips in

        def claim(urgent_now: bool) -> None:
            nonlocal claimed
            if urgent_now != claimed:
                with self._board:
                    self._urgent += 1 if urgent_now else -1
                    self._board.notify_all()
                claimed = urgent_now

        def step() -> object:
            nonlocal stream
            if stream is None:
                stream = open_stream()
            return next(stream, done)

        def close() -> None:
            close_stream = getattr(stream, "close", None)
            if close_stream is not None:
                close_stream()

        async with self.context(model):
            try:
                while True:
                    claim(now := urgent())
                    piece = await self.run(Stage.LLM, step, urgent=now, since=since)
                    if piece is done:
                        break
                    assert isinstance(piece, str)
                    yield piece
            finally:
                claim(False)
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.run(Stage.LLM, close, urgent=True))


SCHEDULER = Scheduler()
"""The process's scheduler: every call of the process shares the loaded models."""
