"""The model manifest (``models/manifest.toml``): names, roles, default sources and SHA-256 pins.

A default source is ``package:<import name>/<relative path>`` (a model package's folder, found
without importing it) or ``home:<relative path>`` (under ``APPLIANCE_HOME``, for models the
appliance assembles, such as Whisper base joined from its two parts).
"""

from __future__ import annotations

import importlib.util
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config.settings import Settings
from appliance.core.errors import ConfigError, ModelError
from appliance.core.models import FileStatus, ModelSpec, check_model


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


def package_dir(import_name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "model.package_missing",
            f"model package {import_name!r} is not installed (run scripts/setup)",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_source(source: str, home: Path) -> Path:
    scheme, _, rest = source.partition(":")
    if scheme == "package":
        package, _, rel = rest.partition("/")
        return package_dir(package) / rel
    if scheme == "home":
        return home / rest
    if scheme == "path":
        return Path(rest)
    raise ConfigError("manifest.source", f"unknown model source {source!r}")


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
            )
        except (KeyError, AttributeError, TypeError) as exc:
            raise ConfigError("manifest.entry", f"{path}: model {name!r} is malformed") from exc
    return entries


def model_spec(settings: Settings, role: str) -> ModelSpec:
    """The model configured for ``role`` ("stt", "llm" or "tts"), with its pins."""
    section = getattr(settings, role)
    manifest = load_manifest(settings.models.manifest_path)
    entry = manifest.get(section.model)
    if entry is None:
        raise ConfigError(
            "config.model_unknown",
            f"{role}.model = {section.model!r} is not in {settings.models.manifest_path}; "
            f"known: {', '.join(sorted(manifest))}",
        )
    if entry.role != role:
        raise ConfigError(
            "config.model_role", f"{role}.model = {entry.name!r} is a {entry.role} model"
        )
    path = Path(section.path) if section.path else resolve_source(entry.source, settings.home)
    return ModelSpec(entry.name, entry.role, path, entry.files, entry.optional)


def all_specs(settings: Settings) -> list[ModelSpec]:
    """Every model of the manifest at its default source (or its configured path)."""
    manifest = load_manifest(settings.models.manifest_path)
    specs = []
    for entry in manifest.values():
        section = getattr(settings, entry.role, None)
        configured = section is not None and section.model == entry.name and bool(section.path)
        try:
            path = (
                Path(section.path)
                if configured and section is not None
                else resolve_source(entry.source, settings.home)
            )
        except ModelError:
            path = Path(f"<{entry.source} not installed>")
        specs.append(ModelSpec(entry.name, entry.role, path, entry.files, entry.optional))
    return specs


def assemble_models(settings: Settings) -> list[Path]:
    """Build the models that are assembled from parts (once; kept when already verified)."""
    built: list[Path] = []
    for entry in load_manifest(settings.models.manifest_path).values():
        if not entry.assemble:
            continue
        target = resolve_source(entry.source, settings.home)
        spec = ModelSpec(entry.name, entry.role, target, entry.files)
        if target.is_dir() and all(c.status is FileStatus.OK for c in check_model(spec)):
            continue
        target.mkdir(parents=True, exist_ok=True)
        for rel, parts in entry.assemble.items():
            tmp = target / f".{rel}.partial"
            with tmp.open("wb") as out:
                for part in parts:
                    with resolve_source(part, settings.home).open("rb") as src:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
            tmp.replace(target / rel)
        built.append(target)
    return built
