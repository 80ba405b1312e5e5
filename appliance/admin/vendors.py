"""The vendor register on the panel (``/vendors``): every model the appliance may run (its
SHA-256 pins, licence and the packages that carry it), then every Python package of the running
environment (version, licence, the hash of its RECORD), with the same register as a CycloneDX
SBOM to download (``/vendors/sbom.json``), as ``appliance sbom`` prints it.

Roles: admin and auditor (what an auditor asks for when reviewing third-party vendors). A
download is an audit event (``export sbom``): who took the register out, and when.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

from flask import Blueprint, Response, render_template
from flask.typing import ResponseReturnValue

from appliance.admin.access import requires
from appliance.compliance.sbom import (
    PIN_HASH,
    RECORD_HASH,
    SPEC_VERSION,
    register,
    sbom_document,
)
from appliance.config.settings import Settings
from appliance.storage.repository import Storage

MEDIA_TYPE = "application/vnd.cyclonedx+json"
"""CycloneDX's registered media type for JSON (IANA; JSON by its ``+json`` suffix)."""


def vendors_blueprint(settings: Settings, storage: Storage, actor: Callable[[], str]) -> Blueprint:
    pages = Blueprint("vendors", __name__)

    @pages.route("/vendors")
    @requires("admin", "auditor")
    def register_page() -> ResponseReturnValue:
        return render_template(
            "vendors.html",
            vendors=register(settings),
            record_hash=RECORD_HASH,
            pin_hash=PIN_HASH,
            spec=SPEC_VERSION,
        )

    @pages.route("/vendors/sbom.json")
    @requires("admin", "auditor")
    def sbom() -> ResponseReturnValue:
        vendors = register(settings)
        document = sbom_document(vendors)
        storage.log_event(
            actor(),
            "export",
            "sbom",
            "ok",
            {"models": len(vendors.models), "packages": len(vendors.packages)},
        )
        day = dt.datetime.now(dt.UTC).date().isoformat()
        return Response(
            json.dumps(document, indent=2),
            mimetype=MEDIA_TYPE,
            headers={"Content-Disposition": f"attachment; filename=sbom-{day}.cdx.json"},
        )

    return pages
