"""Out-of-band one-time codes through a real SMTP relay (aiosmtpd on 127.0.0.1, STARTTLS with a
certificate from a CA the test makes): sent in a call to the caller's registered contact, read
back or keyed in after the PIN to reach level 2; refused relays (no STARTTLS, a certificate of
another CA or for another name), a relay down or silent, a loose password file; and neither the
code nor the contact in the logs or the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import json
import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from appliance.config.settings import CredentialSource, NotifySettings, load_settings
from appliance.core.errors import ConfigError, NotifyError
from appliance.core.ports import CredentialKind, Transcript
from appliance.deploy.egress import allowlist
from appliance.identity.directory import pin_record
from appliance.notifiers.smtp import SmtpNotifier
from appliance.pipeline.reply import SECRET_NOT_RECORDED
from appliance.service import VoiceService
from appliance.storage.repository import Storage
from appliance.storage.schema import AuditEvent
from appliance.testing.fakes import ToneSynthesizer
from appliance.tools.agent import ToolAgent
from tests.integration.helpers import (
    NoToolModel,
    agent_said,
    fake_service,
    serve_utterances,
    tool_settings,
)
from tests.pki import Authority, make_ca

ALICE = "+15550100"
CONTACT = "alice.pelican@example.org"
RELAY_NAME = "relay.test"
SENDER = "codes@bank.example.org"
WAIT_S = 30.0  # a bound on each wait for the relay, never a measure of speed
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
BALANCE = "Your current account balance is 1250.40 pounds."


# -- a test CA, certificates, and the relay --------------------------------------------------------


def server_context(ca: Authority, tmp: Path, name: str = RELAY_NAME) -> ssl.SSLContext:
    """The relay's side: a certificate for ``name`` signed by ``ca``."""
    cert_path, key_path = ca.issue(tmp, name, dns=name)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port of 127.0.0.1 held, bound and not listening, for as long as the block runs: a
    connection to it is refused, and nothing else can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


class AnyPortController(Controller):
    """aiosmtpd's threaded relay on a port the system picks when it binds (port 0), read
    back from the listening socket: no other process can take the port between choosing it
    and binding it. ``port`` is the bound one once ``start`` returns."""

    def _trigger_server(self) -> None:
        # Called by start() once the server listens, to make it greet one connection at
        # ``self.port``: the port has to be the real one by then.
        assert isinstance(self.server, asyncio.Server)
        self.port = int(self.server.sockets[0].getsockname()[1])
        super()._trigger_server()  # type: ignore[no-untyped-call]


