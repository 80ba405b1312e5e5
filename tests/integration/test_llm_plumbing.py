"""llama-cpp-python plumbing on a tiny random-weight GGUF: loading, pins, streaming, stopping."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from appliance.core.errors import ModelError
from appliance.core.events import EventType
from appliance.core.models import ModelSpec
from appliance.core.ports import ChatMessage
from appliance.engines.llm import LlamaChat
from appliance.testing.fakes import FakeTranscriber, ToneSynthesizer, quiet, tone
from appliance.testing.tiny_gguf import write_tiny_gguf
from tests.integration.helpers import run_call


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    return ModelSpec(
        "tiny", "llm", path, {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    )


MESSAGES = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hello?")]


def test_tokens_stream_and_the_stream_can_be_stopped(tiny: ModelSpec) -> None:
    llm = LlamaChat(tiny, context_tokens=512, threads=1)
    pieces = list(llm.stream_chat(MESSAGES, max_tokens=8))
    assert 1 <= len(pieces) <= 8
    stream = llm.stream_chat(MESSAGES, max_tokens=200)
    next(stream)
    stream.close()  # stopping early releases the model for the next turn
    assert list(llm.stream_chat(MESSAGES, max_tokens=4))
    assert llm.last_stats["tokens"] >= 1


def test_a_turn_through_the_real_llama_cpp_binding(tiny: ModelSpec) -> None:
    call = run_call(
        tone(0.8) + quiet(2.0),
        stt=FakeTranscriber(["hello"]),
        llm=LlamaChat(tiny, context_tokens=512, threads=1),
        tts=ToneSynthesizer(),
        max_reply_tokens=12,
    )
    assert call.turns[0].reply  # gibberish, but streamed through the whole path
    assert call.turns[0].first(EventType.FIRST_AUDIO) is not None


def test_an_altered_gguf_is_refused_with_its_path(tiny: ModelSpec, tmp_path: Path) -> None:
    copy = tmp_path / "copy.gguf"
    data = bytearray(tiny.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    spec = ModelSpec("tiny", "llm", copy, {"copy.gguf": tiny.files[tiny.path.name]})
    with pytest.raises(ModelError) as caught:
        LlamaChat(spec, context_tokens=512)
    assert caught.value.code == "model.altered"
    assert str(copy) in str(caught.value)


def test_a_pinned_but_corrupt_gguf_fails_to_load_with_its_path(tmp_path: Path) -> None:
    """Even a file whose pin was updated by mistake is refused cleanly, not with a crash."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    spec = ModelSpec("bad", "llm", bad, {"bad.gguf": hashlib.sha256(bad.read_bytes()).hexdigest()})
    with pytest.raises(ModelError) as caught:
        LlamaChat(spec, context_tokens=512)
    assert caught.value.code == "model.load"
    assert str(bad) in str(caught.value)
