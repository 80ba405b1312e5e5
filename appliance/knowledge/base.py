"""The knowledge base of a running appliance: the pipeline's ``Knowledge`` port.

It keeps the index in use and rebuilds it when the sources change (``refresh``: at start, by
``appliance knowledge build``, and before a call when the files' times changed). A bad file
stops the rebuild with an error naming the file and the line, and the last good index goes on
serving. What changed between two builds (entries added, changed, removed, with versions) is
kept for the audit trail (``take_changes``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.config.settings import KnowledgeSettings
from appliance.core.errors import KnowledgeError
from appliance.core.events import Route
from appliance.core.ports import KnowledgeAnswer, TextEmbedder
from appliance.knowledge.index import INDEX_VERSION, STOP_WORDS, Hit, Index, tokens
from appliance.knowledge.policy import decide
from appliance.knowledge.sources import FaqEntry, Sources, load_sources

log = logging.getLogger(__name__)
INDEX_FILE = Path("knowledge") / "index.npz"


@dataclass(frozen=True)
class KnowledgeChange:
    """What one rebuild changed: ids of entries and documents (never their text)."""

    fingerprint: str
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    versions: tuple[tuple[str, int], ...] = ()
    """(id, version) of each added or changed item."""

    @property
    def summary(self) -> dict[str, object]:
        return {
            "fingerprint": self.fingerprint[:16],
            "added": list(self.added),
            "changed": list(self.changed),
            "removed": list(self.removed),
            "versions": dict(self.versions),
        }


class KnowledgeBase:
    def __init__(
        self,
        settings: KnowledgeSettings,
        embedder: TextEmbedder,
        model_digest: str,
        home: Path,
        today: Callable[[], dt.date] = dt.date.today,
    ) -> None:
        self.settings = settings
        self.folder = settings.folder_path
        self.path = home / INDEX_FILE
        self._embedder = embedder
        self._model_digest = model_digest
        self._today = today
        self._index: Index | None = None
        self._entries: dict[str, FaqEntry] = {}
        self._stamp: tuple[tuple[str, int, int], ...] = ()
        self._vocabulary = ""
        self._changes: list[KnowledgeChange] = []
        self._lock = threading.Lock()
        self.error: KnowledgeError | None = None
        """The last rebuild's error, while an older index serves (None when current)."""

    @classmethod
    def open(
        cls,
        settings: KnowledgeSettings,
        embedder: TextEmbedder,
        model_digest: str,
        home: Path,
        today: Callable[[], dt.date] = dt.date.today,
    ) -> KnowledgeBase:
        """Load or build the index; with a bad source file, serve the last good index (and
        keep the error) or, when there is none, raise it."""
        base = cls(settings, embedder, model_digest, home, today)
        try:
            base.refresh()
        except KnowledgeError as exc:
            if base._index is None:
                raise
            log.error("knowledge: %s; serving the last good index", exc.code)
        return base

    # -- building -----------------------------------------------------------------------------

    def fingerprint(self, sources: Sources) -> str:
        text = f"{INDEX_VERSION}\n{self._model_digest}\n{sources.fingerprint}"
        return hashlib.sha256(text.encode()).hexdigest()

    def refresh(self, *, force: bool = False) -> KnowledgeChange | None:
        """Rebuild the index when the sources changed (or ``force``); None when it was
        current. Raises KnowledgeError on a bad file; the index in use is kept."""
        with self._lock:
            if self._index is None and self.path.is_file():
                try:
                    self._index = Index.load(self.path)
                except KnowledgeError as exc:
                    log.warning("knowledge: %s; rebuilding", exc.code)
            stamp = self._file_stamp()
            try:
                sources = load_sources(self.folder)
            except KnowledgeError as exc:
                self.error = exc
                self._stamp = stamp
                raise
            fingerprint = self.fingerprint(sources)
            previous = self._index
            self._entries = {e.id: e for e in sources.entries}
            self._vocabulary = vocabulary_of(sources)
            self._stamp = stamp
            self.error = None
            if previous is not None and previous.fingerprint == fingerprint and not force:
                return None
            index = Index.build(sources, self._embedder, fingerprint)
            index.save(self.path)
            self._index = index
            change = _difference(previous, index)
            self._changes.append(change)
            return change

    def refresh_if_changed(self) -> KnowledgeChange | None:
        """A cheap look at the files' sizes and times first; rebuild only when they moved.
        A bad file is logged (by code) and the index in use keeps serving."""
        if self._file_stamp() == self._stamp:
            return None
        try:
            return self.refresh()
        except KnowledgeError as exc:
            log.error("knowledge: %s; serving the last good index", exc.code)
            return None

    def _file_stamp(self) -> tuple[tuple[str, int, int], ...]:
        if not self.folder.is_dir():
            return ()
        out = []
        for path in sorted(self.folder.rglob("*")):
            if path.is_file():
                stat = path.stat()
                out.append((str(path), stat.st_size, stat.st_mtime_ns))
        return tuple(out)

    def take_changes(self) -> list[KnowledgeChange]:
        """The rebuilds not yet written to the audit trail (each handed out once)."""
        with self._lock:
            changes, self._changes = self._changes, []
        return changes

    # -- answering ----------------------------------------------------------------------------

    @property
    def index(self) -> Index:
        if self._index is None:
            raise KnowledgeError("knowledge.index", "the knowledge index is not built")
        return self._index

    def search(self, question: str) -> list[Hit]:
        """Every unit valid today, best first (FAQ entries outside their dates are left out)."""
        index = self.index
        day = self._today()
        allowed = {
            u.id
            for u in index.units
            if u.kind != "faq" or u.id not in self._entries or self._entries[u.id].valid_on(day)
        }
        vector = self._embedder.embed([question])[0]
        return index.search(question, vector, allowed)

    def answer(self, question: str, context: str = "") -> KnowledgeAnswer:
        if not question.strip():
            return KnowledgeAnswer(Route.UNKNOWN)
        answer = decide(self.search(question), self.settings)
        if answer.route is Route.UNKNOWN and context.strip() and _follows_on(question):
            follow_up = decide(self.search(f"{context} {question}"), self.settings)
            if follow_up.route is not Route.UNKNOWN:
                return follow_up
        return answer

    def vocabulary(self) -> str:
        """The names and words callers use here, as a hint for speech recognition."""
        return self._vocabulary

    def known_texts(self) -> list[str]:
        """Everything the knowledge base says: questions, answers, tags, documents."""
        if self._index is None:
            return []
        return [" ".join((u.title, u.lexical)) for u in self._index.units]

    def topic_texts(self) -> list[str]:
        """What callers ask about here (questions, tags, titles): widens the on-topic check."""
        if self._index is None:
            return []
        return [u.lexical if u.kind == "faq" else u.title for u in self._index.units]