class Inbox:
    """The relay's handler: every message it accepted."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self._changed = threading.Condition()

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        with self._changed:
            self.envelopes.append(envelope)
            self._changed.notify_all()
        return "250 Message accepted for delivery"

    def wait(self, count: int) -> list[Envelope]:
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.envelopes) >= count, WAIT_S)
        assert arrived, f"the relay received {len(self.envelopes)} of {count} messages"
        return list(self.envelopes)

    def messages(self) -> list[Message]:
        return [email.message_from_bytes(bytes(e.original_content or b"")) for e in self.envelopes]


@dataclasses.dataclass
class Relay:
    port: int
    inbox: Inbox
    ca_file: Path

    def code(self, index: int = -1) -> str:
        """The code in the ``index``-th message the relay received (waiting for it)."""
        self.inbox.wait(index + 1 if index >= 0 else 1)
        body = self.inbox.messages()[index].get_payload(decode=True)
        assert isinstance(body, bytes)
        found = re.findall(r"\b\d{6}\b", body.decode())
        assert len(found) == 1, body
        return str(found[0])

    def settings(self, **changes: Any) -> NotifySettings:
        values: dict[str, Any] = {
            "relay": "127.0.0.1",
            "port": self.port,
            "server_name": RELAY_NAME,
            "ca_file": str(self.ca_file),
            "from_address": SENDER,
        }
        return NotifySettings(**{**values, **changes})


@contextlib.contextmanager
def start_relay(tmp: Path, context: ssl.SSLContext | None, **options: Any) -> Iterator[Relay]:
    """aiosmtpd on a free port of 127.0.0.1: with ``context``, STARTTLS offered and required."""
    inbox = Inbox()
    tls: dict[str, Any] = {"tls_context": context, "require_starttls": True} if context else {}
    controller = AnyPortController(
        inbox, hostname="127.0.0.1", port=0, ready_timeout=WAIT_S, **tls, **options
    )
    controller.start()
    try:
        yield Relay(controller.port, inbox, tmp / "ca.pem")
    finally:
        controller.stop()


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    authority = make_ca("Appliance Test CA")
    authority.pem(tmp_path / "ca.pem")
    return authority


@pytest.fixture
def relay(tmp_path: Path, ca: Authority) -> Iterator[Relay]:
    with start_relay(tmp_path, server_context(ca, tmp_path)) as started:
        yield started


def enrol(store: Storage, contact: str = CONTACT) -> None:
    """ALICE with a PIN and a contact, and no authenticator."""
    store.add_caller(ALICE, "Alice Pelican-Canary", "admin:test")
    store.set_credential(ALICE, CredentialKind.PIN, pin_record("1357"), "admin:test")
    store.set_credential(ALICE, CredentialKind.CONTACT, contact.encode(), "admin:test")


# -- the service on fake engines ---------------------------------------------------------------


class Transcripts:
    """The caller's words, turn by turn; a callable is said when its turn comes (the code the
    caller reads from the e-mail, which arrives during the call)."""

    def __init__(self, texts: Sequence[str | Any]) -> None:
        self._texts = list(texts)
        self._lock = threading.Lock()
        self.calls = 0

    def transcribe(self, pcm: bytes, sample_rate_hz: int) -> Transcript:
        with self._lock:
            self.calls += 1
            text = self._texts[min(self.calls, len(self._texts)) - 1]
        said = text() if callable(text) else text
        return Transcript(said, len(pcm) / 2 / sample_rate_hz, 0.0, "en")


def service_for(tmp_path: Path, notify: NotifySettings, texts: Sequence[Any] = ()) -> VoiceService:
    settings = tool_settings(tmp_path, CredentialSource.DIRECTORY, notify=notify)
    stt, model, tts = Transcripts(texts), NoToolModel(["-"]), ToneSynthesizer(2)
    return fake_service(settings, stt, model, tts, output_sample_rate_hz=16_000)


def agent_for(service: VoiceService, store: Storage) -> ToolAgent:
    """One call's tool agent, as run_call makes it."""
    record = store.start_call(ALICE, "test")
    agent = service.tool_agent(store, record.call_id, ALICE)
    assert agent is not None
    return agent


def say(agent: ToolAgent, text: str) -> tuple[str, str]:
    turn = agent.handle(text, text, b"")
    assert turn is not None, text
    return turn.outcome, turn.reply


def spoken(code: str) -> str:
    return " ".join(WORDS[int(d)] for d in code)


def audit_events(store: Storage, *actions: str) -> list[AuditEvent]:
    with store.session("look") as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action.in_(actions)).order_by(AuditEvent.seq)
            )
        )


# -- in a call -----------------------------------------------------------------------------------


def test_the_pin_then_the_emailed_code_read_back_reach_level_2_in_a_call(
    tmp_path: Path, store: Storage, relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    """(a) A whole call on fake engines: PIN, then the code the relay received, read back as
    words; the balance (level 2) is spoken; neither answer is stored; (g) nothing of the code
    or the contact in the appliance's logs or the audit trail."""
    caplog.set_level(logging.DEBUG)
    enrol(store)
    texts = [
        "What's my account balance?",
        "one three five seven",
        lambda: spoken(relay.code()),  # said once the e-mail has arrived
        "Thanks!",
    ]
    service = service_for(tmp_path, relay.settings(), texts)
    outcome = serve_utterances(service, store, len(texts), ALICE)
    tools = service.settings.tools
    assert agent_said(outcome.turns[:3]) == [
        f"step_up.pin: {tools.pin_prompt}",
        f"step_up.code: {tools.code_prompt}",
        f"tool.ok: {BALANCE}",
    ]
    # One e-mail, to the registered contact, with the code and its validity and nothing else.
    assert [e.rcpt_tos for e in relay.inbox.envelopes] == [[CONTACT]]
    (message,) = relay.inbox.messages()
    code = relay.code()
    body = str(message.get_payload(decode=True), "utf-8")
    assert body.strip() == f"Your verification code is {code}. It is valid for 5 minutes. " + (
        "Do not share it with anyone."
    )
    assert message["From"] == SENDER and message["Subject"] == "Your verification code"
    for private in ("Alice", "Pelican", "15550100", "1250"):
        assert private not in message.as_string()
    # The PIN and the code turns keep no transcript.
    assert outcome.call_id is not None
    view = store.read_call(outcome.call_id, "test", "check")
    assert [t.transcript for t in view.turns][1:3] == [SECRET_NOT_RECORDED] * 2
    # The audit trail: the code was sent, by the caller's pseudonym; no code, no contact.
    (sent,) = audit_events(store, "oob_code_sent", "oob_code_failed")
    assert (sent.action, sent.outcome) == ("oob_code_sent", "ok")
    assert sent.actor == f"caller:{store.caller_hash(ALICE)[:16]}"
    assert sent.object == f"call:{outcome.call_id}"
    with store.session("look") as session:
        every = list(session.scalars(select(AuditEvent)))
    trail = json.dumps([[e.actor, e.action, e.object, e.outcome, e.details] for e in every])
    assert code not in trail and CONTACT not in trail and "alice.pelican" not in trail
    logged = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("appliance", "root"))
    )
    assert code not in logged and spoken(code) not in logged and "pelican" not in logged.lower()


