"""The hybrid index: BM25 over the words beside sentence embeddings over the meaning.

Each FAQ entry is one *unit* (its question variants, its answer and tags), each document
passage another. A query is scored against every unit twice: lexically (Okapi BM25, k1 1.2,
b 0.75, saturated into 0..1) and by cosine similarity of embeddings: the best of an entry's
variants and its answer, or of a passage whole and each of its sentences (a passage of
several topics embeds as their average and answers none of them closely). The hybrid score
weighs meaning above words (``DENSE_WEIGHT``): callers paraphrase, and words alone miss "when
do you shut on a Saturday".

The index is kept in one file under APPLIANCE_HOME (``knowledge/index.npz``: the vectors and a
JSON description), written to a temporary name and renamed, so a crash never leaves half an
index; it records the fingerprint of the sources and of the embedding model it was built from.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.core.errors import KnowledgeError
from appliance.core.ports import TextEmbedder
from appliance.knowledge.sources import Sources

INDEX_VERSION = 2
DENSE_WEIGHT = 0.8
_K1, _B = 1.2, 0.75
_LEXICAL_HALF = 4.0
"""The BM25 score that maps to 0.5 (saturation: s / (s + half))."""
_TOKEN = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(
    r"(?<![A-Z][a-z]\.)(?<!\bMrs\.)(?<!\be\.g\.)(?<!\bi\.e\.)(?<=[.!?])\s+(?=[A-Z])"
)
"""A sentence ends at . ! or ? before a capital, but not after "Co.", "St.", "Dr.", "Mrs.",
"e.g." or "i.e."."""
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "from",
        "by",
        "with",
        "about",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "have",
        "has",
        "had",
        "i",
        "me",
        "my",
        "we",
        "our",
        "you",
        "your",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "please",
        "hi",
        "hello",
        "hey",
        "um",
        "uh",
        "er",
        "so",
        "just",
        "like",
        "tell",
        "know",
        "want",
        "wondering",
        "need",
        "get",
        "got",
        "ok",
        "okay",
        "yes",
        "no",
        "not",
        "any",
        "some",
    ]
)


def tokens(text: str) -> list[str]:
    """Lower-case words without stop words, lightly stemmed (plural s, -ing, -ed)."""
    out = []
    for word in _TOKEN.findall(text.lower().replace("'", "")):
        if word in STOP_WORDS:
            continue
        for suffix in ("ing", "ed", "es", "s"):
            if len(word) > len(suffix) + 3 and word.endswith(suffix):
                word = word[: -len(suffix)]
                break
        out.append(word)
    return out


@dataclass(frozen=True)
class Unit:
    """One searchable piece: an FAQ entry or a document passage."""

    id: str
    kind: str  # "faq" or "document"
    title: str
    text: str
    """What is said (an approved answer) or given to the model (a passage)."""
    lexical: str
    """The words BM25 sees."""
    dense: tuple[str, ...]
    """The texts embedded for it: an entry's variants and answer; a passage whole, then each
    of its sentences with the title."""

    def sentences(self) -> tuple[str, ...]:
        """A passage's sentences as written, in order (one: the whole passage)."""
        if self.kind != "document" or len(self.dense) < 2:
            return (self.text,)
        return tuple(text[len(self.title) + 2 :] for text in self.dense[1:])


@dataclass(frozen=True)
class Hit:
    unit: Unit
    score: float
    dense: float
    lexical: float
    parts: tuple[float, ...] = ()
    """The similarity of each text embedded for the unit (``Unit.dense``), in order."""

    def closest(self, most: int, margin: float) -> str:
        """The passage's sentences closest to the question (the best, and up to ``most`` - 1
        more within ``margin`` of it), in the passage's order: what may be quoted."""
        sentences = self.unit.sentences()
        scores = self.parts[1:] if len(self.parts) > 1 else self.parts[:1]
        if not scores or len(scores) != len(sentences):
            return self.unit.text
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
        chosen = [i for i in ranked[:most] if scores[i] >= scores[ranked[0]] - margin]
        return " ".join(sentences[i] for i in sorted(chosen))


def units_of(sources: Sources) -> list[Unit]:
    units = []
    for entry in sources.entries:
        units.append(
            Unit(
                entry.id,
                "faq",
                entry.questions[0],
                entry.answer,
                " ".join([*entry.questions, entry.answer, *entry.tags]),
                (*entry.questions, entry.answer),
            )
        )
    for document in sources.documents:
        for section in document.sections:
            title = (
                f"{document.title}: {section.title}"
                if section.title != document.title
                else section.title
            )
            units.append(
                Unit(
                    section.id,
                    "document",
                    title,
                    section.text,
                    f"{title} {section.text}",
                    (f"{title}. {section.text}", *sentence_texts(title, section.text)),
                )
            )
    return units


def sentence_texts(title: str, text: str) -> tuple[str, ...]:
    """A passage's sentences, each with its title, when it has more than one."""
    sentences = [part for part in _SENTENCE_END.split(text) if part.strip()]
    return tuple(f"{title}: {part}" for part in sentences) if len(sentences) > 1 else ()


