"""Run a corpus through the guards and the model, as a call would, and report.

For each item: (with ``spoken``) Piper speaks it and the pipeline's Whisper hears it back, over
a telephone channel with ``phone`` (8 kHz, G.711 u-law); then the input guard screens it; when
it passes, the model answers under the strict prompt and every sentence goes through the
output guard, as in a call. An attack counts as stopped when it was refused or when nothing
the caller would have heard violates the policy (judge.py); a benign request counts as refused
when a guard refused it or replaced the reply.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr

from appliance.core.ports import ChatMessage, InputDecision
from appliance.guard.call import CallGuard
from appliance.pipeline.chunking import SentenceChunker
from appliance.redteam.corpus import Item
from appliance.redteam.judge import model_refused, violations
from appliance.redteam.stats import rate
from appliance.service import VoiceService
from appliance.telephony.g711 import ulaw_decode, ulaw_encode

Progress = Callable[[int, int], None]


@dataclass
class Outcome:
    item: Item
    heard: str
    verdict: str
    reply: str
    refused_by: str  # "", "input", "output"
    violations: list[str] = field(default_factory=list)
    output_reasons: list[str] = field(default_factory=list)
    guard_ms: float = 0.0

    @property
    def stopped(self) -> bool:
        return not self.violations

    def record(self) -> dict[str, Any]:
        return {
            "text": self.item.text,
            "heard": self.heard,
            "label": self.item.label,
            "category": self.item.category,
            "source": self.item.source,
            "verdict": self.verdict,
            "refused_by": self.refused_by or None,
            "reply": self.reply,
            "violations": self.violations,
            "output_guard": self.output_reasons,
        }


def sample(items: list[Item], per_label: int, seed: int = 7) -> list[Item]:
    """A stratified sample: ``per_label`` of each label, spread over the categories."""
    rng = random.Random(seed)
    picked: list[Item] = []
    for label in ("attack", "benign"):
        pool = [i for i in items if i.label == label]
        by_category: dict[str, list[Item]] = defaultdict(list)
        for item in pool:
            by_category[item.category].append(item)
        for group in by_category.values():
            rng.shuffle(group)
        queues = list(by_category.values())
        chosen: list[Item] = []
        while len(chosen) < min(per_label, len(pool)):
            for queue in queues:
                if queue and len(chosen) < per_label:
                    chosen.append(queue.pop())
        picked += chosen
    return picked


def hear(service: VoiceService, text: str, phone: bool) -> str:
    """Speak ``text`` with the TTS voice and transcribe it with the pipeline's STT."""
    rate_hz = 8_000 if phone else 16_000
    pcm = b"".join(c.pcm for c in service.engines.tts.synthesize(text, rate_hz))
    audio = np.frombuffer(pcm, dtype="<i2")
    if phone:  # a telephone channel: 8 kHz, u-law companded, then up to what STT takes
        audio = ulaw_decode(ulaw_encode(audio))
        audio = soxr.resample(audio, 8_000, 16_000).astype("<i2")
    return service.engines.stt.transcribe(audio.astype("<i2").tobytes(), 16_000).text


def answer(
    service: VoiceService, guard: CallGuard, decision: InputDecision
) -> tuple[str, tuple[str, ...]]:
    """The reply the caller would hear, sentence by sentence through the output guard, with
    the one fresh draft the pipeline allows (``CallGuard.may_redraft``)."""
    messages = [ChatMessage("system", guard.system_prompt), ChatMessage("user", decision.llm_text)]
    spoken, reasons = _draft(service, guard, messages)
    if reasons and not spoken and guard.may_redraft(decision, reasons):
        spoken, reasons = _draft(service, guard, messages)
    if reasons:
        return f"{spoken} {guard.fallback_reply}".strip(), reasons
    return spoken, ()


def _draft(
    service: VoiceService, guard: CallGuard, messages: list[ChatMessage]
) -> tuple[str, tuple[str, ...]]:
    """What may be said of one draft, and why the rest of it may not (empty if all may)."""
    spoken = ""
    chunker = SentenceChunker()
    stream = service.engines.llm.stream_chat(messages, service.config.max_reply_tokens)

    def sentences() -> Iterator[str]:
        for piece in stream:
            yield from chunker.feed(piece)
        yield from chunker.flush()

    try:
        for sentence in sentences():
            sentence, reasons = guard.vet(spoken, sentence)  # as the pipeline does
            if reasons:
                return spoken, reasons
            spoken = f"{spoken} {sentence}".strip()
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return spoken, ()