def test_the_code_can_be_keyed_in_and_is_good_once(
    tmp_path: Path, store: Storage, relay: Relay
) -> None:
    """Keyed (DTMF) instead of read back; a code once used opens nothing in the next call."""
    enrol(store)
    service = service_for(tmp_path, relay.settings())
    agent = agent_for(service, store)
    assert say(agent, "What's my account balance?")[0] == "step_up.pin"
    assert say(agent, "one three five seven")[0] == "step_up.code"
    code = relay.code()
    keyed = agent.handle_keys(code + "#")
    assert keyed is not None and (keyed.outcome, keyed.reply, keyed.secret) == (
        "tool.ok",
        BALANCE,
        True,
    )
    again = agent_for(service, store)  # the next call: a fresh code, the old one is spent
    assert say(again, "What's my account balance?")[0] == "step_up.pin"
    assert say(again, "one three five seven")[0] == "step_up.code"
    relay.inbox.wait(2)
    assert say(again, spoken(code))[0] == "identity.wrong"
    assert say(again, spoken(relay.code(1)))[1] == BALANCE


def test_a_wrong_code_is_refused_and_counts_toward_the_lockout(
    tmp_path: Path, store: Storage, relay: Relay
) -> None:
    """(b) A wrong code is refused, the right one still works; three wrong lock the factor
    (in the store: a new call is locked too, and gets no fresh e-mail)."""
    enrol(store)
    service = service_for(tmp_path, relay.settings())
    tools = service.settings.tools
    agent = agent_for(service, store)
    say(agent, "What's my account balance?")
    say(agent, "one three five seven")
    code = relay.code()
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    assert say(agent, spoken(wrong)) == ("identity.wrong", tools.wrong_answer)
    assert say(agent, spoken(code)) == ("tool.ok", BALANCE)

    agent = agent_for(service, store)
    say(agent, "What's my account balance?")
    say(agent, "one three five seven")
    code = relay.code(1)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    assert [say(agent, spoken(wrong))[0] for _ in range(3)] == [
        "identity.wrong",
        "identity.wrong",
        "identity.locked",
    ]
    later = agent_for(service, store)
    say(later, "What's my account balance?")
    assert say(later, "one three five seven") == ("identity.locked", tools.locked_reply)
    assert len(relay.inbox.envelopes) == 2  # no e-mail while locked
    codes = service._factors.codes if service._factors else None
    assert codes is not None and codes.locked(ALICE)


# -- refused relays -----------------------------------------------------------------------------


def check_unsent(tmp_path: Path, store: Storage, notify: NotifySettings, error: str) -> None:
    """In a call: PIN, then the agent says it could not send a code and offers a person (a yes
    asks for a person: here, with no line to transfer on, the callback offer); the audit trail
    says why, by code."""
    service = service_for(tmp_path, notify)
    tools = service.settings.tools
    agent = agent_for(service, store)
    say(agent, "What's my account balance?")
    assert say(agent, "one three five seven") == ("step_up.code_unsent", tools.code_not_sent)
    assert say(agent, "yes please") == (
        "transfer.unavailable",
        service.settings.transfer.unavailable_reply,
    )
    failed = audit_events(store, "oob_code_sent", "oob_code_failed")[-1]
    assert (failed.action, failed.outcome) == ("oob_code_failed", "failed")
    assert json.loads(failed.details) == {"error": error}
    assert failed.actor == f"caller:{store.caller_hash(ALICE)[:16]}"


