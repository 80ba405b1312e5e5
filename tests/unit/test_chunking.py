from __future__ import annotations

from appliance.pipeline.chunking import SentenceChunker


def chunks(pieces: list[str], **kwargs: int) -> list[str]:
    chunker = SentenceChunker(**kwargs)
    out = [s for piece in pieces for s in chunker.feed(piece)]
    return out + list(chunker.flush())


def test_sentences_come_out_as_soon_as_they_end() -> None:
    chunker = SentenceChunker(first_clause_chars=0)
    assert list(chunker.feed("We open at nine on Saturday")) == []
    assert list(chunker.feed(".")) == []  # could be "9.30": wait for the next piece
    assert list(chunker.feed(" See")) == ["We open at nine on Saturday."]
    assert list(chunker.feed(" you then! Bye.")) == ["See you then!"]
    assert list(chunker.flush()) == ["Bye."]


def test_token_by_token_stream() -> None:
    text = "Your balance is ready. Is there anything else I can help with today? Goodbye now."
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    assert chunks(pieces, first_clause_chars=0) == [
        "Your balance is ready.",
        "Is there anything else I can help with today?",
        "Goodbye now.",
    ]


def test_decimals_and_abbreviations_do_not_split() -> None:
    text = "The rate is 3.5 percent for Dr. Smith at St. Mary's clinic. Thanks for calling."
    assert chunks([text], first_clause_chars=0) == [
        "The rate is 3.5 percent for Dr. Smith at St. Mary's clinic.",
        "Thanks for calling.",
    ]


def test_very_short_fragments_wait_for_more_text() -> None:
    assert chunks(["Ok. Sure. We can do that for you. Bye."], first_clause_chars=0) == [
        "Ok. Sure. We can do that for you.",
        "Bye.",
    ]


def test_first_chunk_may_end_at_a_clause() -> None:
    text = "Thanks for waiting so patiently, your order shipped today, and it arrives Monday."
    assert chunks([text]) == [
        "Thanks for waiting so patiently,",
        "your order shipped today, and it arrives Monday.",
    ]


def test_a_run_without_punctuation_is_cut_at_a_space() -> None:
    words = " ".join(["word"] * 100)
    out = chunks([words], max_chars=60, first_clause_chars=0)
    assert len(out) > 5
    assert all(len(chunk) <= 60 for chunk in out)
    assert " ".join(out) == words


def test_markdown_marks_and_newlines_are_not_spoken() -> None:
    text = "**Opening hours today**\n- Monday to Friday, 9 to 5\n"
    assert chunks([text], first_clause_chars=0) == [
        "Opening hours today",
        "Monday to Friday, 9 to 5",
    ]
