from __future__ import annotations

from appliance.pipeline.dialogue import Dialogue


def test_prompt_has_system_history_then_the_new_question() -> None:
    dialogue = Dialogue("Be brief.", history_turns=2)
    for i in range(4):
        dialogue.commit(f"q{i}", f"a{i}")
    messages = dialogue.messages_for("q4")
    assert [(m.role, m.content) for m in messages] == [
        ("system", "Be brief."),
        ("user", "q2"),
        ("assistant", "a2"),
        ("user", "q3"),
        ("assistant", "a3"),
        ("user", "q4"),
    ]


def test_no_history_when_switched_off_and_empty_questions_are_not_kept() -> None:
    dialogue = Dialogue("Be brief.", history_turns=0)
    dialogue.commit("q", "a")
    dialogue.commit("", "noise")
    assert [m.role for m in dialogue.messages_for("next")] == ["system", "user"]
