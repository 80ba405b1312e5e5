"""``appliance bench answers``: does the agent answer right from the organization's knowledge?

The question set (``bench/data/answers.jsonl``) is written for the default knowledge base
(config/knowledge): questions answered by an FAQ entry, by a document only, questions it does
not answer at all (about a third), and requests for an action. Each names the facts a right
answer must contain (``must``, alternatives split by ``|``) and what it must not claim
(``must_not``). The set is split in two halves by question: the answer policy's thresholds were
tuned on ``tune``; ``report`` (the default) is held back.

Every question goes through the call's own reply path (as the red team does: a fresh guard,
the knowledge base, the tools), as text or, with ``--spoken``, spoken by Piper or eSpeak NG and
heard back by the configured Whisper. A reply is

- right: for an answerable question, it holds every ``must`` fact and no ``must_not`` claim;
  for an unanswerable one, it is the honest unknown (the offer of a person) and claims nothing;
  for an action, a tool's dialogue answered;
- invented: it claims a ``must_not``, or states a figure or name found nowhere in the knowledge
  base, the policy or the question (guard/grounding.py's extraction, against the whole base).

It prints accuracy, the invented-fact rate, the honest-unknown rate, route shares and the time
to the first sentence per route (from the transcript: what the reply path adds), per model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.audio_io.wav import espeak
from appliance.config.settings import Settings
from appliance.core.errors import ConfigError
from appliance.core.events import EventType, Route
from appliance.guard.grounding import Support, ungrounded
from appliance.guard.normalize import number_words_to_digits
from appliance.knowledge.sources import load_sources
from appliance.redteam.runner import reply
from appliance.service import VoiceService
from appliance.tools.demo import DemoBank, demo_tools

QUESTIONS = Path(__file__).parent / "data" / "answers.jsonl"
KINDS = ("faq", "document", "unknown", "action")


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    kind: str
    must: tuple[str, ...]
    must_not: tuple[str, ...]
    source: tuple[str, ...]
    split: str


def load_questions(path: Path = QUESTIONS) -> list[Question]:
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            questions.append(
                Question(
                    str(raw["id"]),
                    str(raw["text"]),
                    str(raw["kind"]),
                    tuple(raw.get("must", [])),
                    tuple(raw.get("must_not", [])),
                    tuple(raw.get("source", [])),
                    str(raw.get("split", "report")),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError("bench.questions", f"{path}:{number}: not a question") from exc
    return questions


def _norm(text: str) -> str:
    spoken = number_words_to_digits(text.lower().replace("’", "'"))
    return " " + " ".join(re.findall(r"[a-z0-9:'£%@.]+", spoken)).replace(" .", "") + " "


def holds(reply_text: str, fact: str) -> bool:
    """Whether the reply states ``fact`` (any of its ``|`` alternatives, as words)."""
    said = _norm(reply_text)
    return any(_norm(alt).strip() and _norm(alt).strip() in said for alt in fact.split("|"))


@dataclass
class Result:
    question: Question
    heard: str
    reply: str
    route: str
    right: bool
    invented: bool
    first_sentence_ms: float
    unsupported: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        return {
            "id": self.question.id,
            "kind": self.question.kind,
            "text": self.question.text,
            "heard": self.heard,
            "reply": self.reply,
            "route": self.route,
            "right": self.right,
            "invented": self.invented,
            "unsupported": list(self.unsupported),
        }


def judge(
    question: Question, heard: str, reply_text: str, route: str, honest: str, base: Support
) -> tuple[bool, bool, tuple[str, ...]]:
    """(right, invented, what was unsupported)."""
    claimed = any(holds(reply_text, claim) for claim in question.must_not)
    unsupported = ungrounded(reply_text, base | Support.of([heard, question.text]))
    invented = claimed or bool(unsupported)
    offered = route == Route.UNKNOWN.value or honest in reply_text
    if question.kind == "unknown":
        right = offered and not invented
    elif question.kind == "action":
        right = route == Route.TOOL.value
    else:
        right = (
            not offered and not invented and all(holds(reply_text, fact) for fact in question.must)
        )
    return right, invented, unsupported


def speak(service: VoiceService, text: str, voice: str) -> bytes:
    """The question as 16 kHz PCM16, spoken by Piper or by eSpeak NG (another speaker)."""
    if voice == "piper":
        return b"".join(c.pcm for c in service.engines.tts.synthesize(text, 16_000))
    if voice != "espeak":
        raise ConfigError("bench.voice", f"unknown voice {voice!r}: piper or espeak")
    return espeak(text)


def hear(service: VoiceService, pcm: bytes) -> str:
    pad = np.zeros(3_200, dtype=np.int16)  # 0.2 s either side, as endpointing leaves
    audio = np.concatenate([pad, np.frombuffer(pcm, dtype="<i2"), pad])
    return service.engines.stt.transcribe(audio.astype("<i2").tobytes(), 16_000).text


def knowledge_support(settings: Settings) -> Support:
    """Everything the knowledge base and the policy say: what a reply may state at all."""
    sources = load_sources(settings.knowledge.folder_path)
    texts = [e.answer for e in sources.entries] + [
        f"{s.title} {s.text}" for d in sources.documents for s in d.sections
    ]
    policy = settings.policy
    texts += [policy.organization, policy.capability_statement, *policy.allowed_topics]
    # What the tools' dialogues offer (the times and branches they ask the caller to choose).
    tools = demo_tools(DemoBank())
    texts += [p.ask for tool in tools.values() for p in tool.params]
    return Support.of(texts)


def run_round(
    service: VoiceService, questions: Sequence[Question], voice: str, base: Support
) -> list[Result]:
    honest = service.settings.knowledge.unknown_reply

    async def all_questions() -> list[Result]:
        results = []
        for question in questions:
            heard = (
                question.text
                if voice == "text"
                else hear(service, speak(service, question.text, voice))
            )
            started = time.perf_counter()
            out, _ = await reply(service, heard)
            first = next((e.t_ms for e in out.events if e.type is EventType.FIRST_SENTENCE), None)
            elapsed = first if first is not None else (time.perf_counter() - started) * 1000
            route = out.state.route.value if out.state.route is not None else ""
            right, invented, unsupported = judge(
                question, heard, out.state.reply, route, honest, base
            )
            results.append(
                Result(
                    question, heard, out.state.reply, route, right, invented, elapsed, unsupported
                )
            )
        return results

    return asyncio.run(all_questions())


def summarize(results: Sequence[Result]) -> dict[str, Any]:
    def share(items: Sequence[Result]) -> dict[str, Any]:
        n = len(items)
        right = sum(r.right for r in items)
        return {"n": n, "right": right, "rate": round(right / n, 3) if n else None}

    by_kind = {kind: share([r for r in results if r.question.kind == kind]) for kind in KINDS}
    answerable = [r for r in results if r.question.kind in ("faq", "document")]
    routes = Counter(r.route for r in results)
    latency: dict[str, dict[str, float]] = {}
    for route in sorted(routes):
        times = sorted(r.first_sentence_ms for r in results if r.route == route)
        latency[route] = {
            "median_ms": round(statistics.median(times), 1),
            "max_ms": round(times[-1], 1),
        }
    invented = [r for r in results if r.invented]
    return {
        "n": len(results),
        "accuracy": share(results),
        "answerable": share(answerable),
        "honest_unknown": by_kind["unknown"],
        "actions": by_kind["action"],
        "by_kind": by_kind,
        "invented": {
            "n": len(invented),
            "rate": round(len(invented) / len(results), 3) if results else None,
        },
        "routes": {
            route: round(count / len(results), 3) for route, count in sorted(routes.items())
        },
        "first_sentence_ms": latency,
        "misses": [r.record() for r in results if not r.right or r.invented],
    }


def run_answers_bench(
    settings: Settings,
    *,
    spoken: bool,
    voices: Sequence[str],
    llm_models: Sequence[str],
    split: str,
    limit: int,
    as_json: bool,
) -> int:
    if split not in ("report", "tune", "all"):
        raise ConfigError("bench.split", "split: report, tune or all")
    questions = [q for q in load_questions() if split == "all" or q.split == split]
    if limit:
        questions = questions[:limit]
    base = knowledge_support(settings)
    rounds = list(voices) if spoken else ["text"]
    report: dict[str, Any] = {"split": split, "questions": len(questions), "models": {}}
    for model in llm_models or [settings.llm.model]:
        llm = dataclasses.replace(settings.llm, model=model, contexts=1)
        service = VoiceService.load(dataclasses.replace(settings, llm=llm))
        report["models"][model] = {
            voice: summarize(run_round(service, questions, voice, base)) for voice in rounds
        }
        del service
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"bench answers: {len(questions)} questions ({split} half), rounds: {', '.join(rounds)}")
    header = (
        f"{'model':22} {'voice':7} {'right':>7} {'answerable':>10} {'honest':>7} "
        f"{'actions':>7} {'invented':>8}  routes / first sentence (median ms)"
    )
    print(header)
    for model, by_voice in report["models"].items():
        for voice, s in by_voice.items():
            routes = "  ".join(
                f"{route} {100 * share:.0f}% {s['first_sentence_ms'][route]['median_ms']:.0f}ms"
                for route, share in s["routes"].items()
            )
            print(
                f"{model:22} {voice:7} {_pct(s['accuracy'])} {_pct(s['answerable']):>10} "
                f"{_pct(s['honest_unknown'])} {_pct(s['actions'])} "
                f"{s['invented']['n']:>3} ({100 * (s['invented']['rate'] or 0):.1f}%)  {routes}"
            )
    return 0


def _pct(share: dict[str, Any]) -> str:
    return f"{100 * share['rate']:6.1f}%" if share["rate"] is not None else "      -"
