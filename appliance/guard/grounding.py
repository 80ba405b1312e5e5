"""Layer 3, groundedness: every fact a reply states must come from something it was given.

A small model answers fluently and invents freely: a phone number, a price, an opening time, a
branch that does not exist. So before a sentence is spoken, every number (digits or number
words: times, dates, prices, phone numbers, counts) and every name (a capitalized word that
does not open the sentence) in it must appear in its *support*: the knowledge passages or
approved answers the turn was given, the policy's own words (the organization, its topics),
what the caller said in this call, or a tool's result. No entity model is needed, and the
check explains itself: the reasons name the kind of claim (``output.ungrounded.number``),
never its text.

It is lexical on purpose: it cannot tell "closed on Sunday" from "open on Sunday", but it stops
the invented figure or name, which is what a caller would act on. One reversal it does see:
a sentence that says the caller *can* do what a passage says cannot be done and none says can
("You can add a cushion to your order" from "you can't add or swap items"), ``contradicts``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from appliance.guard.normalize import fold, number_words_to_digits

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_WORD = re.compile(r"[A-Za-z][A-Za-z'’\-]*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\"“(]\s*|\s[-–]\s)$")
# Capitalized words that name nothing: the speaker, courtesy titles, the usual acronyms.
_NOT_NAMES = frozenset(
    "i i'm i'll i've i'd ok okay ai mr mrs ms dr sir madam yes no hello hi please thanks".split()  # noqa: SIM905
)
# Number words outside DIGIT_WORDS that still state a figure.
_HUNDREDS = re.compile(r"\b(?:hundred|thousand|million|billion)\b", re.I)


def _numbers(text: str) -> set[str]:
    """The figures a text states, each in a canonical form ('09' and '9' alike; '3.50' too)."""
    spoken = number_words_to_digits(fold(text))
    found: set[str] = set()
    for match in _NUMBER.finditer(spoken):
        raw = match.group(0).replace(",", ".")
        whole, _, frac = raw.partition(".")
        found.add(str(int(whole)) if whole else "0")
        if frac.strip("0"):
            found.add(f"{int(whole or 0)}.{frac.rstrip('0')}")
            found.add(str(int(frac)))  # "10.30" may be a time: its minutes count too
    for match in _HUNDREDS.finditer(spoken):
        found.add(match.group(0).lower())
    return found


def _words(text: str) -> set[str]:
    return {w.lower().strip("'’-") for w in _WORD.findall(fold(text))}


def _names(sentence: str) -> list[str]:
    """Capitalized words that do not open the sentence (or a clause after a colon or quote)."""
    text = fold(sentence)
    names = []
    for match in _WORD.finditer(text):
        word = match.group(0)
        if not word[0].isupper() or word.lower().strip("'’-") in _NOT_NAMES:
            continue
        if _SENTENCE_START.search(text[: match.start()]):
            continue
        names.append(word.lower().strip("'’-"))
    return names


@dataclass(frozen=True)
class Support:
    """What a reply may state: the figures and words of everything it was given."""

    numbers: frozenset[str] = frozenset()
    words: frozenset[str] = frozenset()

    @classmethod
    def of(cls, texts: Iterable[str]) -> Support:
        numbers: set[str] = set()
        words: set[str] = set()
        for text in texts:
            numbers |= _numbers(text)
            words |= _words(text)
        return cls(frozenset(numbers), frozenset(words))

    def __or__(self, other: Support) -> Support:
        return Support(self.numbers | other.numbers, self.words | other.words)


def ungrounded(sentence: str, support: Support) -> tuple[str, ...]:
    """The kinds of claim in ``sentence`` that ``support`` does not back: empty when every
    figure and name in it was given."""
    reasons = []
    if _numbers(sentence) - support.numbers:
        reasons.append("output.ungrounded.number")
    if any(name not in support.words for name in _names(sentence)):
        reasons.append("output.ungrounded.name")
    return tuple(reasons)


_CONTENT = re.compile(r"[a-z][a-z'’]{3,}")
_FUNCTION_WORDS = frozenset(
    """about above after again also always anything been before being below between both
    but cannot could does doing done down during each either else even ever every from have
    having here into itself just like make many more most much must need never only other
    over same should some such than that their them then there these they this those
    through under until very want well were what when where which while will with within
    would your yours yes sure course certainly please thank thanks caller able something
    sorry unfortunately sadly afraid definitely absolutely actually really
    someone anyone you've you're you'll you'd we're we've we'll i've i'll i'd it's that's
    there's here's they're they've can't don't won't isn't aren't doesn't didn't""".split()  # noqa: SIM905
)


