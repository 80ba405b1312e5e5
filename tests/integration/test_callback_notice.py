"""Staff told of each new callback request by e-mail ([notify] staff_address), through the same
real SMTP relay the one-time codes use (aiosmtpd with STARTTLS, test_oob_codes.py): a caller on
the microphone asks for a person and says yes to the callback; the notice names the request,
never the caller; a relay that is down loses nothing."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from appliance.config.settings import NotifySettings
from appliance.core.errors import ConfigError
from appliance.service import VoiceService
from appliance.storage.repository import Storage
from appliance.testing.fakes import ToneSynthesizer
from tests.integration import test_oob_codes as oob
from tests.integration.helpers import serve_utterances
from tests.integration.test_oob_codes import (
    ALICE,
    Relay,
    audit_events,
    closed_port,
    server_context,
    service_for,
    start_relay,
)
from tests.pki import Authority, make_ca

ca, relay = oob.ca, oob.relay  # the relay and its CA: fixtures

STAFF = "desk@bank.example.org"
TEXTS = ["I'd like to speak to a person, please.", "Yes, please."]


def call(service: VoiceService, store: Storage) -> None:
    serve_utterances(service, store, len(TEXTS), ALICE, channel="microphone")


def said(service: VoiceService) -> list[str]:
    tts = service.engines.tts
    assert isinstance(tts, ToneSynthesizer)
    return tts.spoken


def test_staff_get_a_notice_naming_the_request_and_never_the_caller(
    tmp_path: Path, relay: Relay, store: Storage
) -> None:
    service = service_for(tmp_path, relay.settings(staff_address=STAFF), TEXTS)
    call(service, store)
    (request,) = store.callbacks("admin:test")
    (envelope,) = relay.inbox.wait(1)
    assert envelope.rcpt_tos == [STAFF]
    (message,) = relay.inbox.messages()
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert request.id in body.decode()
    raw = bytes(envelope.original_content or b"")
    assert ALICE.encode() not in raw and ALICE[-4:].encode() not in raw  # no caller's number
    assert [e.outcome for e in audit_events(store, "callback_notice")] == ["ok"]
    assert said(service)[-1] == service.settings.transfer.callback_stored_reply


def test_a_relay_that_is_down_loses_no_request_and_the_failure_is_audited(
    tmp_path: Path, ca: Authority, store: Storage
) -> None:
    with closed_port() as port:  # bound, not listening: the connection is refused
        settings = NotifySettings(
            relay="127.0.0.1", port=port, server_name="relay.test",
            ca_file=str(tmp_path / "ca.pem"), from_address="codes@bank.example.org",
            staff_address=STAFF,
        )  # fmt: skip
        service = service_for(tmp_path, settings, TEXTS)
        call(service, store)
    assert len(store.callbacks("admin:test")) == 1  # stored all the same
    (event,) = audit_events(store, "callback_notice")
    assert event.outcome == "failed" and "notify.unreachable" in event.details
    assert said(service)[-1] == service.settings.transfer.callback_stored_reply


def test_without_a_staff_address_no_notice_is_sent(
    tmp_path: Path, relay: Relay, store: Storage
) -> None:
    service = service_for(tmp_path, relay.settings(), TEXTS)
    call(service, store)
    assert len(store.callbacks("admin:test")) == 1
    assert relay.inbox.envelopes == [] and audit_events(store, "callback_notice") == []


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"staff_address": STAFF}, "notify.staff_address: needs notify.relay"),
        (
            {
                "relay": "127.0.0.1",
                "server_name": "relay.test",
                "from_address": "a@b.example",
                "staff_address": "not an address",
            },
            "notify.staff_address: an e-mail address",
        ),
        ({"staff_message": "No id here."}, "notify.staff_message: must hold {request}"),
    ],
)
def test_a_wrong_staff_notice_setting_names_its_key(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        NotifySettings(**changes)
    assert key in str(caught.value)


def test_the_notice_needs_the_relays_certificate_like_the_codes(
    tmp_path: Path, store: Storage
) -> None:
    """A relay whose certificate is of another CA gets nothing (the notice is audited failed)."""
    other = make_ca("Another CA")
    mine = make_ca("Appliance Test CA")
    mine.pem(tmp_path / "ca.pem")
    context: ssl.SSLContext = server_context(other, tmp_path)
    with start_relay(tmp_path, context) as stranger:
        service = service_for(tmp_path, stranger.settings(staff_address=STAFF), TEXTS)
        call(service, store)
        assert stranger.inbox.envelopes == []
    (event,) = audit_events(store, "callback_notice")
    assert event.outcome == "failed" and "notify.certificate" in event.details
