"""The vendor register on the panel (/vendors) and its SBOM download (/vendors/sbom.json):
admins and auditors only, models first, the download CycloneDX JSON and audited."""

from __future__ import annotations

import importlib.metadata
import json

from flask import Flask

from appliance.config.settings import load_settings
from appliance.storage import reports
from appliance.storage.repository import Storage
from tests.integration import test_admin

world = test_admin.world
"""The panel with one account of each role (tests/integration/test_admin.py)."""
client, log_in = test_admin.client, test_admin.log_in


def test_an_auditor_reads_the_register_models_first_and_an_operator_is_refused(
    world: tuple[Flask, Storage],
) -> None:
    app, storage = world
    auditor = client(app)
    log_in(auditor, storage, "audrey")
    assert 'href="/vendors"' in auditor.get("/").get_data(as_text=True)  # in the nav
    answer = auditor.get("/vendors")
    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    assert 'href="/vendors/sbom.json"' in page
    from appliance.config.manifest import load_manifest

    manifest = load_manifest(load_settings(environ={}).models.manifest_path)
    for entry in manifest.values():
        assert entry.name in page
        assert all(sha in page for sha in entry.files.values()), entry.name
    version = importlib.metadata.version("cryptography")
    packages = page.index("Python packages")
    assert max(page.index(name) for name in manifest) < packages  # models first
    assert f"<td>cryptography</td><td>{version}</td>" in page[packages:]
    operator = client(app)
    log_in(operator, storage, "olga")
    assert operator.get("/vendors").status_code == 403
    assert operator.get("/vendors/sbom.json").status_code == 403
    assert 'href="/vendors"' not in operator.get("/").get_data(as_text=True)


def test_the_sbom_downloads_as_cyclonedx_json_and_the_download_is_audited(
    world: tuple[Flask, Storage],
) -> None:
    app, storage = world
    admin = client(app)
    log_in(admin, storage, "root")
    answer = admin.get("/vendors/sbom.json")
    assert answer.status_code == 200 and answer.is_json
    assert answer.mimetype == "application/vnd.cyclonedx+json"
    assert "attachment" in answer.headers["Content-Disposition"]
    document = json.loads(answer.get_data(as_text=True))
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.6"
    types = {c["type"] for c in document["components"]}
    assert types == {"machine-learning-model", "library"}
    exports = [
        e for e in reports.recent_audit_events(storage, 50)
        if (e.action, e.object) == ("export", "sbom")
    ]  # fmt: skip
    assert [e.actor for e in exports] == ["admin:root"]
