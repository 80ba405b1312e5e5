"""Voice biometrics with the real encoder (Resemblyzer), Piper, eSpeak NG and recorded speech.

Skipped, saying why, where the optional extra is not installed; scripts/setup installs it.
Recorded human speech: the eight channel-test clips of Debian's alsa-utils (one speaker).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from appliance.audio_io.memory import MemorySink, MemorySource
from appliance.config.settings import ToolsSettings, VoiceprintSettings
from appliance.core.events import EventType
from appliance.engines.voiceprint import voiceprint_available
from appliance.identity.factors import AttemptLimiter
from appliance.identity.levels import Assurance, Factor, assurance
from appliance.identity.voice import VoiceTemplate, VoiceVerifier, cosine, enrol
from appliance.service import VoiceService, open_storage, run_call
from appliance.telephony.g711 import ulaw_decode, ulaw_encode
from tests.real.conftest import run_cli, silence, speak

pytestmark = pytest.mark.skipif(
    not voiceprint_available(), reason="voice biometrics extra not installed"
)
ALSA = Path("/usr/share/sounds/alsa")
HUMAN = sorted(p for p in ALSA.glob("*.wav") if p.name != "Noise.wav")
ENROL_TEXTS = [
    "My name is Sam and I would like to check my balance.",
    "I live on Elm Street, in the old town.",
    "Please book an appointment for next Tuesday morning.",
]
PROBE_TEXTS = [
    "Could you tell me when the branch opens tomorrow?",
    "I lost my card yesterday and I need some help with it.",
]
RATE = 16_000


def phone(pcm: bytes) -> bytes:
    """Through a telephone channel: 8 kHz, G.711 u-law, back up to 16 kHz."""
    audio = soxr.resample(np.frombuffer(pcm, dtype="<i2"), RATE, 8_000).astype("<i2")
    return soxr.resample(ulaw_decode(ulaw_encode(audio)), 8_000, RATE).astype("<i2").tobytes()


def read_wav(path: Path | bytes) -> bytes:
    with wave.open(io.BytesIO(path) if isinstance(path, bytes) else str(path)) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        audio = audio.reshape(-1, w.getnchannels())[:, 0]
        return soxr.resample(audio, w.getframerate(), RATE).astype("<i2").tobytes()


def espeak(text: str, voice: str) -> bytes:
    out = subprocess.run(
        ["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True
    ).stdout
    return read_wav(out)


@pytest.fixture(scope="module")
def joe(service: VoiceService) -> VoiceTemplate:
    embedder = service.voice_embedder()
    return enrol([embedder.embed(speak(service, t), RATE) for t in ENROL_TEXTS])


def scores(service: VoiceService, template: VoiceTemplate, clips: list[bytes]) -> list[float]:
    embedder = service.voice_embedder()
    return [cosine(template.centroid, embedder.embed(clip, RATE)) for clip in clips]


def test_same_and_different_speakers_separate_at_the_threshold(
    service: VoiceService, joe: VoiceTemplate
) -> None:
    threshold = service.settings.voiceprint.threshold
    same = scores(service, joe, [phone(speak(service, t)) for t in PROBE_TEXTS])
    assert min(same) >= threshold, same
    assert shutil.which("espeak-ng") and HUMAN, "scripts/setup installs espeak-ng and alsa-utils"
    others = [espeak(t, v) for t in PROBE_TEXTS for v in ("en-us", "en-us+f3", "en-gb")]
    others += [read_wav(p) for p in HUMAN]
    different = scores(service, joe, others)
    assert max(different) < threshold, different


def test_a_recorded_human_speaker_matches_themselves_and_not_piper(service: VoiceService) -> None:
    embedder = service.voice_embedder()
    human = enrol([embedder.embed(read_wav(p), RATE) for p in HUMAN[:4]])
    threshold = service.settings.voiceprint.threshold
    assert min(scores(service, human, [read_wav(p) for p in HUMAN[4:]])) >= threshold
    piper = scores(service, human, [speak(service, t) for t in PROBE_TEXTS])
    assert max(piper) < threshold


def test_a_replayed_enrolment_clip_cannot_answer_the_challenge_nor_reach_level_2(
    service: VoiceService, joe: VoiceTemplate
) -> None:
    verifier = VoiceVerifier(service.settings.voiceprint.threshold, AttemptLimiter())
    embedder = service.voice_embedder()
    challenge = verifier.challenge()
    replay = phone(speak(service, ENROL_TEXTS[0]))  # the recording an attacker kept
    heard = service.engines.stt.transcribe(replay, RATE).text
    match = verifier.verify("+1555", joe, embedder.embed(replay, RATE), heard, challenge)
    assert match.score >= verifier.threshold  # it *is* the voice ...
    assert not match.passed and match.reason == "voice.wrong_challenge"  # ... but not live
    # A synthesizer with the caller's voice says the challenge: one factor at most, never 2,
    # even beside a PIN: only a possession factor (TOTP, out-of-band code) adds level 2.
    # Digits Whisper hears clearly on the line (no repeat, no eight), said up to three times:
    # Piper samples its noise afresh each time, and now and then Whisper mishears a digit (a
    # random challenge once came back with a 7th). Asserted: the cloned voice passes once the
    # digits are heard right.
    tries = []
    for _ in range(3):
        fresh = VoiceVerifier(verifier.threshold, AttemptLimiter())
        challenge = "419205"
        said = ", ".join(challenge)  # as the agent reads it out: "4, 1, 9, ..."
        cloned = phone(speak(service, f"My code is {said}."))
        heard = service.engines.stt.transcribe(cloned, RATE).text
        match = fresh.verify("+1555", joe, embedder.embed(cloned, RATE), heard, challenge)
        tries.append((challenge, heard, match))
        if match.reason != "voice.wrong_challenge":
            break
    assert match.passed, tries
    assert assurance([Factor.VOICE]) is Assurance.ONE_FACTOR
    assert assurance([Factor.VOICE, Factor.PIN]) is Assurance.ONE_FACTOR


def test_verification_failures_lock_the_voice_factor(
    service: VoiceService, joe: VoiceTemplate
) -> None:
    from appliance.identity.factors import FactorError

    verifier = VoiceVerifier(0.75, AttemptLimiter(max_failures=2))
    stranger = service.voice_embedder().embed(espeak(PROBE_TEXTS[0], "en-gb"), RATE)
    for _ in range(2):
        assert not verifier.verify("+1666", joe, stranger, "1234", "1234").passed
    with pytest.raises(FactorError) as caught:
        verifier.verify("+1666", joe, stranger, "1234", "1234")
    assert caught.value.code == "identity.locked"


class FixedChallenge(VoiceVerifier):
    """The real verifier with a known challenge, so pre-recorded caller audio can answer it."""

    def challenge(self) -> str:
        return "418205"


def test_enrolment_by_cli_then_a_call_steps_up_by_voice_and_a_stranger_does_not(
    service: VoiceService, real_home: Path, tmp_path: Path
) -> None:
    caller = "+15550101"
    wavs = []
    for i, text in enumerate(ENROL_TEXTS):
        wavs.append(str(tmp_path / f"enrol{i}.wav"))
        assert run_cli("say", text, "--out", wavs[-1], home=real_home).returncode == 0
    listed = run_cli("callers", "add", caller, home=real_home)  # the directory's caller
    assert listed.returncode == 0, listed.stderr
    enrolled = run_cli("voice", "enrol", "--caller", caller, *wavs, home=real_home)
    assert enrolled.returncode == 0, enrolled.stderr
    tools = ToolsSettings(enabled=("book_appointment",))
    settings = dataclasses.replace(
        service.settings, tools=tools, voiceprint=VoiceprintSettings(enabled=True)
    )
    verifier = FixedChallenge(settings.voiceprint.threshold, AttemptLimiter())
    with_voice = dataclasses.replace(
        service, settings=settings, monitor=None, _voice_verifier=verifier
    )

    def call(answer: bytes) -> list[str]:
        # Every detail of the booking said at once: the dialogue goes straight to the step-up.
        ask = speak(
            service,
            "I'd like to book an appointment at the Old Town branch on Wednesday at eleven.",
        )
        pcm = silence(0.5) + ask + silence(2.5) + answer + silence(2.5)
        store = open_storage(settings)
        try:
            outcome = asyncio.run(
                asyncio.wait_for(
                    run_call(with_voice, store, MemorySource(pcm), sink(), caller_id=caller), 300
                )
            )
        finally:
            store.close()
        agent = [t.first(EventType.AGENT) for t in outcome.turns]
        return [str(a.data["outcome"]) if a else "" for a in agent]

    def sink() -> MemorySink:
        return MemorySink(service.config.output_sample_rate_hz)

    digits = "The digits are four, one, eight, two, zero, five."  # a lead-in: ASR clips first words
    outcomes = call(speak(service, digits))
    assert outcomes[0] == "step_up.voice"
    assert outcomes[1] == "voice.match;tool.confirm"  # level 1 reached: the booking is read back
    outcomes = call(espeak(digits, "en-gb"))  # the right digits, another voice
    assert outcomes[1] == "voice.no_match;step_up.pin"
