"""The compliance report's PDF read back with Debian's poppler-utils (issue 17): pdftotext
finds every control's reference with its status in words and the header's figures, no word
runs off the page (long evidence wraps in its cell), pdftoppm sees each status's colour; and
the `appliance compliance report --out F.pdf` / `compliance verify F.pdf` round trip, an
edited byte and a missing signature refused with their codes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.compliance import checks, export, pdf
from appliance.compliance.probes import Outcome
from appliance.config.settings import Settings, load_settings
from appliance.service import open_storage
from appliance.storage.reports import event_details, recent_audit_events
from appliance.storage.repository import Storage
from tests.real.conftest import run_cli

pytestmark = pytest.mark.real


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: scripts/setup installs Debian's poppler-utils")
    return found


def text_of(path: Path, *options: str) -> str:
    done = subprocess.run(
        [tool("pdftotext"), *options, str(path), "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_pdftotext_reads_every_control_with_its_status_and_the_header(
    tmp_path: Path, settings: Settings, store: Storage
) -> None:
    rows = checks.controls(settings, store)
    assert {c.outcome for c in rows} == set(Outcome)  # all three statuses are drawn here
    signed = export.sign(export.document(settings, rows), settings)
    path = tmp_path / "report.pdf"
    export.write_pdf(path, signed, settings)
    words = " ".join(text_of(path).split())
    for c in rows:
        # the first status word after the reference (the row reads framework, reference,
        # control, status) is this control's
        found = re.search(re.escape(c.reference) + r" .*?\b(PASS|WARN|FAIL)\b", words)
        assert found is not None and found.group(1) == c.outcome.value.upper(), c.reference
        assert " ".join(c.evidence.split())[:60] in words, c.reference
    s = signed["summary"]
    assert f"Summary: {s['pass']} pass, {s['warn']} warn, {s['fail']} fail." in words
    assert f"Organization: {settings.policy.organization}" in words
    assert f"audit export key {signed['public_key'][:16]}" in words
    generated = signed["generated_at"][:19].replace("T", " ")
    assert f"at {generated} UTC" in words
    # every word inside the page: long evidence wraps in its cell, nothing runs off
    boxes = text_of(path, "-bbox")
    width = float(re.search(r'<page width="([\d.]+)"', boxes).group(1))  # type: ignore[union-attr]
    right = [float(x) for x in re.findall(r'xMax="([\d.]+)"', boxes)]
    assert right and max(right) < width - 20  # inside the 12 mm right margin, near enough
    longest = max(rows, key=lambda c: len(c.evidence))
    assert len(longest.evidence) > 150  # a cell that must wrap to fit


def colours_on_first_page(path: Path, tmp_path: Path) -> set[tuple[int, int, int]]:
    out = tmp_path / "page"
    subprocess.run(
        [tool("pdftoppm"), "-r", "40", "-f", "1", "-l", "1", str(path), str(out)],
        check=True,
        timeout=60,
    )
    (image,) = tmp_path.glob("page*.ppm")
    data = image.read_bytes()
    header = re.match(rb"P6\s+(\d+)\s+(\d+)\s+255\s", data)
    assert header is not None
    pixels = data[header.end() :]
    return {tuple(pixels[i : i + 3]) for i in range(0, len(pixels), 3)}  # type: ignore[misc]


def test_each_status_is_drawn_in_its_colour(
    tmp_path: Path, settings: Settings, store: Storage
) -> None:
    rows = checks.controls(settings, store)
    path = tmp_path / "report.pdf"
    export.write_pdf(path, export.sign(export.document(settings, rows), settings), settings)
    assert {c.outcome for c in rows[:8]} == set(Outcome)  # each status on the first page
    seen = colours_on_first_page(path, tmp_path)
    for outcome, colour in pdf.STATUS_COLOURS.items():
        rgb = (round(colour.red * 255), round(colour.green * 255), round(colour.blue * 255))
        assert rgb in seen, outcome


def test_the_cli_writes_a_signed_pdf_that_verifies_and_refuses_an_edited_one(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    out = tmp_path / "report.pdf"
    made = run_cli("compliance", "report", "--out", str(out), home=home)
    assert made.returncode == 1, made.stderr  # a fresh box fails a control: exit 1, file written
    assert f"wrote {out} and its signature {out}.sig" in made.stdout
    assert "error" not in made.stderr
    assert "Storage limitation" in text_of(out)
    checked = run_cli("compliance", "verify", str(out), home=home)
    assert checked.returncode == 0, checked.stderr
    assert "verified, unchanged; drawn again from the signed report: identical" in checked.stdout
    original = out.read_bytes()
    out.write_bytes(original.replace(b"/Producer", b"/Producex", 1))  # one byte changed
    edited = run_cli("compliance", "verify", str(out), home=home)
    assert edited.returncode == 1 and "[compliance.altered]" in edited.stderr, edited.stderr
    out.write_bytes(original)
    Path(f"{out}.sig").rename(tmp_path / "elsewhere.sig")
    unsigned = run_cli("compliance", "verify", str(out), home=home)
    assert unsigned.returncode == 1 and "[compliance.no_signature]" in unsigned.stderr
    with open_storage(load_settings(environ={"APPLIANCE_HOME": str(home)})) as store:
        exports = [e for e in recent_audit_events(store, 50) if e.action == "export"]
    assert [(e.object, event_details(e)["format"]) for e in exports] == [
        ("compliance_report", "pdf")
    ]
