"""Voice as an optional, weak factor: enrolment, verification with a spoken challenge.

A template is the mean of several utterances' embeddings (from any ``VoiceEmbedder``); a
caller matches when the cosine score reaches the threshold. A recording of the caller (their
enrolment, say) cannot answer a fresh random challenge, so verification asks the caller to say
one, and what was heard must be it. A live synthesizer that clones the voice can say anything,
which is why a voice match is one factor, worth level 1 alone and never level 2 without a
possession factor (levels.py, NIST SP 800-63B 5.2.3).
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.guard.normalize import normalize
from appliance.identity.factors import AttemptLimiter, FactorError

Vector = tuple[float, ...]


def _unit(vector: Sequence[float]) -> Vector:
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:
        raise FactorError("voice.empty", "an embedding of zeros cannot be compared")
    return tuple(x / norm for x in vector)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        raise FactorError("voice.dimensions", "embeddings of different sizes")
    return sum(x * y for x, y in zip(_unit(a), _unit(b), strict=True))


@dataclass(frozen=True)
class VoiceTemplate:
    centroid: Vector
    utterances: int

    def to_bytes(self) -> bytes:
        return json.dumps({"v": 1, "centroid": self.centroid, "n": self.utterances}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> VoiceTemplate:
        try:
            raw = json.loads(data)
            return cls(tuple(float(x) for x in raw["centroid"]), int(raw["n"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise FactorError("voice.template", "the stored voice template is unreadable") from exc


def enrol(embeddings: Sequence[Sequence[float]], min_utterances: int = 3) -> VoiceTemplate:
    if len(embeddings) < min_utterances:
        raise FactorError(
            "voice.enrolment", f"enrolment needs {min_utterances} utterances, got {len(embeddings)}"
        )
    units = [_unit(e) for e in embeddings]
    mean = [sum(column) / len(units) for column in zip(*units, strict=True)]
    return VoiceTemplate(_unit(mean), len(units))


# What speech recognition writes for a spoken digit when it guesses a word instead; the
# second table only between two digits ("2, A, 3": a clipped "eight").
_SOUNDS_LIKE = {"for": "4", "fore": "4", "to": "2", "too": "2", "won": "1", "ate": "8"}
_BETWEEN_DIGITS = {"a": "8"}


def digits_heard(text: str) -> str:
    """The digits in a transcript, spoken as words ("four one oh") or written as figures. A
    word that sounds like a digit ("for", "to") counts only beside other digits, so "I'd like
    to give you my PIN" adds nothing."""
    tokens = re.findall(r"\d+|[a-z]+", normalize(text).lower())
    is_digit = [t.isdigit() for t in tokens]
    out = []
    for i, token in enumerate(tokens):
        before = i > 0 and is_digit[i - 1]
        after = i + 1 < len(tokens) and is_digit[i + 1]
        if is_digit[i]:
            out.append(token)
        elif token in _SOUNDS_LIKE and (before or after):
            out.append(_SOUNDS_LIKE[token])
        elif token in _BETWEEN_DIGITS and before and after:
            out.append(_BETWEEN_DIGITS[token])
    return "".join(out)


@dataclass(frozen=True)
class VoiceMatch:
    score: float
    passed: bool
    reason: str
    """"voice.match", "voice.no_match" or "voice.wrong_challenge"."""


class VoiceVerifier:
    def __init__(
        self, threshold: float, limiter: AttemptLimiter, challenge_digits: int = 6
    ) -> None:
        self.threshold = threshold
        self.limiter = limiter
        self.challenge_digits = challenge_digits

    def challenge(self) -> str:
        """Digits the caller is asked to say now: a recording made earlier does not hold them."""
        return "".join(secrets.choice("0123456789") for _ in range(self.challenge_digits))

    def verify(
        self,
        caller: str,
        template: VoiceTemplate,
        embedding: Sequence[float],
        heard: str,
        challenge: str,
    ) -> VoiceMatch:
        """Score one utterance against the template; failures count towards the lockout."""
        key = f"voice:{caller}"
        self.limiter.check(key)
        score = cosine(template.centroid, embedding)
        if score < self.threshold:  # another voice, whatever it said
            match = VoiceMatch(score, False, "voice.no_match")
        elif not secrets.compare_digest(digits_heard(heard), challenge):
            match = VoiceMatch(score, False, "voice.wrong_challenge")  # the voice, not live
        else:
            match = VoiceMatch(score, True, "voice.match")
        if match.passed:
            self.limiter.succeeded(key)
        else:
            self.limiter.failed(key)
        return match
