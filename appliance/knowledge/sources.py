"""Reading the knowledge folder: FAQ entries (TOML) and documents (Markdown, text, HTML).

Layout under the folder (``[knowledge] folder``, default ``config/knowledge``)::

    faq/*.toml          [[entry]] tables: id, questions, answer, owner, version, approved
                        (and optional tags, valid_from, valid_until)
    documents/*.md      front matter (id, title, owner, version, approved) between "---"
    documents/*.txt     lines, then the text; Markdown is cut at its headings, text at its
    documents/*.html    paragraphs; HTML carries <title> and <meta name=... content=...>.

Every entry and document has an owner, a version and an approval date: what the appliance says
is what someone signed off. A malformed or unreadable file is a ``KnowledgeError`` naming the
file and the line; nothing is half-read.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import html.parser
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.core.errors import KnowledgeError

_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")
_ENTRY_HEADER = re.compile(r"^\s*\[\[\s*entry\s*\]\]\s*(?:#.*)?$")
_FRONT_LINE = re.compile(r"^([a-z_]+)\s*:\s*(.*?)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
MAX_PASSAGE_CHARS = 600
"""A longer section is cut at paragraphs: a passage a model reads, and a caller hears, is short."""
DOCUMENT_SUFFIXES = (".md", ".txt", ".html", ".htm")


@dataclass(frozen=True)
class Provenance:
    """Who answers for a piece of content, which version it is, and when it was approved."""

    owner: str
    version: int
    approved: dt.date


@dataclass(frozen=True)
class FaqEntry:
    """A question, its variants as callers ask it, and the approved answer, said as written."""

    id: str
    questions: tuple[str, ...]
    answer: str
    provenance: Provenance
    tags: tuple[str, ...] = ()
    valid_from: dt.date | None = None
    valid_until: dt.date | None = None
    file: str = ""
    line: int = 0

    def valid_on(self, day: dt.date) -> bool:
        return (self.valid_from is None or self.valid_from <= day) and (
            self.valid_until is None or day <= self.valid_until
        )


@dataclass(frozen=True)
class Section:
    """A passage of a document: what a grounded answer may rest on, cited by its id."""

    id: str
    document: str
    title: str
    text: str


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    provenance: Provenance
    sections: tuple[Section, ...]
    file: str = ""


@dataclass(frozen=True)
class Sources:
    """Everything the folder holds, and the digest of its files (what the index is built from)."""

    entries: tuple[FaqEntry, ...]
    documents: tuple[Document, ...]
    digests: tuple[tuple[str, str], ...]
    """(file relative to the folder, SHA-256) of every file read, sorted."""

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name, sha in self.digests:
            digest.update(f"{name}\0{sha}\n".encode())
        return digest.hexdigest()

    def versions(self) -> dict[str, tuple[int, str]]:
        """id -> (version, content digest), for auditing what changed between two builds."""
        out: dict[str, tuple[int, str]] = {}
        for entry in self.entries:
            text = "\n".join([*entry.questions, entry.answer])
            out[entry.id] = (entry.provenance.version, _sha(text))
        for document in self.documents:
            text = "\n".join(s.text for s in document.sections)
            out[document.id] = (document.provenance.version, _sha(text))
        return out


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fail(where: str, line: int, what: str) -> KnowledgeError:
    return KnowledgeError(
        "knowledge.invalid", f"{where}:{line}: {what}" if line else f"{where}: {what}"
    )


def load_sources(folder: Path) -> Sources:
    """Read and check every knowledge file under ``folder``; raise on the first bad one."""
    if not folder.is_dir():
        raise KnowledgeError("knowledge.missing", f"knowledge folder {folder} does not exist")
    entries: list[FaqEntry] = []
    documents: list[Document] = []
    digests: list[tuple[str, str]] = []
    seen: dict[str, str] = {}

    def claim(item_id: str, where: str, line: int) -> None:
        if item_id in seen:
            raise _fail(where, line, f"id {item_id!r} is used twice (also in {seen[item_id]})")
        seen[item_id] = f"{where}:{line}" if line else where

    for path, raw in _files(folder):
        rel = path.relative_to(folder).as_posix()
        where = str(path)
        digests.append((rel, hashlib.sha256(raw).hexdigest()))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise _fail(where, line, "not UTF-8 text") from exc
        if path.suffix == ".toml":
            for entry in _faq_file(text, where, rel):
                claim(entry.id, where, entry.line)
                entries.append(entry)
        else:
            document = _document(text, path.suffix, where, rel)
            claim(document.id, where, 0)
            documents.append(document)
    digests.sort()
    return Sources(tuple(entries), tuple(documents), tuple(digests))


def _files(folder: Path) -> Iterator[tuple[Path, bytes]]:
    faq = folder / "faq"
    docs = folder / "documents"
    paths = sorted(faq.glob("*.toml")) if faq.is_dir() else []
    if docs.is_dir():
        paths += sorted(p for p in docs.iterdir() if p.suffix.lower() in DOCUMENT_SUFFIXES)
    for path in paths:
        try:
            yield path, path.read_bytes()
        except OSError as exc:
            raise KnowledgeError(
                "knowledge.unreadable", f"{path}: cannot be read ({exc.strerror or exc})"
            ) from exc


# -- FAQ ------------------------------------------------------------------------------------------


def _faq_file(text: str, where: str, rel: str) -> list[FaqEntry]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", 0) or _line_of_toml_error(str(exc))
        raise _fail(where, line, f"not valid TOML ({exc})") from exc
    unknown = sorted(set(data) - {"entry"})
    if unknown:
        raise _fail(where, 1, f"unknown top-level keys {unknown}; entries are [[entry]] tables")
    raw_entries = data.get("entry", [])
    if not isinstance(raw_entries, list):
        raise _fail(where, 1, "'entry' must be a list of [[entry]] tables")
    lines = [n for n, line in enumerate(text.splitlines(), 1) if _ENTRY_HEADER.match(line)]
    entries = []
    for index, raw in enumerate(raw_entries):
        line = lines[index] if index < len(lines) else 0
        entries.append(_faq_entry(raw, where, line, rel))
    return entries


def _line_of_toml_error(message: str) -> int:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else 0


_FAQ_KEYS = {
    "id",
    "questions",
    "answer",
    "owner",
    "version",
    "approved",
    "tags",
    "valid_from",
    "valid_until",
}


def _faq_entry(raw: Mapping[str, Any], where: str, line: int, rel: str) -> FaqEntry:
    def need(key: str, kind: type, what: str) -> Any:
        value = raw.get(key)
        if value is None:
            raise _fail(where, line, f"entry {raw.get('id', '?')!r}: {key!r} is missing")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _fail(where, line, f"entry {raw.get('id', '?')!r}: {key!r} must be {what}")
        return value

    unknown = sorted(set(raw) - _FAQ_KEYS)
    if unknown:
        raise _fail(where, line, f"entry {raw.get('id', '?')!r}: unknown keys {unknown}")
    entry_id = need("id", str, "text")
    if not _ID.fullmatch(entry_id):
        raise _fail(where, line, f"id {entry_id!r}: lower-case letters, digits and hyphens only")
    questions = need("questions", list, "a list of questions")
    if not questions or not all(isinstance(q, str) and q.strip() for q in questions):
        raise _fail(where, line, f"entry {entry_id!r}: 'questions' must hold at least one question")
    answer = need("answer", str, "text").strip()
    if not answer:
        raise _fail(where, line, f"entry {entry_id!r}: 'answer' is empty")
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise _fail(where, line, f"entry {entry_id!r}: 'tags' must be a list of words")
    dates = {}
    for key in ("valid_from", "valid_until"):
        value = raw.get(key)
        if value is not None and not _is_date(value):
            raise _fail(where, line, f"entry {entry_id!r}: {key!r} must be a date (YYYY-MM-DD)")
        dates[key] = value
    provenance = _provenance(
        raw.get("owner"), raw.get("version"), raw.get("approved"), where, line, entry_id
    )
    return FaqEntry(
        id=entry_id,
        questions=tuple(q.strip() for q in questions),
        answer=answer,
        provenance=provenance,
        tags=tuple(tags),
        valid_from=dates["valid_from"],
        valid_until=dates["valid_until"],
        file=rel,
        line=line,
    )


def _is_date(value: object) -> bool:
    return isinstance(value, dt.date) and not isinstance(value, dt.datetime)


def _provenance(
    owner: object, version: object, approved: object, where: str, line: int, item: str
) -> Provenance:
    if not isinstance(owner, str) or not owner.strip():
        raise _fail(where, line, f"{item!r}: 'owner' is missing (who answers for it)")
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(where, line, f"{item!r}: 'version' must be a whole number from 1")
    if isinstance(approved, str):
        with contextlib.suppress(ValueError):
            approved = dt.date.fromisoformat(approved)
    if not _is_date(approved):
        raise _fail(where, line, f"{item!r}: 'approved' must be the approval date (YYYY-MM-DD)")
    assert isinstance(approved, dt.date)
    return Provenance(owner.strip(), version, approved)


# -- documents ------------------------------------------------------------------------------------


def _document(text: str, suffix: str, where: str, rel: str) -> Document:
    if suffix.lower() in (".html", ".htm"):
        meta, title, blocks = _html(text)
        front_line = 0
    else:
        meta, body = _front_matter(text, where)
        front_line = 1
        title = meta.get("title", "")
        blocks = _markdown(body) if suffix == ".md" else _paragraphs(body)
    doc_id = meta.get("id", "")
    if not _ID.fullmatch(doc_id):
        raise _fail(
            where,
            front_line,
            f"document id {doc_id!r} missing or not lower-case letters, digits and hyphens",
        )
    title = title or meta.get("title", "")
    if not title.strip():
        raise _fail(where, front_line, f"document {doc_id!r}: 'title' is missing")
    provenance = _provenance(
        meta.get("owner"), meta.get("version"), meta.get("approved"), where, front_line, doc_id
    )
    sections: list[Section] = []
    used: set[str] = set()
    for heading, paragraphs in blocks:
        for passage in _passages(paragraphs):
            slug = _slug(heading) or "text"
            candidate, n = slug, 1
            while candidate in used:
                n += 1
                candidate = f"{slug}-{n}"
            used.add(candidate)
            sections.append(Section(f"{doc_id}#{candidate}", doc_id, heading or title, passage))
    if not sections:
        raise _fail(where, front_line, f"document {doc_id!r} has no text")
    return Document(doc_id, title.strip(), provenance, tuple(sections), rel)


def _front_matter(text: str, where: str) -> tuple[dict[str, str], str]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise _fail(where, 1, "a document must start with front matter between '---' lines")
    meta: dict[str, str] = {}
    for number, line in enumerate(lines[1:], 2):
        if line.strip() == "---":
            return meta, "\n".join(lines[number:])
        if not line.strip():
            continue
        match = _FRONT_LINE.match(line)
        if match is None:
            raise _fail(where, number, f"front matter line {line.strip()!r} is not 'key: value'")
        meta[match.group(1)] = match.group(2)
    raise _fail(where, 1, "the front matter is not closed with a '---' line")


Block = tuple[str, list[str]]
"""(heading, paragraphs)"""


def _markdown(body: str) -> list[Block]:
    blocks: list[Block] = [("", [])]
    paragraph: list[str] = []

    def end_paragraph() -> None:
        if paragraph:
            blocks[-1][1].append(" ".join(paragraph))
            paragraph.clear()

    for line in body.splitlines():
        heading = _HEADING.match(line)
        if heading:
            end_paragraph()
            blocks.append((heading.group(2).strip(), []))
        elif not line.strip():
            end_paragraph()
        else:
            paragraph.append(re.sub(r"^\s*(?:[-*+]|\d+\.)\s+", "", line).strip())
    end_paragraph()
    # A top heading with no text of its own is the document's title, not a section.
    return [(h, [_plain(p) for p in ps]) for h, ps in blocks if ps]


def _paragraphs(body: str) -> list[Block]:
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if p.strip()]
    return [("", [p]) for p in paragraphs]


def _plain(text: str) -> str:
    """Markdown emphasis, links and code marks out: the words as they would be read."""
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[*_`]+", "", text).strip()


class _HtmlText(html.parser.HTMLParser):
    _BLOCKS = frozenset({"p", "li", "td", "th", "dd", "dt", "blockquote", "div", "br"})
    _SKIP = frozenset({"script", "style", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.meta: dict[str, str] = {}
        self.title = ""
        self.blocks: list[Block] = [("", [])]
        self._text: list[str] = []
        self._heading: list[str] | None = None
        self._in_title = False
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "meta" and values.get("name") and values.get("content") is not None:
            self.meta[str(values["name"]).lower()] = str(values["content"]).strip()
        elif tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._end_block()
            self._heading = []
        elif tag in self._BLOCKS:
            self._end_block()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif re.fullmatch(r"h[1-6]", tag) and self._heading is not None:
            self.blocks.append((" ".join("".join(self._heading).split()), []))
            self._heading = None
        elif tag in self._BLOCKS:
            self._end_block()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif self._skip:
            return
        elif self._heading is not None:
            self._heading.append(data)
        else:
            self._text.append(data)

    def _end_block(self) -> None:
        text = " ".join("".join(self._text).split())
        if text:
            self.blocks[-1][1].append(text)
        self._text = []


def _html(text: str) -> tuple[dict[str, str], str, list[Block]]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    parser._end_block()
    blocks = [(h, ps) for h, ps in parser.blocks if ps]
    return parser.meta, " ".join(parser.title.split()), blocks


def _passages(paragraphs: list[str]) -> Iterator[str]:
    """A section's paragraphs, joined into passages of at most MAX_PASSAGE_CHARS."""
    current = ""
    for paragraph in paragraphs:
        if current and len(current) + len(paragraph) + 1 > MAX_PASSAGE_CHARS:
            yield current
            current = ""
        current = f"{current} {paragraph}".strip()
    if current:
        yield current


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]
