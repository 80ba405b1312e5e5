"""The knowledge base: ``knowledge build | list | show ID | ask "QUESTION" | gaps``."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from appliance.cli.common import Commands, actor, command
from appliance.config.settings import Settings
from appliance.core.errors import ConfigError, KnowledgeError


def register(commands: Commands) -> None:
    knowledge = commands.add_parser("knowledge", help="the organization's knowledge base")
    sub = knowledge.add_subparsers(dest="knowledge_command", required=True)
    build = command(sub, "build", build_index, "check the sources and rebuild the index")
    build.add_argument("--force", action="store_true", help="rebuild even when nothing changed")
    listing = command(sub, "list", list_items, "every entry and document: owner, version, dates")
    listing.add_argument("--json", action="store_true")
    show = command(sub, "show", show_item, "one entry or document, whole")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    ask = command(sub, "ask", ask_question, "how a question is answered: route, matches, answer")
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true")
    gaps = command(sub, "gaps", list_gaps, "what callers asked that nothing answered")
    gaps.add_argument("--days", type=int, default=30, help="look back this many days")
    gaps.add_argument("--json", action="store_true")


def _enabled(settings: Settings) -> None:
    if not settings.knowledge.enabled:
        raise ConfigError("knowledge.disabled", "[knowledge] enabled is false")


def build_index(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.knowledge.base import KnowledgeBase
    from appliance.service import audit_knowledge, knowledge_embedder, open_storage

    _enabled(settings)
    embedder, digest = knowledge_embedder(settings)
    base = KnowledgeBase(settings.knowledge, embedder, digest, settings.home)
    change = base.refresh(force=args.force)  # a bad file raises here; the index is kept
    index = base.index
    with open_storage(settings) as storage:
        audit_knowledge(base, storage, actor())
    entries, documents = index.meta.get("entries", 0), index.meta.get("documents", 0)
    passages = sum(u.kind == "document" for u in index.units)
    print(
        f"knowledge: {entries} entries, {documents} documents ({passages} passages) from "
        f"{base.folder}; index {base.path}"
    )
    if change is None:
        print("the index was current: nothing changed")
    else:
        for label, ids in (
            ("added", change.added),
            ("changed", change.changed),
            ("removed", change.removed),
        ):
            if ids:
                print(f"  {label}: {', '.join(ids)}")
    return 0


def _rows(settings: Settings) -> list[dict[str, Any]]:
    from appliance.knowledge.sources import load_sources

    sources = load_sources(settings.knowledge.folder_path)
    rows: list[dict[str, Any]] = []
    for entry in sources.entries:
        rows.append(
            {
                "id": entry.id,
                "kind": "faq",
                "title": entry.questions[0],
                "owner": entry.provenance.owner,
                "version": entry.provenance.version,
                "approved": entry.provenance.approved.isoformat(),
                "valid_from": entry.valid_from.isoformat() if entry.valid_from else None,
                "valid_until": entry.valid_until.isoformat() if entry.valid_until else None,
                "file": f"{entry.file}:{entry.line}",
                "questions": list(entry.questions),
                "answer": entry.answer,
                "tags": list(entry.tags),
            }
        )
    for document in sources.documents:
        rows.append(
            {
                "id": document.id,
                "kind": "document",
                "title": document.title,
                "owner": document.provenance.owner,
                "version": document.provenance.version,
                "approved": document.provenance.approved.isoformat(),
                "valid_from": None,
                "valid_until": None,
                "file": document.file,
                "sections": [
                    {"id": s.id, "title": s.title, "text": s.text} for s in document.sections
                ],
            }
        )
    return rows


def list_items(args: argparse.Namespace, settings: Settings) -> int:
    rows = _rows(settings)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        dates = ""
        if r["valid_from"] or r["valid_until"]:
            dates = f"  valid {r['valid_from'] or '...'} to {r['valid_until'] or '...'}"
        print(
            f"{r['id']:34} {r['kind']:8} v{r['version']:<3} {r['approved']}  "
            f"{r['owner']:20} {r['title'][:48]}{dates}"
        )
    print(f"{len(rows)} items")
    return 0


def show_item(args: argparse.Namespace, settings: Settings) -> int:
    found = next((r for r in _rows(settings) if r["id"] == args.id), None)
    if found is None:
        raise KnowledgeError("knowledge.not_found", f"no entry or document {args.id!r}")
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(f"{found['id']} ({found['kind']}, {found['file']})")
    print(f"owner {found['owner']}, version {found['version']}, approved {found['approved']}")
    if found["kind"] == "faq":
        for question in found["questions"]:
            print(f"  Q: {question}")
        print(f"  A: {found['answer']}")
    else:
        print(f"title: {found['title']}")
        for section in found["sections"]:
            print(f"  [{section['id']}] {section['title']}: {section['text']}")
    return 0


def ask_question(args: argparse.Namespace, settings: Settings) -> int:
    """The question through the call's own reply path (as a first turn), without speech."""
    from appliance.redteam.runner import reply
    from appliance.service import VoiceService

    _enabled(settings)
    service = VoiceService.load(settings)
    out, _ = asyncio.run(reply(service, args.question))
    knowledge = service.knowledge
    assert knowledge is not None
    state = out.state
    query = state.decision.query if state.decision is not None else args.question
    hits = knowledge.search(query)[:5] if query.strip() else []
    result = {
        "question": args.question,
        "route": state.route.value if state.route is not None else None,
        "citations": list(state.citations),
        "matches": [
            {
                "id": h.unit.id,
                "kind": h.unit.kind,
                "score": round(h.score, 3),
                "meaning": round(h.dense, 3),
                "words": round(h.lexical, 3),
            }
            for h in hits
        ],
        "answer": state.reply,
        "guard": {
            "input": state.decision.verdict if state.decision is not None else None,
            "output": list(state.output_reasons),
            "redrafted": list(state.redrafted),
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"route:   {result['route']}"
        + (f" (cites {', '.join(state.citations)})" if state.citations else "")
    )
    print("matches:")
    for m in result["matches"]:
        print(
            f"  {m['score']:.3f}  {m['id']}  (meaning {m['meaning']:.3f}, words {m['words']:.3f})"
        )
    print(f"answer:  {state.reply}")
    return 0


def list_gaps(args: argparse.Namespace, settings: Settings) -> int:
    """Questions that got the honest unknown: their redacted wording (as stored) and how often;
    reading them is an audited read of the turns."""
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        gaps = storage.knowledge_gaps(actor(), days=args.days)
    if args.json:
        print(json.dumps([{"count": n, "question": q} for q, n in gaps], indent=2))
        return 0
    for question, count in gaps:
        print(f"{count:5d}  {question}")
    if not gaps:
        print(f"no unanswered questions in the last {args.days} days")
    return 0
