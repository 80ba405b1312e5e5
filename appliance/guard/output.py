"""Layer 3: check each part of a reply before it is spoken.

A reply fails when it carries the canary or a run of words from the system prompt, personal
data the caller did not give in this call, a refused topic, a claim to have taken an action
the policy does not allow, the tag of a jailbreak persona, prompt markup (the fence around
the caller's words, chat-template tokens) or talk about the prompt itself. Groundedness
(grounding.py) is checked beside these.
The guard event carries the reasons, never the text; what is said instead is decided in
guard/call.py (``CallGuard.replacement``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from appliance.guard import pii
from appliance.guard.normalize import fold, squeeze

_ACTIONS = re.compile(
    r"\bi(?:'ve|\s+have|\s+just|\s+already)?\s*(?:successfully\s+)?(?:transferred|refunded|"
    r"cancell?ed|deleted|reset|changed|wired|moved|closed|unlocked|approved|credited|booked|"
    r"scheduled|rescheduled|arranged|sent\s+(?:the\s+)?(?:money|payment|funds)|updated\s+your\s+"
    r"(?:password|pin|address))\b|"
    r"\bi(?:'ll|\s+will)\s+(?:now\s+)?(?:transfer|refund|cancel|delete|reset|wire|unlock|approve|"
    r"credit|book|move|reschedule)\b|"
    r"\byour\s+(?:appointment|booking|order|refund|transfer)\s+(?:is|has\s+been)\s+(?:now\s+)?"
    r"(?:booked|confirmed|moved|cancell?ed|rescheduled|processed|arranged)\b|"
    r"\bi\s+can\s+(?:book|move|cancel|reschedule|arrange)\s+(?:that|it|this|one|an?\s+appointment)"
    r"\s+for\s+you\b",
    re.I,
)
"""A claim that an action was, or will be, taken by the agent: only a tool's own result says so
(its reply is fixed text, never the model's), so a model sentence that does is stopped."""
_PERSONA = re.compile(
    r"\[\s*(?:DAN|STAN|DUDE|AIM|JAILBREAK|JAILBROKEN|🔓)\s*\]|\b(?:DAN|STAN|DUDE|AIM)\s*:|"
    r"developer\s+mode|jailbr(?:oken|eak)",
    re.I,
)
"""The tags of jailbreak personas ("[DAN]", "DAN:", "Developer Mode"): a reply that wears one
has been talked into a role the policy does not give it."""
_MARKUP = re.compile(
    r"<\s*/?\s*[a-z_|][^>]{0,40}>|<\s*/?\s*caller|caller_?said|caller_?asked|\[/?INST\]|<</?SYS>>|"
    r"\|\s*(?:im_start|im_end|endoftext|eot_id)\s*\|",
    re.I,
)
"""Prompt markup a model may echo: an XML-like tag ("<callersaid>", "</callor"), the fence's
name in any spelling, chat-template tokens. None of it is ever spoken."""
_HUMAN_CLAIM = re.compile(
    r"\b(?:i'?m|i\s+am|you'?re\s+(?:talking|speaking)\s+(?:to|with)|you\s+are\s+(?:talking|speaking)"
    r"\s+(?:to|with))\s+(?:a\s+|an\s+)?(?:real\s+|actual\s+|live\s+)?(?:person|human(?:\s+being)?)\b|"
    r"\bi'?m\s+not\s+(?:a\s+|an\s+)?(?:robot|machine|computer|bot|ai)\b",
    re.I,
)
"""A claim to be a person: the caller was told they speak with an automated assistant (the
disclosure), and no reply may say otherwise."""
_ACCESS_CLAIM = re.compile(
    r"\baccess\s+(?:is\s+|has\s+been\s+)?(?:now\s+)?(?:granted|approved|unlocked|authori[sz]ed)\b|"
    r"\b(?:you(?:'re|\s+are|\s+have\s+been)|you've\s+been)\s+(?:now\s+|successfully\s+|fully\s+)?"
    r"(?:verified|authenticated|authori[sz]ed|cleared|logged\s+in|granted\s+access)\b|"
    r"\b(?:identity|verification|authentication)\s+(?:is\s+|has\s+been\s+)?(?:now\s+)?"
    r"(?:confirmed|complete|completed|successful|passed|approved)\b|"
    r"\b(?:security|access|clearance|authori[sz]ation)\s+level\s+(?:\w+)\b|"
    r"\b(?:admin(?:istrator)?|developer|debug|maintenance)\s+(?:mode|access)\b",
    re.I,
)
_CONDITIONAL = re.compile(r"\b(?:if|once|when|after|until|before|unless)\s+(?:\w+\s+){0,2}$", re.I)
"""A claim of an authentication or access state ("Access granted.", "You are now verified",
"security level two"): only the identity module, on the tool's route, says what a caller's
state is; from the model it is the attacker's script, whatever the wording that asked for it.
"Once you're verified, ..." is a condition, not a claim."""


def _claims_access(text: str) -> bool:
    return any(not _CONDITIONAL.search(text[: m.start()]) for m in _ACCESS_CLAIM.finditer(text))


_META = re.compile(
    r"\b(?:the|your)\s+caller(?:'s)?\b|\b(?:information|passages?|text|context|facts)\s+"
    r"(?:above|below)\b|"
    r"\b(?:the|these|those)\s+(?:passages?|context)\s+(?:given|provided|says?|shows?)\b|"
    r"\b(?:use|using|based\s+on|according\s+to)\s+(?:the|this)\s+information\b|"
    r"\bas\s+an?\s+(?:ai|language\s+model|customer\s+service\s+assistant)\b|"
    r"\byou(?:'re|\s+are)\s+an?\s+(?:[a-z,-]+\s+){0,4}assistant\b",
    re.I,
)
"""Talk about the prompt rather than to the caller ("The caller said ...", "the information
above", "You're a helpful voice assistant for ..."): the model is reciting how it was asked,
not answering."""
SHINGLE = 6
_CONTRACTIONS = (
    (re.compile(r"\b(you|we|they)'re\b"), r"\1 are"),
    (re.compile(r"\bi'm\b"), "i am"),
    (re.compile(r"\b(i|you|we|they)'ve\b"), r"\1 have"),
    (re.compile(r"\b(i|you|we|they|he|she|it)'ll\b"), r"\1 will"),
    (re.compile(r"\b(it|that|there|here|what)'s\b"), r"\1 is"),
    (re.compile(r"\b(do|does|did|is|are|was|were|has|have|could|should|would)n't\b"), r"\1 not"),
    (re.compile(r"\bcan't\b"), "cannot"),
    (re.compile(r"\bwon't\b"), "will not"),
)


def shingles(text: str, size: int = SHINGLE) -> set[str]:
    """Runs of ``size`` words, contractions spelled out ("you're" and "you are" alike)."""
    text = text.lower().replace("’", "'")
    for pattern, full in _CONTRACTIONS:
        text = pattern.sub(full, text)
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
        if pii.value_of(folded, finding) not in known:
            reasons.append(f"output.personal_data.{finding.kind}")
    if refused is not None and refused.search(folded.lower()):
        reasons.append("output.refused_topic")
    if _ACTIONS.search(folded):
        reasons.append("output.unauthorized_action")
    if _PERSONA.search(folded):
        reasons.append("output.persona")
    if _MARKUP.search(folded):
        reasons.append("output.markup")
    if _HUMAN_CLAIM.search(folded):
        reasons.append("output.claims_human")
    if _META.search(folded):
        reasons.append("output.meta")
    if _claims_access(folded):
        reasons.append("output.claims_access")
    return tuple(dict.fromkeys(reasons))
