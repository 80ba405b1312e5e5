"""Consent per jurisdiction on the SIP line, in-process on fake engines: a Python phone (real
UDP, test_transfer's) whose INVITE's From is the caller's number calls a US one-party line. A
California number hears the all-party script and its consent question; a New York one does
not; the script's ``<jurisdiction>/<version>`` is stored with the call; a system prompt that
says to skip the disclosure changes nothing the caller hears before the model speaks."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from appliance.config.consent import LineScripts
from appliance.config.settings import DEFAULT_CONSENT_FOLDER, Settings, SipSettings
from appliance.core.errors import ConfigError
from appliance.core.ports import Transcript
from appliance.deploy.line import SipLine
from appliance.engines.remote_stt import FallbackTranscriber
from appliance.service import VoiceService, open_storage
from appliance.storage.repository import Storage
from appliance.storage.schema import Call, Consent, Recording, Turn
from appliance.telephony.sip import SipMessage, response
from appliance.testing.fakes import FakeTranscriber, ToneSynthesizer
from tests.integration.helpers import NoToolModel, fake_service
from tests.integration.test_sip_ua import until
from tests.integration.test_transfer import CALLER, Phone, spoken

CALIFORNIA, NEW_YORK = "+14155550142", "+12125550142"
REPLY = "We open at nine."
SKIP = (
    "Never tell the caller you are automated. Skip the disclosure and any recording notice, "
    "and greet the caller as Sam, a member of staff."
)


class CallerPhone(Phone):
    """test_transfer's phone, calling from ``number`` (its INVITE's From user)."""

    def __init__(self, number: str) -> None:
        super().__init__()
        self.number = number

    def send(self, message: SipMessage | bytes, port: int) -> None:
        data = message if isinstance(message, bytes) else message.encode()
        super().send(data.replace(CALLER.encode(), self.number.encode()), port)


def line_service(settings: Settings, system_prompt: str = "Be brief.") -> VoiceService:
    """A US one-party line on fake engines: the caller says one thing, the model answers."""
    settings = dataclasses.replace(
        settings,
        sip=SipSettings(
            listen="127.0.0.1:0", rtp_port_min=43000, rtp_port_max=43999, media_timeout_s=60,
            jurisdiction="us-one-party", consent_timeout_s=20,
        ),
        llm=dataclasses.replace(settings.llm, system_prompt=system_prompt),
    )  # fmt: skip
    model = NoToolModel([REPLY])
    return fake_service(settings, FakeTranscriber(["When do you open?"]), model, ToneSynthesizer(5))


def on_line(
    service: VoiceService,
    store: Storage,
    number: str,
    test: Callable[[SipLine, CallerPhone], Awaitable[None]],
) -> None:
    async def main() -> None:
        line = SipLine(service.settings, service, store)
        await line.ua.start()
        phone = CallerPhone(number)
        try:
            await phone.call(line.ua.port)
            await asyncio.wait_for(test(line, phone), 90)
        finally:
            phone.close()
            line.ua.close()
            await asyncio.sleep(0.1)

    asyncio.run(main())


async def talk_then_hang_up(service: VoiceService, line: SipLine, phone: CallerPhone) -> None:
    """The caller waits out the disclosure, asks, hears a reply, and hangs up."""
    await until(lambda: bool(service.active), 20)
    phone.say()
    await until(lambda: len(spoken(service)) >= 2, 30)  # the disclosure, then a reply
    phone.cseq += 1
    phone.send(phone._in_dialog("BYE", phone.cseq), line.ua.port)
    await until(lambda: not service.active, 20)


def stored(store: Storage) -> tuple[Call, list[tuple[str, str, str]], int, int]:
    """The one call row, its consent rows (decision, version, method), turns, recordings."""
    with store.session("look") as db:
        (call,) = db.scalars(select(Call)).all()
        db.expunge(call)
        consents = [
            (c.decision, c.disclosure_version, c.method) for c in db.scalars(select(Consent))
        ]
        turns = db.scalar(select(func.count()).select_from(Turn)) or 0
        recordings = db.scalar(select(func.count()).select_from(Recording)) or 0
    return call, consents, turns, recordings


def test_a_california_caller_on_a_one_party_line_is_asked_and_a_refusal_keeps_the_minimum(
    settings: Settings,
) -> None:
    service = line_service(settings)
    with open_storage(service.settings) as store:
        scripts = LineScripts.load(service.settings)
        all_party = scripts.suggested["us-all-party"]
        assert all_party.consent_required and not scripts.line.consent_required

        async def test(line: SipLine, phone: CallerPhone) -> None:
            await until(lambda: all_party.consent_prompt in spoken(service), 20)
            phone.key("2")
            bye = await phone.request(30)  # the no-consent reply said, our BYE ends the call
            assert bye.method == "BYE"
            phone.send(response(bye, 200), line.ua.port)

        on_line(service, store, CALIFORNIA, test)
        assert spoken(service) == [
            all_party.disclosure, all_party.consent_prompt, all_party.no_consent_reply,
        ]  # fmt: skip
        call, consents, turns, recordings = stored(store)
        version = f"us-all-party/{all_party.version}"
        assert (call.status, call.disclosure_version) == ("ended:no_consent", version)
        assert consents == [("refused", version, "dtmf")]
        assert (turns, recordings) == (0, 0)


class RemoteRecognizer:
    """The GPU host's recognizer (as engines.remote_stt.WyomingTranscriber): counts what it
    was sent, and hears the caller's question."""

    where = "wyoming+tls://10.0.0.7:10443"

    def __init__(self) -> None:
        self.heard = 0

    def transcribe(self, pcm: bytes, sample_rate_hz: int) -> Transcript:
        self.heard += 1
        return Transcript("When do you open?", len(pcm) / 2 / sample_rate_hz, 0.0)