def test_a_relay_with_a_certificate_of_another_ca_or_name_gets_nothing(
    tmp_path: Path, store: Storage, ca: Authority
) -> None:
    """(c) The certificate is checked: one from another CA, or for another name, is refused
    before anything is sent, and the caller is offered a person."""
    enrol(store)
    other = make_ca("Someone Else's CA")
    with start_relay(tmp_path, server_context(other, tmp_path)) as relay:
        with pytest.raises(NotifyError) as refused:
            SmtpNotifier(relay.settings()).send(CONTACT, "123456")
        assert refused.value.code == "notify.certificate"
        check_unsent(tmp_path, store, relay.settings(), "notify.certificate")
        assert relay.inbox.envelopes == []
    with start_relay(tmp_path, server_context(ca, tmp_path, name="elsewhere.test")) as relay:
        with pytest.raises(NotifyError) as refused:
            SmtpNotifier(relay.settings()).send(CONTACT, "123456")
        assert refused.value.code == "notify.certificate"
        assert relay.inbox.envelopes == []


def test_a_relay_without_starttls_gets_nothing(
    tmp_path: Path, store: Storage, ca: Authority
) -> None:
    """(d) Never plain text: a relay that offers no STARTTLS is refused, and the mail it would
    have taken in clear never reaches it."""
    enrol(store)
    with start_relay(tmp_path, None) as relay:
        with pytest.raises(NotifyError) as refused:
            SmtpNotifier(relay.settings()).send(CONTACT, "123456")
        assert refused.value.code == "notify.no_starttls"
        check_unsent(tmp_path, store, relay.settings(), "notify.no_starttls")
        assert relay.inbox.envelopes == []


def test_a_relay_down_or_silent_gives_the_spoken_fallback_and_an_audit_event(
    tmp_path: Path, store: Storage, ca: Authority
) -> None:
    """(e) Nothing listening (refused at once), or a listener that never answers (the
    configured timeout): no crash, the fallback and the person offered, an audit event."""
    enrol(store)
    ca_file = str(tmp_path / "ca.pem")
    with closed_port() as port:
        down = NotifySettings(
            relay="127.0.0.1", port=port, server_name=RELAY_NAME, ca_file=ca_file,
            from_address=SENDER,
        )  # fmt: skip
        check_unsent(tmp_path, store, down, "notify.unreachable")
    with socket.socket() as silent:  # accepts (the backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        quiet_relay = dataclasses.replace(down, port=silent.getsockname()[1], timeout_s=1.0)
        with pytest.raises(NotifyError) as refused:
            SmtpNotifier(quiet_relay).send(CONTACT, "123456")
        assert refused.value.code == "notify.timeout"


