"""Run a call on fake engines in lockstep and return what happened; the service on fake
engines, as the call-path tests build it; the ``appliance`` command of this checkout."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from appliance.audio_io.memory import MemorySink, MemorySource
from appliance.config.settings import CredentialSource, EndpointingSettings, Settings, load_settings
from appliance.core.events import EventType, TurnEvent
from appliance.core.ports import ChatMessage, ChatModel, Transcriber, TurnRecord
from appliance.pipeline.session import CallSession, Engines, PipelineConfig, TurnResult
from appliance.service import CallOutcome, VoiceService, pipeline_config
from appliance.service import run_call as serve
from appliance.storage.keys import load_or_create
from appliance.storage.migrations import MIGRATIONS, applied_versions
from appliance.storage.repository import Storage
from appliance.testing.fakes import (
    EnergyVad,
    FakeTranscriber,
    ScriptedChatModel,
    ToneSynthesizer,
    quiet,
    tone,
)

ROOT = Path(__file__).resolve().parents[2]
RATE_OUT = 16_000
ENDPOINTING = EndpointingSettings(
    start_window_ms=100,
    start_ratio=0.6,
    preroll_ms=200,
    silence_timeout_ms=300,
    speculate_after_ms=100,
)


@dataclass
class Call:
    turns: list[TurnResult]
    sink: MemorySink
    events: list[TurnEvent]
    stt: Transcriber
    llm: ChatModel
    tts: ToneSynthesizer
    session: CallSession

    def types(self, turn: int) -> list[EventType]:
        return [e.type for e in self.turns[turn].events]


def make_config(**changes: object) -> PipelineConfig:
    base = PipelineConfig(
        endpointing=ENDPOINTING,
        system_prompt="Be brief.",
        output_sample_rate_hz=RATE_OUT,
        fallback_reply="Sorry, please say that again.",
    )
    endpointing = {k: changes.pop(k) for k in ("speculate_after_ms", "barge_in") if k in changes}
    if endpointing:
        base = dataclasses.replace(
            base,
            endpointing=dataclasses.replace(ENDPOINTING, **endpointing),  # type: ignore[arg-type]
        )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def run_call(
    pcm: bytes,
    texts: Sequence[str] = ("What time do you open?",),
    replies: Sequence[str] = ("We open at nine.",),
    *,
    stt: Transcriber | None = None,
    llm: ChatModel | None = None,
    tts: ToneSynthesizer | None = None,
    **config: object,
) -> Call:
    stt = stt or FakeTranscriber(texts)
    llm = llm or ScriptedChatModel(replies)
    tts = tts or ToneSynthesizer()
    events: list[TurnEvent] = []
    sink = MemorySink(RATE_OUT)
    session = CallSession(
        Engines(EnergyVad(), stt, llm, tts),
        make_config(**config),
        MemorySource(pcm),
        sink,
        on_event=events.append,
    )
    turns = asyncio.run(asyncio.wait_for(session.run(), timeout=60))
    return Call(turns, sink, events, stt, llm, tts, session)


def local_udp() -> socket.socket:
    """A non-blocking UDP socket on a free port of 127.0.0.1 (a test peer's SIP or RTP)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


# -- the service on fake engines -------------------------------------------------------------


class NoToolModel(ScriptedChatModel):
    """A scripted model that can also be asked for a tool request, and answers none (where
    exactly one tool's intent matches, the agent does not ask)."""

    def request_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, Any], max_tokens: int = 128
    ) -> str:
        return json.dumps({"tool": "none"})


def tool_settings(home: Path, credentials: CredentialSource, **changes: Any) -> Settings:
    """The settings of a home of its own with the balance and transfer tools on, callers
    verified against ``credentials``; ``changes`` replace whole sections."""
    settings = load_settings(environ={"APPLIANCE_HOME": str(home)})
    tools = dataclasses.replace(
        settings.tools, enabled=("account_balance", "transfer_to_human"), credentials=credentials
    )
    return dataclasses.replace(settings, tools=tools, **changes)


def fake_service(
    settings: Settings, stt: Transcriber, llm: ChatModel, tts: ToneSynthesizer, **config: Any
) -> VoiceService:
    """The service on fake engines, with the quick endpointing above; ``config`` changes the
    pipeline's configuration."""
    engines = Engines(EnergyVad(), stt, llm, tts)
    pipeline = dataclasses.replace(pipeline_config(settings), endpointing=ENDPOINTING, **config)
    return VoiceService(settings, engines, pipeline)


def serve_utterances(
    service: VoiceService, store: Storage, utterances: int, caller_id: str, **options: Any
) -> CallOutcome:
    """One call through the service (admission, guard, storage) from memory: ``utterances``
    tones, each followed by 3 s of quiet (the fake transcriber decides what each says)."""
    pcm = b"".join(tone(0.8) + quiet(3.0) for _ in range(utterances))
    call = serve(
        service, store, MemorySource(pcm), MemorySink(16_000), caller_id=caller_id, **options
    )
    return asyncio.run(asyncio.wait_for(call, timeout=60))


def agent_said(turns: Sequence[TurnResult]) -> list[str]:
    """Each turn as ``outcome: reply``, the outcome the agent's (``-`` for none)."""
    said = []
    for turn in turns:
        agent = turn.first(EventType.AGENT)
        said.append(f"{agent.data['outcome'] if agent else '-'}: {turn.reply}")
    return said


# -- the store ---------------------------------------------------------------------------------


def plaintext_dump(store: Storage, path: Path) -> bytes:
    """Every live page of the database, decrypted (SQLCipher's export to a plain file)."""
    raw = store.engine.raw_connection()
    try:
        raw.driver_connection.execute(f"ATTACH DATABASE '{path}' AS plaintext KEY ''")  # type: ignore[union-attr]
        raw.driver_connection.execute("SELECT sqlcipher_export('plaintext')")  # type: ignore[union-attr]
        raw.driver_connection.execute("DETACH DATABASE plaintext")  # type: ignore[union-attr]
    finally:
        raw.close()
    return path.read_bytes()


@contextlib.contextmanager
def upgraded(folder: Path, caller: str, *downgrade: str) -> Iterator[tuple[Storage, str]]:
    """A store taken back to an earlier schema, then opened again (which migrates it): a call
    of ``caller`` with one turn is stored, then ``downgrade`` (SQL) leaves the store as the
    earlier appliance did. Yields the reopened store, checked to have every migration and the
    turn, and the call's id; closed after."""
    db, key = folder / "a.db", load_or_create(folder / "k")
    old = Storage.open_sqlite(db, key)
    handle = old.start_call(caller, "test")
    handle.record_turn(TurnRecord(1, "kept across the upgrade", "noted"))
    handle.finish("ended")
    with old.session("downgrade") as session:
        for statement in downgrade:
            session.execute(text(statement))
    old.close()
    store = Storage.open_sqlite(db, key)
    try:
        assert applied_versions(store.engine) == {m.version for m in MIGRATIONS}
        view = store.read_call(handle.call_id, "admin:test", "check")
        assert view.turns[0].transcript == "kept across the upgrade"
        yield store, handle.call_id
    finally:
        store.close()


# -- the command -------------------------------------------------------------------------------


def cli(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The ``appliance`` command of this checkout, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "APPLIANCE_HOME": str(home), "PYTHONPATH": str(ROOT)},
    )


def self_signed(folder: Path, days: int = 1) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 listeners (PEM, ``days`` valid)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "appliance.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "sip.crt", folder / "sip.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class StepClock:
    """A store's clock that the test moves (no sleeping, no timed asserts)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Each sample of a Prometheus exposition by name and (sorted) labels."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found
