"""The admin panel in a real browser: headless Chromium (Debian's) driven by Playwright over
HTTPS against the real server. Screenshots of each page go to test-artifacts/screenshots/.
What the browser changes is checked with the ``appliance`` command, as another process reads
the store."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.admin.accounts import hash_password
from appliance.admin.serve import server
from appliance.config.settings import load_settings
from appliance.core.ports import TurnRecord
from appliance.identity.factors import totp
from appliance.service import open_storage
from appliance.storage.repository import Storage

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium")
APPLIANCE = Path(sys.executable).parent / "appliance"
ADMIN_PAGES = ["/", "/calls", "/audit", "/users", "/incidents", "/tools", "/retention",
               "/consent", "/access-review", "/redteam", "/data-flow", "/compliance",
               "/callers", "/callbacks", "/vendors"]  # fmt: skip


@pytest.fixture
def panel(tmp_path: Path) -> Iterator[tuple[str, Storage]]:
    settings = load_settings(
        environ={"APPLIANCE_HOME": str(tmp_path), "APPLIANCE_ADMIN__LISTEN": "127.0.0.1:0"}
    )
    # The first admin, as an operator of the appliance makes it: on the command line.
    first = subprocess.run(
        [str(APPLIANCE), "admin", "create-user", "--username", "root", "--password-stdin"],
        input="an admin passphrase, long\n",
        env={**os.environ, "APPLIANCE_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.returncode == 0, first.stderr
    ENROLMENT["root"] = first.stdout.splitlines()[-1]  # printed once, on the last line
    storage = open_storage(settings)
    ENROLMENT["olga"] = storage.create_admin_user(
        "olga", hash_password("operator passphrase here"), "operator", "t"
    )
    handle = storage.start_call("+15550100", "test")
    handle.record_turn(TurnRecord(1, "when do you open on saturday", "At ten."))
    httpd = server(settings, storage)
    httpd.prepare()
    thread = threading.Thread(target=httpd.serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.bind_addr[1]}", storage
    httpd.stop()
    storage.close()


ENROLMENT: dict[str, str] = {}


def log_in(page: object, base: str, name: str, password: str, storage: Storage) -> None:
    page.goto(f"{base}/login")  # type: ignore[attr-defined]
    page.fill("input[name=username]", name)  # type: ignore[attr-defined]
    page.fill("input[name=password]", password)  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]
    secret = storage.admin_totp(name)
    if secret is None:  # the enrolment page shows the key and asks for the enrolment code
        key = page.inner_text("#totp-secret")  # type: ignore[attr-defined]
        secret = base64.b32decode(key + "=" * (-len(key) % 8))
        page.fill("input[name=enrolment]", ENROLMENT[name])  # type: ignore[attr-defined]
    page.fill("input[name=code]", totp(secret, int(time.time() // 30)))  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_url(f"{base}/")  # type: ignore[attr-defined]


def test_the_panel_in_chromium(panel: tuple[str, Storage]) -> None:
    if CHROMIUM is None:
        pytest.fail("chromium is missing: scripts/setup installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    base, storage = panel
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            log_in(page, base, "root", "an admin passphrase, long", storage)  # enrols TOTP
            for url in ADMIN_PAGES:
                answer = page.goto(f"{base}{url}")
                assert answer is not None and answer.status == 200, url
                name = re.sub(r"\W+", "-", url.strip("/")) or "dashboard"
                page.screenshot(path=str(ARTIFACTS / f"admin-{name}.png"), full_page=True)
            assert errors == []  # no console errors, no CSP violations
            # An operator cannot reach admin pages; its transcript view lands in the audit trail.
            operator = browser.new_context(ignore_https_errors=True).new_page()
            log_in(operator, base, "olga", "operator passphrase here", storage)
            for url in ("/users", "/audit", "/compliance"):
                answer = operator.goto(f"{base}{url}")
                assert answer is not None and answer.status == 403, url
            operator.goto(f"{base}/calls")
            operator.click("text=view")
            operator.screenshot(path=str(ARTIFACTS / "operator-call.png"), full_page=True)
            assert "when do you open" in operator.inner_text("td.caller")
            page.goto(f"{base}/audit")
            audit = page.inner_text("main")
            assert re.search(r"admin:olga\s+read\s+call:", audit), audit
        finally:
            browser.close()


def cli(home: Path, *args: str) -> object:
    """What ``appliance ARGS --json`` prints, run as its own process on the same home."""
    done = subprocess.run(
        [str(APPLIANCE), *args, "--json"],
        env={**os.environ, "APPLIANCE_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def submit(page: object, selector: str) -> str:
    """Click ``selector``'s submit button, wait for the page it posts to; its notice."""
    with page.expect_navigation():  # type: ignore[attr-defined]
        page.click(selector)  # type: ignore[attr-defined]
    return str(page.inner_text("main"))  # type: ignore[attr-defined]


