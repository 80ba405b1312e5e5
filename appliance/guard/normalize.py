"""Normalization before matching: what a caller (or an attacker) says can be disguised.

NFKC folds compatibility forms (full-width letters, ligatures); a confusables table maps
look-alike letters from other scripts to Latin; zero-width characters go; letters spelled out
one by one ("i g n o r e", "I-G-N-O-R-E") are joined; number words become digits, so "four one
one one" and "4111" look alike to the detectors.
"""

from __future__ import annotations

import re
import unicodedata

# Look-alikes seen in homoglyph attacks (Cyrillic, Greek, Armenian and others) -> Latin.
CONFUSABLES = str.maketrans(
    {
        "а": "a",
        "в": "b",
        "е": "e",
        "к": "k",
        "м": "m",
        "н": "h",
        "о": "o",
        "р": "p",
        "с": "c",
        "т": "t",
        "у": "y",
        "х": "x",
        "і": "i",
        "ј": "j",
        "ѕ": "s",
        "ԁ": "d",
        "ԛ": "q",
        "ԝ": "w",
        "ѵ": "v",
        "ɡ": "g",
        "ɑ": "a",
        "ο": "o",
        "α": "a",
        "ε": "e",
        "ι": "i",
        "κ": "k",
        "ν": "v",
        "ρ": "p",
        "τ": "t",
        "υ": "u",
        "χ": "x",
        "А": "A",
        "В": "B",
        "Е": "E",
        "К": "K",
        "М": "M",
        "Н": "H",
        "О": "O",
        "Р": "P",
        "С": "C",
        "Т": "T",
        "Х": "X",
        "Ι": "I",
        "Ο": "O",
        "Α": "A",
        "Β": "B",
        "Ε": "E",
        "Ζ": "Z",
        "Η": "H",
        "Κ": "K",
        "Μ": "M",
        "Ν": "N",
        "Ρ": "P",
        "Τ": "T",
        "Χ": "X",
        "Υ": "Y",
        "օ": "o",
        "ս": "u",
        "ո": "n",
        "ց": "g",
        "ⅼ": "l",
        "ℓ": "l",
        "ı": "i",
    }
)
_INVISIBLE = re.compile("[\u200b-\u200f\u2028-\u202f\u2060-\u206f\ufeff\u00ad]")
_SPELLED = re.compile(r"\b(?:[A-Za-z][\s.\-_*]){2,}[A-Za-z]\b")
DIGIT_WORDS = {
    "zero": "0",
    "oh": "0",
    "o": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_TEENS = {
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_WORD = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]+|\s+")


def fold(text: str) -> str:
    """NFKC, confusables and invisible characters: the text as it would read aloud."""
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", text)
    return text.translate(CONFUSABLES)


def join_spelled(text: str) -> str:
    """'i g n o r e' -> 'ignore' (three or more single letters in a row)."""
    return _SPELLED.sub(lambda m: re.sub(r"[\s.\-_*]", "", m.group(0)), text)


def number_words_to_digits(text: str) -> str:
    """'four one one one' -> '4111', 'double four' -> '44', 'twenty one' -> '21'.

    Only runs that contain a digit word are rewritten, and 'o'/'oh' count as zero only
    inside such runs, so ordinary words are left alone.
    """
    tokens = _WORD.findall(text)
    out: list[str] = []
    run: list[str] = []
    pending_double = 0

    def flush() -> None:
        nonlocal pending_double
        if run:
            out.append("".join(run))
            run.clear()
        pending_double = 0

    i = 0
    while i < len(tokens):
        token = tokens[i]
        lower = token.lower()
        if (
            lower in ("double", "triple")
            and i + 2 < len(tokens)
            and tokens[i + 2].lower() in DIGIT_WORDS
        ):
            pending_double = 2 if lower == "double" else 3
            i += 2
            continue
        digit = DIGIT_WORDS.get(lower)
        if digit is not None and (lower not in ("o", "oh") or run):
            run.append(digit * (pending_double or 1))
            pending_double = 0
        elif lower in _TENS:
            value = _TENS[lower]
            if (
                i + 2 < len(tokens)
                and tokens[i + 2].lower() in DIGIT_WORDS
                and tokens[i + 2].lower() not in ("o", "oh", "zero")
            ):
                value += int(DIGIT_WORDS[tokens[i + 2].lower()])
                i += 2
            run.append(str(value))
        elif lower in _TEENS:
            run.append(str(_TEENS[lower]))
        elif token.isdigit():
            run.append(token)
        elif token.isspace() or token in ("-", ","):
            if run:
                # keep groups apart with a space: "4111 1111" stays two groups
                j = i + 1
                nxt = tokens[j].lower() if j < len(tokens) else ""
                if (
                    nxt in DIGIT_WORDS
                    or nxt in _TENS
                    or nxt in _TEENS
                    or nxt.isdigit()
                    or nxt in ("double", "triple")
                ):
                    run.append(" " if token.isspace() else token)
                    i += 1
                    continue
                flush()
            out.append(token)
        else:
            flush()
            out.append(token)
        i += 1
    flush()
    return "".join(out)


def normalize(text: str) -> str:
    """The form every detector sees."""
    return number_words_to_digits(join_spelled(fold(text)))


def squeeze(text: str) -> str:
    """Lower case, letters and digits only, single spaces: for phrase matching."""
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9]+", " ", text.lower())).strip()
