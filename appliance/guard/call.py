"""The guardrails of one call: the pipeline's TurnGuard."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from appliance.config.settings import PolicySettings
from appliance.core.ports import InputDecision
from appliance.guard import pii, topics
from appliance.guard.injection import Verdict, scan
from appliance.guard.normalize import normalize, squeeze
from appliance.guard.output import check_reply, refused_topics, shingles
from appliance.guard.prompt import fence, new_canary, rules, system_prompt

PAYMENT_NOT_RECORDED = "[payment details: not recorded]"
_NUMBER = re.compile(r"\d(?:[ \-.]?\d){2,}")


@dataclass(frozen=True)
class GuardState:
    carried_digits: str = ""
    payment_turns_left: int = 0
    caller_values: frozenset[str] = frozenset()
    """What the caller said of their own data in this call (kept in memory only): a reply may
    repeat it, nothing else."""


class CallGuard:
    def __init__(self, policy: PolicySettings, style: str, canary: str | None = None) -> None:
        self.policy = policy
        self.canary = canary or new_canary()
        self.system_prompt = system_prompt(policy, style, self.canary)
        self.fallback_reply = policy.output_fallback
        # The topics and the capability statement may be said; the rules may not.
        self.confidential = rules(self.canary)
        self._prompt_shingles = shingles(self.confidential)
        self._distress = tuple(squeeze(k) for k in policy.distress_keywords)
        self._refused = refused_topics(policy.refused_keywords)
        self._vocabulary = topics.vocabulary(policy)
        self.state = GuardState()

    def screen_input(self, transcript: str) -> InputDecision:
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
            raw = text[finding.start : finding.end]
            values.add(pii.digits_of(raw) or raw)
        carried = (
            pii.trailing_digits(text) if (in_payment or pii.leading_partial_card(text)) else ""
        )
        new_state = GuardState(carried, turns_left, frozenset(values))
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
                stored_text=stored,
                fixed_reply=fixed,
                reasons=(*reasons, *redactions),
                record_audio=not in_payment,
                escalation=escalation,
                state=new_state,
                on_topic=topics.on_topic(text, self._vocabulary),
            )

        if any(f" {k} " in flat for k in self._distress):
            return decide(
                "distress",
                "",
                self.policy.distress_reply,
                ("policy.distress",),
                escalation="distress",
            )
        if len(text.split()) > self.policy.max_turn_words:  # a quota, before any scan
            return decide("too_long", "", self.policy.too_long_reply, ("limit.turn_words",))
        verdict = scan(text)
        if verdict.verdict is Verdict.BLOCK or (
            verdict.verdict is Verdict.FLAG and self.policy.flagged == "refuse"
        ):
            return decide(verdict.verdict.value, "", self.policy.blocked_reply, verdict.reasons)
        lowered = text.lower()
        if self._refused is not None and self._refused.search(lowered):
            return decide("refused_topic", "", self.policy.refusal_reply, ("policy.refused_topic",))
        return decide(verdict.verdict.value, fence(safe_text), None, verdict.reasons)

    def rewrite_output(self, sentence: str) -> str:
        out, last = [], 0
        for finding in pii.find(sentence, ("phone", "email")):
            raw = sentence[finding.start : finding.end]
            if (pii.digits_of(raw) or raw) in self.state.caller_values:
                continue
            out.append(sentence[last : finding.start])
            out.append("the number on our website" if finding.kind == "phone" else "our website")
            last = finding.end
        out.append(sentence[last:])
        return "".join(out)

    def vet(self, spoken: str, sentence: str) -> tuple[str, tuple[str, ...]]:
        """Layer 3 for the next sentence of a reply: the sentence as it may be said (invented
        contact details replaced), and the reasons it may not be said after ``spoken``."""
        sentence = self.rewrite_output(sentence)
        return sentence, self.screen_output(f"{spoken} {sentence}".strip())

    def screen_output(self, reply: str) -> tuple[str, ...]:
        return check_reply(
            reply,
            canary=self.canary,
            prompt_shingles=self._prompt_shingles,
            caller_values=self.state.caller_values,
            refused=self._refused,
        )

    def may_redraft(self, decision: InputDecision, reasons: tuple[str, ...]) -> bool:
        """A small model sometimes opens its answer to a harmless question by reciting its
        rules; layer 3 stops that, and one fresh draft usually answers. Only for input the
        guard allowed and only for that reason: anything else gets the fallback."""
        return decision.verdict == "allow" and set(reasons) == {"output.system_prompt"}

    def commit(self, decision: InputDecision) -> None:
        if isinstance(decision.state, GuardState):
            self.state = decision.state

    def replace_state(self, **changes: object) -> None:
        self.state = dataclasses.replace(self.state, **changes)  # type: ignore[arg-type]
