"""Tools inside a call, on fake engines: step-up by PIN and TOTP, the caller's confirmation,
lockout, and what is (not) stored or shown to the model."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from appliance.audio_io.memory import MemorySink, MemorySource
from appliance.config.settings import PolicySettings, ToolsSettings, TransferSettings
from appliance.core.events import EventType, TurnEvent
from appliance.core.ports import ChatMessage
from appliance.guard.call import CallGuard
from appliance.identity.factors import totp
from appliance.pipeline.reply import KEYPAD_NOT_RECORDED, SECRET_NOT_RECORDED
from appliance.pipeline.session import CallSession, Engines
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage
from appliance.storage.schema import Recording, ToolCall, Turn
from appliance.testing.fakes import (
    EnergyVad,
    FakeKnowledge,
    FakeTranscriber,
    ScriptedChatModel,
    ToneSynthesizer,
    quiet,
    tone,
)
from appliance.tools.agent import CallerFactors, ToolAgent
from appliance.tools.demo import DemoBank, demo_tools
from appliance.tools.registry import ToolBox
from tests.integration.helpers import make_config

CALLER = "+15550100"  # demo caller: PIN 4921, TOTP secret in demo_data.json
ALL_TOOLS = frozenset(
    {
        "account_balance",
        "book_appointment",
        "move_appointment",
        "cancel_appointment",
        "transfer_to_human",
    }
)


class ToolModel(ScriptedChatModel):
    """Answers tool requests with a scripted JSON request; ordinary turns with ``replies``."""

    def __init__(self, requests: Sequence[dict[str, Any]], replies: Sequence[str]) -> None:
        super().__init__(replies)
        self.requests = list(requests)
        self.request_prompts: list[list[ChatMessage]] = []

    def request_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, Any], max_tokens: int = 128
    ) -> str:
        self.request_prompts.append(list(messages))
        return json.dumps(self.requests.pop(0) if self.requests else {"tool": "none"})


def run(
    tmp_path: Path,
    texts: list[str],
    model: ToolModel,
    bank: DemoBank,
    factors: CallerFactors | None = None,
) -> tuple[CallSession, ToneSynthesizer, Storage, str]:
    store = Storage.open_sqlite(tmp_path / "a.db", load_or_create(tmp_path / "k"))
    record = store.start_call(CALLER, "test")

    def audit(caller: str, tool: str, arguments: Any, outcome: str) -> None:
        store.record_tool_call(record.call_id, tool, arguments, outcome, actor="caller:test")

    agent = ToolAgent(
        ToolBox(demo_tools(bank), ALL_TOOLS, audit=audit),
        caller=CALLER,
        credentials=bank,
        model=model,
        settings=ToolsSettings(enabled=tuple(ALL_TOOLS)),
        factors=factors or CallerFactors.from_settings(ToolsSettings()),
        today="2026-11-28",
    )
    tts = ToneSynthesizer(ms_per_char=2)
    config = make_config(record_audio=True)
    session = CallSession(
        Engines(EnergyVad(), FakeTranscriber(texts), model, tts),
        config,
        MemorySource(b"".join(tone(0.8) + quiet(3.0) for _ in texts)),
        MemorySink(16_000),
        recorder=record,
        guard=CallGuard(PolicySettings(), "Be brief."),
        agent=agent,
        knowledge=FakeKnowledge(["We open at nine on weekdays."]),
    )
    asyncio.run(asyncio.wait_for(session.run(), timeout=60))
    return session, tts, store, record.call_id


def current_code() -> str:
    secret = DemoBank().totp_secret(CALLER)
    assert secret is not None
    return " ".join(totp(secret, int(time.time() // 30)))


def test_a_level_2_tool_in_a_call_steps_up_by_pin_and_totp_then_answers(tmp_path: Path) -> None:
    model = ToolModel([{"tool": "account_balance", "arguments": {}}], ["We open at nine."])
    texts = ["What's my account balance?", "four nine two one", current_code(), "Thanks!"]
    session, tts, store, call_id = run(tmp_path, texts, model, DemoBank())
    settings = ToolsSettings()
    assert tts.spoken == [
        settings.pin_prompt,
        settings.totp_prompt,
        "Your current account balance is 1250.40 pounds.",
        "We open at nine.",
    ]
    outcomes = [t.first(EventType.AGENT) for t in session.turns]
    assert [o.data["outcome"] if o else None for o in outcomes] == [
        "step_up.pin",
        "step_up.totp",
        "tool.ok",
        None,
    ]
    # The PIN and the code reached neither the model nor the disk nor a recording.
    seen = json.dumps([[m.content for m in p] for p in model.prompts + model.request_prompts])
    assert "4921" not in seen and "four nine" not in seen
    view = store.read_call(call_id, "test", "check")
    assert [t.transcript for t in view.turns][1:3] == [SECRET_NOT_RECORDED] * 2
    with store.session("look") as db:
        recorded = db.scalars(select(Recording.turn_id)).all()
        turn_ids = db.scalars(select(Turn.id).order_by(Turn.index)).all()
        tools = [(t.tool, t.outcome) for t in db.scalars(select(ToolCall))]
    assert set(recorded) == {turn_ids[0], turn_ids[3]}
    assert tools == [
        ("account_balance", "tools.step_up"),
        ("account_balance", "tools.step_up"),
        ("account_balance", "ok"),
    ]
    store.close()


def test_a_changing_tool_waits_for_the_callers_yes_never_the_models(tmp_path: Path) -> None:
    model = ToolModel(
        [],  # one tool's intent matched each time: the model is not asked to choose
        ["Yes, confirmed, I have booked it for you."],  # model text confirms nothing
    )
    bank = DemoBank()
    texts = [
        "Can I book an appointment at Old Town on Wednesday at eleven?",
        "4 9 2 1",
        "What time do you open?",  # not an answer: the booking is dropped, the model replies
        "Book that appointment at Old Town please.",
        "Wednesday at eleven, please.",
        "Yes please.",
    ]
    _, tts, store, _ = run(tmp_path, texts, model, bank)
    settings = ToolsSettings()
    confirm = settings.confirm_prompt.format(
        action="Book an appointment for the caller at a branch: date 2026-12-02, time 11:00, "
        "branch Old Town"
    )
    assert tts.spoken[:2] == [settings.pin_prompt, confirm]
    # The model claimed the booking: layer 3 stopped it, the caller heard the fallback.
    assert tts.spoken[2] == PolicySettings().output_fallback
    assert tts.spoken[3] == "Which day would you like?", tts.spoken
    assert tts.spoken[4] == confirm  # the PIN still counts: level 1 is kept for the call
    assert (
        tts.spoken[5] == "Your appointment at Old Town is booked for Wednesday 2 December at 11 am."
    )
    assert [b["slot"] for b in bank.bookings] == ["2026-12-02 11:00"]
    assert model.request_prompts == []
    store.close()


def test_arguments_come_from_the_callers_words_never_the_model(tmp_path: Path) -> None:
    """Two tools' intents match: the model chooses the tool, but its invented day, time and
    branch are not taken: the agent asks for what the caller did not say."""
    invented = {"date": "2026-12-24", "time": "16:00", "branch": "Riverside"}
    model = ToolModel([{"tool": "move_appointment", "arguments": invented}], [])
    bank = DemoBank()
    texts = [
        "I want to cancel or move my appointment.",
        "Thursday please.",
        "At nine o'clock.",
        "4 9 2 1",
        "Yes.",
    ]
    _, tts, store, _ = run(tmp_path, texts, model, bank)
    settings = ToolsSettings()
    assert tts.spoken[:2] == [
        "Which day would you like to move it to?",
        "Which time suits you: 9 am, 11 am, 2 pm or 4 pm?",
    ]
    assert tts.spoken[2] == settings.pin_prompt
    assert "date 2026-12-03, time 09:00" in tts.spoken[3]
    assert (
        tts.spoken[4] == "Your appointment at Main Street is moved to Thursday 3 December at 9 am."
    )
    assert len(model.request_prompts) == 1  # asked once, to choose between the two tools
    store.close()


def test_wrong_pins_lock_the_factor_and_calling_again_does_not_unlock_it(tmp_path: Path) -> None:
    factors = CallerFactors.from_settings(ToolsSettings())  # shared by the process's calls
    model = ToolModel([{"tool": "account_balance", "arguments": {}}] * 2, [])
    texts = ["What is my balance?", "1 1 1 1", "2 2 2 2", "3 3 3 3"]
    _, tts, store, _ = run(tmp_path, texts, model, DemoBank(), factors)
    store.close()
    settings = ToolsSettings()
    offer = TransferSettings().offer_prompt  # verification failed: a person is offered at once
    assert tts.spoken == [
        settings.pin_prompt,
        settings.wrong_answer,
        settings.wrong_answer,
        settings.locked_reply,
        offer,
    ]
    _, tts, store, _ = run(tmp_path, ["What is my balance?", "4 9 2 1"], model, DemoBank(), factors)
    assert tts.spoken == [settings.pin_prompt, settings.locked_reply, offer]  # even the right PIN
    store.close()


def test_requests_that_trigger_no_tool_never_ask_the_model_for_one(tmp_path: Path) -> None:
    model = ToolModel([], ["We open at nine."])
    _, tts, store, _ = run(tmp_path, ["What time do you open?"], model, DemoBank())
    assert model.request_prompts == [] and tts.spoken == ["We open at nine."]
    store.close()


def test_the_pin_and_the_code_can_be_keyed_in_and_never_become_a_transcript(
    tmp_path: Path,
) -> None:
    model = ToolModel([{"tool": "account_balance", "arguments": {}}], [])
    bank = DemoBank()
    store = Storage.open_sqlite(tmp_path / "a.db", load_or_create(tmp_path / "k"))
    record = store.start_call(CALLER, "test")
    agent = ToolAgent(
        ToolBox(demo_tools(bank), ALL_TOOLS),
        caller=CALLER,
        credentials=bank,
        model=model,
        settings=ToolsSettings(enabled=tuple(ALL_TOOLS)),
        factors=CallerFactors.from_settings(ToolsSettings()),
    )
    tts = ToneSynthesizer(ms_per_char=2)
    keyed = iter(["4921#", current_code().replace(" ", "") + "#"])

    def on_event(event: TurnEvent) -> None:
        if event.type is EventType.AGENT:  # the caller keys in while the prompt plays
            keys = next(keyed, None)
            if keys is not None:
                session.keys(keys)

    session = CallSession(
        Engines(EnergyVad(), FakeTranscriber(["What's my account balance?"]), model, tts),
        make_config(record_audio=True),
        MemorySource(tone(0.8) + quiet(10.0)),
        MemorySink(16_000),
        on_event=on_event,
        recorder=record,
        guard=CallGuard(PolicySettings(), "Be brief."),
        agent=agent,
    )
    asyncio.run(asyncio.wait_for(session.run(), timeout=60))
    settings = ToolsSettings()
    assert tts.spoken == [
        settings.pin_prompt,
        settings.totp_prompt,
        "Your current account balance is 1250.40 pounds.",
    ]
    keypad = [t.first(EventType.KEYPAD) for t in session.turns]
    assert [k.data["keys"] if k else None for k in keypad] == [None, 5, 7]  # counts, not keys
    view = store.read_call(record.call_id, "test", "check")
    assert [t.transcript for t in view.turns][1:] == [KEYPAD_NOT_RECORDED] * 2
    stored = json.dumps([t.transcript for t in view.turns])
    assert "4921" not in stored
    store.close()
