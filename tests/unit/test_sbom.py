"""The vendor register and its SBOM (appliance/compliance/sbom.py): every model of the manifest
with its pins, this environment's packages with version, licence and RECORD hash, and a
document the official CycloneDX 1.6 schema accepts."""

from __future__ import annotations

import copy
import datetime as dt
import email.message
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from appliance.compliance.sbom import (
    Licence,
    LicenceSource,
    PackageRecord,
    VendorRegister,
    licence_of,
    register,
    sbom_document,
)
from appliance.config.manifest import load_manifest
from appliance.config.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    settings = load_settings(environ={})
    return sbom_document(register(settings))


def by_ref(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["bom-ref"]: c for c in document["components"]}


def schema_errors(document: dict[str, Any]) -> object:
    return JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(document))


def test_every_model_of_the_manifest_is_listed_with_the_manifests_pins(
    document: dict[str, Any],
) -> None:
    manifest = load_manifest(load_settings(environ={}).models.manifest_path)
    components = by_ref(document)
    assert manifest
    for name, entry in manifest.items():
        model = components[f"model:{name}"]
        assert model["type"] == "machine-learning-model"
        files = {f["name"]: f["hashes"] for f in model["components"]}
        assert files == {
            file: [{"alg": "SHA-256", "content": sha}] for file, sha in entry.files.items()
        }
        if len(entry.files) == 1:
            assert model["hashes"] == [
                {"alg": "SHA-256", "content": sha} for sha in entry.files.values()
            ]
        else:  # several files: each its own hash, none claimed for the whole
            assert "hashes" not in model
        properties = {(p["name"], p["value"]) for p in model["properties"]}
        assert ("appliance:model:source", entry.source) in properties
        assert {("appliance:model:package", p) for p in entry.packages} <= properties
    models = [c for c in document["components"] if c["type"] == "machine-learning-model"]
    assert len(models) == len(manifest)


def test_this_environments_cryptography_is_there_with_its_version_licence_and_record_hash(
    document: dict[str, Any],
) -> None:
    import cryptography

    version = importlib.metadata.version("cryptography")
    component = by_ref(document)[f"pkg:pypi/cryptography@{version}"]
    assert component["type"] == "library" and component["version"] == version
    assert component["purl"] == f"pkg:pypi/cryptography@{version}"
    # The RECORD beside the package, found from the module itself, not through the register.
    site = Path(cryptography.__file__).resolve().parents[1]
    record = site / f"cryptography-{version}.dist-info" / "RECORD"
    digest = hashlib.sha256(record.read_bytes()).hexdigest()
    assert component["hashes"] == [{"alg": "SHA-256", "content": digest}]
    meta = importlib.metadata.metadata("cryptography")
    expression = meta.get_all("License-Expression", [])
    if expression:
        assert component["licenses"] == [{"expression": expression[0]}]
    else:
        assert component["licenses"]


def test_the_sbom_passes_the_official_cyclonedx_1_6_schema(document: dict[str, Any]) -> None:
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.6"
    assert schema_errors(document) is None
    # The validator does bite: a component type the schema does not know is refused.
    broken = copy.deepcopy(document)
    broken["components"][0]["type"] = "model"
    assert schema_errors(broken) is not None


def test_the_appliance_is_the_subject_and_the_time_and_serial_are_the_ones_given() -> None:
    from appliance import __version__

    vendors = VendorRegister("0.1.0", "GPL-3.0-or-later", (), ())
    when = dt.datetime(2026, 12, 3, 17, 0, 5, tzinfo=dt.UTC)
    serial = uuid.UUID("12345678-1234-5678-1234-567812345678")
    document = sbom_document(vendors, when, serial)
    assert document["serialNumber"] == "urn:uuid:12345678-1234-5678-1234-567812345678"
    assert document["metadata"]["timestamp"] == "2026-12-03T17:00:05Z"
    live = sbom_document(register(load_settings(environ={})))["metadata"]["component"]
    assert live["name"] == "voice-appliance" and live["version"] == __version__
    assert live["licenses"] == [{"expression": "GPL-3.0-or-later"}]  # as pyproject.toml says
    assert schema_errors(document) is None  # an empty register is still a valid document


