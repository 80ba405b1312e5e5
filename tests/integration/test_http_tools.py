"""Tools declared in the configuration that call the organization's own HTTPS services, against
a real local HTTPS server requiring a client certificate; Python tools from plug-ins; demo
bookings that outlive a call."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import logging
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from appliance.audio_io.memory import MemorySink, MemorySource
from appliance.config.settings import (
    AllowedHost,
    CredentialSource,
    HttpParam,
    HttpTool,
    PolicySettings,
    Settings,
    ToolsSettings,
    load_settings,
)
from appliance.core.errors import ConfigError
from appliance.core.events import EventType
from appliance.core.ports import ChatMessage
from appliance.deploy.egress import allowlist
from appliance.guard.call import CallGuard
from appliance.identity.factors import totp
from appliance.identity.levels import Assurance
from appliance.pipeline.session import CallSession, Engines
from appliance.service import VoiceService, pipeline_config
from appliance.storage.keys import load_or_create
from appliance.storage.repository import Storage
from appliance.storage.schema import AuditEvent, ToolCall
from appliance.testing.bookings import BookingService, booking_http_tools
from appliance.testing.fakes import (
    EnergyVad,
    FakeKnowledge,
    FakeTranscriber,
    ScriptedChatModel,
    ToneSynthesizer,
    quiet,
    tone,
)
from appliance.tools.agent import CallerFactors, ToolAgent
from appliance.tools.demo import DemoBank, demo_tools
from appliance.tools.http import HttpCall, http_tools, tls_context
from appliance.tools.plugins import plugin_tools
from appliance.tools.registry import ToolBox, ToolError
from tests.integration.helpers import make_config
from tests.pki import make_ca

CALLER = "+15550100"  # demo caller: PIN 4921, TOTP secret in demo_data.json
NAME = "bank.test"
SECRET_NOTE = "SECRET-XYZ"


# -- a PKI in a temporary folder ------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca("Test CA")
    server_cert, server_key = ca.issue(folder, NAME, dns=NAME)
    client_cert, client_key = ca.issue(folder, "appliance", server=False, client=True)
    return Pki(
        ca=ca.pem(folder / "ca.pem"),
        other_ca=make_ca("Other CA").pem(folder / "other-ca.pem"),
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
    )


# -- the organization's service: http.server behind TLS that requires a client certificate -------

Answer = tuple[int, bytes, float]  # status, body, seconds to wait first


@dataclass
class Service:
    port: int
    routes: dict[str, Callable[[], Answer]]
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    handshake_failures: list[str] = field(default_factory=list)


class _TlsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    service: Service

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()  # accept, and the TLS handshake
        except OSError as exc:
            self.service.handshake_failures.append(type(exc).__name__)
            raise


@pytest.fixture
def service(pki: Pki) -> Iterator[Service]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no client certificate, no request

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            state: Service = self.server.service  # type: ignore[attr-defined]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            state.requests.append((self.command, self.path, {**dict(self.headers), "body": body}))
            route = state.routes.get(self.path.split("?")[0])
            status, payload, delay = route() if route else (404, b"{}", 0.0)
            time.sleep(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the client gave up waiting

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _TlsServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state = Service(server.server_address[1], {})
    server.service = state
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def balance_body(**extra: Any) -> Callable[[], Answer]:
    body = {"account": {"balance": 1250.40, "currency": "GBP"}, **extra}
    return lambda: (200, json.dumps(body).replace("1250.4", "1250.40").encode(), 0.0)


def declared(port: int, **changes: Any) -> HttpTool:
    tool = HttpTool(
        name="core_balance",
        description="Tell the authenticated caller their balance from the core system.",
        method="GET",
        url=f"https://{NAME}:{port}/balance/{{caller}}",
        scopes=("accounts:read",),
        required_level=2,
        triggers=(r"\bbalance\b",),
        timeout_s=2.0,
        speak="Your balance is {account.balance} pounds.",
    )
    return replace(tool, **changes)


def tools_settings(pki: Pki, *tools: HttpTool, **changes: Any) -> ToolsSettings:
    base = ToolsSettings(
        enabled=tuple(t.name for t in tools),
        http=tools,
        allowed_hosts=(AllowedHost(NAME, "127.0.0.1"),),
        ca_file=str(pki.ca),
        client_cert=str(pki.client_cert),
        client_key=str(pki.client_key),
    )
    return replace(base, **changes)


def call_tool(settings: ToolsSettings, name: str = "core_balance", **values: Any) -> str:
    return http_tools(settings)[name].handler(CALLER, values)


# -- a call on fake engines -----------------------------------------------------------------------


class ToolModel(ScriptedChatModel):
    """Ordinary turns get ``replies``; a choice among tools is never needed here (one matches)."""

    def __init__(self, replies: Sequence[str]) -> None:
        super().__init__(replies)
        self.request_prompts: list[list[ChatMessage]] = []

    def request_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, Any], max_tokens: int = 128
    ) -> str:
        self.request_prompts.append(list(messages))
        return json.dumps({"tool": "none"})


def run_call(
    tmp_path: Path, texts: list[str], model: ToolModel, settings: ToolsSettings
) -> tuple[CallSession, ToneSynthesizer, Storage, str]:
    store = Storage.open_sqlite(tmp_path / "a.db", load_or_create(tmp_path / "k"))
    record = store.start_call(CALLER, "test")

    def audit(caller: str, tool: str, arguments: Any, outcome: str) -> None:
        store.record_tool_call(record.call_id, tool, arguments, outcome, actor="caller:test")

    bank = DemoBank()
    tools = {**demo_tools(bank), **http_tools(settings)}
    agent = ToolAgent(
        ToolBox(tools, frozenset(settings.enabled), audit=audit),
        caller=CALLER,
        credentials=bank,
        model=model,
        settings=settings,
        factors=CallerFactors.from_settings(settings),
        today="2026-11-28",
    )
    tts = ToneSynthesizer(ms_per_char=2)
    session = CallSession(
        Engines(EnergyVad(), FakeTranscriber(texts), model, tts),
        make_config(),
        MemorySource(b"".join(tone(0.8) + quiet(3.0) for _ in texts)),
        MemorySink(16_000),
        recorder=record,
        guard=CallGuard(PolicySettings(), "Be brief."),
        agent=agent,
        knowledge=FakeKnowledge(["We open at nine on weekdays."]),
    )
    asyncio.run(asyncio.wait_for(session.run(), timeout=60))
    return session, tts, store, record.call_id


def current_code() -> str:
    secret = DemoBank().totp_secret(CALLER)
    assert secret is not None
    return " ".join(totp(secret, int(time.time() // 30)))


def test_a_level_2_http_tool_speaks_only_the_named_field_after_pin_and_totp(
    tmp_path: Path, pki: Pki, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service.routes["/balance/%2B15550100"] = balance_body(internal_note=SECRET_NOTE)
    bearer = tmp_path / "bearer"
    bearer.write_text("tok-123\n")
    bearer.chmod(0o600)
    settings = tools_settings(pki, declared(service.port), bearer_file=str(bearer))
    model = ToolModel(["You're welcome."])
    texts = ["What's my balance?", "four nine two one", current_code(), "Thanks!"]
    session, tts, store, call_id = run_call(tmp_path, texts, model, settings)
    assert tts.spoken == [
        settings.pin_prompt,
        settings.totp_prompt,
        "Your balance is 1250.40 pounds.",
        "You're welcome.",
    ]
    outcomes = [t.first(EventType.AGENT) for t in session.turns]
    assert [o.data["outcome"] if o else None for o in outcomes][2] == "tool.ok"
    # One request, after level 2: the caller's number URL-encoded, the bearer token sent.
    assert [(m, p) for m, p, _ in service.requests] == [("GET", "/balance/%2B15550100")]
    headers = service.requests[0][2]
    assert headers["Authorization"] == "Bearer tok-123"
    assert headers["Host"] == f"{NAME}:{service.port}"
    # The field the template does not name reached neither the model (over the rest of the
    # call), nor the stored turns, nor the tool calls and audit trail, nor a log.
    assert model.prompts, "the last turn went to the model"
    seen = json.dumps([[m.content for m in p] for p in model.prompts + model.request_prompts])
    assert SECRET_NOTE not in seen and "GBP" not in seen
    view = store.read_call(call_id, "test", "check")
    stored = json.dumps([(t.transcript, t.reply) for t in view.turns])
    assert "1250.40" in stored and SECRET_NOTE not in stored
    with store.session("look") as db:
        events = [(e.action, e.outcome, e.details) for e in db.scalars(select(AuditEvent))]
        tools = [(t.tool, t.outcome) for t in db.scalars(select(ToolCall))]
    assert tools[-1] == ("core_balance", "ok")
    assert SECRET_NOTE not in json.dumps(events)
    assert SECRET_NOTE not in caplog.text and "tok-123" not in caplog.text
    store.close()


def test_a_changing_http_tool_takes_its_choice_from_the_caller_and_waits_for_their_yes(
    tmp_path: Path, pki: Pki, service: Service
) -> None:
    service.routes["/callbacks/%2B15550100"] = lambda: (201, b'{"reference": "CB-42"}', 0.0)
    tool = declared(
        service.port,
        name="branch_callback",
        description="Ask a branch to call the caller back.",
        method="POST",
        url=f"https://{NAME}:{service.port}/callbacks/{{caller}}",
        params=(
            HttpParam(
                "branch",
                "choice",
                choices=("Main Street", "Old Town"),
                ask="Which branch: Main Street or Old Town?",
            ),
        ),
        required_level=1,
        changes_data=True,
        triggers=(r"\bcall me back\b",),
        speak="Done: your reference is {reference}.",
    )
    settings = tools_settings(pki, tool)
    texts = ["Could a branch call me back?", "Old Town please.", "4 9 2 1", "Yes please."]
    _, tts, store, _ = run_call(tmp_path, texts, ToolModel([]), settings)
    confirm = settings.confirm_prompt.format(
        action="Ask a branch to call the caller back: branch Old Town"
    )
    assert tts.spoken == [
        "Which branch: Main Street or Old Town?",
        settings.pin_prompt,
        confirm,
        "Done: your reference is CB-42.",
    ]
    assert [(m, p) for m, p, _ in service.requests] == [("POST", "/callbacks/%2B15550100")]
    assert json.loads(service.requests[0][2]["body"]) == {"branch": "Old Town"}
    store.close()


def test_a_service_past_its_timeout_gives_the_failed_reply_and_an_audited_code(
    tmp_path: Path, pki: Pki, service: Service
) -> None:
    service.routes["/balance/%2B15550100"] = lambda: (200, b'{"account": {}}', 1.5)
    tool = declared(service.port, required_level=0, timeout_s=0.4)
    settings = tools_settings(pki, tool)
    started = time.monotonic()
    _, tts, store, _ = run_call(tmp_path, ["What's my balance?"], ToolModel([]), settings)
    assert time.monotonic() - started < 1.4 + 3  # the caller did not wait for the service
    assert tts.spoken == [settings.failed_reply]
    with store.session("look") as db:
        tools = [(t.tool, t.outcome) for t in db.scalars(select(ToolCall))]
        events = [(e.action, e.outcome) for e in db.scalars(select(AuditEvent))]
    assert tools == [("core_balance", "tools.http.timeout")]
    assert ("tool_call", "tools.http.timeout") in events
    store.close()


def test_garbage_a_missing_field_or_a_bad_status_is_a_coded_failure(
    pki: Pki, service: Service
) -> None:
    settings = tools_settings(pki, declared(service.port, required_level=0))
    audited: list[str] = []
    box = ToolBox(
        http_tools(settings),
        frozenset({"core_balance"}),
        audit=lambda c, t, a, outcome: audited.append(outcome),
    )
    answers: list[Answer] = [
        (200, b"<html>" + SECRET_NOTE.encode(), 0.0),
        (200, b'{"balance": 3}', 0.0),
        (500, b'{"account": {"balance": 1}}', 0.0),
        (200, b'{"account": {"balance": {"deep": 1}}}', 0.0),
    ]
    service.routes["/balance/%2B15550100"] = lambda: answers.pop(0)
    codes = []
    for _ in range(4):
        with pytest.raises(ToolError) as caught:
            box.call(CALLER, "core_balance", {}, level=Assurance.ANONYMOUS)
        assert SECRET_NOTE not in str(caught.value)
        codes.append(caught.value.code)
    assert codes == [
        "tools.http.bad_response",
        "tools.http.missing_field",
        "tools.http.status",
        "tools.http.bad_response",
    ]
    assert audited == codes


def test_an_idempotent_request_is_retried_and_a_post_never(pki: Pki, service: Service) -> None:
    answers: list[Answer] = [(503, b"{}", 0.0), (200, b'{"account": {"balance": 7}}', 0.0)]
    service.routes["/balance/%2B15550100"] = lambda: answers.pop(0)
    settings = tools_settings(pki, declared(service.port, retries=1))
    assert call_tool(settings) == "Your balance is 7 pounds."
    assert len(service.requests) == 2
    answers[:] = [(200, b"{}", 1.0), (200, b'{"account": {"balance": 8}}', 0.0)]
    slow = tools_settings(pki, declared(service.port, retries=1, timeout_s=0.3))
    assert call_tool(slow) == "Your balance is 8 pounds."  # a timeout, then an answer
    assert len(service.requests) == 4
    service.requests.clear()
    post = declared(
        service.port,
        method="POST",
        url=f"https://{NAME}:{service.port}/balance/{{caller}}",
        params=(HttpParam("branch", "choice", choices=("Old Town", "Riverside")),),
    )
    answers[:] = [(503, b"{}", 0.0), (200, b'{"account": {"balance": 7}}', 0.0)]
    with pytest.raises(ToolError, match=r"tools\.http\.status"):
        call_tool(tools_settings(pki, post), branch="Old Town")
    assert len(service.requests) == 1
    assert json.loads(service.requests[-1][2]["body"]) == {"branch": "Old Town"}
    with pytest.raises(ConfigError, match=r"tools\.http\[0\]\.retries"):
        tools_settings(pki, replace(post, retries=1))


def test_the_service_requires_the_client_certificate_and_a_wrong_ca_is_refused(
    pki: Pki, service: Service
) -> None:
    service.routes["/balance/%2B15550100"] = balance_body()
    tool = declared(service.port)
    without = tools_settings(pki, tool, client_cert="", client_key="")
    with pytest.raises(ToolError) as caught:
        call_tool(without)
    assert caught.value.code in ("tools.http.tls", "tools.http.unreachable")
    deadline = time.monotonic() + 5
    while not service.handshake_failures and time.monotonic() < deadline:
        time.sleep(0.01)  # the server's thread records the refusal after the client hears it
    assert service.requests == [] and service.handshake_failures == ["SSLError"]
    wrong_ca = tools_settings(pki, tool, ca_file=str(pki.other_ca))
    with pytest.raises(ToolError, match=r"tools\.http\.certificate"):
        call_tool(wrong_ca)
    assert service.requests == []
    assert call_tool(tools_settings(pki, tool)) == "Your balance is 1250.40 pounds."


def test_only_the_listed_address_is_connected_to_and_no_name_is_looked_up(
    pki: Pki, service: Service
) -> None:
    service.routes["/balance/%2B15550100"] = balance_body()
    events: list[tuple[str, Any]] = []
    watching = threading.Event()

    def hook(event: str, args: tuple[Any, ...]) -> None:
        mine = threading.current_thread() is threading.main_thread()  # not the server's
        if watching.is_set() and mine and event in ("socket.connect", "socket.getaddrinfo"):
            events.append((event, args[1] if event == "socket.connect" else args[0]))

    sys.addaudithook(hook)  # lasts for the process; records only while watching
    watching.set()
    try:
        assert call_tool(tools_settings(pki, declared(service.port))) == (
            "Your balance is 1250.40 pounds."
        )
    finally:
        watching.clear()
    assert ("socket.connect", ("127.0.0.1", service.port)) in events
    assert all(target in ("127.0.0.1", ("127.0.0.1", service.port)) for _, target in events)
    assert not any(NAME in str(target) for _, target in events)


def test_a_url_host_outside_allowed_hosts_is_a_config_error_naming_the_key(
    pki: Pki, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"tools\.http\[0\]\.url: .*allowed_hosts"):
        tools_settings(pki, declared(443, url="https://elsewhere.test/balance"))
    with pytest.raises(ConfigError, match=r"tools\.http\[0\]\.url: .*allowed_hosts"):
        tools_settings(pki, declared(443, url="https://127.0.0.1:8443/balance"))  # no address
    with pytest.raises(ConfigError, match=r"tools\.allowed_hosts\[0\]\.address"):
        tools_settings(pki, declared(443), allowed_hosts=(AllowedHost(NAME, "10.0.0.0/24"),))
    # The listed addresses are the egress allowlist (and scripts/install's IPAddressAllow=).
    listed = (AllowedHost(NAME, "127.0.0.1"), AllowedHost("core.bank.internal", "10.0.0.7"))
    settings = Settings(home=tmp_path, tools=tools_settings(pki, allowed_hosts=listed))
    assert "10.0.0.7" in allowlist(settings)


_DECLARATION = """
[tools]
enabled = ["core_balance"]
allowed_hosts = [{ name = "core.bank.internal", address = "10.0.0.7" }]