def content_words(text: str) -> set[str]:
    """Words of four letters or more that carry meaning (function words left out)."""
    return {
        w.strip("'’").removesuffix("s")
        for w in _CONTENT.findall(fold(text).lower())
        if w not in _FUNCTION_WORDS
    }


def echoes(sentence: str, asked: str, given: Iterable[str]) -> bool:
    """Whether a grounded sentence only says the caller's question back ("Yes, Riverside has
    electric car chargers.", "You can visit the play area at Riverside."): most of its words
    of meaning came from the question, and none of the others from the passages it was
    given. A small model asked about what its passages do not hold agrees with the caller;
    this is how that shows. A "no" the question did not hold is an answer, not an echo."""
    said = content_words(sentence)
    if not said or not asked or _numbers(sentence) - _numbers(asked):
        return False  # a figure the question did not hold is an answer, not an echo
    if _NEGATION.search(fold(sentence)) and not _NEGATION.search(fold(asked)):
        return False
    question = content_words(asked)
    passages = set().union(*(content_words(text) for text in given)) if given else set()
    added = said - question
    return len(said & question) > len(added) and not (added & passages)


def strays(sentence: str, asked: str, known: frozenset[str]) -> tuple[str, ...]:
    """The words of meaning a grounded sentence takes from the question that nothing the
    organization wrote holds ("You have a free electric car charger at Riverside", asked
    about chargers the knowledge base never mentions): the answer is about what the passages
    do not cover, whatever it says of it."""
    return tuple(sorted((content_words(sentence) & content_words(asked)) - known))


_NEGATION = re.compile(r"\b(?:no|not|never|none|nothing|closed)\b|n'?t\b", re.I)
_NEGATED = re.compile(
    r"\b(?:can'?t|cannot|can\s+not|won'?t|will\s+not|don'?t|do\s+not|doesn'?t|does\s+not|"
    r"isn'?t|aren'?t|no\s+longer|never)\s+(?:be\s+)?([a-z]+)(?:\s+or\s+([a-z]+))?",
)
_AFFIRMED = re.compile(
    r"\b(?:you|we|i|it|they|he|she)\s+(?:can|could|will|may|do|does)\s+"
    r"(?:definitely\s+|certainly\s+|also\s+|still\s+|easily\s+|simply\s+|just\s+|always\s+)?"
    r"(?:be\s+)?([a-z]+)",
)
_POSSIBLE = (
    re.compile(r"\b(?:can|could|will|may)\s+(?:also\s+|still\s+|always\s+)?(?:be\s+)?([a-z]+)"),
    re.compile(r"\b(?:we|you)\s+([a-z]+)"),
)
"""What a passage says can be done, however it is put ("items can be returned", "we
deliver"): a verb a passage allows anywhere is no ground for a contradiction."""
_CONDITION = re.compile(r"\b(?:if|unless|when|until)\b[^,.;:!?]*", re.I)
"""A negation under a condition ("if you don't receive it") says nothing of what can be done."""


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "e", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _verbs(pattern: re.Pattern[str], text: str) -> set[str]:
    lowered = fold(text).lower().replace("’", "'")
    return {_stem(v) for m in pattern.finditer(lowered) for v in m.groups() if v}


def contradicts(sentence: str, passages: Iterable[str]) -> bool:
    """Whether ``sentence`` says something can be done ("you can add ...") that a passage says
    cannot ("you can't add or swap items") and no passage says can, in any wording. Only the
    knowledge passages count: what a caller says they cannot do is no rule."""
    affirmed = _verbs(_AFFIRMED, sentence) - _verbs(_NEGATED, sentence)
    texts = list(passages)
    if not affirmed or not texts:
        return False
    negated = set().union(*(_verbs(_NEGATED, _CONDITION.sub(" ", t)) for t in texts))
    allowed = set().union(*(_verbs(pattern, t) for t in texts for pattern in _POSSIBLE))
    return bool(affirmed & (negated - allowed))
