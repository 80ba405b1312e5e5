"""The SIP phone line: each answered call hears the disclosure first, gives consent where its
script asks for it, then runs through the voice pipeline (``run_call``).

A call's script is the strictest of the line's jurisdiction and the one its caller's number
suggests (``LineScripts.for_caller``): a number may only make the rules stricter. The script's
disclosure is played from the script itself, before any model runs, so no system prompt and
no model reply can skip or shorten it. Nothing of a call is recorded or transcribed before
it has been played. Without consent only the minimal call record (with the decision and the
script's ``<jurisdiction>/<version>``) is kept, the caller hears the script's alternative, and
the appliance hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable

from appliance.audio_io.screening import ScreenedSource
from appliance.config.consent import LineScripts
from appliance.config.settings import Settings, TransferMode, TransferSettings
from appliance.core.audio import PIPELINE_SAMPLE_RATE_HZ
from appliance.core.jurisdiction import ConsentScript
from appliance.core.ports import KeyInbox, TransferAttempt, TransferResult
from appliance.engines.remote_stt import local_only
from appliance.service import Consent, VoiceService, run_call
from appliance.storage.repository import Storage
from appliance.telephony.rtp import RATE_HZ, RtpSink, bridge, hold_tone
from appliance.telephony.ua import OutboundCall, SipCall, SipUserAgent

log = logging.getLogger(__name__)
_YES = re.compile(r"\b(?:yes|yeah|yep|okay|ok|sure|continue|agree)\b", re.I)
_NO = re.compile(r"\b(?:no|nope|stop|don't|do not)\b", re.I)


class SipLine:
    def __init__(self, settings: Settings, service: VoiceService, storage: Storage) -> None:
        self.settings = settings
        self.service = service
        self.storage = storage
        self.scripts = LineScripts.load(settings)
        """Read once: a malformed or missing script stops the line before it takes a call."""
        self.ua = SipUserAgent(settings.sip, self.handle)
        self.ua.capacity = self.capacity_left
        self.calls = 0

    def capacity_left(self) -> int | None:
        """The calls this node can still take (``[limits] max_concurrent_calls`` less those
        in progress): what its OPTIONS answer tells the proxy; None without a monitor."""
        if self.service.monitor is None:
            return None
        slots = self.service.monitor.calls
        return max(0, slots.limit - slots.active)

    def say(self, text: str) -> bytes:
        return self.service.prompt_audio(text, RATE_HZ)

    async def handle(self, call: SipCall) -> None:
        self.calls += 1
        media = call.media
        script = self.scripts.for_caller(call.caller)
        log.info("call under consent script %s", script.stored_version)
        await media.play(await asyncio.to_thread(self.say, script.disclosure))
        consent = Consent("not_required", script.stored_version, "configuration")
        if script.consent_required:
            consent = await self._ask_consent(call, script)
        if consent.decision != "granted" and consent.decision != "not_required":
            await asyncio.to_thread(self._minimal_record, call, consent)
            await media.play(await asyncio.to_thread(self.say, script.no_consent_reply))
            return
        source = ScreenedSource(media)  # clipping and held tones on the line
        keypad = Keypad()
        media.on_digit = keypad.press
        sink = RtpSink(media)
        control = SipCallControl(self.ua, call, self.settings.transfer, self.say, sink)
        await run_call(
            self.service,
            self.storage,
            source,
            sink,
            caller_id=call.caller or None,
            address=call.source or call.peer[0],
            identity=call.account or None,
            channel="sip",
            consent=consent,
            control=control,
            keypad=keypad.inbox,
            app_token=self._app_token(call),
        )
        await control.bridged()  # a warm transfer: the caller and the person talk on

    def _app_token(self, call: SipCall) -> str | None:
        """The app's session token from the INVITE, when app tokens are configured."""
        tokens = self.settings.app_token
        if not tokens.enabled or call.invite is None:
            return None
        return call.invite.get(tokens.header.lower()) or None

    async def _ask_consent(self, call: SipCall, script: ConsentScript) -> Consent:
        sip, media = self.settings.sip, call.media
        media.digits.clear()
        await media.play(await asyncio.to_thread(self.say, script.consent_prompt))
        heard = bytearray()
        deadline = time.monotonic() + sip.consent_timeout_s
        while time.monotonic() < deadline and not media.digits:
            frame = await media.read_frame()
            if frame is None:
                break
            heard += frame
        version = script.stored_version
        if media.digits:
            granted = media.digits[0] == "1"
            return Consent("granted" if granted else "refused", version, "dtmf")
        # Recognized on this node: before the caller agrees, their words go to no other host.
        stt = local_only(self.service.engines.stt)
        text = (await asyncio.to_thread(stt.transcribe, bytes(heard), PIPELINE_SAMPLE_RATE_HZ)).text
        granted = bool(_YES.search(text)) and not _NO.search(text)
        return Consent("granted" if granted else "refused", version, "spoken")

    def _minimal_record(self, call: SipCall, consent: Consent) -> None:
        record = self.storage.start_call(call.caller or None, "sip")
        self.storage.record_consent(
            record.call_id, consent.decision, consent.disclosure_version, consent.method
        )
        self.storage.end_call(record.call_id, "ended:no_consent")


