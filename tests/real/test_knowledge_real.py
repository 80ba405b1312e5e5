"""The knowledge base with the real models: spoken questions through a whole call, answered by
route (approved answer, quoted document, honest unknown, tool), and the index's own faults."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import numpy as np
import soxr

from appliance.audio_io.memory import MemorySink, MemorySource
from appliance.config.manifest import model_spec
from appliance.config.settings import Settings
from appliance.core.events import EventType
from appliance.pipeline.session import TurnResult
from appliance.service import VoiceService, run_call
from appliance.storage.repository import Storage
from tests.real.conftest import run_cli, silence, speak, wer

SATURDAY = "On Saturday we're open from 10 am to 2 pm."


def call(service: VoiceService, question: str, tmp_path: Path) -> tuple[TurnResult, MemorySink]:
    pcm = silence(0.5) + speak(service, question) + silence(2.0)
    sink = MemorySink(service.config.output_sample_rate_hz)
    with Storage.open_sqlite(tmp_path / "calls.db", None) as storage:
        outcome = asyncio.run(
            asyncio.wait_for(
                run_call(service, storage, MemorySource(pcm), sink, caller_id="+15550100"),
                timeout=240,
            )
        )
    (turn,) = outcome.turns
    return turn, sink


def heard_back(service: VoiceService, turn: TurnResult, sink: MemorySink) -> str:
    start, end = turn.first(EventType.FIRST_AUDIO), turn.first(EventType.TURN_END)
    assert start is not None and end is not None
    assert start.frame_index is not None and end.frame_index is not None
    audio = np.frombuffer(b"".join(sink.frames[start.frame_index : end.frame_index + 1]), "<i2")
    at_16k = soxr.resample(audio, service.config.output_sample_rate_hz, 16_000)
    return service.engines.stt.transcribe(at_16k.astype("<i2").tobytes(), 16_000).text


def clock_words(text: str) -> str:
    """'10 a.m.' and '10 am' are the same words (Whisper writes either)."""
    return re.sub(r"\b([ap])\.?\s?m\b\.?", r"\1m", text, flags=re.I)


def test_a_confident_match_is_spoken_as_written(service: VoiceService, tmp_path: Path) -> None:
    # Whisper is told the knowledge base's names and words ([stt] hint = "auto")
    assert "Example Co." in getattr(service.engines.stt, "hint", "")
    turn, sink = call(service, "Hello, what time do you open on Saturday?", tmp_path)
    assert turn.route == "faq" and turn.citations == ("hours-saturday",)
    assert turn.reply == SATURDAY
    assert turn.first(EventType.FIRST_TOKEN) is None  # no model was asked
    heard = clock_words(heard_back(service, turn, sink))
    assert wer(clock_words(SATURDAY), heard) <= 0.15, heard


def test_a_document_only_answer_cites_its_document(service: VoiceService, tmp_path: Path) -> None:
    turn, sink = call(service, "Is there a baby changing room at the Riverside branch?", tmp_path)
    assert turn.route == "quoted"
    assert turn.citations == ("branch-services#riverside",)  # only branch-services.html says so
    assert turn.first(EventType.FIRST_TOKEN) is None  # quoted as written: no model was asked
    passage = (
        "Riverside is our largest branch and has a cafe serving hot drinks, sandwiches and cakes "
        "during opening hours. The whole store is on one level with step-free access, and "
        "wheelchairs are available to borrow at the entrance. Baby changing is next to the cafe. "
        "Click and collect is at the desk by the car park entrance, and orders are kept for 14 "
        "days."
    )
    assert "Baby changing is next to the cafe." in turn.reply
    assert all(sentence in passage for sentence in re.split(r"(?<=\.) ", turn.reply)), turn.reply
    heard = heard_back(service, turn, sink)
    assert re.search(r"baby[\s-]*chang", heard, re.I), heard


def test_an_unanswerable_question_gets_the_honest_answer_and_the_offer(
    service: VoiceService, tmp_path: Path
) -> None:
    turn, sink = call(service, "Do you sell gift vouchers for birthdays?", tmp_path)
    assert turn.route == "unknown" and turn.citations == ()
    assert turn.reply == service.settings.knowledge.unknown_reply
    assert "put you through to a member of our team" in turn.reply
    assert not any(ch.isdigit() for ch in turn.reply + heard_back(service, turn, sink))


def test_moving_an_appointment_starts_the_booking_dialogue(
    service: VoiceService, tmp_path: Path
) -> None:
    turn, _ = call(service, "Can I move my appointment to Tuesday?", tmp_path)
    agent = turn.first(EventType.AGENT)
    assert turn.route == "tool" and agent is not None
    assert agent.data["outcome"] == "tool.slot"  # the day was heard; the time is asked for
    assert turn.reply == "Which time suits you: 9 am, 11 am, 2 pm or 4 pm?"


def test_an_altered_embedding_model_is_refused_at_load(
    real_settings: Settings, tmp_path: Path
) -> None:
    spec = model_spec(real_settings, "embedding")
    copy = tmp_path / "minilm"
    shutil.copytree(spec.base_dir, copy)
    with (copy / "model.onnx").open("r+b") as handle:
        handle.seek(4096)
        byte = handle.read(1)
        handle.seek(4096)
        handle.write(bytes([byte[0] ^ 0xFF]))
    result = run_cli(
        "knowledge", "build", home=tmp_path / "home", env={"APPLIANCE_KNOWLEDGE__PATH": str(copy)}
    )
    assert result.returncode == 1
    assert "model.altered" in result.stderr and "model.onnx" in result.stderr


def test_a_bad_knowledge_file_is_named_and_the_last_good_index_keeps_serving(
    repo_root: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "knowledge"
    shutil.copytree(repo_root / "config" / "knowledge", folder)
    env = {"APPLIANCE_KNOWLEDGE__FOLDER": str(folder)}
    home = tmp_path / "home"
    built = run_cli("knowledge", "build", home=home, env=env)
    assert built.returncode == 0, built.stderr
    assert "added" in built.stdout
    hours = folder / "faq" / "hours.toml"
    lines = hours.read_text(encoding="utf-8").splitlines()
    lines[5] = 'answer = "unterminated'
    hours.write_text("\n".join(lines) + "\n", encoding="utf-8")
    broken = run_cli("knowledge", "build", home=home, env=env)
    assert broken.returncode == 1
    assert f"{hours}:6" in broken.stderr and "knowledge.invalid" in broken.stderr
    asked = run_cli(
        "knowledge", "ask", "--json", "What are your Saturday hours?", home=home, env=env
    )
    assert asked.returncode == 0, asked.stderr
    assert '"route": "faq"' in asked.stdout and "10 am to 2 pm" in asked.stdout
    listed = run_cli("knowledge", "list", home=home, env=env)
    assert listed.returncode == 1 and f"{hours}:6" in listed.stderr
