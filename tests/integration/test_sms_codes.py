"""One-time codes by text message: the organization's SMS gateway as a declared HTTP tool
([notify] sms_tool), reached over mutual TLS at its pinned address (the real local HTTPS
server of test_http_tools.py, which requires a client certificate). A directory caller whose
contact is a phone number gets the code by SMS after the PIN, reads it back and reaches level
2; a gateway that fails offers a person; the settings refuse a gateway a caller could use."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from appliance.config.settings import (
    CredentialSource,
    HttpParam,
    HttpTool,
    NotifySettings,
    Settings,
)
from appliance.core.errors import ConfigError, NotifyError
from appliance.core.ports import CredentialKind
from appliance.identity.directory import pin_record
from appliance.notifiers.sms import ByContact, SmsNotifier
from appliance.service import VoiceService
from appliance.storage.repository import Storage
from appliance.storage.schema import AuditEvent
from appliance.testing.fakes import ToneSynthesizer
from tests.integration import test_http_tools as https
from tests.integration.helpers import (
    NoToolModel,
    agent_said,
    fake_service,
    serve_utterances,
    tool_settings,
)
from tests.integration.test_http_tools import NAME, Pki, Service, tools_settings
from tests.integration.test_oob_codes import (
    ALICE,
    BALANCE,
    Transcripts,
    audit_events,
    spoken,
)

pki, service = https.pki, https.service  # the CA and the gateway: fixtures
NUMBER = "+15550177"


def gateway(port: int, **changes: Any) -> HttpTool:
    tool = HttpTool(
        name="sms_gateway",
        description="Hand a text message to the SMS gateway.",
        method="POST",
        url=f"https://{NAME}:{port}/send",
        params=(HttpParam("to", required=False), HttpParam("text", required=False)),
        triggers=(r"(?!x)x",),  # never a caller's request (and not enabled either)
        speak="Sent.",
    )
    return dataclasses.replace(tool, **changes)


def sms_settings(tmp_path: Path, pki: Pki, tool: HttpTool, **notify: Any) -> Settings:
    base = tool_settings(tmp_path, CredentialSource.DIRECTORY)
    tools = dataclasses.replace(
        tools_settings(pki, tool), enabled=base.tools.enabled, credentials=base.tools.credentials
    )
    notified = NotifySettings(sms_tool=tool.name, **notify)
    return dataclasses.replace(base, tools=tools, notify=notified)


def enrol(store: Storage) -> None:
    store.add_caller(ALICE, "Alice Pelican-Canary", "admin:test")
    store.set_credential(ALICE, CredentialKind.PIN, pin_record("1357"), "admin:test")
    store.set_credential(ALICE, CredentialKind.CONTACT, NUMBER.encode(), "admin:test")


def messages(service: Service) -> list[dict[str, Any]]:
    return [json.loads(headers["body"]) for _, path, headers in service.requests if path == "/send"]


def code_sent(service: Service) -> str:
    (message,) = messages(service)
    found = re.findall(r"\b\d{6}\b", message["text"])
    assert len(found) == 1, message
    return str(found[0])


def voice(settings: Settings, texts: list[Any]) -> VoiceService:
    return fake_service(
        settings, Transcripts(texts), NoToolModel(["-"]), ToneSynthesizer(2),
        output_sample_rate_hz=16_000,
    )  # fmt: skip


def test_the_pin_then_the_texted_code_read_back_reach_level_2(
    tmp_path: Path, pki: Pki, service: Service, store: Storage
) -> None:
    service.routes["/send"] = lambda: (200, b'{"id": "m-1", "to": "+15550177"}', 0.0)
    enrol(store)
    texts = [
        "What's my account balance?",
        "one three five seven",
        lambda: spoken(code_sent(service)),  # read from the text message once it was sent
        "Thanks!",
    ]
    agent = voice(sms_settings(tmp_path, pki, gateway(service.port)), texts)
    outcome = serve_utterances(agent, store, len(texts), ALICE)
    tools = agent.settings.tools
    assert agent_said(outcome.turns[:3]) == [
        f"step_up.pin: {tools.pin_prompt}",
        f"step_up.code: {tools.code_prompt}",
        f"tool.ok: {BALANCE}",
    ]
    # One message, to the registered number, holding the code and its validity only.
    code = code_sent(service)
    assert messages(service) == [
        {"to": NUMBER, "text": f"Your verification code is {code}. It is valid for 5 minutes."}
    ]
    ((method, _, headers),) = service.requests
    assert method == "POST" and headers["Host"] == f"{NAME}:{service.port}"
    (sent,) = audit_events(store, "oob_code_sent", "oob_code_failed")
    assert sent.outcome == "ok"
    with store.session("look") as db:
        trail = json.dumps([[e.actor, e.object, e.details] for e in db.scalars(select(AuditEvent))])
    assert code not in trail and NUMBER not in trail and "15550177" not in trail


def test_a_gateway_that_fails_offers_a_person_and_the_failure_is_audited(
    tmp_path: Path, pki: Pki, service: Service, store: Storage
) -> None:
    service.routes["/send"] = lambda: (500, b"{}", 0.0)
    enrol(store)
    texts = ["What's my account balance?", "one three five seven"]
    agent = voice(sms_settings(tmp_path, pki, gateway(service.port)), texts)
    outcome = serve_utterances(agent, store, len(texts), ALICE)
    tools = agent.settings.tools
    assert agent_said(outcome.turns)[1] == f"step_up.code_unsent: {tools.code_not_sent}"
    (failed,) = audit_events(store, "oob_code_sent", "oob_code_failed")
    assert failed.outcome == "failed" and "notify.sms_failed" in failed.details


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"name": "other_tool"}, "no [[tools.http]] is named 'sms_gateway'"),
        ({"method": "PUT"}, "'sms_gateway' must be a POST"),
        ({"params": (HttpParam("to", required=False),)}, "needs parameters to and text"),
    ],
)
def test_the_gateway_must_be_a_declared_post_with_to_and_text(
    tmp_path: Path, pki: Pki, change: dict[str, Any], named: str
) -> None:
    tool = gateway(8443, **change)
    with pytest.raises(ConfigError, match=r"notify\.sms_tool") as caught:
        settings = sms_settings(tmp_path, pki, gateway(8443))
        dataclasses.replace(settings, tools=dataclasses.replace(settings.tools, http=(tool,)))
    assert named in str(caught.value)


def test_no_caller_may_use_the_gateway_as_a_tool(tmp_path: Path, pki: Pki) -> None:
    settings = sms_settings(tmp_path, pki, gateway(8443))
    with pytest.raises(ConfigError, match=r"notify\.sms_tool: 'sms_gateway' is in tools\.enabled"):
        enabled = (*settings.tools.enabled, "sms_gateway")
        dataclasses.replace(settings, tools=dataclasses.replace(settings.tools, enabled=enabled))


def test_a_code_goes_by_the_notifier_that_reaches_the_contact() -> None:
    texts: list[tuple[str, str]] = []
    sms = SmsNotifier(NotifySettings(), lambda to, text: texts.append((to, text)))
    mails: list[str] = []

    class Mail:
        def reaches(self, contact: str) -> bool:
            return "@" in contact

        def send(self, contact: str, code: str) -> None:
            mails.append(contact)

    both = ByContact((Mail(), sms))
    both.send(NUMBER, "123456")
    both.send("alice@example.org", "654321")
    assert [to for to, _ in texts] == [NUMBER] and mails == ["alice@example.org"]
    assert not both.reaches("not a contact")
    with pytest.raises(NotifyError, match=r"notify\.unreachable_contact"):
        both.send("not a contact", "111111")