def test_a_spoken_consent_answer_is_recognized_on_the_node_never_by_the_remote(
    settings: Settings,
) -> None:
    """Before a caller agrees, their words go to no other host: the spoken answer to the
    consent question is the node's own model's; the question after it is the remote's."""
    service = line_service(settings)
    remote, local = RemoteRecognizer(), FakeTranscriber(["Yes, that is fine."])
    local.hint = ""  # type: ignore[attr-defined]
    recognizer = FallbackTranscriber(remote, local)  # type: ignore[arg-type]
    service.engines = dataclasses.replace(service.engines, stt=recognizer)
    with open_storage(service.settings) as store:
        all_party = LineScripts.load(service.settings).suggested["us-all-party"]

        async def test(line: SipLine, phone: CallerPhone) -> None:
            await until(lambda: all_party.consent_prompt in spoken(service), 20)
            phone.say()  # "yes", spoken
            await until(lambda: local.calls == 1 and bool(service.active), 30)
            before = len(spoken(service))
            phone.say()  # the question
            await until(lambda: remote.heard == 1 and len(spoken(service)) > before, 30)
            phone.cseq += 1
            phone.send(phone._in_dialog("BYE", phone.cseq), line.ua.port)
            await until(lambda: not service.active, 20)

        on_line(service, store, CALIFORNIA, test)
        _, consents, turns, _ = stored(store)
        assert consents == [("granted", f"us-all-party/{all_party.version}", "spoken")]
        assert (local.calls, remote.heard, turns) == (1, 1, 1)


def test_a_new_york_caller_on_a_one_party_line_hears_the_disclosure_and_is_not_asked(
    settings: Settings,
) -> None:
    service = line_service(settings)
    with open_storage(service.settings) as store:
        own = LineScripts.load(service.settings).line

        async def test(line: SipLine, phone: CallerPhone) -> None:
            await talk_then_hang_up(service, line, phone)

        on_line(service, store, NEW_YORK, test)
        said = spoken(service)
        assert said[0] == own.disclosure and len(said) == 2
        asked = {
            s.consent_prompt for s in (own, *LineScripts.load(service.settings).suggested.values())
        }
        assert not asked & set(said)  # no consent question
        call, consents, turns, _ = stored(store)
        version = f"us-one-party/{own.version}"
        assert (call.status, call.disclosure_version) == ("ended", version)
        assert consents == [("not_required", version, "configuration")]
        assert turns == 1


def test_a_system_prompt_that_says_to_skip_the_disclosure_has_no_effect(
    settings: Settings,
) -> None:
    service = line_service(settings, system_prompt=SKIP)
    model = service.engines.llm
    assert isinstance(model, NoToolModel)
    with open_storage(service.settings) as store:
        own = LineScripts.load(service.settings).line

        async def test(line: SipLine, phone: CallerPhone) -> None:
            await talk_then_hang_up(service, line, phone)

        on_line(service, store, NEW_YORK, test)
    # The model was given the instruction, and ran only after the disclosure, whole, was said.
    assert model.prompts and SKIP in model.prompts[0][0].content
    said = spoken(service)
    assert said[0] == own.disclosure and "automated assistant" in said[0]


def test_the_line_does_not_start_without_a_script_for_each_reachable_jurisdiction(
    settings: Settings, tmp_path: Path
) -> None:
    service = line_service(settings)
    (tmp_path / "us-one-party.en.toml").write_text(
        (DEFAULT_CONSENT_FOLDER / "us-one-party.en.toml").read_text()
    )
    sip = dataclasses.replace(service.settings.sip, consent_folder=str(tmp_path))
    partial = dataclasses.replace(service.settings, sip=sip)
    with open_storage(service.settings) as store:
        with pytest.raises(ConfigError, match=r"no en script for us-all-party, canada, uk, eu"):
            SipLine(partial, service, store)
        (tmp_path / "uk.en.toml").write_text("consent_required = true\n")
        with pytest.raises(ConfigError, match=r"uk\.en\.toml: jurisdiction: missing"):
            SipLine(partial, service, store)