class Index:
    """Units, their vectors and the BM25 statistics; searched with an embedded query."""

    def __init__(
        self, units: Sequence[Unit], vectors: np.ndarray, owners: np.ndarray, meta: dict[str, Any]
    ) -> None:
        self.units = list(units)
        self.vectors = vectors.astype(np.float32)
        self.owners = owners.astype(np.int32)
        """For each vector, the index of the unit it belongs to."""
        numbers = np.arange(len(units))
        self._starts = np.searchsorted(self.owners, numbers, side="left")
        self._ends = np.searchsorted(self.owners, numbers, side="right")
        """A unit's vectors are contiguous (built in order): its slice of them."""
        self.meta = meta
        self._docs = [Counter(tokens(u.lexical)) for u in self.units]
        self._lengths = np.array([sum(d.values()) for d in self._docs], dtype=np.float64)
        self._avg = float(self._lengths.mean()) if len(self._docs) else 1.0
        frequency: Counter[str] = Counter()
        for doc in self._docs:
            frequency.update(doc.keys())
        n = len(self._docs)
        self._idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("fingerprint", ""))

    @classmethod
    def build(
        cls, sources: Sources, embedder: TextEmbedder, fingerprint: str, batch: int = 32
    ) -> Index:
        units = units_of(sources)
        texts: list[str] = []
        owners: list[int] = []
        for number, unit in enumerate(units):
            texts.extend(unit.dense)
            owners.extend([number] * len(unit.dense))
        rows: list[list[float]] = []
        for start in range(0, len(texts), batch):
            rows.extend(embedder.embed(texts[start : start + batch]))
        vectors = (
            np.array(rows, dtype=np.float32).reshape(len(texts), -1)
            if rows
            else np.zeros((0, 1), dtype=np.float32)
        )
        meta = {
            "version": INDEX_VERSION,
            "fingerprint": fingerprint,
            "versions": {k: list(v) for k, v in sources.versions().items()},
            "entries": len(sources.entries),
            "documents": len(sources.documents),
        }
        return cls(units, vectors, np.array(owners, dtype=np.int32), meta)

    def lexical_scores(self, query: str) -> np.ndarray:
        words = tokens(query)
        scores = np.zeros(len(self._docs), dtype=np.float64)
        for number, doc in enumerate(self._docs):
            norm = _K1 * (1 - _B + _B * self._lengths[number] / max(self._avg, 1e-9))
            for word in set(words):
                f = doc.get(word, 0)
                if f:
                    scores[number] += self._idf.get(word, 0.0) * f * (_K1 + 1) / (f + norm)
        return scores / (scores + _LEXICAL_HALF)

    def similarities(self, query_vector: Sequence[float]) -> np.ndarray:
        """The cosine similarity of the query to every embedded text, clipped to 0..1."""
        if not len(self.vectors):
            return np.zeros(0, dtype=np.float64)
        similarity = self.vectors @ np.asarray(query_vector, dtype=np.float32)
        return np.clip(similarity.astype(np.float64), 0.0, 1.0)

    def dense_scores(self, similarity: np.ndarray) -> np.ndarray:
        """Each unit's best similarity among its texts."""
        best = np.zeros(len(self.units), dtype=np.float64)
        if len(similarity):
            np.maximum.at(best, self.owners, similarity)
        return best

    def search(
        self, query: str, query_vector: Sequence[float], allowed: set[str] | None = None
    ) -> list[Hit]:
        """Every unit (those in ``allowed``, when given) by hybrid score, best first."""
        similarity = self.similarities(query_vector)
        dense = self.dense_scores(similarity)
        lexical = self.lexical_scores(query)
        score = DENSE_WEIGHT * dense + (1 - DENSE_WEIGHT) * lexical
        order = np.argsort(-score, kind="stable")
        return [
            Hit(
                self.units[i],
                float(score[i]),
                float(dense[i]),
                float(lexical[i]),
                tuple(float(x) for x in similarity[self._starts[i] : self._ends[i]]),
            )
            for i in order
            if allowed is None or self.units[i].id in allowed
        ]

    # -- on disk ------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        description = {
            "meta": self.meta,
            "units": [
                {
                    "id": u.id,
                    "kind": u.kind,
                    "title": u.title,
                    "text": u.text,
                    "lexical": u.lexical,
                    "dense": list(u.dense),
                }
                for u in self.units
            ],
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            with tmp.open("wb") as out:
                np.savez(
                    out,
                    vectors=self.vectors,
                    owners=self.owners,
                    description=np.frombuffer(json.dumps(description).encode(), dtype=np.uint8),
                )
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise KnowledgeError(
                "knowledge.write", f"cannot write the index {path}: {exc.strerror or exc}"
            ) from exc

    @classmethod
    def load(cls, path: Path) -> Index:
        try:
            with np.load(path, allow_pickle=False) as data:
                description = json.loads(bytes(data["description"]).decode())
                vectors, owners = data["vectors"], data["owners"]
            units = [
                Unit(u["id"], u["kind"], u["title"], u["text"], u["lexical"], tuple(u["dense"]))
                for u in description["units"]
            ]
            meta = dict(description["meta"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KnowledgeError("knowledge.index", f"the index {path} cannot be read") from exc
        if meta.get("version") != INDEX_VERSION or len(owners) != len(vectors):
            raise KnowledgeError("knowledge.index", f"the index {path} is of another version")
        return cls(units, vectors, owners, meta)