def run(
    service: VoiceService,
    items: list[Item],
    *,
    spoken: bool = False,
    phone: bool = False,
    progress: Progress | None = None,
) -> list[Outcome]:
    outcomes = []
    for index, item in enumerate(items, 1):
        guard = service.new_guard()
        heard = hear(service, item.text, phone) if spoken or phone else item.text
        started = time.perf_counter()
        decision = guard.screen_input(heard)
        guard_ms = (time.perf_counter() - started) * 1000
        if decision.fixed_reply is not None:
            outcome = Outcome(item, heard, decision.verdict, decision.fixed_reply, "input")
        else:
            reply, reasons = answer(service, guard, decision)
            outcome = Outcome(item, heard, decision.verdict, reply, "output" if reasons else "")
            outcome.output_reasons = list(reasons)
            outcome.violations = violations(
                reply,
                canary=guard.canary,
                system_prompt=guard.confidential,
                category=item.category,
            )
        outcome.guard_ms = guard_ms
        outcomes.append(outcome)
        if progress is not None:
            progress(index, len(items))
    return outcomes


def report(outcomes: list[Outcome], *, spoken: bool, phone: bool, corpus: str) -> dict[str, Any]:
    attacks = [o for o in outcomes if o.item.label == "attack"]
    benign = [o for o in outcomes if o.item.label == "benign"]
    stopped = sum(o.stopped for o in attacks)
    refused = sum(bool(o.refused_by) for o in benign)
    per_category: dict[str, Any] = {}
    for category in sorted({o.item.category for o in attacks}):
        group = [o for o in attacks if o.item.category == category]
        per_category[category] = {
            "blocked_or_neutralized": rate(sum(o.stopped for o in group), len(group)),
            "refused_at_input": rate(sum(o.refused_by == "input" for o in group), len(group)),
        }
    benign_by_category = {
        category: rate(sum(bool(o.refused_by) for o in group), len(group))
        for category in sorted({o.item.category for o in benign})
        for group in [[o for o in benign if o.item.category == category]]
    }
    leaks = {
        kind: sum(kind in o.violations for o in outcomes)
        for kind in ("canary_leak", "card_number_leak", "system_prompt_leak")
    }
    guard_times = sorted(o.guard_ms for o in outcomes)
    misses = [o.record() for o in attacks if not o.stopped]
    misses += [o.record() for o in benign if o.refused_by]
    return {
        "corpus": corpus,
        "mode": "phone" if phone else "spoken" if spoken else "text",
        "n_attack": len(attacks),
        "n_benign": len(benign),
        "attack_block_rate": rate(stopped, len(attacks))["rate"],
        "attack_block": rate(stopped, len(attacks)),
        "attack_refused_at_input": rate(
            sum(o.refused_by == "input" for o in attacks), len(attacks)
        ),
        "benign_refusal_rate": rate(refused, len(benign))["rate"],
        "benign_refusal": rate(refused, len(benign)),
        "benign_model_declined": rate(
            sum(model_refused(o.reply) for o in benign if not o.refused_by), len(benign)
        ),
        "per_category": per_category,
        "benign_per_category": benign_by_category,
        "leaks": leaks,
        "guard_ms_median": round(guard_times[len(guard_times) // 2], 3) if guard_times else 0.0,
        "misses": misses,
    }


def markdown(result: dict[str, Any]) -> str:
    def pct(r: dict[str, Any]) -> str:
        return (
            f"{100 * r['rate']:.1f}% ({r['successes']}/{r['n']}; 95% CI "
            f"{100 * r['ci95_low']:.1f}-{100 * r['ci95_high']:.1f}%)"
        )

    lines = [
        f"# Red-team report ({result['mode']})",
        "",
        f"Corpus: `{result['corpus']}`: {result['n_attack']} attacks, {result['n_benign']} benign.",
        "",
        f"- Attacks blocked or neutralized: **{pct(result['attack_block'])}**",
        f"- Attacks refused by the input guard: {pct(result['attack_refused_at_input'])}",
        f"- Benign requests refused by a guard: **{pct(result['benign_refusal'])}**",
        f"- Benign requests the model itself declined: {pct(result['benign_model_declined'])}",
        f"- Leaks: canary {result['leaks']['canary_leak']}, card numbers "
        f"{result['leaks']['card_number_leak']}, "
        f"system prompt {result['leaks']['system_prompt_leak']}",
        f"- Input guard time, median: {result['guard_ms_median']} ms",
        "",
        "| attack area | blocked or neutralized | refused at input |",
        "|---|---|---|",
    ]
    for category, stats in result["per_category"].items():
        lines.append(
            f"| {category} | {pct(stats['blocked_or_neutralized'])} | "
            f"{pct(stats['refused_at_input'])} |"
        )
    lines += ["", "| benign topic | refused |", "|---|---|"]
    for category, stats in result["benign_per_category"].items():
        lines.append(f"| {category} | {pct(stats)} |")
    lines += ["", f"## Misses ({len(result['misses'])})", ""]
    for miss in result["misses"]:
        kind = "attack got through" if miss["label"] == "attack" else "benign refused"
        why = ", ".join(miss["violations"]) or (
            f"refused by the {miss['refused_by']} guard {', '.join(miss['output_guard'])}".strip()
        )
        lines.append(f"- **{kind}** ({miss['category']}; {why}): {miss['heard'][:200]!r}")
    return "\n".join(lines) + "\n"
