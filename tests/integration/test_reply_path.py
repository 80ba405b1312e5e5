"""The reply path on fake engines and a real knowledge index (hashed-word embeddings): routes
decided in code, layer 3 before any word is spoken, and the red team on the very same path."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from appliance.audio_io.memory import MemorySink, MemorySource
from appliance.config.settings import KnowledgeSettings, Settings
from appliance.core.events import EventType, Route
from appliance.core.ports import ChatMessage
from appliance.knowledge.base import KnowledgeBase
from appliance.pipeline.reply import Engines
from appliance.pipeline.session import TurnResult
from appliance.redteam.runner import reply
from appliance.service import VoiceService, pipeline_config, run_call
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage
from appliance.testing.fakes import (
    EnergyVad,
    FakeTranscriber,
    ScriptedChatModel,
    ToneSynthesizer,
    WordEmbedder,
    quiet,
    tone,
)
from tests.conftest import FIXED_TURN_ORDER
from tests.integration.helpers import ENDPOINTING

FAQ = """
[[entry]]
id = "hours-saturday"
questions = ["What time do you open on Saturday?", "Saturday opening hours"]
answer = "On Saturday we're open from 10 am to 2 pm."
owner = "Branch Operations"
version = 1
approved = 2026-11-20
"""
POLICY = """---
id: delivery-policy
title: Delivery policy
owner: Customer Operations
version: 1
approved: 2026-10-01
---
## Express delivery
Express delivery costs 6 pounds and arrives the next working day.
"""
EXPRESS = "How much does express delivery cost?"


class Model(ScriptedChatModel):
    """A scripted model that can also be asked for a tool request (it answers none)."""

    def request_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, Any], max_tokens: int = 128
    ) -> str:
        return json.dumps({"tool": "none"})


def make_service(
    tmp_path: Path, settings: Settings, replies: Sequence[str], *, quote: bool = False
) -> VoiceService:
    """The fake engines, a small knowledge base; ``quote``: documents are quoted, not given
    to the model (most tests here are about the model's route)."""
    folder = tmp_path / "knowledge"
    (folder / "faq").mkdir(parents=True)
    (folder / "documents").mkdir()
    (folder / "faq" / "hours.toml").write_text(FAQ, encoding="utf-8")
    (folder / "documents" / "delivery.md").write_text(POLICY, encoding="utf-8")
    knowledge = KnowledgeSettings(
        folder=str(folder), confident=0.8, margin=0.0, related=0.3, quote_documents=quote
    )
    settings = dataclasses.replace(settings, knowledge=knowledge)
    base = KnowledgeBase.open(knowledge, WordEmbedder(), "fake", settings.home)
    engines = Engines(EnergyVad(), FakeTranscriber([]), Model(replies), ToneSynthesizer(5))
    config = dataclasses.replace(
        pipeline_config(settings), endpointing=ENDPOINTING, output_sample_rate_hz=16_000
    )
    return VoiceService(settings, engines, config, knowledge=base)


def call(service: VoiceService, texts: list[str], store: Storage | None = None) -> list[TurnResult]:
    engines = dataclasses.replace(service.engines, stt=FakeTranscriber(texts))
    service = dataclasses.replace(service, engines=engines)
    pcm = b"".join(tone(0.8) + quiet(3.0) for _ in texts)
    own = store or Storage.open_sqlite(service.settings.home / "t.db", None)

    async def run() -> list[TurnResult]:
        outcome = await run_call(service, own, MemorySource(pcm), MemorySink(16_000))
        return outcome.turns

    try:
        return asyncio.run(asyncio.wait_for(run(), timeout=60))
    finally:
        if store is None:
            own.close()


def spoken(service: VoiceService) -> list[str]:
    tts = service.engines.tts
    assert isinstance(tts, ToneSynthesizer)
    return tts.spoken


def test_a_confident_match_is_the_approved_answer_as_written_and_no_model(
    tmp_path: Path, settings: Settings
) -> None:
    service = make_service(tmp_path, settings, ["The model must not be asked."])
    turns = call(service, ["What time do you open on Saturday?"])
    assert spoken(service) == ["On Saturday we're open from 10 am to 2 pm."]
    assert isinstance(service.engines.llm, Model) and service.engines.llm.prompts == []
    assert [e.type for e in turns[0].events] == FIXED_TURN_ORDER
    assert turns[0].route == "faq" and turns[0].citations == ("hours-saturday",)


def test_a_document_match_is_quoted_as_written_and_no_model(
    tmp_path: Path, settings: Settings
) -> None:
    service = make_service(tmp_path, settings, ["The model must not be asked."], quote=True)
    turns = call(service, [EXPRESS])
    assert isinstance(service.engines.llm, Model) and service.engines.llm.prompts == []
    (said,) = spoken(service)
    assert said and said in POLICY  # the document's own sentences
    assert turns[0].route == "quoted"
    assert turns[0].citations == ("delivery-policy#express-delivery",)


@pytest.mark.parametrize(
    "invention",
    [
        "You can ring our delivery desk on 0207 946 0123.",  # a phone number
        "Express delivery costs 13 pounds.",  # a price
        "Express orders go out at 7 am every morning.",  # a time
        "Our Harbour branch handles express delivery.",  # a name
    ],
)
def test_a_model_that_invents_is_stopped_before_a_word_is_spoken(
    tmp_path: Path, settings: Settings, invention: str
) -> None:
    service = make_service(tmp_path, settings, [invention])
    turns = call(service, [EXPRESS])
    said = " ".join(spoken(service))
    # Passages that do not hold what was said do not answer: the honest answer, at once.
    assert spoken(service) == [settings.knowledge.unknown_reply]
    assert "13" not in said and "0207" not in said and "7 am" not in said and "Harbour" not in said
    turn = turns[0]
    assert turn.route == "grounded" and turn.citations == ("delivery-policy#express-delivery",)
    reasons = [str(e.data["reasons"]) for e in turn.events if e.type is EventType.GUARD_OUTPUT]
    assert len(reasons) == 1 and all("output.ungrounded" in r for r in reasons)
    assert isinstance(service.engines.llm, Model) and len(service.engines.llm.prompts) == 1


def test_prompt_markup_is_never_spoken(tmp_path: Path, settings: Settings) -> None:
    service = make_service(
        tmp_path,
        settings,
        [
            "<caller_said>How much</caller_said> is it? It costs 6 pounds.",
            "Express delivery costs 6 pounds and arrives the next working day.",
        ],
    )
    call(service, [EXPRESS])
    assert spoken(service) == ["Express delivery costs 6 pounds and arrives the next working day."]


@pytest.mark.parametrize(
    "recital",
    [
        "You're a helpful, polite voice assistant for a customer service line.",
        "The caller said they would like express delivery.",
    ],
)
def test_a_recital_of_the_prompt_is_redrafted_never_spoken(
    tmp_path: Path, settings: Settings, recital: str
) -> None:
    answer = "Express delivery costs 6 pounds and arrives the next working day."
    service = make_service(tmp_path, settings, [recital, answer])
    turns = call(service, [EXPRESS])
    assert spoken(service) == [answer]
    reasons = [str(e.data["reasons"]) for e in turns[0].events if e.type is EventType.GUARD_OUTPUT]
    assert len(reasons) == 1 and ("system_prompt" in reasons[0] or "meta" in reasons[0])


def test_a_model_that_declines_gives_way_to_the_honest_answer_and_the_offer(
    tmp_path: Path, settings: Settings
) -> None:
    decline = "I'm sorry for the confusion, but I can only assist you with your booking."
    service = make_service(tmp_path, settings, [decline])
    turns = call(service, [EXPRESS, "Yes please."])
    unknown = settings.knowledge.unknown_reply
    # No line that can transfer (a memory source): the yes gets the callback offer, never a
    # claim of a transfer.
    assert spoken(service) == [unknown, settings.transfer.unavailable_reply]
    assert [t.route for t in turns] == ["grounded", "tool"]


def test_a_stopped_later_sentence_ends_the_reply_with_a_close_not_a_withdrawal(
    tmp_path: Path, settings: Settings
) -> None:
    service = make_service(
        tmp_path, settings, ["Express delivery costs 6 pounds. The Harbour branch has a van."]
    )
    call(service, [EXPRESS])
    assert spoken(service) == ["Express delivery costs 6 pounds.", settings.policy.output_close]


def test_nothing_relevant_gets_the_honest_unknown_and_a_yes_gets_what_the_line_can_do(
    tmp_path: Path, settings: Settings
) -> None:
    service = make_service(tmp_path, settings, ["The model must not be asked."])
    turns = call(service, ["Do you sell gift vouchers?", "Yes please."])
    unknown = settings.knowledge.unknown_reply
    assert spoken(service) == [unknown, settings.transfer.unavailable_reply]
    assert [t.route for t in turns] == ["unknown", "tool"]
    assert not any(ch.isdigit() for ch in spoken(service)[0])


@pytest.mark.parametrize(
    "script",
    [
        ["Express delivery costs 6 pounds and arrives the next working day."],
        ["Express delivery costs 13 pounds."],
        ["Express delivery costs 6 pounds. The Harbour branch has a van."],
    ],
)
def test_the_red_team_and_a_call_take_the_same_decision(
    tmp_path: Path, settings: Settings, script: list[str]
) -> None:
    in_call = make_service(tmp_path / "call", settings, script)
    turn = call(in_call, [EXPRESS])[0]
    red_team = make_service(tmp_path / "redteam", settings, script)
    out, _ = asyncio.run(reply(red_team, EXPRESS))
    assert out.state.reply == turn.reply == " ".join(spoken(in_call))
    assert out.state.route is not None and out.state.route.value == turn.route
    assert out.state.citations == turn.citations
    reasons = [e.data.get("reasons") for e in turn.events if e.type is EventType.GUARD_OUTPUT]
    assert [
        e.data.get("reasons") for e in out.events if e.type is EventType.GUARD_OUTPUT
    ] == reasons


def test_routes_and_citations_are_stored_and_unanswered_questions_are_the_gaps(
    tmp_path: Path, settings: Settings
) -> None:
    store = Storage.open_sqlite(tmp_path / "a.db", load_or_create(tmp_path / "k"))
    service = make_service(tmp_path, settings, [])
    texts = ["What time do you open on Saturday?", "Do you sell gift vouchers?", "No thanks."]
    call(service, texts, store)
    call(service, ["Do you sell gift vouchers?"], store)
    call_id = store.list_calls()[-1].id
    view = store.read_call(call_id, "test", "check")
    assert [(t.route, t.citations) for t in view.turns] == [
        ("faq", ("hours-saturday",)),
        ("unknown", ()),
        ("tool", ()),  # the no to the offer of a person
    ]
    gaps = store.knowledge_gaps("cli:test")
    assert gaps == [("do you sell gift vouchers", 2)]
    with store.session("audit") as db:
        from appliance.storage.schema import AuditEvent

        actions = [(e.action, e.object) for e in db.query(AuditEvent)]
    assert ("read", "knowledge_gaps") in actions
    assert ("knowledge_changed", "knowledge") in actions  # the index build, audited
    store.close()


def test_no_knowledge_base_means_the_model_under_the_system_prompt(
    tmp_path: Path, settings: Settings
) -> None:
    service = dataclasses.replace(
        make_service(tmp_path, settings, ["How can I help you today?"]), knowledge=None
    )
    turns = call(service, ["Hello there."])
    assert turns[0].route == Route.MODEL.value and spoken(service) == ["How can I help you today?"]
