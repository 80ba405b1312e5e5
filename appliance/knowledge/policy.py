"""The answer policy, in code: how a question is answered is never left to the model.

- A confident FAQ match (score at least ``confident``, leading the next other entry by
  ``margin``) is answered with the approved answer as written: no model, near-instant, and
  exactly the wording compliance signed off.
- A partial match (the best score at least ``related``) whose best passage is a document is
  answered with that passage's sentences closest to the question, quoted as written
  (``quote_documents``): the document's approved wording, where a small model asked to
  answer from it mostly cannot say what it holds.
- Any other partial match lets the model answer from the best passages (at most
  ``passages`` of those scoring ``related`` or more).
- Nothing relevant gets the honest unknown and the offer of a person: never a guess.
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance.config.settings import KnowledgeSettings
from appliance.core.events import Route
from appliance.core.ports import KnowledgeAnswer, KnowledgePassage
from appliance.knowledge.index import Hit

SHOWN = 5
"""Candidates reported with their scores (``appliance knowledge ask``, the ROUTE event)."""
QUOTE_SENTENCES = 3
QUOTE_MARGIN = 0.15
"""A quote is the closest sentence and up to two more within this similarity of it (a
sentence that leans on the one before, "these areas", embeds far from the question)."""


def decide(hits: Sequence[Hit], settings: KnowledgeSettings) -> KnowledgeAnswer:
    scores = tuple((h.unit.id, round(h.score, 3)) for h in hits[:SHOWN])
    if not hits or hits[0].score < settings.related:
        return KnowledgeAnswer(Route.UNKNOWN, scores=scores)
    best = hits[0]
    runner_up = hits[1].score if len(hits) > 1 else 0.0
    if (
        best.unit.kind == "faq"
        and best.score >= settings.confident
        and best.score - runner_up >= settings.margin
    ):
        return KnowledgeAnswer(
            Route.FAQ, approved=best.unit.text, passages=(_passage(best),), scores=scores
        )
    if best.unit.kind == "document" and settings.quote_documents:
        return KnowledgeAnswer(
            Route.QUOTED,
            approved=best.closest(QUOTE_SENTENCES, QUOTE_MARGIN),
            passages=(_passage(best),),
            scores=scores,
        )
    related = [h for h in hits[: settings.passages] if h.score >= settings.related]
    return KnowledgeAnswer(
        Route.GROUNDED, passages=tuple(_passage(h) for h in related), scores=scores
    )


def _passage(hit: Hit) -> KnowledgePassage:
    return KnowledgePassage(hit.unit.id, hit.unit.text, hit.unit.title, round(hit.score, 3))