def test_a_package_source_names_the_distribution_that_provides_it(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(
        '[models.probe]\nrole = "stt"\nsource = "package:cryptography/probe.bin"\n'
        '[models.probe.files]\n"probe.bin" = "' + "ab" * 32 + '"\n',
        encoding="utf-8",
    )
    mine = load_settings(environ={"APPLIANCE_MODELS__MANIFEST": str(manifest)})
    vendors = register(mine)
    [probe] = vendors.models
    assert probe.packages == ("cryptography",) and not probe.configured
    document = sbom_document(vendors)
    version = importlib.metadata.version("cryptography")
    assert {"ref": "model:probe", "dependsOn": [f"pkg:pypi/cryptography@{version}"]} in (
        document["dependencies"]
    )


def metadata_of(**fields: str | list[str]) -> email.message.Message:
    meta = email.message.Message()
    for name, value in fields.items():
        for one in value if isinstance(value, list) else [value]:
            meta[name.replace("_", "-")] = one
    return meta


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"License_Expression": "MIT OR Apache-2.0", "License": "BSD"},
         Licence(LicenceSource.EXPRESSION, ("MIT OR Apache-2.0",))),
        ({"License": "BSD-3-Clause", "Classifier": "License :: OSI Approved :: MIT License"},
         Licence(LicenceSource.FIELD, ("BSD-3-Clause",))),
        ({"License": "UNKNOWN", "Classifier": ["License :: OSI Approved :: MIT License",
                                               "License :: OSI Approved",
                                               "Programming Language :: Python"]},
         Licence(LicenceSource.CLASSIFIER, ("MIT License",))),
        ({"License": "Copyright (c) 2020 Someone\n\nPermission is hereby granted..."},
         Licence(LicenceSource.TEXT, ("Copyright (c) 2020 Someone",))),
        ({"Summary": "no licence at all"}, Licence(LicenceSource.UNDECLARED, ())),
    ],
)  # fmt: skip
def test_a_licence_is_read_from_the_most_authoritative_metadata(
    fields: dict[str, str | list[str]], expected: Licence
) -> None:
    assert licence_of(metadata_of(**fields)) == expected  # type: ignore[arg-type]


def test_licences_and_a_missing_record_become_valid_cyclonedx() -> None:
    packages = (
        PackageRecord("Some_Pkg", "2.13.0+cpu", Licence(LicenceSource.CLASSIFIER, ("A", "B")), ""),
        PackageRecord("other", "1.0", Licence(LicenceSource.UNDECLARED, ()), "cd" * 32),
    )
    document = sbom_document(VendorRegister("0.1.0", "GPL-3.0-or-later", (), packages))
    first, second = document["components"]
    assert first["purl"] == "pkg:pypi/some-pkg@2.13.0%2Bcpu"  # purl-spec: normalized, encoded
    assert first["licenses"] == [{"license": {"name": "A"}}, {"license": {"name": "B"}}]
    assert "hashes" not in first  # no RECORD: no hash claimed
    assert {"name": "appliance:hash:covers", "value": "none (no RECORD file)"} in (
        first["properties"]
    )
    assert "licenses" not in second
    assert second["hashes"] == [{"alg": "SHA-256", "content": "cd" * 32}]
    assert schema_errors(document) is None


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "APPLIANCE_HOME": str(home)},
    )


def test_appliance_sbom_prints_it_or_writes_it_to_a_file(tmp_path: Path) -> None:
    printed = cli("sbom", home=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert schema_errors(json.loads(printed.stdout)) is None
    out = tmp_path / "sbom.cdx.json"
    written = cli("sbom", "--out", str(out), home=tmp_path)
    assert written.returncode == 0, written.stderr
    document = json.loads(out.read_text(encoding="utf-8"))
    models = [c for c in document["components"] if c["type"] == "machine-learning-model"]
    assert f"wrote {out}: {len(models)} models" in written.stdout
    refused = cli("sbom", "--out", str(tmp_path / "no" / "such" / "x.json"), home=tmp_path)
    assert refused.returncode == 1 and "[sbom.write]" in refused.stderr
