"""A spoken step-up in a real call: Piper speaks the caller, Whisper hears, SmolLM2 picks the
tool under a JSON grammar, PIN and authenticator code are checked, the balance is spoken."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np
import soxr

from appliance.audio_io.memory import MemorySink, MemorySource
from appliance.config.settings import CredentialSource, ToolsSettings
from appliance.core.events import EventType
from appliance.identity.factors import AttemptLimiter, SecretFactor, TotpFactor, totp
from appliance.pipeline.reply import SECRET_NOT_RECORDED
from appliance.service import VoiceService, run_call
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage
from appliance.tools.agent import CallerFactors
from appliance.tools.demo import DemoBank
from tests.real.conftest import silence, speak

CALLER = "+15550100"  # demo data: PIN 4921 and a TOTP secret


def test_a_caller_steps_up_by_spoken_pin_and_code_and_hears_their_balance(
    service: VoiceService, tmp_path: Path
) -> None:
    tools = ToolsSettings(
        enabled=("account_balance", "book_appointment", "transfer_to_human"),
        credentials=CredentialSource.DEMO,  # the demo configuration's callers
    )
    settings = dataclasses.replace(service.settings, tools=tools)
    secret = DemoBank().totp_secret(CALLER)
    assert secret is not None

    # The authenticator's clock stands still (injected), so the code stays good however long
    # a busy machine takes over the call. The step chosen is the first from a fixed instant
    # whose code Whisper hears right from Piper: no digit said twice in a row ("1, 1" heard
    # as "1 1 1") and no eight (heard as "A").
    def clear(code: str) -> bool:
        return "8" not in code and all(a != b for a, b in itertools.pairwise(code))

    step = next(n for n in itertools.count(1_764_590_400 // 30) if clear(totp(secret, n)))
    code = totp(secret, step)
    store = Storage.open_sqlite(tmp_path / "a.db", load_or_create(tmp_path / "k"))
    limiter = AttemptLimiter(
        tools.max_factor_attempts, float(tools.lockout_s), clock=time.time, counters=store
    )
    factors = CallerFactors(
        SecretFactor("pin", limiter), TotpFactor(limiter, clock=lambda: step * 30.0 + 1)
    )
    with_tools = dataclasses.replace(
        service, settings=settings, monitor=None, _factors=factors, _factors_store=store
    )
    said = [
        "What is my account balance?",
        "My PIN is four, nine, two, one.",
        f"The code is {', '.join(code)}.",
    ]
    pcm = b"".join(silence(0.5) + speak(service, s) + silence(2.5) for s in said)
    sink = MemorySink(service.config.output_sample_rate_hz)
    outcome = asyncio.run(
        asyncio.wait_for(
            run_call(with_tools, store, MemorySource(pcm), sink, caller_id=CALLER), timeout=300
        )
    )
    agent = [t.first(EventType.AGENT) for t in outcome.turns]
    assert [a.data["outcome"] if a else None for a in agent] == [
        "step_up.pin",
        "step_up.totp",
        "tool.ok",
    ], [t.transcript for t in outcome.turns]
    assert outcome.turns[2].reply == "Your current account balance is 1250.40 pounds."
    first_audio = outcome.turns[2].first(EventType.FIRST_AUDIO)
    assert first_audio is not None and first_audio.frame_index is not None
    played = np.frombuffer(b"".join(sink.frames[first_audio.frame_index :]), dtype="<i2")
    played = soxr.resample(played, sink.sample_rate_hz, 16_000).astype("<i2")
    heard = service.engines.stt.transcribe(played.tobytes(), 16_000).text
    assert "1250" in heard.replace(",", "")
    assert outcome.call_id is not None
    view = store.read_call(outcome.call_id, "test", "check")
    assert [t.transcript for t in view.turns][1:] == [SECRET_NOT_RECORDED] * 2
    store.close()