HINT_NAMES = 12
HINT_WORDS = 30
_NAME = re.compile(r"\b[A-Z][a-z]+(?:\s+(?:Co\.|[A-Z][a-z]+))*")
_HINT_WORD = re.compile(r"[a-z]{4,}")
_STOP_WORDS = STOP_WORDS | {
    *("there", "their", "them", "they", "then", "than", "have", "does", "into", "much"),
    *("many", "more", "also", "just", "only", "still", "something", "anything", "someone"),
    *("thing", "things", "going", "would", "could", "should"),
}


def vocabulary_of(sources: Sources) -> str:
    """A short hint for speech recognition, from the content itself: the names it uses most
    (a capitalized word or run of them, not opening a sentence: branches, the organization,
    products) and the words callers' questions use most. Whisper takes it as the text before
    the utterance, so it leans towards these spellings ("card", not "car")."""
    questions = [q for e in sources.entries for q in e.questions]
    texts = [*questions, *(e.answer for e in sources.entries)]
    texts += [f"{d.title}. {s.text}" for d in sources.documents for s in d.sections]
    names: Counter[str] = Counter()
    for text in texts:
        for match in _NAME.finditer(text):
            before = text[: match.start()].rstrip()
            name = match.group(0)
            if before and before[-1] not in ".?!" and name.lower() not in _STOP_WORDS:
                names[name] += 1
    chosen: list[str] = []
    for name, _ in names.most_common():
        if len(chosen) == HINT_NAMES:
            break
        if not any(name in other for other in chosen):
            chosen = [c for c in chosen if c not in name] + [name]
    words = Counter(
        w for q in questions for w in _HINT_WORD.findall(q.lower()) if w not in _STOP_WORDS
    )
    named = set(" ".join(chosen).lower().replace(".", "").split())
    common = [w for w, _ in words.most_common() if w not in named][:HINT_WORDS]
    return f"{', '.join(chosen)}: {', '.join(common)}." if chosen or common else ""


_FOLLOW_ON = re.compile(
    r"^\s*(?:and|also|then|what about|how about|so)\b|\b(?:it|that|there|they|them|those)\b",
    re.I,
)


def _follows_on(question: str) -> bool:
    """A short question that leans on the one before ("and on Sunday?", "how much is it?"):
    only such a question is searched again with the caller's previous words."""
    return len(tokens(question)) <= 4 and bool(_FOLLOW_ON.search(question))


def _difference(previous: Index | None, current: Index) -> KnowledgeChange:
    old: dict[str, list[object]] = dict(previous.meta.get("versions", {})) if previous else {}
    new: dict[str, list[object]] = dict(current.meta.get("versions", {}))
    added = tuple(sorted(set(new) - set(old)))
    removed = tuple(sorted(set(old) - set(new)))
    changed = tuple(sorted(k for k in set(new) & set(old) if list(new[k]) != list(old[k])))
    versions = tuple((k, int(str(new[k][0]))) for k in (*added, *changed))
    return KnowledgeChange(current.fingerprint, added, changed, removed, versions)
