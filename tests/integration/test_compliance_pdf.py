"""The compliance report as a PDF with its detached signature (issue 17): the same signed
document draws the same bytes, and ``verify`` refuses an edited PDF, a missing or forged
signature, and a signature whose report is not what the PDF shows. What the PDF says is read
back with Debian's pdftotext in tests/real/test_compliance_pdf_text.py."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.compliance import checks, export, pdf
from appliance.config.settings import Settings
from appliance.core.errors import IntegrityError
from appliance.storage import audit
from appliance.storage.repository import Storage


def signed_report(settings: Settings, store: Storage) -> dict[str, Any]:
    return export.sign(export.document(settings, checks.controls(settings, store)), settings)


def test_the_same_signed_report_draws_the_same_pdf_bytes(
    settings: Settings, store: Storage
) -> None:
    signed = signed_report(settings, store)
    first = pdf.render(signed)
    assert first.startswith(b"%PDF-") and first == pdf.render(json.loads(json.dumps(signed)))
    other = {**signed, "organization": "Another Org"}
    assert pdf.render(other) != first  # the bytes follow the document


def test_a_pdf_verifies_with_its_signature_and_an_edited_one_does_not(
    tmp_path: Path, settings: Settings, store: Storage
) -> None:
    pinned = export.public_key(settings)
    signed = signed_report(settings, store)
    path = tmp_path / "report.pdf"
    sig = export.write_pdf(path, signed, settings)
    assert sig == tmp_path / "report.pdf.sig"
    verified = export.verify(path, pinned)
    assert verified.redrawn and verified.summary == signed["summary"]
    signature = json.loads(sig.read_text(encoding="utf-8"))
    assert signature["format"] == export.PDF_SIGNATURE_FORMAT
    assert signature["pdf_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert signature["report"] == signed and signature["public_key"] == pinned

    original = path.read_bytes()
    edited = bytearray(original)
    edited[len(edited) // 2] ^= 0x01  # one byte changed
    path.write_bytes(bytes(edited))
    with pytest.raises(IntegrityError, match="SHA-256 is not the signed one") as altered:
        export.verify(path, pinned)
    assert altered.value.code == "compliance.altered"
    path.write_bytes(original)

    # the digest edited to the edited file's, the signature left as it was
    forged_digest = {**signature, "pdf_sha256": hashlib.sha256(bytes(edited)).hexdigest()}
    sig.write_text(json.dumps(forged_digest), encoding="utf-8")
    with pytest.raises(IntegrityError, match="does not verify") as bad:
        export.verify(path, pinned)
    assert bad.value.code == "audit.signature"

    # signed again by another key that names itself
    body = {k: v for k, v in signature.items() if k not in ("public_key", "signature")}
    sig.write_text(json.dumps(audit.sign(body, Ed25519PrivateKey.generate())), encoding="utf-8")
    with pytest.raises(IntegrityError, match="another signing key") as forged:
        export.verify(path, pinned)
    assert forged.value.code == "audit.signature"

    sig.unlink()
    with pytest.raises(IntegrityError, match=r"report\.pdf\.sig is missing") as missing:
        export.verify(path, pinned)
    assert missing.value.code == "compliance.no_signature"

    sig.write_text("not json", encoding="utf-8")
    with pytest.raises(IntegrityError) as malformed:
        export.verify(path, pinned)
    assert malformed.value.code == "compliance.malformed"


def test_a_signature_over_another_report_than_the_pdf_shows_fails(
    tmp_path: Path, settings: Settings, store: Storage
) -> None:
    """Signed with the right key and the PDF's own digest, but carrying a report the PDF does
    not draw: the PDF is drawn again from the signed report and differs."""
    pinned = export.public_key(settings)
    signed = signed_report(settings, store)
    path = tmp_path / "report.pdf"
    sig = export.write_pdf(path, signed, settings)
    signature = json.loads(sig.read_text(encoding="utf-8"))
    body = {k: v for k, v in signature.items() if k not in ("public_key", "signature")}
    report = {k: v for k, v in signed.items() if k not in ("public_key", "signature")}
    other = export.sign({**report, "organization": "Someone Else"}, settings)
    sig.write_text(json.dumps(export.sign({**body, "report": other}, settings)))
    with pytest.raises(IntegrityError, match="differs from the report") as differs:
        export.verify(path, pinned)
    assert differs.value.code == "compliance.altered"
    # drawn by another renderer: not drawn again here, the signed digest alone holds
    older = {**body, "rendered_by": {"appliance": "0.0.1", "pdf": "reportlab 4.0"}}
    sig.write_text(json.dumps(export.sign(older, settings)))
    verified = export.verify(path, pinned)
    assert not verified.redrawn and verified.generated_at == signed["generated_at"]


def test_the_panels_zip_holds_the_pdf_and_its_signature_as_verify_finds_them(
    tmp_path: Path, settings: Settings, store: Storage
) -> None:
    made = export.sign_pdf(signed_report(settings, store), settings)
    bundle = export.pdf_bundle(made)
    assert bundle == export.pdf_bundle(made)  # one reading zips the same
    with zipfile.ZipFile(io.BytesIO(bundle)) as opened:
        assert opened.namelist() == ["compliance-report.pdf", "compliance-report.pdf.sig"]
        opened.extractall(tmp_path / "unpacked")
    verified = export.verify(
        tmp_path / "unpacked" / "compliance-report.pdf", made.signature["public_key"]
    )
    assert verified.redrawn
