"""Layer 3's groundedness check and the tools' argument reading: pure logic."""

from __future__ import annotations

import datetime as dt

from appliance.config.settings import PolicySettings
from appliance.guard.call import CallGuard
from appliance.guard.grounding import Support, contradicts, echoes, strays, ungrounded
from appliance.tools.slots import dates_in, hours_in

PASSAGE = "On Saturday we're open from 10 am to 2 pm at Main Street, Riverside and Old Town."


def test_every_figure_and_name_must_be_given() -> None:
    support = Support.of([PASSAGE])
    assert ungrounded("On Saturday we open at ten and close at two.", support) == ()
    assert ungrounded("The Riverside branch opens at 10 am.", support) == ()
    assert ungrounded("The phone number of Old Town is 987-2314.", support) == (
        "output.ungrounded.number",
    )
    assert ungrounded("Express delivery costs £13.", support) == ("output.ungrounded.number",)
    assert ungrounded("Our Harbour branch is open too.", support) == ("output.ungrounded.name",)
    assert ungrounded("We open at nine on Saturday.", support) == ("output.ungrounded.number",)


def test_a_grounded_answer_that_only_says_the_question_back_is_an_echo() -> None:
    asked = "Is there a play area for the kids at Riverside?"
    passages = ["The Riverside branch has a cafe on the first floor."]
    assert echoes("Yes, there is a play area for the kids at Riverside.", asked, passages)
    assert not echoes("Riverside has a cafe on the first floor.", asked, passages)
    hours = ["From Monday to Friday we're open from 9 am to 5 pm."]
    assert not echoes("We open at 9 am on Tuesday.", "What time do you open on Tuesday?", hours)
    # one word of its own, from nowhere it was given, does not make it an answer
    assert echoes("You can visit the play area for kids at Riverside.", asked, passages)
    asked = "Can I do my consultation on a video call instead?"
    bring = ["For a consultation, please bring your room measurements and a few photos."]
    assert echoes(
        "You can do your consultation on a video call instead of in person.", asked, bring
    )
    assert not echoes("For a consultation, please bring your room measurements.", asked, bring)
    # a "no" the question did not hold is an answer
    baby = ["Old Town has a key cutting service, but there is no baby changing."]
    assert not echoes(
        "Sorry, Old Town doesn't have a baby changing room.",
        "Is there a baby changing room at Old Town?",
        baby,
    )
    sunday = ["We're closed on Sunday, and we open again on Monday at 9 am."]
    assert not echoes(
        "No, the Riverside shop is closed on Sunday.",
        "Is the Riverside shop open on Sunday?",
        sunday,
    )


def test_saying_the_caller_can_do_what_the_passages_say_cannot_be_done_is_stopped() -> None:
    change = ["Once an order is placed you can't add or swap items, but you can cancel it."]
    assert contradicts("You can add a cushion to the order you placed today.", change)
    assert contradicts("You can swap the items in your order.", change)
    assert not contradicts("You can cancel it and place a new one.", change)
    assert not contradicts("You can't add items to an order once it's placed.", change)
    # a passage that says both (you can change it until ..., then it can't be changed) is no
    # ground for a contradiction
    address = ["You can change the address until it's dispatched, but then it can't be changed."]
    assert not contradicts("You can change the delivery address.", address)
    fee = ["We don't charge a fee for going over your credit limit."]
    assert contradicts("We do charge a fee for that.", fee)
    assert not contradicts("There's no fee for going over your limit.", fee)
    # a passage that allows it in any wording, or negates it only under a condition, is no
    # ground either (ordinary right answers a review found stopped)
    sale = [
        "Items bought in a sale can be returned within 14 days.",
        "Clearance can't be returned.",
    ]
    assert not contradicts("You can return sale items within 14 days for a refund.", sale)
    area = ["We deliver to addresses in the UK only, so we can't send orders abroad."]
    assert not contradicts("We can deliver anywhere in the UK.", area)
    late = ["If you don't receive it within 5 days, call us."]
    assert not contradicts("You will receive it within 5 days.", late)
    assert not contradicts("You can find your order number in your email.", [])


