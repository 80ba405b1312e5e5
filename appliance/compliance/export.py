"""The compliance report as an auditor takes it away: a JSON document signed with the audit
export's Ed25519 key, or an HTML page that carries that document; ``verify`` checks the
signature against the pinned key and, for a page, that the page is exactly what the signed
document renders (an edited status cell fails, as an edited JSON value does)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from appliance import __version__
from appliance.compliance.checks import Control
from appliance.config.settings import Settings
from appliance.core.errors import IntegrityError
from appliance.storage import audit
from appliance.storage.keys import audit_key_path

FORMAT = "appliance-compliance-report/1"
_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    keep_trailing_newline=True,
)
_EMBEDDED = re.compile(
    r'<script type="application/json" id="signed-report">(.*?)</script>', re.DOTALL
)


def document(settings: Settings, rows: list[Control]) -> dict[str, Any]:
    summary = {o: sum(1 for c in rows if c.outcome.value == o) for o in ("pass", "warn", "fail")}
    return {
        "format": FORMAT,
        "organization": settings.policy.organization,
        "appliance_version": __version__,
        "configuration": str(settings.source),
        "generated_at": rows[0].read_at.isoformat() if rows else "",
        "summary": summary,
        "controls": [c.as_dict() for c in rows],
    }


def sign(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Signed with the audit export's key, so one pinned key checks both."""
    key = audit.signing_key(audit_key_path(settings.home, settings.storage.audit_key_file))
    return audit.sign(body, key)


def public_key(settings: Settings) -> str:
    path = audit_key_path(settings.home, settings.storage.audit_key_file)
    return audit.public_key_hex(audit.signing_key(path))


def _embedded_json(signed: dict[str, Any]) -> str:
    # Inside <script>, only "</" could end the element early: escape it as JSON allows.
    return json.dumps(signed, sort_keys=True, ensure_ascii=False).replace("</", "<\\/")


def render_html(signed: dict[str, Any]) -> str:
    return _TEMPLATES.get_template("report.html").render(
        report=signed, signed_json=_embedded_json(signed)
    )


@dataclass(frozen=True)
class Verified:
    generated_at: str
    summary: dict[str, int]


def verify(path: Path, public_key_hex: str) -> Verified:
    """Raise IntegrityError naming what is wrong unless ``path`` (JSON or HTML) is a report
    signed by ``public_key_hex`` and unchanged since."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise IntegrityError("compliance.unreadable", f"{path}: {exc}") from exc
    embedded = _EMBEDDED.search(text)
    source = embedded.group(1) if embedded else text
    try:
        signed = json.loads(source)
    except ValueError as exc:
        raise IntegrityError("compliance.malformed", f"{path}: not a report ({exc})") from exc
    if not isinstance(signed, dict) or signed.get("format") != FORMAT:
        raise IntegrityError("compliance.malformed", f"{path}: not a {FORMAT} document")
    audit.check_signature(signed, public_key_hex, "report")
    if embedded and render_html(signed) != text:
        raise IntegrityError(
            "compliance.altered", f"{path}: the page differs from the report it carries"
        )
    return Verified(str(signed["generated_at"]), dict(signed["summary"]))