def test_callers_and_callbacks_changed_in_chromium_are_in_the_store(
    panel: tuple[str, Storage], tmp_path: Path
) -> None:
    """Add a caller, set a PIN, enrol an authenticator, lock and unlock; mark a callback
    request called back: each as the CLI then reads it."""
    if CHROMIUM is None:
        pytest.fail("chromium is missing: scripts/setup installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    base, storage = panel
    number, pin = "+15550123", "480613"
    call_id = storage.list_calls(limit=1)[0].id
    request_id = storage.request_callback(call_id, "+15550177", "transfer")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            log_in(page, base, "root", "an admin passphrase, long", storage)
            page.goto(f"{base}/callers")
            page.fill("#add-caller input[name=number]", number)
            page.fill("#add-caller input[name=name]", "Ann Example")
            assert "Enrolled" in submit(page, "#add-caller button")
            page.fill("#set-pin input[name=pin]", pin)
            page.fill("#set-pin input[name=pin_again]", pin)
            assert "PIN set." in submit(page, "#set-pin button")
            assert pin not in page.content()
            assert "Authenticator enrolled." in submit(page, "#enrol-totp button")
            assert page.is_visible("#enrolment svg.qr")
            assert page.inner_text("#provisioning-uri").startswith("otpauth://totp/")
            page.screenshot(path=str(ARTIFACTS / "admin-caller-totp.png"), full_page=True)
            assert "Locked." in submit(page, "#lock button")
            shown = cli(tmp_path, "callers", "show", number)
            assert shown == {**shown, "state": "locked", "factors": ["pin", "totp"]}, shown
            assert shown["name"] == "Ann Example"  # type: ignore[index]
            assert "Unlocked." in submit(page, "#lock button")
            assert cli(tmp_path, "callers", "show", number)["state"] == "active"  # type: ignore[index]
            (listed,) = cli(tmp_path, "callers", "list")  # type: ignore[misc]
            assert listed["number"] == number

            page.goto(f"{base}/callbacks")
            row = f"#callback-{request_id}"
            assert "+15550177" not in page.inner_text(row)  # masked
            page.screenshot(path=str(ARTIFACTS / "admin-callbacks-open.png"), full_page=True)
            notice = submit(page, f"{row} button[value=called_back]")
            assert f"Request {request_id}: called back." in notice
            (request,) = cli(tmp_path, "callbacks", "list")  # type: ignore[misc]
            assert request["id"] == request_id and request["state"] == "called_back"
            assert request["changed_by"] == "admin:root"
            assert errors == []  # no console errors, no CSP violations (the QR code is inline)
        finally:
            browser.close()


def test_the_compliance_page_in_chromium_shows_a_failing_control_until_its_state_changes(
    panel: tuple[str, Storage], tmp_path: Path
) -> None:
    """The report read live: the purge never ran, so storage limitation fails on the page;
    after `appliance retention run` it passes. An access review recorded in the browser
    turns CC6.1 from warn to pass, and the signed download verifies with the CLI."""
    if CHROMIUM is None:
        pytest.fail("chromium is missing: scripts/setup installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    base, storage = panel
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(ignore_https_errors=True, accept_downloads=True)
            page = context.new_page()
            log_in(page, base, "root", "an admin passphrase, long", storage)
            page.goto(f"{base}/compliance")
            row = page.locator("tr", has_text="Storage limitation")
            assert "control-fail" in str(row.get_attribute("class"))
            assert "the retention job never ran" in row.inner_text()
            assert "control-warn" in str(
                page.locator("tr", has_text="CC6.1").get_attribute("class")
            )
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "admin-compliance-failing.png"), full_page=True)
            done = subprocess.run(
                [str(APPLIANCE), "retention", "run"],
                env={**os.environ, "APPLIANCE_HOME": str(tmp_path)},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            page.goto(f"{base}/access-review")
            page.uncheck("input[name=confirm][value=olga]")
            assert "1 confirmed, 1 removed" in submit(page, "#record-review button")
            page.goto(f"{base}/compliance")
            for name in ("Storage limitation", "CC6.1"):
                row = page.locator("tr", has_text=name)
                assert "control-pass" in str(row.get_attribute("class")), row.inner_text()
            with page.expect_download() as download:
                page.click("text=Download (signed HTML)")
            saved = tmp_path / "report.html"
            download.value.save_as(saved)
        finally:
            browser.close()
    olga = storage.admin_user("olga")
    assert olga is not None and olga.disabled  # left unticked in the review
    verified = subprocess.run(
        [str(APPLIANCE), "compliance", "verify", str(saved)],
        env={**os.environ, "APPLIANCE_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stderr
    assert "verified, unchanged" in verified.stdout


def test_the_dashboard_in_chromium_prints_its_figures_readably(
    panel: tuple[str, Storage], tmp_path: Path
) -> None:
    """Calls, latencies, guard verdicts, an incident and two red-team reports: the figures
    are printed as numbers with their units, large enough to read, and the charts carry
    their y-axis ticks and thresholds; the screenshot is test-artifacts/screenshots/
    admin-dashboard.png."""
    if CHROMIUM is None:
        pytest.fail("chromium is missing: scripts/setup installs Debian's chromium")
    import datetime as dt

    from playwright.sync_api import sync_playwright

    from tests.unit.test_redteam_gate import write_report

    base, storage = panel
    ended = storage.start_call("+15550101", "test")
    for index, v2v in enumerate((900.0, 1100.0, 2400.0), start=1):
        ended.record_turn(TurnRecord(index, "hello", "hi", voice_to_voice_ms=v2v))
    ended.record_turn(TurnRecord(4, "[blocked]", "no", guard={"input": "block"}))
    ended.record_turn(TurnRecord(5, "odd", "ok", guard={"input": "flag"}))
    ended.finish("ended")
    storage.open_incident("probing", "medium", "3 blocked turns; action end_call")
    now = dt.datetime.now(dt.UTC)
    write_report(tmp_path, "20261120-100000", None, stopped=0.95, refused=0.04,
                 finished=now - dt.timedelta(days=10))  # fmt: skip
    write_report(tmp_path, "20261201-100000", None, stopped=0.99, refused=0.01,
                 finished=now - dt.timedelta(days=1))  # fmt: skip
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1280, "height": 900}
            ).new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            log_in(page, base, "root", "an admin passphrase, long", storage)
            page.goto(f"{base}/")
            page.screenshot(path=str(ARTIFACTS / "admin-dashboard.png"), full_page=True)
            shown = {
                page.locator(".figure-label").nth(i).inner_text(): (
                    page.locator(".figure-value").nth(i)
                )
                for i in range(page.locator(".figure").count())
            }
            expected = {
                "Calls today": "2 calls",  # the fixture's call and this one
                "Live calls now": "1 call",  # the fixture's never ended
                "Voice-to-voice p50 today": "1100 ms",  # the median of 900, 1100, 2400
                "Voice-to-voice p95 today": "2400 ms",
                "Guard blocks today": "1 turn",
                "Open incidents": "1 incident",
                "Red team: attacks stopped": "99.0%",  # the newest of the two reports
                "Red team: benign refused": "1.0%",
            }
            assert {k: v.inner_text() for k, v in shown.items()} == expected
            for label, value in shown.items():
                box = value.bounding_box()
                assert value.is_visible() and box is not None, label
                assert box["height"] >= 20 and box["x"] + box["width"] <= 1280, (label, box)
            latency = page.locator("#chart-latency svg")
            ticks = latency.locator("text.tick").all_text_contents()  # SVG text: no innerText
            assert ticks[0] == "0" and "1000" in ticks, ticks  # a labelled y-axis, ms
            assert "target 1000 ms" in str(latency.text_content())
            assert latency.bounding_box()["height"] >= 150  # type: ignore[index]
            stopped = str(page.locator("#chart-redteam-stopped svg").text_content())
            assert "target >= 97%" in stopped and "100%" in stopped
            refused = str(page.locator("#chart-redteam-refused svg").text_content())
            assert "target <= 2%" in refused
            assert errors == []  # no CSP violation: no inline style, no script
        finally:
            browser.close()
