"""Models assembled into the shared cache: each set of pins in a folder of its own, built whole
and verified before it is put in place, so a switch, a rollback or a second clone at another
release never rewrites the files another one loads, and a bad part leaves nothing half-made."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

import pytest

from appliance.config.manifest import (
    LEFTOVER_AGE_S,
    ManifestEntry,
    _publish,
    assemble,
    entry_path,
)
from appliance.config.settings import ModelsSettings, Settings
from appliance.core.errors import ModelError
from appliance.core.models import FileStatus, ModelSpec, check_model


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def release(
    tmp_path: Path, name: str, content: bytes, pinned: bytes | None = None
) -> ManifestEntry:
    """A model of two files, one joined from two parts, pinned to ``pinned`` (the parts' own
    content unless given)."""
    parts = tmp_path / name
    parts.mkdir()
    (parts / "a").write_bytes(content[:3])
    (parts / "b").write_bytes(content[3:])
    (parts / "config.json").write_bytes(b"{}")
    return ManifestEntry(
        name="tiny",
        role="stt",
        source="cache:tiny",
        files={
            "model.bin": sha(pinned if pinned is not None else content),
            "config.json": sha(b"{}"),
        },
        assemble={
            "model.bin": [f"path:{parts / 'a'}", f"path:{parts / 'b'}"],
            "config.json": [f"path:{parts / 'config.json'}"],
        },
        licence="test",
    )


@pytest.fixture
def cached(settings: Settings, tmp_path: Path) -> Settings:
    cache = tmp_path / "cache"
    return dataclasses.replace(settings, models=ModelsSettings(cache=str(cache)))


def verified(entry: ManifestEntry, settings: Settings) -> bool:
    spec = ModelSpec(entry.name, entry.role, entry_path(entry, settings), entry.files)
    return all(c.status is FileStatus.OK for c in check_model(spec))


def test_each_release_keeps_its_own_verified_copy(cached: Settings, tmp_path: Path) -> None:
    old = release(tmp_path, "old", b"weights-1")
    new = release(tmp_path, "new", b"weights-2")
    assert assemble(old, cached) == entry_path(old, cached)
    assert assemble(old, cached) is None  # kept, verified
    assert assemble(new, cached) == entry_path(new, cached)
    assert entry_path(old, cached) != entry_path(new, cached)
    assert entry_path(old, cached).name.startswith("tiny@")
    assert verified(old, cached) and verified(new, cached)  # rolling back finds the old one
    assert (entry_path(new, cached) / "model.bin").read_bytes() == b"weights-2"
    assert not list((tmp_path / "cache").glob(".*partial"))


def test_a_part_that_does_not_match_its_pin_leaves_nothing_in_place(
    cached: Settings, tmp_path: Path
) -> None:
    old = release(tmp_path, "old", b"weights-1")
    assemble(old, cached)
    damaged = release(tmp_path, "damaged", b"weights-X", pinned=b"weights-2")
    with pytest.raises(ModelError, match=r"model\.bin assembled from its parts is altered") as bad:
        assemble(damaged, cached)
    assert bad.value.code == "model.assemble"
    assert not entry_path(damaged, cached).exists()
    assert not list((tmp_path / "cache").glob(".*partial"))
    assert verified(old, cached)


def test_an_altered_copy_is_rebuilt_whole(cached: Settings, tmp_path: Path) -> None:
    entry = release(tmp_path, "old", b"weights-1")
    folder = assemble(entry, cached)
    assert folder is not None
    (folder / "model.bin").write_bytes(b"tampered")
    (folder / "stray").write_bytes(b"left by an interrupted copy")
    assert assemble(entry, cached) == folder
    assert verified(entry, cached) and not (folder / "stray").exists()


def test_a_copy_another_process_put_in_place_meanwhile_is_kept(
    cached: Settings, tmp_path: Path
) -> None:
    """Two processes assembling at once: the second to finish keeps the first's verified copy
    (a reader may be loading it) and drops its own."""
    entry = release(tmp_path, "old", b"weights-1")
    folder = assemble(entry, cached)
    assert folder is not None
    before = (folder / "model.bin").stat().st_ino
    staging = tmp_path / "staging"
    staging.mkdir()
    for name in ("model.bin", "config.json"):
        (staging / name).write_bytes((folder / name).read_bytes())
    spec = ModelSpec(entry.name, entry.role, folder, entry.files)
    assert _publish(staging, folder, spec) is False
    assert (folder / "model.bin").stat().st_ino == before and staging.exists()


def test_what_a_killed_assembly_left_is_cleared_once_old(cached: Settings, tmp_path: Path) -> None:
    entry = release(tmp_path, "old", b"weights-1")
    folder = entry_path(entry, cached)
    folder.parent.mkdir(parents=True)
    old, fresh = (folder.with_name(f".{folder.name}.{pid}.partial") for pid in (1, 2))
    for leftover in (old, fresh):
        leftover.mkdir()
    os.utime(old, (time.time() - 2 * LEFTOVER_AGE_S,) * 2)
    assemble(entry, cached)
    assert not old.exists() and fresh.exists()  # a fresh one may be another process's, working


def test_a_single_file_at_the_cache_top_gets_a_folder_of_its_own(
    cached: Settings, tmp_path: Path
) -> None:
    part = tmp_path / "m.part"
    part.write_bytes(b"gguf")
    entry = ManifestEntry(
        name="one", role="llm", source="cache:one.gguf", files={"one.gguf": sha(b"gguf")},
        assemble={"one.gguf": [f"path:{part}"]}, licence="test",
    )  # fmt: skip
    path = entry_path(entry, cached)
    assert path.name == "one.gguf" and path.parent.name.startswith("one.gguf@")
    assert assemble(entry, cached) == path.parent and path.read_bytes() == b"gguf"
