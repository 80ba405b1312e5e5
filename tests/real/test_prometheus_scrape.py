"""A real Prometheus (Debian's ``prometheus``, started by the test on 127.0.0.1 with a private
configuration and TSDB under ``tmp_path``) scrapes the admin panel's ``/metrics`` and the voice
service's metrics listener over HTTPS, each certificate verified against the self-signed one
as CA, with the scrape token from a file; a job without the token sees 401.

The voice service runs on fake engines in-process (one call through ``run_call``, so a known
figure has a value); the listener and the panel's server are the ones ``appliance serve`` and
``appliance admin serve`` run."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.admin.serve import server as panel_server
from appliance.config.settings import Settings, load_settings
from appliance.deploy.metrics import MetricsListener, VoiceMetrics
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage
from appliance.testing.fakes import FakeTranscriber, ScriptedChatModel, ToneSynthesizer
from tests.integration.helpers import fake_service, serve_utterances
from tests.real.test_sip import free_port

pytestmark = pytest.mark.real

TOKEN = "prometheus-scrape-token-0123456789"
DEADLINE_S = 60.0


@dataclasses.dataclass
class Peers:
    panel: str
    voice: str
    panel_ca: Path
    voice_ca: Path
    token: Path


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    token = tmp_path / "scrape.token"
    token.write_text(TOKEN + "\n")
    os.chmod(token, 0o600)
    base = load_settings(environ={"APPLIANCE_HOME": str(tmp_path)})
    settings: Settings = dataclasses.replace(
        base,
        admin=dataclasses.replace(base.admin, listen="127.0.0.1:0"),
        service=dataclasses.replace(
            base.service,
            voice="none",
            metrics_listen="127.0.0.1:0",
            metrics_token_file=str(token),
        ),
    )
    storage = Storage.open_sqlite(tmp_path / "a.db", load_or_create(tmp_path / "k"))
    service = fake_service(
        settings, FakeTranscriber(["hello"]), ScriptedChatModel(["Hi there."]), ToneSynthesizer()
    )
    metrics = VoiceMetrics(settings, storage)
    service.metrics, metrics.service = metrics, service
    assert serve_utterances(service, storage, 1, "+15550100").call_id  # one call counted
    metrics.serving = True
    voice = MetricsListener(settings, metrics)
    voice.start()
    panel = panel_server(settings, storage)
    panel.prepare()
    thread = threading.Thread(target=panel.serve, daemon=True)
    thread.start()
    try:
        yield Peers(
            f"127.0.0.1:{panel.bind_addr[1]}",
            voice.address,
            tmp_path / "admin" / "tls.crt",
            tmp_path / "metrics" / "tls.crt",
            token,
        )
    finally:
        panel.stop()
        voice.stop()
        storage.close()


def job(name: str, target: str, ca: Path, token: Path | None) -> str:
    auth = f"    authorization: {{credentials_file: {json.dumps(str(token))}}}\n" if token else ""
    return (
        f"  - job_name: {name}\n"
        "    scheme: https\n"
        f"    tls_config: {{ca_file: {json.dumps(str(ca))}, insecure_skip_verify: false}}\n"
        f"{auth}"
        f"    static_configs: [{{targets: [{json.dumps(target)}]}}]\n"
    )


@pytest.fixture
def prometheus(tmp_path: Path, peers: Peers) -> Iterator[str]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing: scripts/setup installs Debian's prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        + job("panel", peers.panel, peers.panel_ca, peers.token)
        + job("voice", peers.voice, peers.voice_ca, peers.token)
        + job("voice_no_token", peers.voice, peers.voice_ca, None)
    )
    port = free_port(socket.SOCK_STREAM)
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def api(base: str, path: str, **query: str) -> Any:
    url = f"{base}/api/v1/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())["data"]


def poll(what: str, check: Any, tmp_path: Path) -> Any:
    """``check()`` until it returns something true, within the deadline (a bounded wait)."""
    deadline = time.monotonic() + DEADLINE_S
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # Prometheus not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    log = (tmp_path / "prometheus.log").read_text(errors="replace")[-3000:]
    raise AssertionError(f"{what}: {last!r}\n{log}")


def test_prometheus_scrapes_both_with_the_token_and_is_refused_without(
    prometheus: str, tmp_path: Path
) -> None:
    def targets() -> dict[str, dict[str, Any]] | None:
        active = api(prometheus, "targets")["activeTargets"]
        by_job = {t["labels"]["job"]: t for t in active}
        settled = len(by_job) == 3 and all(t["health"] != "unknown" for t in by_job.values())
        return by_job if settled else None

    seen = poll("all three targets scraped", targets, tmp_path)
    assert seen["panel"]["health"] == "up", seen["panel"]["lastError"]
    assert seen["voice"]["health"] == "up", seen["voice"]["lastError"]
    refused = seen["voice_no_token"]
    assert refused["health"] == "down" and "401" in refused["lastError"], refused

    def value(query: str) -> list[Any]:
        return list(api(prometheus, "query", query=query)["result"])

    calls = poll("the call counted", lambda: value('appliance_calls_total{job="voice"}'), tmp_path)
    assert calls[0]["value"][1] == "1"
    up = {r["metric"]["job"]: r["value"][1] for r in value("up")}
    assert up == {"panel": "1", "voice": "1", "voice_no_token": "0"}
    gate = poll(
        "the panel's gate",
        lambda: value('appliance_redteam_gate{job="panel",status="no_report"}'),
        tmp_path,
    )
    assert gate[0]["value"][1] == "1"
