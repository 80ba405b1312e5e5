"""Warm transfer (``[transfer] mode = "warm"``): the appliance calls the person itself, briefs
them, then bridges the caller's media to theirs. The SIP line runs in-process on fake engines;
the caller's phone (test_transfer's ``Phone``) and the person's phone (``Person`` here) are
Python peers on real UDP sockets. The caller's words come from a scripted transcriber."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import struct

import numpy as np
import pytest
from sqlalchemy import select

from appliance.config.settings import Settings, TransferMode, TransferSettings
from appliance.core.errors import ConfigError
from appliance.core.ports import TransferAttempt, TransferResult
from appliance.deploy.line import SipLine
from appliance.service import VoiceService, open_storage
from appliance.storage.schema import AuditEvent, ToolCall
from appliance.telephony.g711 import alaw_decode, alaw_encode
from appliance.telephony.rtp import RtpError, RtpPacket, parse_packet
from appliance.telephony.sdp import PCMA, parse_offer
from appliance.telephony.sip import SipMessage, parse, response
from appliance.telephony.ua import SipDialError, dial_address
from tests.integration.helpers import local_udp
from tests.integration.test_escalation import Desk, call
from tests.integration.test_sip_ua import until
from tests.integration.test_transfer import (
    ASK,
    Phone,
    make_service,
    on_line,
    spoken,
    tool_calls,
    turn_over,
)

CARD = "4111 1111 1111 1111"
BRIEFING_START = "Hello, this is the voice assistant"


class Person:
    """The person's phone that a warm transfer calls: SIP and RTP on their own sockets. It
    answers (or not) as the test says, keeps every RTP packet it receives, sends its own."""

    TAG = "person7"

    def __init__(self) -> None:
        self.sip, self.rtp = local_udp(), local_udp()
        self.received: list[RtpPacket] = []
        self.far: tuple[str, int] = ("127.0.0.1", 0)
        self.ua_port = 0
        self._capture: asyncio.Task[None] | None = None

    @property
    def uri(self) -> str:
        return f"sip:desk@127.0.0.1:{self.sip.getsockname()[1]}"

    def close(self) -> None:
        if self._capture is not None:
            self._capture.cancel()
        self.sip.close()
        self.rtp.close()

    async def request(self, timeout: float = 15.0, *, skip: str = "") -> SipMessage:
        """The next request from the appliance (responses, and retransmissions of a request of
        method ``skip``, are passed over)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sip, 65535), left)
            except TimeoutError:
                break
            message = parse(data)
            self.ua_port = addr[1]
            if message.is_request and message.method != skip:
                return message
        raise AssertionError("no request from the appliance in time")

    def send(self, message: SipMessage) -> None:
        self.sip.sendto(message.encode(), ("127.0.0.1", self.ua_port))

    def reply(self, request: SipMessage, status: int) -> None:
        self.send(response(request, status, to_tag=self.TAG if status > 100 else ""))

    def answer(self, invite: SipMessage) -> SipMessage:
        """180, then 200 with an SDP answer in the offer's codec; media capture starts."""
        offer = parse_offer(invite.body)
        self.far = (offer.address, offer.port)
        self.reply(invite, 180)
        ok = response(invite, 200, to_tag=self.TAG)
        ok.set("contact", f"<{self.uri}>")
        ok.set("content-type", "application/sdp")
        port = self.rtp.getsockname()[1]
        ok.body = (
            f"v=0\r\no=person 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {offer.payloads[0]}\r\na=sendrecv\r\n"
        ).encode()
        self.send(ok)
        self._capture = asyncio.create_task(self._receive())
        return ok

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.rtp, 2048)
            with contextlib.suppress(RtpError):
                self.received.append(parse_packet(data))

    def send_rtp(self, payloads: list[bytes]) -> None:
        for i, payload in enumerate(payloads):
            self.rtp.sendto(RtpPacket(PCMA, 100 + i, 160 * i, 0x5EED, payload).encode(), self.far)

    def bye(self, ok: SipMessage, invite: SipMessage) -> None:
        bye = SipMessage(f"BYE sip:appliance@127.0.0.1:{self.ua_port} SIP/2.0")
        bye.headers += [
            ("via", f"SIP/2.0/UDP {self.uri.split('@')[1]};branch=z9hG4bKpersonbye"),
            ("from", ok.get("to")),
            ("to", invite.get("from")),
            ("call-id", invite.call_id),
            ("cseq", "1 BYE"),
        ]
        self.send(bye)


def loud(payload: bytes) -> bool:
    """Whether an A-law payload carries sound (not silence)."""
    samples = alaw_decode(np.frombuffer(payload, dtype=np.uint8)).astype(np.float64)
    return bool(np.sqrt(np.mean(samples**2)) > 300)


