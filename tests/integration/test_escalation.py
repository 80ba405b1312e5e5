"""Escalation decided in code, and what a phone line owes its callers: 0 on the keypad for a
person, the offer of one after turns that got the caller nowhere or a failed verification,
"say that again" and "slower, please", and the after-hours callback offer instead of a transfer.
On fake engines; the keypad test runs the SIP line in-process with a Python phone sending an
RFC 4733 key press, so the key travels the line's real path to the call's session."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.config.settings import (
    CredentialSource,
    Settings,
    TransferSettings,
    TtsSettings,
)
from appliance.core.audio import AudioChunk
from appliance.core.errors import ConfigError
from appliance.core.events import EventType, Route
from appliance.core.hours import DAYS, HoursError, OpeningHours
from appliance.core.ports import KeyInbox, TransferAttempt, TransferResult
from appliance.deploy.line import SipLine
from appliance.pipeline.reply import asked_again
from appliance.pipeline.session import TurnResult
from appliance.service import VoiceService
from appliance.storage.repository import Storage
from appliance.telephony.sip import response
from appliance.testing.fakes import ToneSynthesizer
from tests.integration.helpers import serve_utterances
from tests.integration.test_sip_ua import until
from tests.integration.test_transfer import (
    CALLER,
    DESK,
    Phone,
    make_service,
    on_line,
    spoken,
    tool_calls,
)

BITCOIN = "Should I buy bitcoin?"  # a refused topic: the guard answers, the caller gets nowhere


class PacedSynthesizer(ToneSynthesizer):
    """Keeps the pace each text was spoken at."""

    def __init__(self) -> None:
        super().__init__(5)
        self.paces: list[float] = []

    def synthesize(self, text: str, sample_rate_hz: int, pace: float = 1.0) -> Iterator[AudioChunk]:
        self.paces.append(pace)
        yield from super().synthesize(text, sample_rate_hz, pace)


class Desk:
    """A line that can transfer: every attempt is kept and answered with ``result``."""

    def __init__(self, result: TransferResult = TransferResult.CONNECTED) -> None:
        self.result = result
        self.attempts: list[str] = []

    @property
    def destinations(self) -> tuple[str, ...]:
        return (DESK,)

    async def transfer(self, destination: str, briefing: str = "") -> TransferAttempt:
        self.attempts.append(destination)
        return TransferAttempt(destination, self.result, 200)


def call(
    service: VoiceService, store: Storage, texts: list[str], control: Desk | None = None
) -> list[TurnResult]:
    """One call of ``texts`` (one utterance each) on a channel that transfers with ``control``
    (None: the microphone)."""
    channel = "sip" if control else "microphone"
    outcome = serve_utterances(service, store, len(texts), CALLER, channel=channel, control=control)
    return outcome.turns


def service_for(settings: Settings, texts: list[str], **transfer: Any) -> VoiceService:
    return make_service(settings, texts, destinations=(DESK,), **transfer)


# -- the keypad --------------------------------------------------------------------------------


def test_zero_on_the_keypad_puts_the_caller_through_on_the_lines_own_path(
    settings: Settings, store: Storage
) -> None:
    service = service_for(settings, [])

    async def test(line: SipLine, phone: Phone) -> None:
        phone.key("0#")
        refer = await phone.request()
        assert refer.method == "REFER" and refer.get("refer-to") == f"<{DESK}>"
        assert spoken(service)[-1] == service.settings.transfer.announce
        phone.send(response(refer, 202), line.ua.port)
        phone.notify(line.ua.port, "SIP/2.0 200 OK")
        assert (await phone.request()).method == "BYE"
        await until(lambda: not service.active, 20)

    on_line(service, store, test)  # the phone's first utterance is silence to the agent
    (record,) = store.list_calls()
    assert record.status == "ended:transferred"
    view = store.read_call(record.id, "admin:test", "check")
    assert [t.route for t in view.turns] == ["", "keypad"]  # the silence, then the key
    assert ("transfer_to_human", "transfer.connected") in tool_calls(store)


def test_a_key_inbox_reaches_only_the_session_connected_to_it() -> None:
    inbox, got = KeyInbox(), []
    assert not inbox.deliver("12#")  # no session yet: the keys are dropped
    inbox.connect(got.append)
    assert inbox.deliver("0")
    inbox.disconnect()
    assert not inbox.deliver("1") and got == ["0"]


# -- the offer of a person -----------------------------------------------------------------------


def test_two_refused_turns_in_a_row_offer_a_person_and_a_yes_transfers(
    settings: Settings, store: Storage
) -> None:
    service = service_for(settings, [BITCOIN, BITCOIN, "Yes, please."])
    desk = Desk()
    turns = call(service, store, [BITCOIN, BITCOIN, "Yes, please."], desk)
    policy, transfer = service.settings.policy, service.settings.transfer
    assert spoken(service) == [
        policy.refusal_reply,
        policy.refusal_reply,
        transfer.offer_prompt,  # said after the second refusal, as its own sentence
        transfer.announce,
    ]
    assert desk.attempts == [DESK]
    assert turns[1].reply == f"{policy.refusal_reply} {transfer.offer_prompt}"
    outcomes = [e.data["outcome"] for t in turns for e in t.events if e.type is EventType.AGENT]
    assert outcomes == ["escalation.offered", "transfer.started", "transfer.connected"]


def test_failures_count_only_in_a_row_and_zero_switches_the_offer_off(
    settings: Settings, store: Storage
) -> None:
    texts = [BITCOIN, "What time do you open?", BITCOIN]
    service = service_for(settings, texts)
    call(service, store, texts, Desk())
    assert service.settings.transfer.offer_prompt not in spoken(service)
    quiet_line = service_for(settings, [BITCOIN] * 3, offer_after_failures=0)
    call(quiet_line, store, [BITCOIN] * 3, Desk())
    assert spoken(quiet_line) == [service.settings.policy.refusal_reply] * 3


def test_no_person_is_offered_where_no_transfer_tool_is_enabled(
    settings: Settings, store: Storage
) -> None:
    settings = dataclasses.replace(
        settings, tools=dataclasses.replace(settings.tools, enabled=("book_appointment",))
    )
    service = service_for(settings, [BITCOIN] * 2)
    call(service, store, [BITCOIN] * 2, Desk())
    assert spoken(service) == [service.settings.policy.refusal_reply] * 2


# -- say that again, slower --------------------------------------------------------------------


def test_say_that_again_repeats_the_last_reply_and_slower_please_says_it_slower(
    settings: Settings, store: Storage
) -> None:
    texts = ["What time do you open?", "Sorry, could you say that again?", "Slower, please."]
    service = service_for(settings, texts)
    tts = PacedSynthesizer()
    service.engines = dataclasses.replace(service.engines, tts=tts)
    turns = call(service, store, texts, Desk())
    first = turns[0].reply
    assert first and tts.spoken == [first] * 3
    assert tts.paces == [1.0, 1.0, TtsSettings().slower_pace]
    assert [t.route for t in turns] == [turns[0].route, Route.REPEAT, Route.REPEAT]
    # The model was asked once: a repeat is said again as it was, never drafted anew.
    assert len(service.engines.llm.prompts) == 1  # type: ignore[attr-defined]


def test_a_repeat_during_the_pin_question_asks_it_again_and_the_pin_still_counts(
    settings: Settings, store: Storage
) -> None:
    settings = dataclasses.replace(
        settings,
        tools=dataclasses.replace(settings.tools, credentials=CredentialSource.DEMO),
    )
    texts = [
        "Can I book an appointment at Old Town on Wednesday at eleven?",
        "Sorry, I didn't catch that.",
        "4 9 2 1",
    ]
    service = service_for(settings, texts)
    call(service, store, texts, Desk())
    said = spoken(service)
    pin = service.settings.tools.pin_prompt
    assert said[:2] == [pin, pin]
    assert said[2].startswith("To confirm: Book an appointment")  # the PIN was taken


@pytest.mark.parametrize(
    ("heard", "pace"),
    [
        ("Sorry, could you say that again?", 1.0),
        ("Repeat that, please.", 1.0),
        ("Pardon?", 1.0),
        ("I didn't catch that.", 1.0),
        ("Could you speak a bit slower, please?", 1.5),
        ("Say that again more slowly.", 1.5),
        ("Slow down, please.", 1.5),
        ("You're talking too fast.", 1.5),
        ("Can you repeat my balance?", None),
        ("I didn't catch that, what time do you open?", None),
        ("What time do you open?", None),
        ("Is the slower delivery cheaper?", None),
    ],
)
def test_what_asks_to_hear_the_reply_again(heard: str, pace: float | None) -> None:
    assert asked_again(heard, 1.5) == pace


# -- opening hours ------------------------------------------------------------------------------


def _day(offset: int) -> str:
    return DAYS[(dt.datetime.now(dt.UTC).weekday() + offset) % 7]


def test_outside_the_opening_hours_a_request_for_a_person_gets_the_callback_offer(
    settings: Settings, store: Storage
) -> None:
    texts = ["I'd like to speak to a person, please.", "Yes."]
    closed = service_for(settings, texts, hours=(f"{_day(2)} 09:00-17:00",))
    desk = Desk()
    call(closed, store, texts, desk)
    transfer = closed.settings.transfer
    assert spoken(closed) == [transfer.after_hours_reply, transfer.callback_stored_reply]
    assert desk.attempts == []  # no one would answer: nothing was tried
    assert [r.reason for r in store.callbacks("admin:test")] == ["transfer"]
    today = dt.datetime.now(dt.UTC).date()
    days = (today.isoformat(), (today + dt.timedelta(days=1)).isoformat())  # midnight may pass
    holiday = service_for(settings, texts[:1], holidays=days)
    call(holiday, store, texts[:1], Desk())
    assert spoken(holiday) == [transfer.after_hours_reply]
    staffed = service_for(settings, texts[:1], hours=(f"{_day(0)}-{_day(1)} 00:00-24:00",))
    desk = Desk()
    call(staffed, store, texts[:1], desk)
    assert spoken(staffed) == [transfer.announce] and desk.attempts == [DESK]


def test_opening_hours_are_read_in_their_zone_with_ranges_holidays_and_a_wrapped_week() -> None:
    hours = OpeningHours.parse(
        ("mon-fri 09:00-12:00", "mon-fri 13:00-17:30", "sat-sun 10:00-14:00"),
        ("2026-12-25",),
        "Europe/London",
    )
    london = dt.timezone(dt.timedelta(hours=1))  # British Summer Time
    assert hours.open_at(dt.datetime(2026, 7, 1, 9, 0, tzinfo=london))  # a Wednesday
    assert hours.open_at(dt.datetime(2026, 7, 1, 8, 30, tzinfo=dt.UTC))  # 9:30 in London
    assert not hours.open_at(dt.datetime(2026, 7, 1, 12, 30, tzinfo=london))  # lunch
    assert not hours.open_at(dt.datetime(2026, 7, 1, 17, 30, tzinfo=london))  # the end is closed
    assert hours.open_at(dt.datetime(2026, 7, 5, 13, 59, tzinfo=london))  # Sunday
    assert not hours.open_at(dt.datetime(2026, 12, 25, 10, 0, tzinfo=dt.UTC))  # a holiday
    wrapped = OpeningHours.parse(("fri-mon 08:00-20:00",))
    assert wrapped.open_at(dt.datetime(2026, 12, 6, 9, 0, tzinfo=dt.UTC))  # Sunday
    assert not wrapped.open_at(dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC))  # Wednesday
    assert OpeningHours.parse(()).open_at(dt.datetime(2026, 12, 25, 3, 0, tzinfo=dt.UTC))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"hours": ("monday 09:00-17:00",)}, "'monday 09:00-17:00' is not 'day[-day] HH:MM"),
        ({"hours": ("mon-fry 09:00-17:00",)}, "'fry' is not a day"),
        ({"hours": ("mon 17:00-09:00",)}, "must end after it starts"),
        ({"hours": ("mon 09:00-25:00",)}, "25:00 is not a time of day"),
        ({"holidays": ("25/12/2026",)}, "'25/12/2026' is not a date"),
        ({"timezone": "Mars/Olympus"}, "'Mars/Olympus' is not a known time zone"),
    ],
)
def test_bad_opening_hours_are_a_configuration_error_naming_the_key(
    changes: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError, match=r"transfer\.hours") as caught:
        TransferSettings(**changes)
    assert named in str(caught.value)
    with pytest.raises(HoursError):
        OpeningHours.parse(
            changes.get("hours", ()), changes.get("holidays", ()), changes.get("timezone", "UTC")
        )


def test_key_1_accepts_the_offer_of_a_person_and_2_declines_it(
    settings: Settings, store: Storage
) -> None:
    service = service_for(settings, [])
    record = store.start_call(CALLER, "test")
    for key, outcome in (("1", "transfer.started"), ("2", "transfer.declined")):
        agent = service.tool_agent(store, record.call_id, CALLER, Desk())
        assert agent is not None and agent.offer_person()
        turn = agent.handle_keys(key)
        assert turn is not None and turn.outcome == outcome
        assert turn.transfer == (key == "1")