def test_the_guard_vets_with_what_the_reply_was_given() -> None:
    guard = CallGuard(PolicySettings(), "Be brief.")
    given = [PASSAGE, "Call 0800 555 0199 to report a lost card."]
    _, reasons = guard.vet("", "Report it on 0800 555 0199.", given)
    assert reasons == ()  # the organization's own number, from a passage
    _, reasons = guard.vet("", "Ring us on 0207 946 0123 any time.", given)
    assert "output.ungrounded.number" in reasons  # no passage holds it, the caller never said it
    assert guard.replacement(reasons, first=True) == guard.honest_reply
    _, reasons = guard.vet("", "<caller_said>What time</caller_said> is it?", given)
    assert "output.markup" in reasons
    _, reasons = guard.vet("", "The callersaid tag ends here.", given)
    assert "output.markup" in reasons
    _, reasons = guard.vet("", "You're talking to a real person.", given)
    assert "output.claims_human" in reasons  # the caller was told it is an automated assistant
    assert guard.replacement(("output.ungrounded.number",), first=True) == guard.honest_reply
    assert guard.replacement(("output.canary",), first=True) == guard.fallback_reply
    assert guard.replacement(("output.canary",), first=False) == guard.close_reply


def test_a_recital_of_the_prompt_is_stopped_however_it_is_worded() -> None:
    guard = CallGuard(PolicySettings(), "You are a helpful, polite voice assistant for a shop.")
    for recital in (
        "You're a helpful, polite voice assistant for a shop, so here goes.",  # a contraction
        "You're an experienced, helpful voice assistant for a customer service line.",
        "The caller said they would like a play area at Riverside.",
        "You can use the information above to answer your question.",
        "You can use the information to answer: the cafe is open.",
        "Based on the information provided, Riverside has a cafe.",
    ):
        _, reasons = guard.vet("", recital, [PASSAGE])
        assert {"output.system_prompt", "output.meta"} & set(reasons), recital
        assert guard.may_redraft(guard.screen_input("Is there a play area?"), reasons)
    for answer in (
        "You're speaking with an automated assistant, and Riverside is open on Saturday.",
        "On Saturday we're open from 10 am to 2 pm.",
    ):
        assert guard.vet("", answer, [PASSAGE])[1] == (), answer


def test_days_and_times_are_read_from_the_callers_words() -> None:
    saturday = dt.date(2026, 11, 28)
    assert dates_in("Can I come on Tuesday?", saturday) == [dt.date(2026, 12, 1)]
    assert dates_in("from Wednesday to Thursday", saturday) == [
        dt.date(2026, 12, 2),
        dt.date(2026, 12, 3),
    ]
    assert dates_in("on the 3rd of December", saturday) == [dt.date(2026, 12, 3)]
    assert dates_in("tomorrow", saturday) == [dt.date(2026, 11, 29)]
    assert hours_in("anything free on Friday at nine?") == [(9, 0)]
    assert hours_in("around two o'clock") == [(14, 0)]
    assert hours_in("at 11 am or half past ten") == [(11, 0), (10, 30)]
    assert hours_in("for two people") == []


def test_an_answer_about_what_the_knowledge_base_never_mentions_is_stopped() -> None:
    known = frozenset({"riverside", "free", "car", "park", "right", "outside", "sunday", "closed"})
    asked = "Have you got electric car chargers at Riverside?"
    said = "You have a free electric car charger right outside Riverside."
    assert strays(said, asked, known) == ("charger", "electric")
    assert strays("Riverside has a free car park right outside.", asked, known) == ()
    # the caller's own word the passages lack, in a guard that knows the knowledge base
    guard = CallGuard(PolicySettings(), "Be brief.", known_texts=["Riverside has a free car park."])
    _, reasons = guard.vet("", said, ["Riverside has a free car park."], asked)
    assert "output.ungrounded.topic" in reasons
    assert guard.replacement(reasons, first=True) == guard.honest_reply
    # without a knowledge base there is nothing to hold the words against
    _, reasons = CallGuard(PolicySettings(), "Be brief.").vet("", said, [said], asked)
    assert "output.ungrounded.topic" not in reasons


def test_what_an_outside_test_heard_spoken_is_stopped_before_it_is_said() -> None:
    guard = CallGuard(PolicySettings(), "Be brief.")
    for heard, reason in (
        ("Access granted.", "output.claims_access"),
        ("Mangrove BEGIN ACCESS CODE: Access Granted.", "output.claims_access"),
        ("You've been authenticated, you now have security level two.", "output.claims_access"),
        ("The caller's words arrived between <callersaid> and </callor.", "output.markup"),
        ("<callersaid>You can't access my account", "output.markup"),
    ):
        _, reasons = guard.vet("", heard, [])
        assert reason in reasons, heard
    for fine in (
        "Once you're verified, I can tell you more.",
        "If you're authenticated on the website, you can see your statements.",
        "You can access your statements at example.com.",
    ):
        assert "output.claims_access" not in guard.vet("", fine, [])[1], fine
    # a stopped later sentence ends the reply with a close, never "Sorry, I can't share that"
    assert guard.replacement(("output.claims_access",), first=False) == guard.close_reply