[[tools.http]]
name = "core_balance"
description = "Tell the caller their balance."
triggers = ["balance"]
speak = "Your balance is {balance} pounds."
"""


@pytest.mark.parametrize(
    ("lines", "key"),
    [
        ('method = "GET"', r"tools\.http\[0\]\.url: is needed"),
        ('url = "http://core.bank.internal/b"', r"tools\.http\[0\]\.url: https:// only"),
        ('url = "https://core.bank.internal/b"\nmethod = "FETCH"', r"tools\.http\[0\]\.method"),
        (
            'url = "https://core.bank.internal/b"\nparams = [{ name = "n", kind = "float" }]',
            r"tools\.http\[0\]\.params\[0\]\.kind",
        ),
        ('url = "https://core.bank.internal/b/{who}"', r"tools\.http\[0\]\.url: \{who\}"),
        (
            'url = "https://core.bank.internal/b"\ntimeout_s = "soon"',
            r"tools\.http\[0\]\.timeout_s",
        ),
        (
            'url = "https://core.bank.internal/b"\nspeak_all = true',
            r"\[tools\.http\[0\]\].*speak_all",
        ),
        ('url = "https://core.bank.internal/b"\nspeak = "{0:>5}"', r"tools\.http\[0\]\.speak"),
        (
            'url = "https://core.bank.internal/b"\nparams = [{ name = "n", kind = "integer" }]',
            r"tools\.http\[0\]\.params\[0\]\.required",
        ),
    ],
)
def test_a_malformed_declaration_is_a_config_error_naming_the_key(
    tmp_path: Path, lines: str, key: str
) -> None:
    path = tmp_path / "appliance.toml"
    text = _DECLARATION + lines + "\n"
    if "speak =" in lines:
        text = text.replace('speak = "Your balance is {balance} pounds."\n', "")
    path.write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_settings(path, environ={})


def test_the_documented_example_loads_as_written(tmp_path: Path) -> None:
    """The commented [[tools.http]] of config/appliance.toml, uncommented, is a valid tool."""
    from appliance.config.settings import DEFAULT_CONFIG_FILE

    lines = DEFAULT_CONFIG_FILE.read_text(encoding="utf-8").splitlines()
    start = lines.index("#   [[tools.http]]")
    example = [line[4:] for line in lines[start:] if line.startswith("#   ")]
    example = example[: next(i for i, line in enumerate(example) if line.startswith("speak")) + 1]
    hosts = next(line for line in lines if line.startswith("#   allowed_hosts"))[4:]
    path = tmp_path / "appliance.toml"
    path.write_text(f"[tools]\n{hosts}\n" + "\n".join(example) + "\n")
    tools = load_settings(path, environ={}).tools
    assert tools.http[0].name == "core_balance" and tools.http[0].triggers == (r"\bbalance\b",)


def test_a_declaration_loads_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text(_DECLARATION + 'url = "https://core.bank.internal:8443/b/{caller}"\n')
    tools = load_settings(path, environ={}).tools
    assert tools.http[0].url.endswith(":8443/b/{caller}") and tools.http[0].required_level == 2
    assert tools.allowed_hosts == (AllowedHost("core.bank.internal", "10.0.0.7"),)


def test_the_bearer_file_must_be_owner_only(tmp_path: Path, pki: Pki, service: Service) -> None:
    service.routes["/balance/%2B15550100"] = balance_body()
    bearer = tmp_path / "bearer"
    bearer.write_text("tok-123\n")
    bearer.chmod(0o640)
    settings = tools_settings(pki, declared(service.port), bearer_file=str(bearer))
    with pytest.raises(ToolError, match=r"config\.unsafe_file.*tools\.bearer_file"):
        call_tool(settings)
    assert service.requests == []  # nothing was sent
    bearer.chmod(0o600)
    assert call_tool(settings) == "Your balance is 1250.40 pounds."
    assert service.requests[0][2]["Authorization"] == "Bearer tok-123"
    bearer.write_text("tok-123\nX-Other: injected\n")
    with pytest.raises(ToolError, match=r"tools\.http\.bearer"):
        call_tool(settings)
    assert len(service.requests) == 1


# -- plug-ins -------------------------------------------------------------------------------------


def _distribution(folder: Path, name: str, entry: str, module: str) -> None:
    info = folder / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    info.joinpath("entry_points.txt").write_text(f"[appliance.tools]\n{entry}\n")
    folder.joinpath(f"{name}.py").write_text(module)


_PLUGIN = """
from appliance.identity.levels import Assurance
from appliance.tools.registry import Tool

