"""The compliance report as a printable PDF (reportlab), drawn from the signed report
document: the header (organization, when it was read, the counts, the signing key's prefix)
and one table row per control with its status in words and in colour, the reason, the
evidence and when it was read.

The same document always draws the same bytes: ``invariant=1`` fixes the creation date and
the file identifier reportlab would otherwise take from the clock, and the font is
Bitstream Vera, which ships inside reportlab (no system font is read). So ``verify`` can
draw the PDF again from the document its signature carries, as the HTML check renders the
page again."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import reportlab
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from appliance.compliance.probes import Outcome

RENDERER = f"reportlab {reportlab.Version}"
"""Recorded in the signature: another reportlab may lay the same document out otherwise."""

_FONTS = Path(reportlab.__file__).parent / "fonts"
FONT, BOLD = "ApplianceVera", "ApplianceVera-Bold"

STATUS_WORDS = {Outcome.PASS: "PASS", Outcome.WARN: "WARN", Outcome.FAIL: "FAIL"}
# Cell backgrounds light enough for black text (WCAG 2.1 1.4.3 contrast above 4.5:1); the
# word is printed too, so a grey-scale print still says the status (WCAG 1.4.1: colour is
# not the only means).
STATUS_COLOURS = {
    Outcome.PASS: colors.HexColor("#c8e6c9"),
    Outcome.WARN: colors.HexColor("#ffe0a3"),
    Outcome.FAIL: colors.HexColor("#f4b4b4"),
}
COLUMNS = (
    ("Framework", 19 * mm),
    ("Reference", 30 * mm),
    ("Control", 42 * mm),
    ("Status", 15 * mm),
    ("Reason", 60 * mm),
    ("Evidence", 72 * mm),
    ("Read at", 29 * mm),
)


def _register_fonts() -> None:
    if FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(FONT, str(_FONTS / "Vera.ttf")))
        pdfmetrics.registerFont(TTFont(BOLD, str(_FONTS / "VeraBd.ttf")))


def _when(stamp: str) -> str:
    try:
        return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return stamp


def _outcome(value: object) -> Outcome:
    try:
        return Outcome(str(value))
    except ValueError:
        return Outcome.FAIL  # not a status the report knows: never drawn as a pass


def render(report: dict[str, Any]) -> bytes:
    """The PDF of a (signed) report document, byte for byte the same for the same document."""
    _register_fonts()
    body = ParagraphStyle("body", fontName=FONT, fontSize=10, leading=13)
    cell = ParagraphStyle("cell", fontName=FONT, fontSize=7.5, leading=9.5)
    head = ParagraphStyle("head", parent=cell, fontName=BOLD)
    title = ParagraphStyle("title", fontName=BOLD, fontSize=16, leading=20, spaceAfter=6)

    def text(value: object, style: ParagraphStyle = cell) -> Paragraph:
        # Paragraph reads a small markup: everything from the report is escaped text.
        return Paragraph(escape(str(value)), style)

    summary = report.get("summary", {})
    counts = ", ".join(f"{summary.get(o.value, 0)} {o.value}" for o in Outcome)
    key = str(report.get("public_key", ""))
    generated = _when(str(report.get("generated_at", "")))
    story: list[Any] = [
        Paragraph("Compliance report", title),
        text(f"Organization: {report.get('organization', '')}", body),
        text(
            f"Read from the running appliance {report.get('appliance_version', '')} at "
            f"{generated} (configuration {report.get('configuration', '')}).",
            body,
        ),
        text(f"Summary: {counts}.", body),
        text(
            f"Signed (Ed25519) with the audit export key {key[:16]}...: the signature is the "
            "detached FILE.pdf.sig beside this file; check both with `appliance compliance "
            "verify FILE.pdf`. A changed byte fails the check.",
            body,
        ),
        Spacer(1, 4 * mm),
    ]
    rows: list[list[Paragraph]] = [[text(name, head) for name, _ in COLUMNS]]
    style = [
        ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#999999")),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dde4ee")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]
    for row, control in enumerate(report.get("controls", []), start=1):
        outcome = _outcome(control.get("outcome"))
        rows.append(
            [
                text(control.get("framework", "")),
                text(control.get("reference", "")),
                text(control.get("control", "")),
                text(STATUS_WORDS[outcome], head),
                text(control.get("reason", "")),
                text(control.get("evidence", "")),
                text(_when(str(control.get("read_at", "")))),
            ]
        )
        style.append(("BACKGROUND", (3, row), (3, row), STATUS_COLOURS[outcome]))
    story.append(
        Table(rows, colWidths=[w for _, w in COLUMNS], repeatRows=1, style=TableStyle(style))
    )
    organization = str(report.get("organization", ""))

    def footer(canvas: Canvas, doc: SimpleDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont(FONT, 7)
        canvas.drawString(
            doc.leftMargin,
            8 * mm,
            f"Compliance report, {organization}, {generated}: page {doc.page}",
        )
        canvas.restoreState()

    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=landscape(A4),
        leftMargin=12 * mm,
        rightMargin=12 * mm,
        topMargin=12 * mm,
        bottomMargin=14 * mm,
        title=f"Compliance report {generated}",
        author=organization,
        creator=f"Voice Appliance {report.get('appliance_version', '')}",
        invariant=1,
    )
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return out.getvalue()
