"""The stage scheduler: urgent work first and oldest first, tails held while a caller waits,
replies interleaved a token at a time on as many contexts as the model has."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from appliance.core.events import Stage
from appliance.pipeline.scheduling import Scheduler

pytestmark = pytest.mark.unit


def test_urgent_jobs_run_first_and_oldest_first() -> None:
    scheduler = Scheduler(patience_s=60)
    gate, started, ran = threading.Event(), threading.Event(), []

    def block() -> None:
        started.set()
        gate.wait()

    blocker = scheduler.submit(Stage.LLM, block, urgent=True)
    assert started.wait(10)  # the stage is busy: what follows is queued, then ordered
    jobs = [
        scheduler.submit(Stage.LLM, lambda: ran.append("tail"), urgent=False),
        scheduler.submit(Stage.LLM, lambda: ran.append("newer"), urgent=True, since=2.0),
        scheduler.submit(Stage.LLM, lambda: ran.append("older"), urgent=True, since=1.0),
    ]
    gate.set()
    for job in (blocker, *jobs):
        job.result(timeout=10)
    assert ran == ["older", "newer", "tail"]


def test_a_tail_waits_while_another_stage_has_urgent_work_unless_it_waited_too_long() -> None:
    scheduler = Scheduler(patience_s=60)
    gate = threading.Event()
    urgent = scheduler.submit(Stage.STT, gate.wait, urgent=True)
    tail = scheduler.submit(Stage.TTS, lambda: "spoken", urgent=False)
    assert not tail.done() and tail.running() is False  # held: a caller waits on STT
    gate.set()
    assert tail.result(timeout=10) == "spoken" and urgent.result(timeout=10)
    # Patience: a tail that has waited long enough runs even while urgent work goes on.
    impatient = Scheduler(patience_s=0.05)
    gate.clear()
    impatient.submit(Stage.STT, gate.wait, urgent=True)
    assert impatient.submit(Stage.TTS, lambda: "late", urgent=False).result(timeout=10) == "late"
    gate.set()


class _Model:
    """Yields ``name0``, ``name1``... and logs each piece as it is computed."""

    def __init__(self, contexts: int) -> None:
        self.contexts = contexts
        self.log: list[str] = []
        self.closed: list[str] = []

    def stream(self, name: str, n: int) -> Iterator[str]:
        try:
            for i in range(n):
                self.log.append(f"{name}{i}")
                yield f"{name}{i}"
        finally:
            self.closed.append(name)


async def _collect(
    scheduler: Scheduler, model: _Model, name: str, n: int, urgent_for: int, out: list[str]
) -> None:
    got: list[str] = []
    async for piece in scheduler.generate(
        model, lambda: model.stream(name, n), lambda: len(got) < urgent_for
    ):
        got.append(piece)
    out.extend(got)


def test_a_reply_owed_its_first_sentence_goes_before_the_tail_of_another() -> None:
    scheduler, model = Scheduler(patience_s=60), _Model(contexts=2)
    out: list[str] = []

    async def main() -> None:
        # "b" still owes its first sentence for 3 pieces; "a" is a tail from the start.
        await asyncio.gather(
            _collect(scheduler, model, "b", 5, 3, out), _collect(scheduler, model, "a", 5, 0, out)
        )

    asyncio.run(main())
    assert model.log[:3] == ["b0", "b1", "b2"]  # no tail piece slipped in between
    assert sorted(out) == sorted(f"{n}{i}" for n in "ab" for i in range(5))
    assert sorted(model.closed) == ["a", "b"]


def test_replies_beyond_the_models_contexts_wait_for_one_and_closing_stops_generation() -> None:
    scheduler, model = Scheduler(patience_s=60), _Model(contexts=1)
    out: list[str] = []

    async def main() -> None:
        await asyncio.gather(
            _collect(scheduler, model, "a", 4, 4, out), _collect(scheduler, model, "b", 4, 4, out)
        )
        # A consumer that stops early closes the stream: the model generates no more.
        pieces = scheduler.generate(model, lambda: model.stream("c", 100), lambda: True)
        async for piece in pieces:
            if piece == "c1":
                break
        await pieces.aclose()

    asyncio.run(main())
    first, second = ("a", "b") if model.log[0] == "a0" else ("b", "a")
    assert model.log[:8] == [f"{first}{i}" for i in range(4)] + [f"{second}{i}" for i in range(4)]
    assert model.log[8:] == ["c0", "c1"] and model.closed[-1] == "c"