def tools():
    return [Tool("opening_times", "Say when we open.", (), (), False, Assurance.ANONYMOUS,
                 lambda caller, values: "We open at nine.", (r"\\bopen\\b",))]
"""


def fake_service(settings: Settings) -> VoiceService:
    model = ScriptedChatModel(["ok"])
    engines = Engines(EnergyVad(), FakeTranscriber([]), model, ToneSynthesizer())
    return VoiceService(settings, engines, pipeline_config(settings))


def test_a_plugin_entry_point_adds_its_tools_beside_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pki: Pki, service: Service
) -> None:
    _distribution(tmp_path, "acme_tools", "acme = acme_tools:tools", _PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert list(plugin_tools()) == ["opening_times"]
    tools = tools_settings(pki, declared(service.port))
    settings = Settings(home=tmp_path, tools=replace(tools, enabled=("opening_times",)))
    box = fake_service(settings).toolbox(None, "call-1")
    assert {"opening_times", "core_balance", "book_appointment"} <= set(box.tools)
    assert box.call(CALLER, "opening_times", {}, level=Assurance.ANONYMOUS) == "We open at nine."


def test_a_broken_plugin_is_a_clear_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _distribution(tmp_path, "broken_tools", "broken = broken_tools:tools", "raise ImportError('x')")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ToolError, match=r"tools\.plugin.*'broken' \(broken_tools:tools\)"):
        plugin_tools()
    with pytest.raises(ToolError, match=r"'broken'"):
        fake_service(Settings(home=tmp_path)).toolbox(None, "call-1")
    (tmp_path / "broken_tools.py").write_text("def tools():\n    return ['not a tool']\n")
    sys.modules.pop("broken_tools", None)
    with pytest.raises(ToolError, match=r"'broken' .* returned str, not Tool objects"):
        plugin_tools()


# -- demo bookings that persist -------------------------------------------------------------------

_BOOK = {"date": "2026-12-02", "time": "11:00", "branch": "Old Town"}


def test_demo_bookings_outlive_the_call_the_service_and_the_process(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, tools=ToolsSettings(credentials=CredentialSource.DEMO))
    first = fake_service(settings).toolbox(None, "call-1")
    said = first.call(CALLER, "book_appointment", _BOOK, level=Assurance.ONE_FACTOR, confirmed=True)
    assert "booked for Wednesday 2 December at 11 am" in said
    path = tmp_path / "demo" / "bookings.json"
    assert (path.stat().st_mode & 0o777) == 0o600
    # A second call of another service object finds the slot taken ...
    second = fake_service(settings).toolbox(None, "call-2")
    with pytest.raises(ToolError, match=r"tools\.unavailable"):
        second.call(CALLER, "book_appointment", _BOOK, level=Assurance.ONE_FACTOR, confirmed=True)
    # ... and so does another process.
    script = (
        "from pathlib import Path; from appliance.tools.demo import DemoBank; "
        f"print([b['slot'] for b in DemoBank(bookings_file=Path({str(path)!r})).bookings])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "['2026-12-02 11:00']"
    # The directory configuration keeps no file: its callers' numbers stay in the store.
    other = Settings(home=tmp_path / "other")
    fake_service(other).toolbox(None, "c").call(
        CALLER, "book_appointment", _BOOK, level=Assurance.ONE_FACTOR, confirmed=True
    )
    assert not (tmp_path / "other").exists()


def test_a_corrupt_bookings_file_is_reported_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "demo" / "bookings.json"
    path.parent.mkdir()
    path.write_text('{"appointments": {"+1555')
    bank = DemoBank(bookings_file=path)
    tools = demo_tools(bank)
    with pytest.raises(ToolError, match=r"tools\.demo\.corrupt.*bookings\.json.*left as it is"):
        tools["book_appointment"].handler(
            CALLER, {"date": dt.date(2026, 12, 2), "time": "11:00", "branch": "Old Town"}
        )
    assert path.read_text() == '{"appointments": {"+1555'
    assert os.listdir(path.parent) == ["bookings.json"]  # no temporary left behind


def test_the_demo_bookings_work_as_http_tools_against_the_booking_service(
    tmp_path: Path, pki: Pki
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    bank = DemoBank(bookings_file=tmp_path / "bookings.json")
    with BookingService(bank, context) as bookings:
        settings = tools_settings(pki, *booking_http_tools(NAME, bookings.port))
        box = ToolBox(http_tools(settings), frozenset(settings.enabled))

        def call(name: str, **values: Any) -> str:
            level = Assurance.ONE_FACTOR
            return box.call(CALLER, name, values, level=level, confirmed=True)

        assert call("http_book_appointment", **_BOOK) == (
            "Your appointment at Old Town is booked for Wednesday 2 December at 11 am."
        )
        with pytest.raises(ToolError, match=r"tools\.http\.status.*409"):  # taken now
            call("http_book_appointment", **_BOOK)
        with pytest.raises(ToolError, match=r"tools\.confirm"):  # the caller's yes first
            box.call(CALLER, "http_cancel_appointment", {}, level=Assurance.ONE_FACTOR)
        moved = call("http_move_appointment", date="2026-12-03", time="14:00")
        cancelled = call("http_cancel_appointment")
        assert [m for m, _ in bookings.requests] == ["POST", "POST", "PUT", "DELETE"]
    # The next appointment is the one just booked (the demo data's own is on 9 December).
    assert moved == "Your appointment at Old Town is moved to Thursday 3 December at 2 pm."
    assert cancelled == "Your appointment at Old Town on Thursday 3 December at 2 pm is cancelled."
    again = DemoBank(bookings_file=tmp_path / "bookings.json")  # kept in the file
    assert [b["slot"] for b in again.bookings] == ["2026-12-02 11:00", "2026-12-03 14:00"]


def test_placeholders_are_filled_url_encoded_and_other_arguments_go_in_the_query(
    pki: Pki,
) -> None:
    tool = declared(
        443,
        url=f"https://{NAME}/branches/{{branch}}/slots?for={{caller}}",
        params=(
            HttpParam("branch", "choice", choices=("Old Town",)),
            HttpParam("date", "date"),
        ),
    )
    call = http_tools(tools_settings(pki, tool))["core_balance"].handler
    assert isinstance(call, HttpCall)
    method, target, body = call.request(
        CALLER, {"branch": "Old Town", "date": dt.date(2026, 12, 2)}
    )
    assert (method, body) == ("GET", None)
    assert target == "/branches/Old%20Town/slots?for=%2B15550100&date=2026-12-02"


def test_the_tls_context_verifies_and_the_client_key_must_be_owner_only(
    pki: Pki, tmp_path: Path
) -> None:
    context = tls_context(tools_settings(pki))
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    key = tmp_path / "client.key"
    key.write_bytes(pki.client_key.read_bytes())
    key.chmod(0o640)
    with pytest.raises(ConfigError, match=r"config\.unsafe_file.*tools\.client_key"):
        tls_context(tools_settings(pki, client_key=str(key)))


def test_a_refused_connection_is_unreachable_and_an_idempotent_request_tries_again(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from appliance.tools import http as http_tool

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    attempts: list[int] = []
    connect = http_tool._PinnedConnection.connect

    def counted(self: Any) -> None:
        attempts.append(1)
        connect(self)

    monkeypatch.setattr(http_tool._PinnedConnection, "connect", counted)
    with pytest.raises(ToolError, match=r"tools\.http\.unreachable"):
        call_tool(tools_settings(pki, declared(port, retries=2)))
    assert len(attempts) == 3


def test_a_plugin_tool_may_not_take_a_name_already_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _PLUGIN.replace('"opening_times"', '"book_appointment"')
    _distribution(tmp_path, "twin_tools", "twin = twin_tools:tools", module)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ToolError, match=r"tools\.duplicate.*'book_appointment'"):
        fake_service(Settings(home=tmp_path)).toolbox(None, "call-1")


def test_tools_list_shows_the_declared_tools(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from appliance.cli.tools import list_tools

    settings = Settings(home=tmp_path, tools=tools_settings(pki, declared(443)))
    assert list_tools(argparse.Namespace(json=True), settings) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["core_balance"]["enabled"] and rows["core_balance"]["assurance_level"] == 2
    assert not rows["book_appointment"]["enabled"]
