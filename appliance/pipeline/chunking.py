"""Sentence chunking of a token stream, so speech can start after the first sentence."""

from __future__ import annotations

import re
from collections.abc import Iterator

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e a.m p.m no approx dept inc ltd co".split()  # noqa: SIM905
)
_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*\s|\n+")
_CLAUSE = re.compile(r"[,;:]\s")
_SOFT_BOUNDARY = re.compile(r"[,;:]\s|\s-\s|\s")


class SentenceChunker:
    """Feed text pieces; complete sentences come out as soon as they end.

    A boundary is sentence punctuation followed by whitespace (so "3.5" and "e.g." do not split
    early), or a newline; the first chunk may also end at a comma once it is
    ``first_clause_chars`` long. A run without a boundary longer than ``max_chars`` is cut at
    the last comma or space, so a model that never stops a sentence still gets spoken.
    """

    def __init__(
        self, min_chars: int = 12, max_chars: int = 220, first_clause_chars: int = 24
    ) -> None:
        self._buffer = ""
        self._min_chars = min_chars
        self._max_chars = max_chars
        self._first_clause_chars = first_clause_chars
        self._emitted = 0

    def feed(self, piece: str) -> Iterator[str]:
        self._buffer += piece
        while True:
            sentence = self._take()
            if sentence is None:
                return
            if sentence:
                self._emitted += 1
                yield sentence

    def flush(self) -> Iterator[str]:
        rest = _clean(self._buffer)
        self._buffer = ""
        if rest:
            yield rest

    def _take(self) -> str | None:
        start = 0
        while True:
            match = _BOUNDARY.search(self._buffer, start)
            if match is None:
                break
            end = match.end()
            candidate = self._buffer[:end]
            if len(candidate.strip()) >= self._min_chars and not _ends_in_abbreviation(
                self._buffer[: match.start() + 1]
            ):
                self._buffer = self._buffer[end:]
                return _clean(candidate)
            start = end
        if not self._emitted and self._first_clause_chars:
            # The first chunk may end at a clause (a comma): the caller hears the reply start
            # sooner, and the rest follows while it plays.
            for match in _CLAUSE.finditer(self._buffer):
                if match.end() >= self._first_clause_chars:
                    sentence, self._buffer = (
                        self._buffer[: match.end()],
                        self._buffer[match.end() :],
                    )
                    return _clean(sentence)
        if len(self._buffer) > self._max_chars:
            cut = max(
                (m.end() for m in _SOFT_BOUNDARY.finditer(self._buffer[: self._max_chars])),
                default=0,
            )
            cut = cut if cut > self._min_chars else self._max_chars
            sentence, self._buffer = self._buffer[:cut], self._buffer[cut:]
            return _clean(sentence)
        return None


def _ends_in_abbreviation(text: str) -> bool:
    word = text.rstrip(".!?").rsplit(maxsplit=1)[-1:] if text.strip() else []
    return bool(word) and text.endswith(".") and word[0].lower().strip("(\"'") in _ABBREVIATIONS


def _clean(text: str) -> str:
    """Collapse whitespace and drop markdown marks a voice should not read out."""
    text = re.sub(r"[*_`#]+", "", text)
    text = re.sub(r"^\s*[-•]\s+", "", text)
    return re.sub(r"\s+", " ", text).strip()
