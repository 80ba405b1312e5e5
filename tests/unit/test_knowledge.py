"""The knowledge base's sources, its answer policy and its index, without a model."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.config.settings import DEFAULT_KNOWLEDGE_FOLDER, KnowledgeSettings, Settings
from appliance.core.errors import ConfigError, KnowledgeError
from appliance.core.events import Route
from appliance.knowledge.base import KnowledgeBase, vocabulary_of
from appliance.knowledge.index import Hit, Unit, sentence_texts
from appliance.knowledge.policy import decide
from appliance.knowledge.sources import load_sources
from appliance.service import speech_hint
from appliance.testing.fakes import WordEmbedder

ENTRY = """
[[entry]]
id = "{id}"
questions = ["What time do you open on Saturday?", "Saturday hours?"]
answer = "On Saturday we're open from 10 am to 2 pm."
owner = "Branch Operations"
version = 1
approved = 2026-11-20
"""


def folder(tmp_path: Path, faq: str = ENTRY.format(id="hours-saturday"), **docs: str) -> Path:
    (tmp_path / "faq").mkdir(parents=True, exist_ok=True)
    (tmp_path / "faq" / "hours.toml").write_text(faq, encoding="utf-8")
    if docs:
        (tmp_path / "documents").mkdir(exist_ok=True)
        for name, text in docs.items():
            (tmp_path / "documents" / name.replace("_", ".")).write_text(text, encoding="utf-8")
    return tmp_path


def test_the_default_knowledge_base_keeps_the_promised_facts() -> None:
    sources = load_sources(DEFAULT_KNOWLEDGE_FOLDER)
    assert len(sources.entries) >= 40 and len(sources.documents) >= 3
    answers = {e.id: e.answer for e in sources.entries}
    text = " ".join(answers.values())
    assert "Saturday from 10 am to 2 pm" in answers["hours-general"]
    assert "9 am to 5 pm" in answers["hours-general"] and "closed on Sunday" in text
    assert "3 to 5 working days" in text
    assert all(branch in text for branch in ("Main Street", "Riverside", "Old Town"))
    assert "book, move or cancel an appointment on this call" in answers["appointments-manage"]
    for entry in sources.entries:  # every approved answer says who answers for it
        assert entry.provenance.owner and entry.provenance.version >= 1
    kinds = {d.file.rsplit(".", 1)[-1] for d in sources.documents}
    assert kinds == {"md", "txt", "html"}


def test_a_malformed_faq_file_is_named_with_its_line(tmp_path: Path) -> None:
    broken = ENTRY.format(id="ok-entry") + '\n[[entry]]\nid = "broken\nanswer = 1\n'
    with pytest.raises(KnowledgeError) as caught:
        load_sources(folder(tmp_path, broken))
    assert caught.value.code == "knowledge.invalid"
    assert "hours.toml:11" in caught.value.message


def test_a_missing_key_names_the_file_the_line_and_the_entry(tmp_path: Path) -> None:
    faq = ENTRY.format(id="first") + ENTRY.format(id="second").replace("owner = ", "# owner = ")
    with pytest.raises(KnowledgeError) as caught:
        load_sources(folder(tmp_path, faq))
    message = caught.value.message
    assert "hours.toml:10" in message and "'second'" in message and "owner" in message


def test_ids_are_unique_and_documents_need_their_front_matter(tmp_path: Path) -> None:
    faq = ENTRY.format(id="twice") + ENTRY.format(id="twice")
    with pytest.raises(KnowledgeError, match="used twice"):
        load_sources(folder(tmp_path / "a", faq))
    doc = (
        "---\nid: terms\ntitle: Terms\nowner: Legal\nversion: one\napproved: 2026-01-01\n"
        "---\nText.\n"
    )
    with pytest.raises(KnowledgeError, match=r"terms\.md:1: 'terms': 'version'"):
        load_sources(folder(tmp_path / "b", terms_md=doc))
    with pytest.raises(KnowledgeError, match=r"notes\.txt:3: front matter line"):
        load_sources(folder(tmp_path / "c", notes_txt="---\nid: notes\nthis is not a key\n---\n"))
    (tmp_path / "d").mkdir()
    with pytest.raises(KnowledgeError, match=r"bad\.toml:1: not UTF-8"):
        path = folder(tmp_path / "d")
        (path / "faq" / "bad.toml").write_bytes(b"\xff\xfe not text")
        load_sources(path)


def test_documents_are_cut_into_cited_passages(tmp_path: Path) -> None:
    md = (
        "---\nid: policy\ntitle: Returns policy\nowner: Ops\nversion: 2\napproved: 2026-10-01\n"
        "---\n# Returns policy\n\n## Sale items\nSale items can be returned within 14 days.\n\n"
        "## Faulty items\nWe repair or replace faulty items.\n"
    )
    html = (
        '<html><head><title>Branch services</title><meta name="id" content="services">'
        '<meta name="owner" content="Ops"><meta name="version" content="1">'
        '<meta name="approved" content="2026-11-01"><style>p{}</style></head><body>'
        "<h2>Riverside</h2><p>A cafe on the first floor.</p><script>x()</script>"
        "<h2>Old Town</h2><p>Key cutting.</p></body></html>"
    )
    sources = load_sources(folder(tmp_path, policy_md=md, services_html=html))
    sections = {s.id: s.text for d in sources.documents for s in d.sections}
    assert sections == {
        "policy#sale-items": "Sale items can be returned within 14 days.",
        "policy#faulty-items": "We repair or replace faulty items.",
        "services#riverside": "A cafe on the first floor.",
        "services#old-town": "Key cutting.",
    }


def hit(unit_id: str, score: float, kind: str = "faq") -> Hit:
    return Hit(Unit(unit_id, kind, unit_id, f"text of {unit_id}", "", ()), score, score, 0.0)


def test_the_answer_policy_decides_in_code() -> None:
    settings = KnowledgeSettings(confident=0.7, margin=0.05, related=0.5, passages=2)
    approved = decide([hit("a", 0.9), hit("b", 0.6)], settings)
    assert approved.route is Route.FAQ and approved.approved == "text of a"
    assert approved.citations == ("a",)
    close_call = decide([hit("a", 0.9), hit("b", 0.88), hit("c", 0.55), hit("d", 0.52)], settings)
    assert close_call.route is Route.GROUNDED and close_call.citations == ("a", "b")
    document = decide([hit("doc#s", 0.95, "document")], settings)
    assert document.route is Route.QUOTED and document.citations == ("doc#s",)
    assert document.approved == "text of doc#s"
    modelled = decide([hit("doc#s", 0.95, "document")], replace(settings, quote_documents=False))
    assert modelled.route is Route.GROUNDED and modelled.citations == ("doc#s",)
    assert decide([hit("a", 0.45)], settings).route is Route.UNKNOWN
    assert decide([], settings).route is Route.UNKNOWN


def test_a_document_is_quoted_by_its_sentences_closest_to_the_question() -> None:
    text = (
        "Old Town is in a listed building, so the entrance is the side door on Well Lane. "
        "Only the ground floor is wheelchair accessible. Old Town has key cutting. "
        "Orders are kept for 7 days."
    )
    sentences = sentence_texts("Old Town", text)
    unit = Unit(
        "services#old-town", "document", "Old Town", text, "", (f"Old Town. {text}", *sentences)
    )
    assert unit.sentences()[1] == "Only the ground floor is wheelchair accessible."
    # the best sentence and those within the margin of it, in the passage's order
    quoted = Hit(unit, 0.6, 0.6, 0.0, (0.5, 0.47, 0.60, 0.30, 0.20)).closest(3, 0.15)
    assert quoted == (
        "Old Town is in a listed building, so the entrance is the side door on Well Lane. "
        "Only the ground floor is wheelchair accessible."
    )
    assert Hit(unit, 0.6, 0.6, 0.0, (0.5, 0.1, 0.2, 0.7, 0.6)).closest(1, 0.15) == (
        "Old Town has key cutting."
    )
    # a sentence does not end after an abbreviation
    assert sentence_texts("T", "We're on St. Albans Road. Ask Dr. Lee, e.g. on Monday.") == (
        "T: We're on St. Albans Road.",
        "T: Ask Dr. Lee, e.g. on Monday.",
    )
    one = Unit("d#s", "document", "T", "One sentence.", "", ("T. One sentence.",))
    assert Hit(one, 0.7, 0.7, 0.0, (0.7,)).closest(3, 0.15) == "One sentence."
    # an FAQ entry's answer and a one-sentence passage are quoted whole
    faq = Unit("a", "faq", "a", "The answer. And more.", "", ("Q?", "The answer. And more."))
    assert Hit(faq, 0.9, 0.9, 0.0, (0.9, 0.8)).closest(1, 0.15) == "The answer. And more."


def test_entries_outside_their_dates_are_never_answered(tmp_path: Path) -> None:
    faq = ENTRY.format(id="hours-saturday") + ENTRY.format(id="winter-hours").replace(
        "approved = 2026-11-20", "approved = 2026-11-20\nvalid_from = 2027-01-01"
    ).replace("10 am to 2 pm", "11 am to 1 pm")
    settings = KnowledgeSettings(folder=str(folder(tmp_path / "kb", faq)))
    base = KnowledgeBase.open(
        settings, WordEmbedder(), "fake", tmp_path / "home", today=lambda: dt.date(2026, 12, 1)
    )
    found = {h.unit.id for h in base.search("What time do you open on Saturday?")}
    assert found == {"hours-saturday"}


def test_a_bad_file_leaves_the_last_good_index_serving(tmp_path: Path) -> None:
    source = folder(tmp_path / "kb")
    settings = KnowledgeSettings(folder=str(source), confident=0.5, related=0.3, margin=0.0)
    home = tmp_path / "home"
    base = KnowledgeBase.open(settings, WordEmbedder(), "fake", home)
    assert base.take_changes()[0].added == ("hours-saturday",)
    (source / "faq" / "hours.toml").write_text("[[entry]]\nid = 'x'\n", encoding="utf-8")
    with pytest.raises(KnowledgeError, match=r"hours\.toml:1"):
        base.refresh()
    answer = base.answer("What time do you open on Saturday?")
    assert answer.route is Route.FAQ and "10 am to 2 pm" in answer.approved
    again = KnowledgeBase.open(settings, WordEmbedder(), "fake", home)  # a restart, too
    assert again.error is not None and again.answer("Saturday hours?").route is Route.FAQ
    (source / "faq" / "hours.toml").write_text(
        ENTRY.format(id="hours-saturday").replace("version = 1", "version = 2"), encoding="utf-8"
    )
    change = again.refresh_if_changed()
    assert change is not None and change.changed == ("hours-saturday",)
    assert dict(change.versions) == {"hours-saturday": 2}


def test_speech_recognition_is_told_the_names_and_words_of_the_knowledge_base() -> None:
    hint = vocabulary_of(load_sources(DEFAULT_KNOWLEDGE_FOLDER))
    names, _, words = hint.partition(": ")
    assert {"Example Co.", "Main Street", "Old Town", "Mastercard"} <= set(names.split(", "))
    assert {"card", "appointment", "delivery"} <= set(words.rstrip(".").split(", "))
    assert "My" not in names.split(", ")  # "under My details" names nothing a caller says
    assert "what" not in words and "there" not in words
    assert len(hint) <= 600
    settings = Settings()
    assert speech_hint(settings, None) == ""
    told = dataclasses.replace(settings, stt=dataclasses.replace(settings.stt, hint="Zog."))
    assert speech_hint(told, None) == "Zog."
    with pytest.raises(ConfigError, match=r"stt\.hint"):
        dataclasses.replace(settings.stt, hint="x" * 601)


def test_a_document_passage_is_embedded_whole_and_by_sentence(tmp_path: Path) -> None:
    md = (
        "---\nid: policy\ntitle: Policy\nowner: Ops\nversion: 1\napproved: 2026-11-01\n---\n"
        "## Riverside\nA cafe on the first floor. Baby changing is next to the cafe.\n"
    )
    settings = KnowledgeSettings(folder=str(folder(tmp_path / "kb", policy_md=md)))
    base = KnowledgeBase.open(settings, WordEmbedder(), "fake", tmp_path / "home")
    (unit,) = [u for u in base.index.units if u.kind == "document"]
    assert unit.dense[1:] == (
        "Policy: Riverside: A cafe on the first floor.",
        "Policy: Riverside: Baby changing is next to the cafe.",
    )
    hit = next(h for h in base.search("baby changing") if h.unit.id == unit.id)
    assert len(hit.parts) == 3  # the whole passage, then each sentence
    assert hit.closest(1, 0.0) == "Baby changing is next to the cafe."
