from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from appliance.core.errors import ModelError
from appliance.core.models import FileStatus, ModelSpec, check_model, require_verified


def pinned(tmp_path: Path) -> ModelSpec:
    folder = tmp_path / "model"
    folder.mkdir()
    files = {}
    for name, body in (("model.bin", b"weights" * 1000), ("config.json", b"{}")):
        (folder / name).write_bytes(body)
        files[name] = hashlib.sha256(body).hexdigest()
    return ModelSpec("demo", "stt", folder, files)


def test_an_intact_model_passes(tmp_path: Path) -> None:
    spec = pinned(tmp_path)
    require_verified(spec)
    assert [c.status for c in check_model(spec)] == [FileStatus.OK, FileStatus.OK]


def test_an_altered_file_is_refused_with_its_path(tmp_path: Path) -> None:
    spec = pinned(tmp_path)
    target = spec.path / "model.bin"
    data = bytearray(target.read_bytes())
    data[100] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ModelError) as caught:
        require_verified(spec)
    assert caught.value.code == "model.altered"
    assert str(target) in str(caught.value)


def test_a_missing_file_is_refused_with_its_path(tmp_path: Path) -> None:
    spec = pinned(tmp_path)
    (spec.path / "config.json").unlink()
    with pytest.raises(ModelError, match=r"model.missing.*config.json"):
        require_verified(spec)


def test_a_missing_model_and_an_unpinned_model_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model\.missing"):
        require_verified(ModelSpec("x", "llm", tmp_path / "absent.gguf", {"absent.gguf": "0" * 64}))
    with pytest.raises(ModelError, match=r"model\.unpinned"):
        require_verified(ModelSpec("x", "llm", tmp_path, {}))


def test_single_file_models_are_pinned_beside_their_folder(tmp_path: Path) -> None:
    model = tmp_path / "voice.onnx"
    model.write_bytes(b"onnx")
    (tmp_path / "voice.onnx.json").write_bytes(b"{}")
    spec = ModelSpec(
        "v",
        "tts",
        model,
        {
            "voice.onnx": hashlib.sha256(b"onnx").hexdigest(),
            "voice.onnx.json": hashlib.sha256(b"{}").hexdigest(),
        },
    )
    require_verified(spec)
