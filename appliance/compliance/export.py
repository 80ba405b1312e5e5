"""The compliance report as an auditor takes it away: a JSON document signed with the audit
export's Ed25519 key, an HTML page that carries that document, or a PDF with a detached
signature beside it (``FILE.pdf.sig``: the SHA-256 of the PDF's bytes and the signed
document, signed again); ``verify`` checks the signature against the pinned key and, for a
page, that the page is exactly what the signed document renders (an edited status cell
fails, as an edited JSON value does), for a PDF that its bytes hash to the signed digest and
draw what the signed document draws."""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from appliance import __version__
from appliance.compliance import pdf
from appliance.compliance.checks import Control
from appliance.config.settings import Settings
from appliance.core.errors import IntegrityError
from appliance.storage import audit
from appliance.storage.keys import audit_key_path

FORMAT = "appliance-compliance-report/1"
PDF_SIGNATURE_FORMAT = "appliance-compliance-report-pdf-signature/1"
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
class SignedPdf:
    """A PDF of the report and its detached signature, made together from one reading."""

    pdf: bytes
    signature: dict[str, Any]

    def signature_json(self) -> str:
        return json.dumps(self.signature, indent=1, sort_keys=True) + "\n"


def signature_path(pdf_path: Path) -> Path:
    """Where a PDF's detached signature lies: ``FILE.pdf.sig`` beside ``FILE.pdf``."""
    return pdf_path.with_name(pdf_path.name + ".sig")


def sign_pdf(signed: dict[str, Any], settings: Settings) -> SignedPdf:
    """The PDF of a signed report, and its signature: the PDF's SHA-256 and the signed
    report itself (so the PDF can be drawn again from it), signed with the same key."""
    drawn = pdf.render(signed)
    body = {
        "format": PDF_SIGNATURE_FORMAT,
        "pdf_sha256": hashlib.sha256(drawn).hexdigest(),
        "pdf_bytes": len(drawn),
        "rendered_by": _renderer(),
        "report": signed,
    }
    return SignedPdf(drawn, sign(body, settings))


def _renderer() -> dict[str, str]:
    return {"appliance": __version__, "pdf": pdf.RENDERER}


def write_pdf(path: Path, signed: dict[str, Any], settings: Settings) -> Path:
    """Write the PDF to ``path`` and its signature beside it; the signature's path."""
    made = sign_pdf(signed, settings)
    path.write_bytes(made.pdf)
    sig = signature_path(path)
    sig.write_text(made.signature_json(), encoding="utf-8")
    return sig


def pdf_bundle(made: SignedPdf, name: str = "compliance-report.pdf") -> bytes:
    """The PDF and its signature in one zip, as the panel hands them out: the two come from
    one reading, and unpacked they lie as ``verify`` looks for them (``NAME`` and
    ``NAME.sig``). The entries' times are the report's, so one reading zips the same."""
    try:
        stamp = datetime.fromisoformat(str(made.signature["report"]["generated_at"]))
    except ValueError:  # a report of no controls has no time: the zip format's first day
        stamp = datetime(1980, 1, 1)
    when = (stamp.year, stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bundle:
        for entry, data in ((name, made.pdf), (f"{name}.sig", made.signature_json().encode())):
            info = zipfile.ZipInfo(entry, date_time=when)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            bundle.writestr(info, data)
    return out.getvalue()


@dataclass(frozen=True)
class Verified:
    generated_at: str
    summary: dict[str, int]
    redrawn: bool = False
    """For a PDF: drawn again from the signed report and found identical (only where this
    appliance and reportlab are the versions that drew it; else the digest alone holds)."""


def _report(signed: Any, where: str, public_key_hex: str) -> dict[str, Any]:
    if not isinstance(signed, dict) or signed.get("format") != FORMAT:
        raise IntegrityError("compliance.malformed", f"{where}: not a {FORMAT} document")
    audit.check_signature(signed, public_key_hex, "report")
    return signed


def verify(path: Path, public_key_hex: str) -> Verified:
    """Raise IntegrityError naming what is wrong unless ``path`` (JSON, HTML, or a PDF with
    its ``.sig`` beside it) is a report signed by ``public_key_hex`` and unchanged since."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise IntegrityError("compliance.unreadable", f"{path}: {exc}") from exc
    if raw.startswith(b"%PDF-") or path.suffix.lower() == ".pdf":
        return verify_pdf(path, raw, public_key_hex)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IntegrityError("compliance.unreadable", f"{path}: {exc}") from exc
    embedded = _EMBEDDED.search(text)
    source = embedded.group(1) if embedded else text
    try:
        signed = json.loads(source)
    except ValueError as exc:
        raise IntegrityError("compliance.malformed", f"{path}: not a report ({exc})") from exc
    signed = _report(signed, str(path), public_key_hex)
    if embedded and render_html(signed) != text:
        raise IntegrityError(
            "compliance.altered", f"{path}: the page differs from the report it carries"
        )
    return Verified(str(signed["generated_at"]), dict(signed["summary"]))


def verify_pdf(path: Path, drawn: bytes, public_key_hex: str) -> Verified:
    """The PDF's detached signature verifies against the pinned key, the PDF's bytes hash to
    its digest, and (where the same versions drew it) the signed report draws these bytes."""
    sig = signature_path(path)
    try:
        text = sig.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise IntegrityError(
            "compliance.no_signature", f"{path}: its detached signature {sig.name} is missing"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise IntegrityError("compliance.unreadable", f"{sig}: {exc}") from exc
    try:
        signature = json.loads(text)
    except ValueError as exc:
        raise IntegrityError("compliance.malformed", f"{sig}: not a signature ({exc})") from exc
    if not isinstance(signature, dict) or signature.get("format") != PDF_SIGNATURE_FORMAT:
        raise IntegrityError("compliance.malformed", f"{sig}: not a {PDF_SIGNATURE_FORMAT}")
    audit.check_signature(signature, public_key_hex, "PDF signature")
    signed = _report(signature.get("report"), str(sig), public_key_hex)
    if hashlib.sha256(drawn).hexdigest() != signature.get("pdf_sha256"):
        raise IntegrityError(
            "compliance.altered",
            f"{path}: the PDF's SHA-256 is not the signed one: the file was changed",
        )
    redrawn = signature.get("rendered_by") == _renderer()
    if redrawn and pdf.render(signed) != drawn:
        raise IntegrityError(
            "compliance.altered", f"{path}: the PDF differs from the report its signature carries"
        )
    return Verified(str(signed["generated_at"]), dict(signed["summary"]), redrawn)
