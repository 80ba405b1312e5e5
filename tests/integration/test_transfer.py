"""Blind transfer over SIP (REFER, RFC 3515) and the callback request when no one answers: the
SIP line in-process on fake engines, a Python peer on real UDP sockets playing the caller's
phone (it answers the REFER and sends the NOTIFYs a phone would), and the microphone channel,
which cannot transfer. The caller's words come from a scripted transcriber."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from appliance.config.settings import Settings, SipSettings, TransferSettings
from appliance.core.events import EventType
from appliance.core.ports import CallbackState
from appliance.deploy.line import SipLine
from appliance.service import VoiceService, open_storage
from appliance.storage.migrations import LATEST
from appliance.storage.repository import Storage
from appliance.storage.schema import AuditEvent, CallbackRequest, ToolCall
from appliance.telephony.sdp import PCMA
from appliance.telephony.sip import SipMessage, parse, response
from appliance.testing.fakes import FakeTranscriber, ToneSynthesizer, quiet, tone
from appliance.testing.media import Stream
from tests.integration.helpers import (
    NoToolModel,
    cli,
    fake_service,
    local_udp,
    serve_utterances,
    upgraded,
)
from tests.integration.test_sip_ua import invite, until

CALLER = "+15550100"  # the From of test_sip_ua's INVITE
ASK = "I'd like to speak to a person, please."
DESK, QUEUE = "sip:desk@192.0.2.10", "sip:queue@192.0.2.11;transport=udp"


def make_service(settings: Settings, texts: Sequence[str], **transfer: Any) -> VoiceService:
    """The service on fake engines (one tool matches a request for a person: the model is
    never asked which), ``texts`` what the caller says, utterance by utterance."""
    transfer.setdefault("ring_timeout_s", 5.0)
    settings = dataclasses.replace(
        settings,
        transfer=TransferSettings(**transfer),
        sip=SipSettings(
            listen="127.0.0.1:0", rtp_port_min=42000, rtp_port_max=42999, ring_ms=0,
            media_timeout_s=60,
        ),
    )  # fmt: skip
    model, tts = NoToolModel(["Not asked."]), ToneSynthesizer(5)
    return fake_service(settings, FakeTranscriber(texts), model, tts)


def spoken(service: VoiceService) -> list[str]:
    tts = service.engines.tts
    assert isinstance(tts, ToneSynthesizer)
    return tts.spoken


class Phone:
    """The caller's phone: SIP on one socket, RTP (a tone for each utterance, silence between)
    on another, paced at 20 ms."""

    def __init__(self) -> None:
        self.sip, self.rtp = local_udp(), local_udp()
        self.media_port = int(self.rtp.getsockname()[1])
        self.stream = Stream(codec=PCMA)  # the first codec of test_sip_ua's offer
        self.queued: list[bytes] = []
        self.far: tuple[str, int] = ("127.0.0.1", 0)
        self.ok: SipMessage | None = None
        self.cseq = 1
        self._taken: set[tuple[str, str]] = set()
        self._sender: asyncio.Task[None] | None = None

    def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
        self.sip.close()
        self.rtp.close()

    async def recv(self, timeout: float = 10.0) -> SipMessage | None:
        loop = asyncio.get_running_loop()
        try:
            return parse(await asyncio.wait_for(loop.sock_recv(self.sip, 65535), timeout))
        except TimeoutError:
            return None

    async def request(self, timeout: float = 15.0) -> SipMessage:
        """The next new request from the appliance. Responses to ours are skipped, and so is
        a retransmission of a request already taken (the same Via branch and CSeq, RFC 3261
        17.2.3: our answer was late), which would otherwise pass for the next request."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            message = await self.recv(left)
            if message is None or not message.is_request:
                continue
            key = (message.branch, message.get("cseq"))
            if key not in self._taken:
                self._taken.add(key)
                return message
        raise AssertionError("no request from the appliance in time")

    def send(self, message: SipMessage | bytes, port: int) -> None:
        data = message if isinstance(message, bytes) else message.encode()
        self.sip.sendto(data, ("127.0.0.1", port))

    async def call(self, ua_port: int) -> None:
        self.send(
            invite("xfer-1", self.media_port).replace(b":5061", f":{self.port}".encode()), ua_port
        )
        while (message := await self.recv()) is not None and message.status != 200:
            pass
        assert message is not None, "no 200 OK"
        self.ok = message
        self.far = ("127.0.0.1", int(message.body.decode().split("m=audio ")[1].split()[0]))
        self.send(self._in_dialog("ACK", 1), ua_port)
        self._sender = asyncio.create_task(self._send_media())

    @property
    def port(self) -> int:
        return int(self.sip.getsockname()[1])

    def say(self, seconds: float = 0.8) -> None:
        """An utterance (the transcriber decides what it "says")."""
        self.stream.packets.clear()
        self.stream.audio(tone(seconds, 8_000) + quiet(0.1, 8_000))
        self.queued += [packet for _, packet in self.stream.packets]

    def key(self, digits: str) -> None:
        """Key presses, as RFC 4733 telephone events in the media."""
        self.stream.packets.clear()
        for digit in digits:
            self.stream.digit(digit)
            self.stream.silence(0.1)
        self.queued += [packet for _, packet in self.stream.packets]

    async def _send_media(self) -> None:
        while True:
            if not self.queued:
                self.stream.packets.clear()
                self.stream.silence(0.02)
                self.queued.append(self.stream.packets[0][1])
            self.rtp.sendto(self.queued.pop(0), self.far)
            await asyncio.sleep(0.02)

    def notify(self, ua_port: int, sipfrag: str, *, final: bool = True) -> SipMessage:
        self.cseq += 1
        message = self._in_dialog("NOTIFY", self.cseq)
        message.headers += [
            ("event", "refer"),
            ("subscription-state", "terminated;reason=noresource" if final else "active"),
            ("content-type", "message/sipfrag"),
        ]
        message.body = f"{sipfrag}\r\n".encode()
        self.send(message, ua_port)
        return message

    def _in_dialog(self, method: str, cseq: int) -> SipMessage:
        assert self.ok is not None
        message = SipMessage(f"{method} sip:appliance@127.0.0.1 SIP/2.0")
        message.headers += [
            ("via", f"SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{method}{cseq}"),
            ("from", self.ok.get("from")),
            ("to", self.ok.get("to")),
            ("call-id", self.ok.call_id),
            ("cseq", f"{cseq} {method}"),
        ]
        return message