class SipCallControl:
    """The ``CallControl`` of one SIP call.

    Blind (``[transfer] mode = "blind"``): REFER in its dialog (RFC 3515); when the
    destination answers, the appliance leaves the call (our BYE); otherwise the call goes on
    with the agent.

    Warm: the appliance calls the person itself (``SipUserAgent.dial``) while the caller hears
    ``hold_message`` and a soft tone; the person hears the briefing alone, then the two calls'
    media are bridged (``rtp.bridge``) and the agent's session ends. Whoever hangs up first,
    the other leg gets our BYE. A person who does not answer or declines: the hold ends, the
    outbound leg is gone, and the call goes on with the agent (the callback offer)."""

    HOLD_TONE_EVERY_S = 4.0

    def __init__(
        self,
        ua: SipUserAgent,
        call: SipCall,
        settings: TransferSettings,
        say: Callable[[str], bytes] | None = None,
        sink: RtpSink | None = None,
    ) -> None:
        self.ua = ua
        self.call = call
        self.settings = settings
        self.say = say
        """Text to 8 kHz speech (the hold message and the briefing), the line's own voice."""
        self.sink = sink
        """The pipeline's sink on this call: muted while the line holds the caller's audio."""
        self._bridge: asyncio.Task[None] | None = None

    @property
    def destinations(self) -> tuple[str, ...]:
        return self.settings.destinations

    async def transfer(self, destination: str, briefing: str = "") -> TransferAttempt:
        if self.call.ended.is_set():
            return TransferAttempt(destination, TransferResult.UNAVAILABLE)
        if self.settings.mode == TransferMode.WARM:
            attempt = await self._warm(destination, briefing)
            log.info("warm transfer attempt: %s (%d)", attempt.result.value, attempt.status)
            return attempt
        attempt = await self.ua.refer(self.call.call_id, destination, self.settings.ring_timeout_s)
        log.info("transfer attempt: %s (%d)", attempt.result.value, attempt.status)
        if attempt.result is TransferResult.CONNECTED:
            self.call.hang_up()  # the caller is with the person now: our leg ends
        return attempt

    async def bridged(self) -> None:
        """Return once a warm transfer's bridge is over (at once when there is none)."""
        if self._bridge is not None:
            await self._bridge

    async def _warm(self, destination: str, briefing: str) -> TransferAttempt:
        self._mute(True)
        hold = asyncio.create_task(self._hold())
        leg: OutboundCall | None = None
        try:
            attempt, leg = await self.ua.dial(
                destination, self.call.media.codec, self.settings.ring_timeout_s, self.call.ended
            )
            if leg is not None and briefing and self.say is not None:
                pcm = await asyncio.to_thread(self.say, briefing)
                await leg.media.play(pcm)  # the person alone hears it: the caller is on hold
            if leg is not None and (leg.ended.is_set() or self.call.ended.is_set()):
                gone = TransferResult.DECLINED if leg.ended.is_set() else TransferResult.UNAVAILABLE
                leg.hang_up()
                leg, attempt = None, TransferAttempt(destination, gone, attempt.status)
        except BaseException:
            if leg is not None:
                leg.hang_up()  # the caller's turn was cancelled (they hung up)
            raise
        finally:
            hold.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hold
            if leg is None:
                self._mute(False)  # back to the agent
        if leg is not None:
            self._bridge = asyncio.create_task(self._bridge_legs(leg))
        return attempt

    async def _bridge_legs(self, leg: OutboundCall) -> None:
        try:
            await bridge(self.call.media, leg.media)
        finally:
            leg.hang_up()  # each a no-op for the leg that ended
            self.call.hang_up()

    def _mute(self, on: bool) -> None:
        if self.sink is not None:
            self.sink.muted = on

    async def _hold(self) -> None:
        """What the caller hears while the person is called and briefed: ``hold_message``
        once, then a soft tone every few seconds (silence between, so the RTP flows)."""
        media = self.call.media
        if self.settings.hold_message and self.say is not None:
            await media.play(await asyncio.to_thread(self.say, self.settings.hold_message))
        tone, gap = hold_tone(), bytes(2 * int(RATE_HZ * self.HOLD_TONE_EVERY_S))
        while not media.ended.is_set():
            await media.play(tone)
            await media.play(gap)


class Keypad:
    """Collects a call's key presses and hands them to its session (``inbox``, connected by
    ``run_call``) at '#' or after a pause (for the tool dialogue: a PIN, a code, 1 for yes, 0
    for a person). Before the call's session starts (the consent question) the line reads the
    digits itself."""

    PAUSE_S = 2.0

    def __init__(self) -> None:
        self.inbox = KeyInbox()
        self.keys = ""
        self._timer: asyncio.TimerHandle | None = None

    def press(self, digit: str) -> None:
        self.keys += digit
        if self._timer is not None:
            self._timer.cancel()
        if digit == "#":
            self.flush()
        else:
            self._timer = asyncio.get_running_loop().call_later(self.PAUSE_S, self.flush)

    def flush(self) -> None:
        keys, self.keys = self.keys, ""
        self.inbox.deliver(keys)
