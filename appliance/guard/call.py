"""The guardrails of one call: the pipeline's TurnGuard."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from appliance.config.settings import KnowledgeSettings, PolicySettings
from appliance.core.errors import ApplianceError
from appliance.core.ports import InputDecision
from appliance.guard import pii, topics
from appliance.guard.classifier import GuardClassifier
from appliance.guard.grounding import (
    Support,
    content_words,
    contradicts,
    echoes,
    strays,
    ungrounded,
)
from appliance.guard.injection import Verdict, scan, with_learned
from appliance.guard.normalize import normalize, squeeze
from appliance.guard.output import check_reply, refused_topics, shingles
from appliance.guard.prompt import fence, grounded_turn, new_canary, rules, system_prompt

log = logging.getLogger(__name__)
PAYMENT_NOT_RECORDED = "[payment details: not recorded]"
_NUMBER = re.compile(r"\d(?:[ \-.]?\d){2,}")
DEFAULT_HONEST_REPLY = KnowledgeSettings.unknown_reply
REDRAFTABLE = frozenset(
    {
        "output.system_prompt",
        "output.markup",
        "output.meta",
        "output.ungrounded.number",
        "output.ungrounded.name",
        "output.ungrounded.echo",
        "output.ungrounded.contradiction",
        "output.ungrounded.topic",
        "output.claims_human",
        # A phone number or e-mail address no passage holds, the caller did not give, and the
        # model cannot have seen: invented (a small model's habit), not someone's data.
        "output.personal_data.phone",
        "output.personal_data.email",
    }
)
"""Reasons that mean a small model stumbled (recited its rules, echoed markup, stated what it
was not given), not that the caller led it astray: such a first draft may be drafted again,
and when it fails again the caller hears the honest answer, not a refusal."""


@dataclass(frozen=True)
class GuardState:
    carried_digits: str = ""
    payment_turns_left: int = 0
    caller_values: frozenset[str] = frozenset()
    """What the caller said of their own data in this call (kept in memory only): a reply may
    repeat it, nothing else."""
    checking_danger: bool = False
    """The last reply asked "Are you in danger right now?" (an unsure distress word)."""


AUDIO_ULTRASONIC = "audio.ultrasonic"
_LINE = frozenset({"audio.clipping", "audio.tone_burst"})
"""Flags of a doctored line signal: half a block each."""

_YES = re.compile(
    r"^ (?:yes|yeah|yep|yes i am|i am|i think so|please help|help|help me)(?: please| now)? $"
)
"""A yes to "Are you in danger right now?" (the whole turn, squeezed)."""


class CallGuard:
    def __init__(
        self,
        policy: PolicySettings,
        style: str,
        canary: str | None = None,
        *,
        honest_reply: str = DEFAULT_HONEST_REPLY,
        topic_texts: Iterable[str] = (),
        known_texts: Iterable[str] = (),
        classifier: GuardClassifier | None = None,
    ) -> None:
        """``honest_reply`` is said when a reply cannot be grounded; ``topic_texts`` (the
        knowledge base's questions and titles) widen what counts as on topic; ``known_texts``
        (everything the knowledge base says) are the words an answer from passages may take
        from the question (none given: any); ``classifier`` (the learned head of layer 1)
        scores every turn the rules do not already refuse."""
        self.policy = policy
        self.classifier = classifier
        self.canary = canary or new_canary()
        self.system_prompt = system_prompt(policy, style, self.canary)
        self.fallback_reply = policy.output_fallback
        self.honest_reply = honest_reply
        self.close_reply = policy.output_close
        # The topics and the capability statement may be said; the rules may not.
        self.confidential = rules(self.canary)
        self._prompt_shingles = shingles(self.confidential)
        self._distress = tuple(squeeze(k) for k in policy.distress_keywords)
        self._unsure = frozenset(squeeze(k) for k in policy.distress_unsure)
        self._not_distress = tuple(
            sorted((squeeze(k) for k in policy.distress_exclusions), key=len, reverse=True)
        )
        self._refused = refused_topics(policy.refused_keywords)
        self._vocabulary = topics.vocabulary(policy, topic_texts)
        own_words = [
            policy.organization,
            policy.role,
            policy.capability_statement,
            *policy.allowed_topics,
            honest_reply,
            policy.output_close,
        ]
        known = [*known_texts]
        self._known = (
            frozenset().union(*(content_words(t) for t in (*known, *own_words)))
            if known
            else frozenset()
        )
        self._given_memo: tuple[tuple[str, ...], Support, frozenset[str]] | None = None
        self._policy_support = Support.of(own_words)
        self.state = GuardState()

    def screen_input(self, transcript: str, audio_flags: Sequence[str] = ()) -> InputDecision:
        """Layer 1 for one turn. ``audio_flags`` (what the screening of its sound found): the
        residue of an ultrasonic carrier means the words came from a machine no one heard, so
        the turn is not acted on (unless it holds a distress word); clipping or a held tone on
        the line count half a block, like a rule (with one rule or the head's flag more, the
        turn is refused)."""
        text = normalize(transcript)
        flat = f" {squeeze(text)} "
        state = self.state
        redaction = pii.redact(text, self.policy.redact, state.carried_digits)
        kinds = redaction.kinds
        payment = bool(kinds & {"card", "card_part", "cvv"}) or (
            pii.mentions_payment(text) and bool(re.search(r"\d", text))
        )
        turns_left = self.policy.payment_turns if payment else max(0, state.payment_turns_left - 1)
        in_payment = payment or state.payment_turns_left > 0
        safe_text = redaction.text
        if in_payment:  # PCI: no digits of a card, whole or in parts, reach the model or disk
            safe_text = _NUMBER.sub("[NUMBER]", safe_text)
        values = set(state.caller_values)
        for finding in redaction.findings:
            values.add(pii.value_of(text, finding))
        carried = (
            pii.trailing_digits(text) if (in_payment or pii.leading_partial_card(text)) else ""
        )
        new_state = GuardState(carried, turns_left, frozenset(values))
        checking = state.checking_danger
        stored = PAYMENT_NOT_RECORDED if in_payment else safe_text
        redactions = tuple(sorted(f"redacted.{k}" for k in kinds))

        def decide(
            verdict: str,
            llm_text: str,
            fixed: str | None,
            reasons: tuple[str, ...],
            escalation: str = "",
        ) -> InputDecision:
            return InputDecision(
                verdict=verdict,
                llm_text=llm_text,
                query=safe_text,
                stored_text=stored,
                fixed_reply=fixed,
                reasons=(*reasons, *redactions),
                record_audio=not in_payment,
                escalation=escalation,
                state=new_state,
                on_topic=topics.on_topic(text, self._vocabulary),
            )

        plain = flat
        for phrase in self._not_distress:
            plain = plain.replace(f" {phrase} ", " ")
        words = {k for k in self._distress if f" {k} " in plain}
        confirmed = checking and bool(_YES.search(plain))  # "Are you in danger?" "Yes."
        if words and words <= self._unsure and not confirmed:
            new_state = dataclasses.replace(new_state, checking_danger=True)
            return decide(
                "distress_check", "", self.policy.distress_check_reply, ("policy.distress_check",)
            )
        if words or confirmed:
            return decide(
                "distress",
                "",
                self.policy.distress_reply,
                ("policy.distress",),
                escalation="distress",
            )
        if AUDIO_ULTRASONIC in audio_flags:  # no person said these words (a danger word would
            new_state = dataclasses.replace(new_state, checking_danger=checking)  # not wait)
            return decide("audio", "", self.policy.unclear_audio_reply, (AUDIO_ULTRASONIC,))
        if len(text.split()) > self.policy.max_turn_words:  # a quota, before any scan
            return decide("too_long", "", self.policy.too_long_reply, ("limit.turn_words",))
        verdict = scan(text)
        if verdict.verdict is not Verdict.BLOCK and self.classifier is not None:
            attack, danger = self._learned(safe_text)
            verdict = with_learned(verdict, self.classifier.head.reasons(attack))
            if verdict.verdict is not Verdict.BLOCK and danger >= self.classifier.head.check_at:
                # like a caller in danger, in no distress word: asked first; twice, the path
                if checking:
                    return decide(
                        "distress",
                        "",
                        self.policy.distress_reply,
                        ("policy.distress", "classifier:distress"),
                        escalation="distress",
                    )
                new_state = dataclasses.replace(new_state, checking_danger=True)
                return decide(
                    "distress_check",
                    "",
                    self.policy.distress_check_reply,
                    ("policy.distress_check", "classifier:distress"),
                )
        line = sorted(f"audio:{f.partition('.')[2]}" for f in set(audio_flags) & _LINE)
        # Half a block for a doctored line, however many marks: with no rule or head reason
        # it never refuses a turn (a bad line is no attack by itself).
        verdict = with_learned(verdict, {r: 0.5 if i == 0 else 0.0 for i, r in enumerate(line)})
        if verdict.verdict is Verdict.BLOCK or (
            verdict.verdict is Verdict.FLAG and self.policy.flagged == "refuse"
        ):
            return decide(verdict.verdict.value, "", self.policy.blocked_reply, verdict.reasons)
        lowered = text.lower()
        if self._refused is not None and self._refused.search(lowered):
            return decide("refused_topic", "", self.policy.refusal_reply, ("policy.refused_topic",))
        return decide(verdict.verdict.value, fence(safe_text), None, verdict.reasons)

    def _learned(self, text: str) -> tuple[float, float]:
        """The heads' attack and distress probabilities for ``text`` (the redacted turn); when
        the embedding model fails, none (0, 0): the rules and the distress words still hold."""
        assert self.classifier is not None
        try:
            return self.classifier.scores(text)
        except ApplianceError as exc:
            log.warning("guard head unavailable for a turn: %s", exc.code)
            return 0.0, 0.0

    def grounded_turn(self, passages: Sequence[str], decision: InputDecision) -> str:
        return grounded_turn(passages, decision.llm_text)

    def vet(
        self,
        spoken: str,
        sentence: str,
        given: Sequence[str] = (),
        asked: str = "",
        passages: Sequence[str] = (),
    ) -> tuple[str, tuple[str, ...]]:
        """Layer 3 for the next sentence of a reply: the sentence, and the reasons it may not
        be said after ``spoken`` (empty when it may).
        ``given`` is what the reply may rest on (passages, the caller's words, tool results):
        every figure and name of the sentence must be in it or in the policy's own words.
        ``asked`` (what the caller asked): the sentence must not merely say it back, nor say
        can be done what its ``passages`` (the knowledge given) say cannot."""
        reasons = self.screen_output(f"{spoken} {sentence}".strip(), given)
        reasons += ungrounded(sentence, self._support(tuple(given)))
        if asked and echoes(sentence, asked, given):
            reasons += ("output.ungrounded.echo",)
        if contradicts(sentence, passages):
            reasons += ("output.ungrounded.contradiction",)
        if asked and self._known and strays(sentence, asked, self._known):
            reasons += ("output.ungrounded.topic",)
        return sentence, reasons

    def screen_output(self, reply: str, given: Sequence[str] = ()) -> tuple[str, ...]:
        return check_reply(
            reply,
            canary=self.canary,
            prompt_shingles=self._prompt_shingles,
            caller_values=set(self.state.caller_values) | self._contact_values(tuple(given)),
            refused=self._refused,
        )

    def _support(self, given: tuple[str, ...]) -> Support:
        return self._given(given)[0]

    def _contact_values(self, given: tuple[str, ...]) -> frozenset[str]:
        return self._given(given)[1]

    def _given(self, given: tuple[str, ...]) -> tuple[Support, frozenset[str]]:
        """What a reply may rest on, worked out once per reply (every sentence of it is
        vetted against the same ``given``): the figures and names, and the organization's
        own contact details in it (a phone number in a passage is not a caller's data)."""
        if self._given_memo is None or self._given_memo[0] != given:
            values = frozenset(
                pii.value_of(text, finding)
                for text in given
                for finding in pii.find(text, ("phone", "email"))
            )
            self._given_memo = (given, self._policy_support | Support.of(given), values)
        return self._given_memo[1], self._given_memo[2]

    def may_redraft(self, decision: InputDecision, reasons: tuple[str, ...]) -> bool:
        """A small model sometimes opens its answer to a harmless question by reciting its
        rules, echoing markup or stating a figure it was not given; layer 3 stops that, and
        one fresh draft usually answers. Only for input the guard allowed and only for those
        reasons: anything else gets the fallback."""
        return decision.verdict == "allow" and bool(reasons) and set(reasons) <= REDRAFTABLE

    def replacement(self, reasons: tuple[str, ...], *, first: bool) -> str:
        """What is said instead of a stopped sentence. A stopped first sentence: the honest
        answer (the model stumbled) or the fallback (the reply broke a rule). A stopped later
        sentence: a close that stands on its own after what was said, never a withdrawal."""
        if not first:
            return self.close_reply
        return self.honest_reply if set(reasons) <= REDRAFTABLE else self.fallback_reply

    def commit(self, decision: InputDecision) -> None:
        if isinstance(decision.state, GuardState):
            self.state = decision.state

    def replace_state(self, **changes: object) -> None:
        self.state = dataclasses.replace(self.state, **changes)  # type: ignore[arg-type]