def on_line(
    service: VoiceService, store: Storage, test: Callable[[SipLine, Phone], Awaitable[None]]
) -> None:
    """A call on the SIP line: the phone calls, the session listens (the disclosure is over)
    and the caller asks (the first utterance); then ``test`` plays the phone."""

    async def main() -> None:
        line = SipLine(service.settings, service, store)
        await line.ua.start()
        phone = Phone()
        try:
            await phone.call(line.ua.port)
            await until(lambda: bool(service.active), 20)
            phone.say()
            await asyncio.wait_for(test(line, phone), 90)
        finally:
            phone.close()
            line.ua.close()
            await asyncio.sleep(0.1)

    asyncio.run(main())


def turn_over(service: VoiceService, outcome: str) -> Callable[[], bool]:
    """Whether the call's session has a finished turn whose agent outcome is ``outcome``."""

    def check() -> bool:
        return any(
            any(e.type is EventType.AGENT and e.data.get("outcome") == outcome for e in t.events)
            and any(e.type is EventType.TURN_END for e in t.events)
            for s in service.active
            for t in s.turns
        )

    return check


def tool_calls(store: Storage) -> list[tuple[str, str]]:
    with store.session("look") as db:
        rows = db.scalars(select(ToolCall).order_by(ToolCall.created_at)).all()
        return [(r.tool, r.outcome) for r in rows]


@pytest.mark.parametrize("notify_again", [False, True], ids=["notify", "notify-again-after-bye"])
def test_a_refer_whose_notify_says_200_puts_the_caller_through_and_our_bye_ends_our_leg(
    settings: Settings, notify_again: bool
) -> None:
    """Put through, the appliance leaves the call with its BYE. ``notify_again``: the phone
    did not hear our 200 to its final NOTIFY and sends it again after our BYE; it gets the
    same 200 (RFC 3261 17.2.2), not a 481 that a phone takes for a failure."""
    service = make_service(settings, [ASK], destinations=(DESK,))

    async def test(line: SipLine, phone: Phone) -> None:
        refer = await phone.request()
        assert refer.method == "REFER"
        assert refer.get("refer-to") == f"<{DESK}>"
        assert refer.get("referred-by").startswith("<sip:appliance@")
        assert refer.call_id == "xfer-1" and refer.tag("from") == phone.ok.tag("to")  # type: ignore[union-attr]
        # The announcement was said before the REFER went out, and only because one did.
        assert spoken(service)[-1] == service.settings.transfer.announce
        phone.send(response(refer, 202), line.ua.port)
        phone.notify(line.ua.port, "SIP/2.0 100 Trying", final=False)
        final = phone.notify(line.ua.port, "SIP/2.0 200 OK")
        bye = await phone.request()  # (a retransmitted REFER, had it raced the 202, is skipped)
        assert bye.method == "BYE"
        if notify_again:
            phone.send(final, line.ua.port)  # the transfer is over on our side
            while (answer := await phone.recv()) is not None:
                if not answer.is_request and answer.get("cseq").endswith("NOTIFY"):
                    break
            assert answer is not None and answer.status == 200
        phone.send(response(bye, 200), line.ua.port)
        await until(lambda: not service.active, 20)

    with open_storage(service.settings) as store:
        on_line(service, store, test)
        (call,) = store.list_calls()
        assert call.status == "ended:transferred"
        assert ("transfer_to_human", "transfer.connected") in tool_calls(store)
        view = store.read_call(call.id, "admin:test", "check")
        assert view.turns[0].route == "tool"
        assert not any("reached" in s for s in spoken(service))  # nothing after the transfer
        with store.session("look") as db:
            actions = [
                (e.action, e.outcome)
                for e in db.scalars(select(AuditEvent).order_by(AuditEvent.seq))
            ]
        assert ("tool_call", "transfer.connected") in actions


