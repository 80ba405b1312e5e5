"""Blind transfer over SIP (REFER, RFC 3515) and the callback request when no one answers: the
SIP line in-process on fake engines, a Python peer on real UDP sockets playing the caller's
phone (it answers the REFER and sends the NOTIFYs a phone would), and the microphone channel,
which cannot transfer. The caller's words come from a scripted transcriber."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from appliance.audio_io.memory import MemorySink, MemorySource
from appliance.config.settings import Settings, SipSettings, TransferSettings
from appliance.core.events import EventType
from appliance.core.ports import CallbackState, ChatMessage, TurnRecord
from appliance.deploy.line import SipLine
from appliance.pipeline.session import Engines
from appliance.service import VoiceService, open_storage, pipeline_config, run_call
from appliance.storage.keys import load_or_create
from appliance.storage.migrations import LATEST, applied_versions
from appliance.storage.repository import Storage
from appliance.storage.schema import AuditEvent, CallbackRequest, ToolCall
from appliance.telephony.sdp import PCMA
from appliance.telephony.sip import SipMessage, parse, response
from appliance.testing.fakes import (
    EnergyVad,
    FakeTranscriber,
    ScriptedChatModel,
    ToneSynthesizer,
    quiet,
    tone,
)
from appliance.testing.media import Stream
from tests.integration.helpers import ENDPOINTING
from tests.integration.test_sip_ua import invite, until

ROOT = Path(__file__).resolve().parents[2]
CALLER = "+15550100"  # the From of test_sip_ua's INVITE
ASK = "I'd like to speak to a person, please."
DESK, QUEUE = "sip:desk@192.0.2.10", "sip:queue@192.0.2.11;transport=udp"


class Model(ScriptedChatModel):
    """A model that can be asked for a tool request (it never is here: one tool matches)."""

    def request_json(
        self, messages: Sequence[ChatMessage], schema: dict[str, Any], max_tokens: int = 128
    ) -> str:
        return json.dumps({"tool": "none"})


def make_service(settings: Settings, texts: Sequence[str], **transfer: Any) -> VoiceService:
    settings = dataclasses.replace(
        settings,
        transfer=TransferSettings(ring_timeout_s=5.0, **transfer),
        sip=SipSettings(
            listen="127.0.0.1:0", rtp_port_min=42000, rtp_port_max=42999, ring_ms=0,
            media_timeout_s=60,
        ),
    )  # fmt: skip
    engines = Engines(
        EnergyVad(), FakeTranscriber(texts), Model(["Not asked."]), ToneSynthesizer(5)
    )
    config = dataclasses.replace(pipeline_config(settings), endpointing=ENDPOINTING)
    return VoiceService(settings, engines, config)


def spoken(service: VoiceService) -> list[str]:
    tts = service.engines.tts
    assert isinstance(tts, ToneSynthesizer)
    return tts.spoken


class Phone:
    """The caller's phone: SIP on one socket, RTP (a tone for each utterance, silence between)
    on another, paced at 20 ms."""

    def __init__(self) -> None:
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind(("127.0.0.1", 0))
        self.sip.setblocking(False)
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.rtp.setblocking(False)
        self.media_port = int(self.rtp.getsockname()[1])
        self.stream = Stream(codec=PCMA)  # the first codec of test_sip_ua's offer
        self.queued: list[bytes] = []
        self.far: tuple[str, int] = ("127.0.0.1", 0)
        self.ok: SipMessage | None = None
        self.cseq = 1
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
        """The next request from the appliance (responses to ours are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            message = await self.recv(left)
            if message is not None and message.is_request:
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
    async def main() -> None:
        line = SipLine(service.settings, service, store)
        await line.ua.start()
        phone = Phone()
        try:
            await asyncio.wait_for(test(line, phone), 90)
        finally:
            phone.close()
            line.ua.close()
            await asyncio.sleep(0.1)

    asyncio.run(main())


async def answered(service: VoiceService, line: SipLine, phone: Phone) -> None:
    """The call is set up and its session listens (the disclosure is over)."""
    await phone.call(line.ua.port)
    await until(lambda: bool(service.active), 20)


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


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APPLIANCE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip


def test_a_retransmitted_notify_gets_its_200_again_after_the_transfer_is_over(
    settings: Settings,
) -> None:
    """The phone did not hear our 200 to its final NOTIFY and sends it again after our BYE:
    it gets the same 200 (RFC 3261 17.2.2), not a 481 that a phone takes for a failure."""
    service = make_service(settings, [ASK], destinations=(DESK,))
    store = open_storage(service.settings)

    async def test(line: SipLine, phone: Phone) -> None:
        await answered(service, line, phone)
        phone.say()
        refer = await phone.request()
        assert refer.method == "REFER"
        phone.send(response(refer, 202), line.ua.port)
        final = phone.notify(line.ua.port, "SIP/2.0 200 OK")
        bye = await phone.request()
        while bye.method == "REFER":  # a retransmission raced the 202
            bye = await phone.request()
        assert bye.method == "BYE"
        phone.send(final, line.ua.port)  # the transfer is over on our side
        while (answer := await phone.recv()) is not None:
            if not answer.is_request and answer.get("cseq").endswith("NOTIFY"):
                break
        assert answer is not None and answer.status == 200
        phone.send(response(bye, 200), line.ua.port)
        await until(lambda: not service.active, 20)

    try:
        on_line(service, store, test)
    finally:
        store.close()


def test_a_refer_whose_notify_says_200_puts_the_caller_through_and_our_bye_ends_our_leg(
    settings: Settings,
) -> None:
    service = make_service(settings, [ASK], destinations=(DESK,))
    store = open_storage(service.settings)

    async def test(line: SipLine, phone: Phone) -> None:
        await answered(service, line, phone)
        phone.say()
        refer = await phone.request()
        assert refer.method == "REFER"
        assert refer.get("refer-to") == f"<{DESK}>"
        assert refer.get("referred-by").startswith("<sip:appliance@")
        assert refer.call_id == "xfer-1" and refer.tag("from") == phone.ok.tag("to")  # type: ignore[union-attr]
        # The announcement was said before the REFER went out, and only because one did.
        assert spoken(service)[-1] == service.settings.transfer.announce
        phone.send(response(refer, 202), line.ua.port)
        phone.notify(line.ua.port, "SIP/2.0 100 Trying", final=False)
        phone.notify(line.ua.port, "SIP/2.0 200 OK")
        bye = await phone.request()
        while bye.method == "REFER":  # a retransmission raced the 202
            bye = await phone.request()
        assert bye.method == "BYE"
        phone.send(response(bye, 200), line.ua.port)
        await until(lambda: not service.active, 20)

    try:
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
    finally:
        store.close()


def test_busy_destinations_are_tried_in_order_then_the_caller_gets_the_callback_they_accept(
    settings: Settings,
) -> None:
    service = make_service(settings, [ASK, "Yes please."], destinations=(DESK, QUEUE))
    store = open_storage(service.settings)
    refer_to: list[str] = []

    async def test(line: SipLine, phone: Phone) -> None:
        await answered(service, line, phone)
        phone.say()
        for sipfrag in ("SIP/2.0 486 Busy Here", "SIP/2.0 603 Decline"):
            refer = await phone.request()
            assert refer.method == "REFER"
            refer_to.append(refer.get("refer-to"))
            phone.send(response(refer, 202), line.ua.port)
            phone.notify(line.ua.port, sipfrag)
        await until(turn_over(service, "transfer.failed"), 30)
        phone.say()  # "Yes please."
        await until(turn_over(service, "callback.requested"), 30)

    try:
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
    finally:
        store.close()
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
    store = open_storage(service.settings)
    try:
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
    finally:
        store.close()


def test_a_refer_refused_with_501_or_403_falls_back_to_the_callback_offer_and_a_no(
    settings: Settings,
) -> None:
    service = make_service(settings, [ASK, "No thanks."], destinations=(DESK, QUEUE))
    store = open_storage(service.settings)

    async def test(line: SipLine, phone: Phone) -> None:
        await answered(service, line, phone)
        phone.say()
        for status in (501, 403):
            refer = await phone.request()
            assert refer.method == "REFER"
            phone.send(response(refer, status), line.ua.port)
        await until(turn_over(service, "transfer.failed"), 30)
        phone.say()  # "No thanks."
        await until(turn_over(service, "callback.declined"), 30)
        assert service.active  # the call goes on with the agent

    try:
        on_line(service, store, test)
        outcomes = [o for tool, o in tool_calls(store) if tool == "transfer_to_human"]
        assert outcomes == ["ok", "transfer.refused", "transfer.refused"]
        assert spoken(service)[-1] == service.settings.transfer.callback_declined_reply
        assert store.callbacks("admin:test") == []
    finally:
        store.close()


def test_no_final_notify_within_the_ring_timeout_is_no_answer(settings: Settings) -> None:
    service = make_service(settings, [ASK], destinations=(DESK,))
    service = dataclasses.replace(
        service,
        settings=dataclasses.replace(
            service.settings, transfer=TransferSettings(destinations=(DESK,), ring_timeout_s=1.0)
        ),
    )
    store = open_storage(service.settings)

    async def test(line: SipLine, phone: Phone) -> None:
        await answered(service, line, phone)
        phone.say()
        refer = await phone.request()
        phone.send(response(refer, 202), line.ua.port)
        phone.notify(line.ua.port, "SIP/2.0 180 Ringing", final=False)  # and then nothing
        await until(turn_over(service, "transfer.failed"), 30)

    try:
        on_line(service, store, test)
        outcomes = [o for tool, o in tool_calls(store) if tool == "transfer_to_human"]
        assert outcomes == ["ok", "transfer.no_answer"]
    finally:
        store.close()


def test_on_the_microphone_a_request_for_a_person_is_the_callback_offer_never_transferring(
    settings: Settings,
) -> None:
    service = make_service(settings, [ASK, "Yes."], destinations=(DESK,))
    store = open_storage(service.settings)
    pcm = b"".join(tone(0.8) + quiet(3.0) for _ in range(2))

    async def run() -> None:
        await run_call(
            service, store, MemorySource(pcm), MemorySink(16_000), caller_id=CALLER,
            channel="microphone",
        )  # fmt: skip

    try:
        asyncio.run(asyncio.wait_for(run(), 60))
        transfer = service.settings.transfer
        assert spoken(service) == [transfer.unavailable_reply, transfer.callback_stored_reply]
        assert not any("transferring" in s.lower() for s in spoken(service))
        (request,) = store.callbacks("admin:test")
        assert request.state is CallbackState.OPEN and request.number == CALLER
    finally:
        store.close()


def test_a_database_at_schema_6_gains_callback_requests_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    db, key = tmp_path / "a.db", load_or_create(tmp_path / "k")
    old = Storage.open_sqlite(db, key)
    handle = old.start_call(CALLER, "test")
    handle.record_turn(TurnRecord(1, "kept across the upgrade", "noted"))
    handle.finish("ended")
    with old.session("downgrade") as session:  # as the appliance at schema 6 left it
        session.execute(text("DROP TABLE callback_requests"))
        session.execute(text("DELETE FROM schema_migrations WHERE version = 7"))
    old.close()
    assert LATEST >= 7
    upgraded = Storage.open_sqlite(db, key)
    try:
        assert applied_versions(upgraded.engine) == set(range(1, LATEST + 1))
        view = upgraded.read_call(handle.call_id, "admin:test", "check")
        assert view.turns[0].transcript == "kept across the upgrade"
        request = upgraded.request_callback(handle.call_id, CALLER, "transfer")
        (listed,) = upgraded.callbacks("admin:test")
        assert listed.id == request and listed.number == CALLER
        # Erasing the caller takes their callback requests too.
        upgraded.erase_caller(CALLER, "admin:test")
        assert upgraded.callbacks("admin:test") == []
        assert upgraded.verify_audit().ok
    finally:
        upgraded.close()
