"""Least-privilege tools: levels, step-up, confirmation, validation, audit, grammar."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from appliance.core.models import ModelSpec
from appliance.core.ports import ChatMessage
from appliance.engines.llm import LlamaChat
from appliance.identity.factors import AttemptLimiter, SecretFactor, TotpFactor, hash_secret, totp
from appliance.identity.levels import Assurance, Factor, assurance
from appliance.testing.tiny_gguf import write_tiny_gguf
from appliance.tools.demo import DemoBank, demo_tools
from appliance.tools.registry import ConfirmationRequired, StepUpRequired, ToolBox, ToolError

CALLER = "+15550100"


@pytest.fixture
def box() -> tuple[ToolBox, DemoBank, list[tuple[str, str, dict[str, Any], str]]]:
    bank = DemoBank()
    audit: list[tuple[str, str, dict[str, Any], str]] = []
    toolbox = ToolBox(
        demo_tools(bank),
        frozenset({"account_balance", "book_appointment", "transfer_to_human"}),
        audit=lambda *row: audit.append((row[0], row[1], dict(row[2]), row[3])),
    )
    return toolbox, bank, audit


def test_a_level_2_tool_is_refused_at_0_and_1_and_works_after_pin_and_totp(box: Any) -> None:
    toolbox, _, audit = box
    passed: set[Factor] = set()
    with pytest.raises(StepUpRequired) as caught:
        toolbox.call(CALLER, "account_balance", {}, level=assurance(passed))
    assert caught.value.needed is Assurance.TWO_FACTORS
    SecretFactor("pin", AttemptLimiter()).verify(CALLER, "4921", hash_secret("4921"))
    passed.add(Factor.PIN)
    with pytest.raises(StepUpRequired):
        toolbox.call(CALLER, "account_balance", {}, level=assurance(passed))
    secret = b"demo secret 20 bytes"
    now = 1_700_000_000.0
    TotpFactor(AttemptLimiter(), clock=lambda: now).verify(
        CALLER, totp(secret, int(now // 30)), secret
    )
    passed.add(Factor.TOTP)
    assert "1250.40" in toolbox.call(CALLER, "account_balance", {}, level=assurance(passed))
    assert [row[3] for row in audit] == ["tools.step_up", "tools.step_up", "ok"]


def test_voice_alone_never_opens_a_level_2_tool(box: Any) -> None:
    toolbox, _, _ = box
    with pytest.raises(StepUpRequired):
        toolbox.call(CALLER, "account_balance", {}, level=assurance({Factor.VOICE}))


def test_a_disabled_tool_is_invisible_and_refused() -> None:
    bank = DemoBank()
    audit: list[str] = []
    toolbox = ToolBox(
        demo_tools(bank),
        frozenset({"transfer_to_human"}),
        audit=lambda c, name, a, outcome: audit.append(outcome),
    )
    assert [t.name for t in toolbox.visible()] == ["transfer_to_human"]
    schema = json.dumps(toolbox.call_schema())
    assert "account_balance" not in schema and "book_appointment" not in schema
    with pytest.raises(ToolError, match=r"tools\.disabled"):
        toolbox.call(CALLER, "account_balance", {}, level=Assurance.TWO_FACTORS)
    assert audit == ["tools.disabled"]


def test_invalid_arguments_never_reach_the_tool(box: Any) -> None:
    toolbox, bank, audit = box
    bad = [
        {"date": "next tuesday", "time": "09:00", "branch": "Riverside"},
        {"date": "2026-12-02", "time": "03:00", "branch": "Riverside"},
        {"date": "2026-12-02", "time": "09:00", "branch": "Riverside", "admin": True},
        {"date": "2026-12-02", "time": "09:00"},
    ]
    for arguments in bad:
        with pytest.raises(ToolError, match=r"tools\.invalid_args"):
            toolbox.call(
                CALLER, "book_appointment", arguments, level=Assurance.TWO_FACTORS, confirmed=True
            )
    assert bank.bookings == []
    assert [row[3] for row in audit] == ["tools.invalid_args"] * 4


def test_changing_data_needs_the_callers_confirmation_not_the_models(box: Any) -> None:
    toolbox, bank, _ = box
    arguments = {"date": "2026-12-02", "time": "11:00", "branch": "Old Town"}
    with pytest.raises(ConfirmationRequired):
        toolbox.call(CALLER, "book_appointment", arguments, level=Assurance.ONE_FACTOR)
    # A model cannot smuggle a confirmation in through the arguments either.
    with pytest.raises(ToolError, match=r"tools\.invalid_args"):
        toolbox.call(
            CALLER, "book_appointment", {**arguments, "confirmed": True}, level=Assurance.ONE_FACTOR
        )
    assert bank.bookings == []
    said = toolbox.call(
        CALLER, "book_appointment", arguments, level=Assurance.ONE_FACTOR, confirmed=True
    )
    assert "Wednesday 2 December at 11 am" in said and bank.bookings[0]["branch"] == "Old Town"
    assert bank.bookings[0]["slot"] == "2026-12-02 11:00"
    assert dt.date(2026, 12, 2)


def test_a_grammar_makes_even_a_random_model_emit_a_valid_tool_request(
    tmp_path: Path, box: Any
) -> None:
    toolbox, _, _ = box
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    llm = LlamaChat(
        ModelSpec("tiny", "llm", path, {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}),
        context_tokens=512,
        threads=1,
    )
    text = llm.request_json(
        [ChatMessage("user", "book me in")], toolbox.call_schema(), max_tokens=96
    )
    request = json.loads(text)  # gibberish weights, well-formed JSON
    assert request["tool"] in {"account_balance", "book_appointment", "transfer_to_human", "none"}


def test_a_request_for_a_person_is_known_when_recognition_drops_a_word() -> None:
    person = demo_tools(DemoBank())["transfer_to_human"]
    for said in ("I'd like to speak to a person.", "I would like to speak a person, please."):
        assert person.triggered_by(said), said  # Whisper heard the second from Piper's first
    assert not person.triggered_by("Do your staff speak Spanish?")