def test_busy_destinations_are_tried_in_order_then_the_caller_gets_the_callback_they_accept(
    settings: Settings,
) -> None:
    service = make_service(settings, [ASK, "Yes please."], destinations=(DESK, QUEUE))
    refer_to: list[str] = []

    async def test(line: SipLine, phone: Phone) -> None:
        for sipfrag in ("SIP/2.0 486 Busy Here", "SIP/2.0 603 Decline"):
            refer = await phone.request()
            assert refer.method == "REFER"
            refer_to.append(refer.get("refer-to"))
            phone.send(response(refer, 202), line.ua.port)
            phone.notify(line.ua.port, sipfrag)
        await until(turn_over(service, "transfer.failed"), 30)
        phone.say()  # "Yes please."
        await until(turn_over(service, "callback.requested"), 30)

    with open_storage(service.settings) as store:
        on_line(service, store, test)
        assert refer_to == [f"<{DESK}>", f"<{QUEUE}>"]
        transfer = service.settings.transfer
        said = spoken(service)
        assert transfer.announce in said and transfer.unreachable_reply in said
        assert said[-1] == transfer.callback_stored_reply
        outcomes = [o for tool, o in tool_calls(store) if tool == "transfer_to_human"]
        assert outcomes == ["ok", "transfer.declined", "transfer.declined"]
        (request,) = store.callbacks("admin:test")
        assert request.state is CallbackState.OPEN and request.number == CALLER
        with store.session("look") as db:  # the number is sealed, not in the clear
            row = db.scalars(select(CallbackRequest)).one()
            assert row.number is not None and CALLER.encode() not in row.number
            assert row.caller_hash == store.caller_hash(CALLER)
    listed = cli(service.settings.home, "callbacks", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["state"] == "open" and row["number"] == CALLER
    marked = cli(service.settings.home, "callbacks", "mark-called", row["id"])
    assert marked.returncode == 0, marked.stderr
    closed = cli(service.settings.home, "callbacks", "close", row["id"])
    assert closed.returncode == 0, closed.stderr
    unknown = cli(service.settings.home, "callbacks", "close", "no-such-request")
    assert unknown.returncode == 1 and "storage.no_callback" in unknown.stderr
    with open_storage(service.settings) as store:
        (request,) = store.callbacks("admin:test")
        assert request.state is CallbackState.CLOSED and request.changed_by.startswith("cli:")
        with store.session("look") as db:
            events = db.scalars(select(AuditEvent).where(AuditEvent.action.like("callback%"))).all()
            actions = [(e.action, e.outcome) for e in events]
            assert ("callback_request", "ok") in actions
            assert ("callback_called_back", "ok") in actions
            assert ("callback_closed", "ok") in actions
            assert ("callback_closed", "unknown") in actions
            assert not any(CALLER in json.dumps([e.actor, e.object, e.details]) for e in events)
        assert store.verify_audit().ok


def test_a_refer_refused_with_501_or_403_falls_back_to_the_callback_offer_and_a_no(
    settings: Settings,
) -> None:
    service = make_service(settings, [ASK, "No thanks."], destinations=(DESK, QUEUE))

    async def test(line: SipLine, phone: Phone) -> None:
        for status in (501, 403):
            refer = await phone.request()
            assert refer.method == "REFER"
            phone.send(response(refer, status), line.ua.port)
        await until(turn_over(service, "transfer.failed"), 30)
        phone.say()  # "No thanks."
        await until(turn_over(service, "callback.declined"), 30)
        assert service.active  # the call goes on with the agent

    with open_storage(service.settings) as store:
        on_line(service, store, test)
        outcomes = [o for tool, o in tool_calls(store) if tool == "transfer_to_human"]
        assert outcomes == ["ok", "transfer.refused", "transfer.refused"]
        assert spoken(service)[-1] == service.settings.transfer.callback_declined_reply
        assert store.callbacks("admin:test") == []


def test_key_1_to_the_callback_offer_stores_a_callback_request(settings: Settings) -> None:
    """The callback offer answered on the keypad (RFC 4733 events), through the call's own
    path: the line's keypad, the session's keys, the agent, the callback desk; 1 is yes."""
    service = make_service(settings, [ASK], destinations=(DESK,))

    async def test(line: SipLine, phone: Phone) -> None:
        refer = await phone.request()
        phone.send(response(refer, 202), line.ua.port)
        phone.notify(line.ua.port, "SIP/2.0 486 Busy Here")
        await until(turn_over(service, "transfer.failed"), 30)
        phone.key("1")  # no '#': the keypad hands the key on after its pause
        await until(turn_over(service, "callback.requested"), 30)

    with open_storage(service.settings) as store:
        on_line(service, store, test)
        assert spoken(service)[-1] == service.settings.transfer.callback_stored_reply
        (request,) = store.callbacks("admin:test")
        assert request.state is CallbackState.OPEN and request.number == CALLER
        (call,) = store.list_calls()
        assert request.call_id == call.id
        keyed = store.read_call(call.id, "admin:test", "check").turns[-1]
        assert keyed.route == "keypad" and "1" not in (keyed.transcript or "")


def test_no_final_notify_within_the_ring_timeout_is_no_answer(settings: Settings) -> None:
    service = make_service(settings, [ASK], destinations=(DESK,), ring_timeout_s=1.0)

    async def test(line: SipLine, phone: Phone) -> None:
        refer = await phone.request()
        phone.send(response(refer, 202), line.ua.port)
        phone.notify(line.ua.port, "SIP/2.0 180 Ringing", final=False)  # and then nothing
        await until(turn_over(service, "transfer.failed"), 30)

    with open_storage(service.settings) as store:
        on_line(service, store, test)
        outcomes = [o for tool, o in tool_calls(store) if tool == "transfer_to_human"]
        assert outcomes == ["ok", "transfer.no_answer"]


def test_on_the_microphone_a_request_for_a_person_is_the_callback_offer_never_transferring(
    settings: Settings,
) -> None:
    service = make_service(settings, [ASK, "Yes."], destinations=(DESK,))
    with open_storage(service.settings) as store:
        serve_utterances(service, store, 2, CALLER, channel="microphone")
        transfer = service.settings.transfer
        assert spoken(service) == [transfer.unavailable_reply, transfer.callback_stored_reply]
        assert not any("transferring" in s.lower() for s in spoken(service))
        (request,) = store.callbacks("admin:test")
        assert request.state is CallbackState.OPEN and request.number == CALLER


def test_callbacks_list_state_shows_only_the_requests_in_that_state(settings: Settings) -> None:
    """``appliance callbacks list --state open|called_back|closed`` (README, Transfer): each
    state lists only its own requests; without it, every request; a state that is none is
    refused by argparse, which names the choices."""
    numbers = {"open": "+15550101", "called_back": "+15550102", "closed": "+15550103"}
    with open_storage(settings) as store:
        for state, number in numbers.items():
            handle = store.start_call(number, "test")
            handle.finish("ended")
            request = store.request_callback(handle.call_id, number, "transfer")
            if state != "open":
                store.set_callback_state(request, CallbackState(state), "admin:test")
    for state, number in numbers.items():
        listed = cli(settings.home, "callbacks", "list", "--json", "--state", state)
        assert listed.returncode == 0, listed.stderr
        assert [(r["state"], r["number"]) for r in json.loads(listed.stdout)] == [(state, number)]
        table = cli(settings.home, "callbacks", "list", "--state", state).stdout
        assert number in table and not any(n in table for n in numbers.values() if n != number)
    every = json.loads(cli(settings.home, "callbacks", "list", "--json").stdout)
    assert sorted(r["number"] for r in every) == sorted(numbers.values())
    wrong = cli(settings.home, "callbacks", "list", "--state", "called")
    assert wrong.returncode == 2 and "called_back" in wrong.stderr


def test_a_database_at_schema_6_gains_callback_requests_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    assert LATEST >= 7  # so the upgrade (to every migration) is from 6 on
    at_schema_6 = (  # as the appliance at schema 6 left it
        "DROP TABLE callback_requests",
        "DELETE FROM schema_migrations WHERE version = 7",
    )
    with upgraded(tmp_path, CALLER, *at_schema_6) as (store, call_id):
        request = store.request_callback(call_id, CALLER, "transfer")
        (listed,) = store.callbacks("admin:test")
        assert listed.id == request and listed.number == CALLER
        # Erasing the caller takes their callback requests too.
        store.erase_caller(CALLER, "admin:test")
        assert store.callbacks("admin:test") == []
        assert store.verify_audit().ok
