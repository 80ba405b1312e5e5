"""Layer 3: check each part of a reply before it is spoken.

A reply fails when it carries the canary or a run of words from the system prompt, personal
data the caller did not give in this call, a refused topic, a claim to have taken an action
the policy does not allow, or the tag of a jailbreak persona. The pipeline then stops the
generation and speaks the fallback; the guard event carries the reasons, never the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from appliance.guard import pii
from appliance.guard.normalize import fold, squeeze

_ACTIONS = re.compile(
    r"\bi(?:'ve|\s+have|\s+just|\s+already)?\s*(?:successfully\s+)?(?:transferred|refunded|"
    r"cancell?ed|deleted|reset|changed|wired|moved|closed|unlocked|approved|credited|sent\s+"
    r"(?:the\s+)?(?:money|payment|funds)|updated\s+your\s+(?:password|pin|address))\b|"
    r"\bi(?:'ll|\s+will)\s+(?:now\s+)?(?:transfer|refund|cancel|delete|reset|wire|unlock|approve|"
    r"credit)\b",
    re.I,
)
_PERSONA = re.compile(
    r"\[\s*(?:DAN|STAN|DUDE|AIM|JAILBREAK|JAILBROKEN|🔓)\s*\]|\b(?:DAN|STAN|DUDE|AIM)\s*:|"
    r"developer\s+mode|jailbr(?:oken|eak)",
    re.I,
)
"""The tags of jailbreak personas ("[DAN]", "DAN:", "Developer Mode"): a reply that wears one
has been talked into a role the policy does not give it."""
SHINGLE = 6


def shingles(text: str, size: int = SHINGLE) -> set[str]:
    words = squeeze(text).split()
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


def refused_topics(keywords: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern for every refused word or phrase, matched as whole words (lower case)."""
    words = [re.escape(k.lower()) for k in keywords if k.strip()]
    return re.compile(rf"\b(?:{'|'.join(words)})\b") if words else None


def canary_in(text: str, canary: str) -> bool:
    """Whether ``text`` carries the canary or its secret part alone, however spaced or cased."""
    flat = re.sub(r"[\s\-_.]", "", fold(text)).upper()
    secret = canary.upper().rsplit("-", 1)[-1]
    return secret in flat


def check_reply(
    reply: str,
    *,
    canary: str,
    prompt_shingles: set[str],
    caller_values: Iterable[str],
    refused: re.Pattern[str] | None,
) -> tuple[str, ...]:
    """The reasons ``reply`` must not be spoken (empty when it may)."""
    reasons = []
    folded = fold(reply)
    if canary_in(reply, canary):
        reasons.append("output.canary")
    if shingles(folded) & prompt_shingles:
        reasons.append("output.system_prompt")
    known = set(caller_values)
    for finding in pii.find(folded):
        value = (
            pii.digits_of(folded[finding.start : finding.end])
            or folded[finding.start : finding.end]
        )
        if value not in known:
            reasons.append(f"output.personal_data.{finding.kind}")
    if refused is not None and refused.search(folded.lower()):
        reasons.append("output.refused_topic")
    if _ACTIONS.search(folded):
        reasons.append("output.unauthorized_action")
    if _PERSONA.search(folded):
        reasons.append("output.persona")
    return tuple(dict.fromkeys(reasons))
