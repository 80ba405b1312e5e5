"""Model identity: where a model's files are and the SHA-256 each must have.

A model is refused at load when a pinned file is missing or its digest differs; the error names
the path. Hashing is streamed, so a 100 MB model costs a fraction of a second and no memory.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.core.errors import ModelError

_CHUNK = 1 << 20


class FileStatus(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    ALTERED = "altered"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model to load: its manifest name, role, the path an engine opens, and pinned files.

    ``path`` is a directory (CTranslate2 models) or a file (GGUF, ONNX); ``files`` maps names
    relative to ``base_dir`` to their SHA-256 in hex.
    """

    name: str
    role: str
    path: Path
    files: Mapping[str, str]
    optional: bool = False

    @property
    def base_dir(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent


@dataclass(frozen=True, slots=True)
class FileCheck:
    path: Path
    size_bytes: int
    status: FileStatus
    sha256: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_model(spec: ModelSpec) -> list[FileCheck]:
    """Hash every pinned file of ``spec``; never raises for a bad file, reports it."""
    checks: list[FileCheck] = []
    for rel, expected in sorted(spec.files.items()):
        path = spec.base_dir / rel
        if not path.is_file():
            checks.append(FileCheck(path, 0, FileStatus.MISSING, ""))
            continue
        actual = sha256_file(path)
        status = FileStatus.OK if actual == expected.lower() else FileStatus.ALTERED
        checks.append(FileCheck(path, path.stat().st_size, status, actual))
    return checks


def require_verified(spec: ModelSpec) -> None:
    """Raise ModelError naming the first missing or altered file of ``spec``."""
    if not spec.files:
        raise ModelError(
            "model.unpinned", f"model {spec.name!r} at {spec.path} has no SHA-256 pins"
        )
    if not spec.path.exists():
        raise ModelError("model.missing", f"model {spec.name!r}: {spec.path} does not exist")
    for check in check_model(spec):
        if check.status is FileStatus.MISSING:
            raise ModelError("model.missing", f"model {spec.name!r}: file {check.path} is missing")
        if check.status is FileStatus.ALTERED:
            raise ModelError(
                "model.altered",
                f"model {spec.name!r}: file {check.path} does not match its pinned SHA-256 "
                f"(got {check.sha256[:16]}...); refusing to load it",
            )
