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
from collections.abc import Mapping
from dataclasses import dataclass, field

from appliance.guard.normalize import fold, join_spelled, normalize


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


_INSTR = r"(?:instructions?|rules?|prompts?|directions?|directives?|guidelines?|programming|constraints?|restrictions?|policies|policy|guardrails?|training|system\s+message|input|context|messages?|everything|all\s+(?:that|of\s+that))"
_BASE_RULES: tuple[Rule, ...] = (
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
        r"\b(?:BetterDAN|AntiGPT|Mongo\s+Tom|Developer\s+Mode|dev\s+mode|god\s+mode|admin\s+mode|maintenance\s+mode|debug\s+mode|sudo\s+mode|jailbreak\w*|jailbroken|do\s+anything\s+now|DAN\s+mode)\b",
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
    _rule(
        "roleplay.you_are_now",
        "role_play",
        0.8,
        r"\b(?:you\s+are\s+now|you're\s+now|from\s+now\s+on,?\s+you(?:'re|\s+are|\s+will)|you\s+now\s+go\s+by|your\s+(?:new\s+)?name\s+is\s+now|you\s+are\s+no\s+longer|you\s+are\s+not\s+(?:chatgpt|an?\s+ai|a\s+language\s+model)|in\s+the\s+role\s+of|(?:roleplay|role-play|role\s+play)\s+as|you\s+will\s+(?:respond|answer|act|speak)\s+as)\b",
    ),
    _rule(
        "roleplay.two_ways",
        "role_play",
        1.0,
        r"\b(?:two|2)\s+(?:different|separate|distinct)\s+(?:ways|styles|responses|personalities|personas|answers)|\brespond\s+as\s+(?:two|both)\b|\bdual\s+(?:response|persona)",
    ),
    _rule(
        "roleplay.act_as_any",
        "role_play",
        0.6,
        r"\bact\s+(?:as|like)\b|\bsimulat\w*\b.{0,40}\b(?:ai|chatbot|model|persona|conversation|character)s?\b",
    ),
    _rule(
        "roleplay.addresses_a_model",
        "role_play",
        0.5,
        r"\b(?:chat\s?gpt|gpt-?\d|openai|open\s+ai|llama|claude|gemini|bard|language\s+model|large\s+language|ai\s+model|an?\s+(?:advanced\s+)?ai\s+(?:assistant|named|called|model))\b",
    ),
    _rule(
        "roleplay.no_morals",
        "role_play",
        1.0,
        r"\b(?:amoral|immoral|without\s+(?:any\s+)?(?:ethics|morals?|ethical|moral|principles|conscience)|no\s+(?:ethical|moral)\s+(?:guidelines|principles|boundaries|restrictions)|doesn'?t\s+care\s+about\s+(?:ethics|morals|the\s+law|legality)|anything\s+goes|unhinged|liberated\s+response)\b",
    ),
    _rule(
        "roleplay.refusal_suppression",
        "role_play",
        1.0,
        r"\b(?:do\s+not|don't|never)\s+(?:apologi[sz]e|refuse|decline|say\s+(?:no|sorry|you\s+can'?t)|warn|include\s+(?:any\s+)?(?:notes?|disclaimers?|warnings?))|\bnever\s+(?:say|use)\s+the\s+words?\b|\bwithout\s+(?:any\s+)?(?:disclaimers?|warnings?|refusals?)\b",
    ),
    _rule(
        "roleplay.forget_everything",
        "instruction_override",
        1.0,
        r"\bforget\s+(?:everything|all|what)\b.{0,30}\b(?:before|learned|know|told|previous)|\bignore\s+all\s+(?:previous|prior)\b",
    ),
    # the system prompt and hidden configuration
    _rule(
        "sysprompt.named",
        "system_prompt",
        1.0,
        r"\b(?:system|initial|original|hidden|secret|internal|starting|first|initialization|pre-?prompt|underlying|developer|configuration)\s+(?:prompts?|instructions?|messages?|configuration|settings|rules|directives?|text)\b",
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
    _rule(
        "sysprompt.completion_bait",
        "system_prompt",
        1.0,
        r"\b(?:my|your)\s+instructions\s+(?:are|were|say)\b|\bi\s+was\s+(?:instructed|told|programmed|configured)\s+to\b|\bnot\s+supposed\s+to\s+(?:tell|say|reveal|share|discuss)\b|\bsystem_?prompt\b|\binitiali[sz]ation\b",
    ),
    _rule(
        "sysprompt.secrets",
        "system_prompt",
        1.0,
        r"\b(?:reveal|show|print|output|give|tell|share|list|dump|leak|read\s+out)\b.{0,40}\b(?:api\s+keys?|passwords?|credentials|(?:auth(?:entication)?|access)\s+tokens?|connection\s+strings?|secrets?|private\s+keys?|internal\s+(?:data|notes|documents))\b",
    ),
    _rule(
        "sysprompt.given_instructions",
        "system_prompt",
        1.0,
        r"\b(?:instructions?|rules|prompt|directives)\s+(?:that\s+)?(?:you\s+(?:were|have\s+been|are)\s+given|given\s+to\s+you|you\s+(?:received|follow|got))\b",
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
    _rule(
        "delimiter.format_hijack",
        "delimiter_smuggling",
        1.0,
        r"\[\s*(?:end|start)\s+(?:input|output)\s*\]|\buser-?\s?query\b|\bresponse\s*format\b|\bgod\s?mode\b|\bnew\s+rule\s*:|<\s*i'?m\s+free|\binsert\s+(?:a\s+)?divider\b|\{%\s*raw\s*%\}",
    ),
    _rule(
        "delimiter.label",
        "delimiter_smuggling",
        0.6,
        r"(?:^|\n)\s*(?:role|persona|character|rules?)\s*:",
    ),
    _rule(
        "offtask.code",
        "delimiter_smuggling",
        0.6,
        r"\b(?:python|javascript|typescript|source\s+code|console\.log|print\s*\(|sql\s+query|html|bash\s+script|json\s+format)\b",
    ),
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
        r"\b(?:skip|bypass|without|no\s+need\s+(?:for|to)|don't\s+need|waive|disable|turn\s+off|get\s+around|circumvent)\b.{0,30}\b(?:verif\w*|authenticat\w*|identity\s+check|security\s+(?:check|questions?)|pin|passcode|password|one[\s-]time\s+code|otp|(?:two|2)[\s-]?factor|2fa|(?:one|1)[\s-]time\s+(?:code|password|pin))\b",
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
        r"\b(?:(?:someone\s+else's|another\s+(?:person's|customer's|user's|caller's)|(?:previous|last|other)\s+caller'?s?|my\s+(?:wife|husband|partner|mother|mum|mom|father|dad|brother|sister|son|daughter|cousin|uncle|aunt|grand\w+|friend|neighbou?r|boss|colleague|employee|client|flatmate|roommate)'s)\s+(?:\w+\s+)?(?:account|balance|card|pin|password|details|records|transactions|statement|address|date\s+of\s+birth|payments?|number)|(?:his|her)\s+(?:\w+\s+)?(?:account|balance|card|pin|password|details|records|transactions|statement|address|date\s+of\s+birth|payments?|number)|their\s+(?:\w+\s+)?(?:account|balance|card|pin|password|details|records|transactions|statement|date\s+of\s+birth|payments?|(?:account|card|pin|security|customer)\s+number))\b",
    ),
    _rule(
        "identity.claimed_verified",
        "identity",
        0.6,
        r"\bi(?:'m|\s+am|\s+have\s+been|'ve\s+been|\s+already)\s+(?:already\s+)?(?:verified|authenticated|authori[sz]ed)\b",
    ),
    _rule(
        "identity.treat_as_verified",
        "identity",
        1.0,
        r"\b(?:treat|consider|mark|set|flag|register)\s+me\s+(?:as\s+)?(?:verified|authenticated|authori[sz]ed|trusted|(?:an?|the)\s+(?:admin\w*|owner|account\s+holder))\b",
    ),
    _rule(
        "identity.reset_credentials",
        "identity",
        0.6,
        r"\b(?:reset|change|remove|disable)\s+(?:the|my|his|her|their)?\s*(?:pin|password|passcode|security\s+questions?|two[\s-]factor)\b.{0,40}\b(?:now|immediately|without|right\s+away)\b",
    ),
    _rule(
        "identity.from_inside",
        "identity",
        0.7,
        r"\b(?:i'?m|i\s+am|this\s+is|we\s+are|calling)\s+(?:calling\s+)?from\s+(?:your|the)\s+(?:head\s+office|headquarters|security\s+team|fraud\s+(?:team|department)|it\s+(?:department|team)|compliance|internal\s+audit)\b",
    ),
    _rule(
        "identity.read_out_data",
        "identity",
        1.0,
        r"\bread\s+(?:me|out)\s+(?:the|his|her|their|this)\s+(?:full\s+)?(?:card|account|customer|caller)\s*(?:number|details|data)|\b(?:list|give\s+me|read\s+out|show\s+me|export)\s+(?:all|every)\s+(?:the\s+)?(?:customers?|users?|callers?|accounts?|records|clients?)\b",
    ),
    _rule(
        "identity.belongs_to_another",
        "identity",
        1.0,
        r"\b(?:it|this|that)\s+(?:account\s+)?(?:belongs|is)\s+(?:to\s+)?my\s+(?:boss|wife|husband|mother|father|friend|brother|sister|neighbou?r|colleague|partner)'?s?\b",
    ),
    # availability: make the agent talk or work without end
    _rule(
        "availability.repeat_forever",
        "availability",
        1.0,
        r"\b(?:repeat\w*|say\w*|writ\w*|print\w*|output|list|spell\w*|count\w*|recit\w*)\b.{0,40}\b(?:forever|infinitely|indefinitely|endlessly|non-?stop|over\s+and\s+over|until\s+(?:i|you)\s+(?:say|tell)|(?:\d{3,}|hundreds?|thousands?|millions?|billions?)\s+(?:of\s+)?times)\b",
    ),
    _rule(
        "availability.count_huge",
        "availability",
        1.0,
        r"\bcount\w*\b.{0,25}?\b(?:to|up\s+to|from|down\s+from|through)\s+(?:\d{4,}|\d+\s*(?:thousand|million|billion)|(?:a|one)\s+(?:thousand|million|billion|trillion)|infinity)",
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
        1.0,
        r"\b(?:longest\s+(?:possible|answer|response|story)|as\s+long\s+as\s+(?:possible|you\s+can)|(?:\d{3,}|thousand)[\s-]word|maximum\s+length|every\s+(?:single\s+)?(?:word|number)\s+(?:in|of))\b",
    ),
    # requests for harm: never in scope for a customer line
    _rule(
        "harm.produce_harmful",
        "harmful_request",
        1.0,
        r"\b(?:write|create|develop|design|produce|provide|give|outline|teach|instruct|explain|generate|build|make|plan)\b.{0,90}?\b(?:hack\w*|fraud(?!\s+(?:department|team|line|desk|report|alert|protection))|identity\s+theft|terroris\w+|counterfeit\w*|misinformation|disinformation|fake\s+(?:news|reviews?|accounts?)|defam\w*|vandali[sz]\w*|illegal\s+(?:drugs|substances|weapons)|cyberbully\w*|hate\s+speech|propaganda|malicious|steals?|exploit(?:s|ation)?\b|sabotag\w*|insider\s+trading|violence|sexual\s+assault|weapons?|phishing|scams?\b|manipulat\w+|porn\w*|sex\s+scene|vulgar|mislead\w*|spam|virus|crimes?|dangerous\s+stunts)",
    ),
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
        r"\b(?:how\s+(?:do\s+i|to|can\s+i)|help\s+me|teach\s+me|steps\s+to|guide\s+(?:to|for|on))\b.{0,40}\b(?:steal|hack|launder|counterfeit|forge|kill|murder|kidnap|stalk|blackmail|evade\s+tax|commit\s+(?:fraud|suicide|a\s+crime)|rob\s+a|shoplift|break\s+into|pick\s+a\s+lock|open\s+a\s+lock\s+without|hotwire|smuggle|cheat)\b",
    ),
)