def test_the_password_file_must_be_owner_only_and_logs_in_after_starttls(
    tmp_path: Path, ca: Authority
) -> None:
    """(f) A password file group or others can read is refused, naming the key, before any
    connection; owner-only, the notifier logs in (over TLS) and the mail goes."""

    def check(
        server: SmtpServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append(data.login)
        good = (data.login, data.password) == (b"appliance", b"s3cret-relay")
        return AuthResult(success=good)

    logins: list[bytes] = []
    with start_relay(
        tmp_path,
        server_context(ca, tmp_path),
        authenticator=check,
        auth_require_tls=True,
        auth_required=True,  # no mail without the login
    ) as relay:
        secret = tmp_path / "relay.password"
        secret.write_text("s3cret-relay\n")
        secret.chmod(0o640)
        notify = relay.settings(username="appliance", password_file=str(secret))
        with pytest.raises(ConfigError) as refused:
            SmtpNotifier(notify).send(CONTACT, "123456")
        assert refused.value.code == "config.unsafe_file"
        assert "notify.password_file" in refused.value.message
        assert relay.inbox.envelopes == []
        secret.chmod(0o600)
        SmtpNotifier(notify).send(CONTACT, "123456")
        assert relay.inbox.wait(1)[0].rcpt_tos == [CONTACT]
        assert relay.inbox.envelopes[0].mail_from == SENDER
        assert logins == [b"appliance"]  # logged in once, and only once the file was safe


def test_the_password_file_is_read_again_for_each_send(tmp_path: Path, ca: Authority) -> None:
    """The relay password is read at use (smtp.py ``read_password``): a rotation written to
    the file between two sends is the password of the second, with no new notifier."""
    logins: list[tuple[bytes, bytes]] = []

    def check(
        server: SmtpServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=True)

    with start_relay(
        tmp_path, server_context(ca, tmp_path), authenticator=check, auth_require_tls=True,
        auth_required=True,
    ) as relay:  # fmt: skip
        secret = tmp_path / "relay.password"
        secret.write_text("before-rotation\n")
        secret.chmod(0o600)
        notifier = SmtpNotifier(relay.settings(username="appliance", password_file=str(secret)))
        notifier.send(CONTACT, "123456")
        secret.write_text("after-rotation\n")
        notifier.send(CONTACT, "654321")
        assert len(relay.inbox.wait(2)) == 2
    assert logins == [(b"appliance", b"before-rotation"), (b"appliance", b"after-rotation")]


def test_errors_and_logs_carry_neither_the_code_nor_the_contact(
    tmp_path: Path, store: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    """(g) A failed send: the error, its chain and the appliance's log lines hold no code and
    no contact."""
    caplog.set_level(logging.DEBUG)
    enrol(store)
    (tmp_path / "ca.pem").write_bytes(make_ca("x").cert.public_bytes(serialization.Encoding.PEM))
    with closed_port() as port:
        notify = NotifySettings(
            relay="127.0.0.1", port=port, server_name=RELAY_NAME,
            ca_file=str(tmp_path / "ca.pem"), from_address=SENDER,
        )  # fmt: skip
        with pytest.raises(NotifyError) as refused:
            SmtpNotifier(notify).send(CONTACT, "424242")
        assert refused.value.__cause__ is None and refused.value.__suppress_context__
        assert "424242" not in str(refused.value) and CONTACT not in str(refused.value)
        check_unsent(tmp_path, store, notify, "notify.unreachable")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "pelican" not in logged.lower() and "424242" not in logged
    assert "notify.unreachable" in logged  # the log names what failed, by code


# -- what is offered, and the settings ------------------------------------------------------------


def test_no_relay_no_code_and_a_caller_with_an_authenticator_gets_totp(
    tmp_path: Path, store: Storage, relay: Relay
) -> None:
    """Off by default: without [notify] no code is offered. With it, an enrolled authenticator
    still comes first (the code is for callers who have none), and a contact that is not an
    e-mail address gets no e-mail."""
    enrol(store, contact="+44 20 7946 0000")
    tools = service_for(tmp_path, NotifySettings()).settings.tools
    for notify in (NotifySettings(), relay.settings()):  # none, and a number for a contact
        agent = agent_for(service_for(tmp_path, notify), store)
        say(agent, "What's my account balance?")
        assert say(agent, "one three five seven") == ("step_up.unavailable", tools.cannot_verify)
    store.set_credential(ALICE, CredentialKind.CONTACT, CONTACT.encode(), "admin:test")
    store.set_credential(ALICE, CredentialKind.TOTP, b"directory-totp-secret-20", "admin:test")
    agent = agent_for(service_for(tmp_path, relay.settings()), store)
    say(agent, "What's my account balance?")
    assert say(agent, "one three five seven")[0] == "step_up.totp"
    assert relay.inbox.envelopes == []


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"relay": "smtp.example.org", "server_name": "a.b", "from_address": SENDER}, "relay"),
        ({"relay": "10.0.0.25", "from_address": SENDER}, "server_name"),
        ({"relay": "10.0.0.25", "server_name": "smtp.bank.test"}, "from_address"),
        ({"username": "appliance"}, "password_file"),
        ({"timeout_s": 0.0}, "timeout_s"),
        ({"message": "no code here"}, "message"),
        ({"port": 70000}, "port"),
    ],
)
def test_bad_notify_settings_name_their_key(values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"notify\.{key}"):
        NotifySettings(**values)


def test_the_relay_joins_the_egress_allowlist(tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "APPLIANCE_HOME": str(tmp_path),
            "APPLIANCE_NOTIFY__RELAY": "10.20.30.40",
            "APPLIANCE_NOTIFY__SERVER_NAME": "smtp.bank.test",
            "APPLIANCE_NOTIFY__FROM_ADDRESS": SENDER,
        }
    )
    assert settings.notify.enabled and "10.20.30.40" in allowlist(settings)
    assert not load_settings(environ={"APPLIANCE_HOME": str(tmp_path)}).notify.enabled


def test_a_send_looks_up_no_name(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay by its address, the EHLO name an address literal, the Message-ID's domain the
    sender's: a send asks the resolver for no name (the egress guard would refuse it)."""
    asked: list[str] = []
    sender = threading.get_ident()  # the relay's own thread looks names up for itself
    lookup, reverse = socket.getaddrinfo, socket.gethostbyaddr

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == sender:
            asked.append(str(host))
        return lookup(host, *args, **kwargs)

    def gethostbyaddr(host: str) -> Any:
        if threading.get_ident() == sender:
            asked.append(f"reverse {host}")
        return reverse(host)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "gethostbyaddr", gethostbyaddr)
    SmtpNotifier(relay.settings()).send(CONTACT, "123456")
    monkeypatch.undo()
    relay.inbox.wait(1)
    assert asked == ["127.0.0.1"]  # the relay's address, as given
