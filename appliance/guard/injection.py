"""Layer 1: an explainable rule set for prompt injection and jailbreak attempts.

Each rule has an id, a category and a weight; a transcript's score is the sum of the weights
of the rules it matches (on the normalized text, and again on any encoded payload it carries,
decoded). Block at 1.0, flag at 0.5. The reasons are the rule ids: they say why, without
quoting what was said.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import enum
import re
from dataclasses import dataclass, field

from appliance.guard.normalize import normalize


class Verdict(enum.StrEnum):
    ALLOW = "allow"
    FLAG = "flag"
    BLOCK = "block"


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    weight: float
    pattern: re.Pattern[str]


def _rule(rule_id: str, category: str, weight: float, pattern: str) -> Rule:
    return Rule(rule_id, category, weight, re.compile(pattern, re.I | re.S))


_INSTR = r"(?:instructions?|rules?|prompts?|directions?|directives?|guidelines?|programming|constraints?|restrictions?|policies|policy|guardrails?|training|system\s+message)"
RULES: tuple[Rule, ...] = (
    # instruction override
    _rule(
        "override.ignore",
        "instruction_override",
        1.0,
        rf"\b(?:ignore|disregard|forget|skip|drop|abandon|override|bypass|overrule)\b.{{0,40}}\b(?:previous|prior|above|earlier|preceding|all|any|your|the|these|those|original|initial|existing|system)\b.{{0,25}}{_INSTR}",
    ),
    _rule(
        "override.ignore_short",
        "instruction_override",
        1.0,
        rf"\b(?:ignore|disregard|forget)\s+(?:all\s+|any\s+|your\s+)?{_INSTR}",
    ),
    _rule(
        "override.new_rules",
        "instruction_override",
        0.6,
        r"\b(?:new|updated|revised|real|actual|true)\s+(?:instructions?|rules|directives?|system\s+prompt)\b",
    ),
    _rule(
        "override.from_now_on",
        "instruction_override",
        0.6,
        r"\bfrom\s+now\s+on\b.{0,40}\b(?:you\s+(?:will|are|must|shall|should|can)|respond|answer|reply|act)\b",
    ),
    _rule(
        "override.no_longer_bound",
        "instruction_override",
        1.0,
        r"\b(?:no\s+longer|not)\s+(?:bound|restricted|limited)\s+by\b|\bfree\s+(?:of|from)\s+(?:all\s+|any\s+|your\s+)?(?:rules|restrictions|limits|constraints|guidelines)",
    ),
    _rule(
        "override.do_not_follow",
        "instruction_override",
        1.0,
        rf"\b(?:do\s+not|don't|stop)\s+(?:follow(?:ing)?|obey(?:ing)?|adher(?:e|ing)\s+to)\s+(?:your|the|any)\s+{_INSTR}",
    ),
    # role play and jailbreak personas
    _rule(
        "roleplay.persona",
        "role_play",
        1.0,
        r"\byou\s+(?:are|will\s+be|'re)\s+(?:now|going\s+to|about\s+to)\s+(?:act|be|play|pretend|immerse|become|simulate|roleplay|role-play)\b",
    ),
    _rule(
        "roleplay.pretend",
        "role_play",
        0.7,
        r"\b(?:pretend|imagine|suppose)\s+(?:to\s+be|you\s+are|you're|that\s+you\s+are)\b",
    ),
    _rule(
        "roleplay.act_as",
        "role_play",
        0.7,
        r"\b(?:act|behave|respond|answer)\s+(?:as|like)\s+(?:if\s+you|an?\s+(?:ai|assistant|chatbot|bot|language\s+model|character|different|unfiltered|uncensored|evil|rogue|jailbroken)|my\s+(?:deceased|late|dead))",
    ),
    _rule(
        "roleplay.jailbreak_names",
        "role_play",
        1.0,
        r"\b(?:BetterDAN|AntiGPT|Mongo\s+Tom|Developer\s+Mode|dev\s+mode|god\s+mode|jailbreak\w*|jailbroken|do\s+anything\s+now|DAN\s+mode)\b",
    ),
    # Persona acronyms are names too ("Dan", "Stan"): only in capitals, and only a flag.
    Rule(
        "roleplay.persona_acronyms",
        "role_play",
        0.5,
        re.compile(r"\b(?:DAN|STAN|DUDE|AIM|UCAR|KEVIN)\b"),
    ),
    _rule(
        "roleplay.unfiltered",
        "role_play",
        0.8,
        r"\b(?:unfiltered|uncensored|unrestricted|amoral|unethical|without\s+(?:any\s+)?(?:restrictions|filters?|limits|limitations|censorship|morals|ethics|rules))\b",
    ),
    _rule(
        "roleplay.stay_in_character",
        "role_play",
        0.8,
        r"\b(?:stay|remain|keep)\s+in\s+character\b|\bbreak(?:ing)?\s+character\b",
    ),
    _rule(
        "roleplay.opposite",
        "role_play",
        0.7,
        r"\b(?:opposite|evil|dark|shadow|alter)\s+(?:mode|version|twin|side|ego|persona|ai|assistant)\b",
    ),
    _rule(
        "roleplay.hypothetical",
        "role_play",
        0.4,
        r"\b(?:hypothetical(?:ly)?|fictional|in\s+a\s+story|for\s+a\s+novel|movie\s+script|game\s+where)\b",
    ),
    # the system prompt and hidden configuration
    _rule(
        "sysprompt.named",
        "system_prompt",
        1.0,
        r"\b(?:system|initial|original|hidden|secret|internal|starting|first|initialization|pre-?prompt|underlying|developer|configuration)\s+(?:prompt|instructions?|message|configuration|settings|rules|directives?|text)\b",
    ),
    _rule(
        "sysprompt.repeat_above",
        "system_prompt",
        1.0,
        r"\b(?:repeat|print|output|recite|reproduce|copy|echo|display|show|reveal|tell\s+me|read\s+(?:out|back|me))\b.{0,60}\b(?:above|before\s+this|previous\s+(?:text|messages?|words)|everything|verbatim|word\s+for\s+word|exactly)\b",
    ),
    _rule(
        "sysprompt.what_told",
        "system_prompt",
        1.0,
        r"\bwhat\s+(?:were|are|was)\s+you\s+(?:told|instructed|programmed|asked|given|configured)\b|\bhow\s+were\s+you\s+(?:programmed|configured|instructed|set\s+up)\b",
    ),
    _rule(
        "sysprompt.reveal",
        "system_prompt",
        1.0,
        rf"\b(?:reveal|show|print|output|display|tell\s+me|give\s+me|share|recite|read\s+out|list|dump|leak|expose|disclose)\b.{{0,30}}\b(?:your|the)\s+{_INSTR}",
    ),
    _rule(
        "sysprompt.canary",
        "system_prompt",
        1.0,
        r"\b(?:canary|secret\s+(?:word|marker|token|phrase|code\s+word)|safety\s+marker)\b",
    ),
    _rule(
        "sysprompt.conversation_start",
        "system_prompt",
        0.8,
        r"\b(?:beginning|start)\s+of\s+(?:this|the|our)\s+(?:conversation|chat|session|context)\b",
    ),
    # delimiter smuggling
    _rule(
        "delimiter.chat_markup",
        "delimiter_smuggling",
        1.0,
        r"<\|?\s*(?:im_start|im_end|system|assistant|endoftext|user)\s*\|?>|\[/?INST\]|<</?SYS>>|</?caller_said>|</?s>",
    ),
    _rule(
        "delimiter.role_label",
        "delimiter_smuggling",
        0.8,
        r"(?:^|\n|\s)(?:system|assistant|developer)\s*:\s*\S|#{2,}\s*(?:system|instruction|new\s+task)",
    ),
    _rule("delimiter.fences", "delimiter_smuggling", 0.5, r"```|'''|\"\"\"|-----+|={5,}"),
    # encoded payloads
    _rule(
        "encoded.ask_decode",
        "encoded_payload",
        0.6,
        r"\b(?:base\s?64|rot\s?13|rot-13|hex(?:adecimal)?|binary|morse|caesar\s+cipher|leet\s?speak|pig\s+latin|reversed?\s+(?:text|string|order)|backwards|spell\s+(?:it|each)|decode|decipher|encoded|encoding)\b",
    ),
    # identity and social engineering
    _rule(
        "identity.bypass_verification",
        "identity",
        1.0,
        r"\b(?:skip|bypass|without|no\s+need\s+(?:for|to)|don't\s+need|waive|disable|turn\s+off|get\s+around|circumvent)\b.{0,30}\b(?:verif\w*|authenticat\w*|identity\s+check|security\s+(?:check|questions?)|pin|passcode|password|one[\s-]time\s+code|otp|two[\s-]factor|2fa)\b",
    ),
    _rule(
        "identity.authority",
        "identity",
        0.7,
        r"\b(?:i\s+am|i'm|this\s+is|speaking\s+as)\s+(?:the|an?|your)\s+(?:admin\w*|developer|engineer|system\s+owner|owner\s+of\s+(?:this|the)\s+(?:system|bot)|it\s+(?:department|support|team)|security\s+team|supervisor|manager\s+of\s+this|ceo|police|officer|fbi|auditor|creator|programmer)\b",
    ),
    _rule(
        "identity.other_account",
        "identity",
        1.0,
        r"\b(?:someone\s+else's|another\s+(?:person's|customer's|user's)|my\s+(?:wife|husband|partner|mother|father|friend|neighbou?r|boss|colleague)'s|his|her|their)\s+(?:account|balance|card|pin|password|details|records|transactions|statement|address)\b",
    ),
    _rule(
        "identity.claimed_verified",
        "identity",
        0.8,
        r"\b(?:i(?:'m|\s+am|\s+have\s+been|'ve\s+been)\s+already\s+(?:verified|authenticated)|(?:treat|consider|mark)\s+me\s+(?:as\s+)?(?:verified|authenticated|authori[sz]ed|an?\s+admin))\b",
    ),
    _rule(
        "identity.reset_credentials",
        "identity",
        0.6,
        r"\b(?:reset|change|remove|disable)\s+(?:the|my|his|her|their)?\s*(?:pin|password|passcode|security\s+questions?|two[\s-]factor)\b.{0,40}\b(?:now|immediately|without|right\s+away)\b",
    ),
    # availability: make the agent talk or work without end
    _rule(
        "availability.repeat_forever",
        "availability",
        1.0,
        r"\b(?:repeat|say|write|print|output|list|spell|count)\b.{0,40}\b(?:forever|infinitely|indefinitely|endlessly|non-?stop|over\s+and\s+over|until\s+(?:i|you)\s+(?:say|tell)|(?:\d{3,}|hundreds?|thousands?|millions?|billions?)\s+(?:of\s+)?times)\b",
    ),
    _rule(
        "availability.count_huge",
        "availability",
        1.0,
        r"\bcount\s+(?:to|up\s+to|from|down\s+from)\s+(?:\d{4,}|\d+\s*(?:thousand|million|billion)|(?:a|one)\s+(?:thousand|million|billion|trillion)|infinity)",
    ),
    _rule(
        "availability.never_stop",
        "availability",
        1.0,
        r"\b(?:never|don't|do\s+not)\s+stop\s+(?:talking|speaking|writing|generating|repeating|counting)\b|\bkeep\s+(?:talking|going|repeating|counting)\s+(?:forever|until|no\s+matter)",
    ),
    _rule(
        "availability.longest",
        "availability",
        0.8,
        r"\b(?:longest\s+(?:possible|answer|response|story)|as\s+long\s+as\s+(?:possible|you\s+can)|(?:\d{3,}|thousand)[\s-]word|maximum\s+length|every\s+(?:single\s+)?(?:word|number)\s+(?:in|of))\b",
    ),
    # requests for harm: never in scope for a customer line
    _rule(
        "harm.weapons_malware",
        "harmful_request",
        1.0,
        r"\b(?:bomb|explosive|napalm|nerve\s+agent|bioweapon|ransomware|malware|keylogger|virus\s+that|exploit\s+(?:a|the|this)?\s*vulnerabilit|sql\s+injection|ddos|botnet|phishing\s+(?:email|page|site)|meth(?:amphetamine)?|synthesi[sz]e\s+(?:drugs?|poison)|poison\s+(?:someone|a\s+person)|untraceable\s+(?:gun|weapon|poison))\b",
    ),
    _rule(
        "harm.crime",
        "harmful_request",
        1.0,
        r"\b(?:how\s+(?:do\s+i|to|can\s+i)|help\s+me|teach\s+me|steps\s+to|guide\s+(?:to|for|on))\b.{0,40}\b(?:steal|hack|launder|counterfeit|forge|kill|murder|kidnap|stalk|blackmail|evade\s+tax|commit\s+(?:fraud|suicide|a\s+crime)|shoplift|break\s+into|pick\s+a\s+lock|hotwire|smuggle|cheat)\b",
    ),
)

BLOCK_AT = 1.0
FLAG_AT = 0.5
_BASE64 = re.compile(r"[A-Za-z0-9+/]{20,}={0,2}")
_HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}[\s:]?){12,}\b")


@dataclass(frozen=True)
class InjectionVerdict:
    verdict: Verdict
    score: float
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def categories(self) -> set[str]:
        return {r.split(":", 1)[0] for r in self.reasons}


def _decoded_payloads(text: str) -> list[str]:
    """Encoded strings a caller might smuggle instructions in, decoded when they decode."""
    payloads = []
    for match in _BASE64.finditer(text):
        chunk = match.group(0)
        try:
            decoded = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if decoded.isprintable():
            payloads.append(decoded)
    for match in _HEX.finditer(text):
        try:
            decoded = bytes.fromhex(re.sub(r"[\s:]", "", match.group(0))).decode()
        except (ValueError, UnicodeDecodeError):
            continue
        if decoded.isprintable():
            payloads.append(decoded)
    if re.search(r"rot\s?-?13", text, re.I):
        payloads.append(codecs.decode(text, "rot_13"))
    if re.search(r"\b(?:reverse|reversed|backwards)\b", text, re.I):
        payloads.append(text[::-1])
    return payloads


def scan(text: str) -> InjectionVerdict:
    """Score ``text`` (a transcript) against every rule, including inside encoded payloads."""
    normalized = normalize(text)
    hits: dict[str, float] = {}
    for rule in RULES:
        if rule.pattern.search(normalized):
            hits[f"{rule.category}:{rule.id}"] = rule.weight
    for payload in _decoded_payloads(normalized):
        for rule in RULES:
            if rule.pattern.search(normalize(payload)):
                hits.setdefault(f"encoded_payload:{rule.id}", rule.weight)
        hits.setdefault("encoded_payload:encoded.decoded", 0.5)
    score = round(sum(hits.values()), 2)
    verdict = (
        Verdict.BLOCK if score >= BLOCK_AT else Verdict.FLAG if score >= FLAG_AT else Verdict.ALLOW
    )
    return InjectionVerdict(verdict, score, tuple(sorted(hits)))
