"""The admin panel in a real browser: headless Chromium (Debian's) driven by Playwright over
HTTPS against the real server. Screenshots of each page go to test-artifacts/screenshots/."""

from __future__ import annotations

import base64
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
               "/consent", "/access-review", "/redteam", "/data-flow", "/compliance"]  # fmt: skip


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