def marker(frames: int = 25) -> list[bytes]:
    """A 1 kHz tone in A-law, 20 ms a packet, louder packet by packet (so no two are alike):
    what the person says, unlike anything else on the line."""
    n = 160 * frames
    pcm = struct.pack(
        f"<{n}h",
        *(int((2000 + 40 * i // 160) * math.sin(2 * math.pi * 1000 * i / 8000)) for i in range(n)),
    )
    codes = alaw_encode(np.frombuffer(pcm, dtype="<i2"))
    return [codes[i : i + 160].tobytes() for i in range(0, n, 160)]


def warm(settings: Settings, texts: list[str], *people: str, ring_s: float = 5.0) -> VoiceService:
    service = make_service(settings, texts)
    transfer = TransferSettings(destinations=people, mode=TransferMode.WARM, ring_timeout_s=ring_s)
    return dataclasses.replace(
        service, settings=dataclasses.replace(service.settings, transfer=transfer)
    )


class Ear:
    """What the caller's phone receives on its RTP socket."""

    def __init__(self, phone: Phone) -> None:
        self.payloads: list[bytes] = []
        self.task = asyncio.create_task(self._run(phone))

    async def _run(self, phone: Phone) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(phone.rtp, 2048)
            self.payloads.append(parse_packet(data).payload)


def test_the_person_is_briefed_then_bridged_and_their_bye_ends_the_callers_leg(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    person = Person()
    service = warm(settings, [ASK], person.uri)
    store = open_storage(service.settings)
    caplog.set_level(logging.DEBUG)

    async def test(line: SipLine, phone: Phone) -> None:
        ear = Ear(phone)
        invite = await person.request()
        assert invite.method == "INVITE" and invite.uri == person.uri
        offer = parse_offer(invite.body)
        assert offer.payloads[0] == PCMA and offer.telephone_event is not None  # the caller's
        ok = person.answer(invite)
        ack = await person.request(skip="INVITE")
        assert ack.method == "ACK" and ack.tag("to") == Person.TAG and ack.branch != invite.branch
        # The briefing, to the person alone; then the agent's session ends (bridged).
        await until(lambda: any(loud(p.payload) for p in person.received), 20)
        await until(lambda: not service.active, 20)
        transfer = service.settings.transfer
        assert transfer.hold_message in spoken(service)
        assert any(s.startswith(BRIEFING_START) for s in spoken(service))
        # The caller's voice reaches the person, as sent (both legs are A-law).
        await asyncio.sleep(0.3)
        person.received.clear()
        phone.say()
        said = {parse_packet(p).payload for _, p in phone.stream.packets}
        said = {p for p in said if loud(p)}
        await until(lambda: len(said & {p.payload for p in person.received}) >= len(said) // 2, 10)
        # The person's voice reaches the caller.
        await asyncio.sleep(0.3)
        ear.payloads.clear()
        tone = marker()
        person.send_rtp(tone)
        await until(lambda: len(set(tone) & set(ear.payloads)) >= len(tone) // 2, 10)
        # The person hangs up: the caller's leg gets our BYE.
        person.bye(ok, invite)
        bye = await phone.request()
        assert bye.method == "BYE" and bye.call_id == "xfer-1"
        phone.send(response(bye, 200), line.ua.port)
        await until(lambda: all(d.closed for d in line.ua.dialogs.values()), 10)
        ear.task.cancel()

    try:
        on_line(service, store, test)
        (record,) = store.list_calls()
        assert record.status == "ended:transferred"
        assert ("transfer_to_human", "transfer.connected") in tool_calls(store)
        briefing = next(s for s in spoken(service) if s.startswith(BRIEFING_START))
        assert "not verified" in briefing
        with store.session("look") as db:  # the briefing is spoken, never stored
            kept = [repr((e.details, e.object)) for e in db.scalars(select(AuditEvent))]
            kept += [repr(t.__dict__) for t in db.scalars(select(ToolCall))]
        assert not any("asked about" in k or BRIEFING_START in k for k in kept)
        for file in service.settings.home.rglob("*"):  # the database, its journal, any log
            if file.is_file():
                assert BRIEFING_START.encode() not in file.read_bytes(), file.name
        assert not any(BRIEFING_START in r.getMessage() for r in caplog.records)  # nor logged
    finally:
        store.close()
        person.close()


def test_the_caller_hanging_up_on_the_bridge_ends_the_persons_leg_with_our_bye(
    settings: Settings,
) -> None:
    person = Person()
    service = warm(settings, [ASK], person.uri)
    store = open_storage(service.settings)

    async def test(line: SipLine, phone: Phone) -> None:
        invite = await person.request()
        person.answer(invite)
        await person.request(skip="INVITE")  # our ACK
        await until(lambda: not service.active, 20)  # bridged
        phone.cseq += 1
        phone.send(phone._in_dialog("BYE", phone.cseq), line.ua.port)
        bye = await person.request(skip="ACK")
        assert bye.method == "BYE" and bye.call_id == invite.call_id
        assert bye.tag("to") == Person.TAG and bye.uri == person.uri  # to the person's Contact
        person.reply(bye, 200)
        await until(lambda: all(out.closed for out in line.ua.outbound.values()), 10)

    try:
        on_line(service, store, test)
        (record,) = store.list_calls()
        assert record.status == "ended:transferred"
    finally:
        store.close()
        person.close()


def test_a_busy_person_and_one_who_never_answers_give_the_caller_the_callback_offer(
    settings: Settings,
) -> None:
    busy, silent = Person(), Person()
    service = warm(settings, [ASK], busy.uri, silent.uri, ring_s=1.0)
    store = open_storage(service.settings)
    waited: list[float] = []

    async def test(line: SipLine, phone: Phone) -> None:
        loop = asyncio.get_running_loop()
        first = await busy.request()
        assert first.method == "INVITE"
        busy.reply(first, 100)
        busy.reply(first, 486)
        ack = await busy.request(skip="INVITE")
        # A non-2xx is ACKed in the INVITE's own transaction (RFC 3261 17.1.1.3).
        assert ack.method == "ACK" and ack.branch == first.branch and ack.cseq == (1, "ACK")
        assert ack.tag("to") == Person.TAG
        second = await silent.request()
        assert second.method == "INVITE"
        silent.reply(second, 180)
        rang = loop.time()
        cancel = await silent.request(skip="INVITE")
        waited.append(loop.time() - rang)
        assert cancel.method == "CANCEL" and cancel.branch == second.branch
        assert cancel.cseq == (second.cseq[0], "CANCEL")
        silent.reply(cancel, 200)
        silent.reply(second, 487)
        ack = await silent.request(skip="CANCEL")
        assert ack.method == "ACK" and ack.branch == second.branch
        await until(turn_over(service, "transfer.failed"), 30)
        assert service.active  # the call goes on with the agent
        assert not any(not out.closed for out in line.ua.outbound.values())  # nothing left open

    try:
        on_line(service, store, test)
        # the ring timeout (1 s), not Timer B (32 s): a bound a busy machine keeps well inside
        assert waited and waited[0] < 16.0
        outcomes = [o for tool, o in tool_calls(store) if tool == "transfer_to_human"]
        assert outcomes == ["ok", "transfer.declined", "transfer.no_answer"]
        said = spoken(service)
        assert said[-1] == service.settings.transfer.unreachable_reply
        assert not any(s.startswith(BRIEFING_START) for s in said)
    finally:
        store.close()
        busy.close()
        silent.close()


class Briefed(Desk):
    """A line that keeps the briefing it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.briefings: list[str] = []

    async def transfer(self, destination: str, briefing: str = "") -> TransferAttempt:
        self.briefings.append(briefing)
        return TransferAttempt(destination, TransferResult.CONNECTED, 200)


def test_a_card_number_said_before_asking_for_a_person_never_reaches_the_briefing(
    settings: Settings,
) -> None:
    service = make_service(settings, [f"My card number is {CARD}, what are your fees?", ASK])
    store = open_storage(service.settings)
    line = Briefed()
    try:
        call(service, store, [f"My card number is {CARD}, what are your fees?", ASK], line)
    finally:
        store.close()
    (briefing,) = line.briefings
    assert "fees" in briefing  # what they asked is summed up...
    assert not any(ch.isdigit() for ch in briefing)  # ...without a digit of the card
    assert "not verified" in briefing and "asked to speak to a person" in briefing


def test_warm_transfer_calls_ip_addresses_only_and_says_why_not_a_name() -> None:
    assert dial_address("sip:desk@10.0.0.5") == ("10.0.0.5", 5060)
    assert dial_address("sip:desk@10.0.0.5:5070;transport=udp") == ("10.0.0.5", 5070)
    assert dial_address("sip:desk@[2001:db8::1]:5070") == ("2001:db8::1", 5070)
    for uri, why in (
        ("sip:desk@pbx.example", "names a host"),
        ("sips:desk@10.0.0.5", "not a sip:"),
        ("sip:desk@10.0.0.5;transport=tcp", "UDP only"),
    ):
        with pytest.raises(SipDialError, match=why):
            dial_address(uri)
        with pytest.raises(ConfigError, match=r"transfer\.destinations"):
            TransferSettings(destinations=(uri,), mode=TransferMode.WARM)
    TransferSettings(destinations=("sip:desk@pbx.example",))  # blind: the phone resolves it
    with pytest.raises(ConfigError, match=r"transfer\.briefing"):
        TransferSettings(briefing="Caller {caller_id} verified {verified}")