# fmt: off
_MORE_RULES: tuple[Rule, ...] = (
    _rule("roleplay.named_model", "role_play", 1.0, r"\b\w*gpt\w*\b|\b(?:openai|open\s+ai|llama|claude|gemini|bard)\b"),
    _rule("roleplay.generic", "role_play", 0.8, r"\b(?:roleplay|role-play|role\s+play|personify|embody|impersonate|you\s+are\s+to\s+(?:act|be|play|pretend)|acts?\s+(?:as|like)\s+(?:a|an)\s+(?:terminal|console|linux|shell|interpreter|database))\b"),
    _rule("roleplay.fiction_frame", "role_play", 0.8, r"\b(?:fictional|imaginary|imaginative|hypothetical|parallel|alternate)\s+(?:world|universe|reality|setting|scenario)|\blet'?s\s+play\s+a\s+game|\bwe\s+are\s+playing\s+a\s+game|\bplay\s+a\s+game\s+(?:where|in\s+which)"),
    _rule("roleplay.you_are_ai", "role_play", 0.8, r"\byou\s+are\s+an?\s+(?:advanced|unrestricted|new|different|powerful|super)\s+ai\b"),
    _rule("roleplay.reply_format", "role_play", 0.8, r"\b(?:make|format|start|begin|end)\s+every\s+(?:reply|response|answer|message)|\bevery\s+(?:reply|response|answer)\s+(?:must|should|will)\b|\balways\s+(?:answer|respond|reply|start)\b.{0,30}\b(?:starting\s+with|begin(?:ning)?\s+with|with\s+the\s+(?:word|phrase|prefix))|\bbelittle\s+me|\binsult\s+me|\bmock\s+me"),
    _rule("roleplay.knowledge_cutoff", "role_play", 0.8, r"\byour\s+(?:limited\s+)?knowledge\b|\bknowledge\s+cut\s?-?off|\b(?:cut\s+off|cutoff)\s+(?:in|since|after)\s+20\d\d|\bmind\s+was\s+cut\s+off|\bcontent\s+polic(?:y|ies)"),
    _rule("override.apply_new", "instruction_override", 1.0, r"\b(?:apply|follow|use|obey|adopt)\s+(?:these|this|the|my)\s+(?:new\s+)?(?:instructions|rules|algorithm|format|protocol)|\b(?:algorithm|protocol|procedure|mode)\s+for\s+you\s+(?:to\s+)?follow|\bforget\s+(?:any|all|everything|what)\b"),
    _rule("delimiter.transcript_frame", "delimiter_smuggling", 0.6, r"\bthe\s+following\s+is\s+a\s+conversation\b|(?:^|\s)(?:user|human|ai|assistant)\s*:\s|\boutput\s+to\s+<?\d+\s+tokens\b|\[\s*input\s*\]"),
    _rule("availability.endless", "availability", 1.0, r"\b(?:never\s+ends?|endless(?:ly)?|infinite\s+(?:story|list|loop)|talk\w*\s+non-?stop|non-?stop\s+for|every\s+number\s+between|every\s+(?:single\s+)?(?:word|digit|number)\s+(?:in|of)|every\s+digit\s+of\s+pi|keep\s+(?:repeating|counting|talking|going)\b)"),
    _rule("sysprompt.confidential", "system_prompt", 1.0, r"\b(?:confidential|private|hidden|secret|internal)\s+(?:marker|token|word|code|phrase|key|note|value|string)s?\b|\b(?:in|from|inside|within)\s+your\s+(?:instructions|prompt|rules|system\s+message|configuration|programming)\b"),
    _rule("harm.manipulate_markets", "harmful_request", 1.0, r"\bmanipulat\w+\s+(?:the\s+)?(?:financial|stock|market|markets|data|records|prices)|\bcommit\w*\s+(?:\w+\s+)?crimes?\b|\bdangerous\s+stunts\b"),
)
# fmt: on
RULES: tuple[Rule, ...] = _BASE_RULES + _MORE_RULES

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
    # Both forms: number words as digits (spoken card numbers) and as words ("one-time code").
    words = join_spelled(fold(text))
    hits: dict[str, float] = {}
    for rule in RULES:
        if rule.pattern.search(normalized) or rule.pattern.search(words):
            hits[f"{rule.category}:{rule.id}"] = rule.weight
    for payload in _decoded_payloads(normalized):
        for rule in RULES:
            if rule.pattern.search(normalize(payload)):
                hits.setdefault(f"encoded_payload:{rule.id}", rule.weight)
        hits.setdefault("encoded_payload:encoded.decoded", 0.5)
    return _verdict(hits)


def with_learned(verdict: InjectionVerdict, learned: Mapping[str, float]) -> InjectionVerdict:
    """The rules' verdict with the learned head's reasons (classifier.py) counted in."""
    if not learned:
        return verdict
    return _verdict({**dict.fromkeys(verdict.reasons, 0.0), **learned}, verdict.score)


def _verdict(hits: Mapping[str, float], base: float = 0.0) -> InjectionVerdict:
    score = round(base + sum(hits.values()), 2)
    verdict = (
        Verdict.BLOCK if score >= BLOCK_AT else Verdict.FLAG if score >= FLAG_AT else Verdict.ALLOW
    )
    return InjectionVerdict(verdict, score, tuple(sorted(hits)))
